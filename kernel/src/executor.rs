//! The safety executor: the one path every tool call takes.
//!
//! In order, for each call ([`Executor::call`]):
//!
//! 1. the run must still be live, and the call within `max_tool_calls` and
//!    the wall time (bounds, INV-03);
//! 2. the tool must be registered at that version (`TOOL_UNKNOWN`);
//! 3. the input must satisfy the tool's input schema (`SCHEMA_INVALID`,
//!    INV-01), before anything runs;
//! 4. a scope must allow principal, tenant, tool and action
//!    (`PERMISSION_DENIED`, INV-02);
//! 5. the call must not make the run a loop (`LOOP_DETECTED`);
//! 6. a FINANCIAL tool must be approved by the [`ApprovalGate`]; an executor
//!    without one refuses every FINANCIAL call (`APPROVAL_REQUIRED`, INV-07):
//!    money never moves by default;
//! 7. the tool runs under `min(tool timeout, time left)`; on timeout its
//!    future is dropped, so the call is really cancelled; a panic is caught
//!    and reported as `TOOL_FAILED`;
//! 8. the output must satisfy the output schema (`OUTPUT_SCHEMA_INVALID`);
//! 9. tokens count against `max_tokens`, the cost is priced from the
//!    contract;
//! 10. a trace record (redacted input and output, decision, duration, cost)
//!     is persisted. If it cannot be, the run ends with `trace_write_failed`
//!     and the output is withheld: nothing acts unobserved (INV-04).
//!
//! Every refusal is traced and counted. A refusal of 1, 5 or 10 ends the run;
//! the others fail only the call, and the caller (a workflow, an agent loop)
//! decides what follows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bounds::{Bounds, BoundsEnforcer, LoopDetector, LoopPolicy, Termination, Usage};
use crate::breaker::Breakers;
use crate::clock::Clock;
use crate::contract::{SideEffect, ToolContract, ToolRegistry};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::{Begin, Claim, IdempotencyKey, KeyParts, StoredResult, request_fingerprint};
use crate::permission::{Decision, EXECUTE, PermissionEnforcer};
use crate::receipts::NewReceipt;
use crate::redaction::{RedactionPolicy, RedactionStats};
use crate::store::{Store, TenantTx};
use crate::tenant::TenantContext;
use crate::trace::{Cost, RecordKind, TraceRecord, TraceSink, TracedError};

/// What a tool returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub value: Value,
    /// Model tokens the call used (0 for plain API calls).
    pub tokens: u64,
    /// Requests sent to external providers.
    pub provider_calls: u64,
}

impl ToolOutput {
    pub fn new(value: Value) -> Self {
        ToolOutput { value, tokens: 0, provider_calls: 0 }
    }
}

/// What a tool knows of the call it serves.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub ctx: TenantContext,
    pub run_id: String,
    pub seq: u64,
    pub tool: String,
    /// The external idempotency key (`autobiz:` + 32 hex) of a side effect
    /// made by a durable executor: send it to the provider
    /// (`Idempotency-Key`), so a call resumed after a crash is deduplicated
    /// there too.
    pub idempotency_key: Option<String>,
}

/// An implementation of a tool. The executor owns every check; a tool only
/// does its work.
#[async_trait::async_trait]
pub trait Tool: Send + Sync {
    async fn call(&self, call: CallContext, input: Value) -> Result<ToolOutput>;
}

/// Decides whether a FINANCIAL call may go ahead (human approval, INV-07).
/// `Ok` lets it run; an error refuses it and is traced as the refusal.
#[async_trait::async_trait]
pub trait ApprovalGate: Send + Sync {
    async fn approve(&self, call: &CallContext, contract: &ToolContract, input: &Value) -> Result<()>;
}

/// The dependency a tool calls, for its circuit breaker: the first segment
/// of its name (`stripe` for `stripe.refund.create`).
pub fn dependency(tool: &str) -> &str {
    tool.split('.').next().unwrap_or(tool)
}

/// What claiming a side effect's key decided.
enum Claimed {
    /// Execute, under this claim (none: not a durable side effect).
    Execute(Option<Claim>),
    /// The stored result; true when it is this run's own execution (a run
    /// resumed after a crash between the effect and its step's commit).
    Replay(StoredResult, bool),
}

/// What a workflow engine adds to a call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions<'a> {
    /// The output becomes this key of the run's state (a step id): the trace
    /// records the state diff.
    pub state_key: Option<&'a str>,
    /// The engine's approval policy already approved this call (a human
    /// decided, or no rule requires one): a FINANCIAL call skips the gate.
    pub approved: bool,
    /// The idempotency key of a side effect (a workflow step's, derived by
    /// the engine). Without one, a durable executor derives it from the run
    /// and the call's sequence number.
    pub idempotency: Option<&'a IdempotencyKey>,
}

/// A call's writes, made in an open transaction of the trace store and not
/// yet committed ([`Executor::call_held`]): the caller adds its own write to
/// [`Held::tx`] and commits, or hands it back with [`Executor::settle`]
/// (commit as it is) or [`Executor::redo`] (after the transaction failed).
/// Dropping it rolls the writes back: a side effect's receipt would be lost,
/// so every path must end in a commit, `settle` or `redo`.
pub struct Held {
    tx: TenantTx,
    redo: Redo,
}

/// What a held transaction wrote, to write again apart if it fails.
enum Redo {
    /// A call's trace record.
    Record(Box<TraceRecord>),
    /// A side effect's result, receipt and trace record.
    Completion(Box<Completion>),
}

/// A side effect's writes, as [`Redo::Completion`] keeps them.
struct Completion {
    claim: Claim,
    response: Value,
    receipt: NewReceipt,
    rec: TraceRecord,
    /// The record as it is written if the receipt cannot be (no output).
    unreceipted: TraceRecord,
    tool: String,
    id: String,
}

impl Held {
    /// The transaction holding the call's writes.
    pub fn tx(&mut self) -> &mut TenantTx {
        &mut self.tx
    }
}

/// Where side effects are made exactly once: the store that holds
/// idempotency claims and receipts, and how long a key is remembered.
#[derive(Debug, Clone)]
pub struct Durability {
    pub store: Store,
    pub window: std::time::Duration,
}

/// A call's output, and whether it is the stored result of an earlier
/// execution rather than a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Called {
    pub value: Value,
    /// The stored result of an earlier execution (an idempotency hit).
    pub replayed: bool,
    /// The receipt of the side effect this run made: by this call, or (on a
    /// replay of the run's own execution) before a crash.
    pub receipt: Option<String>,
}

/// Counters the executor keeps (exported as metrics by `autobiz serve`).
#[derive(Debug, Default)]
pub struct Counters {
    pub tool_invocation_total: AtomicU64,
    pub schema_reject_total: AtomicU64,
    pub output_schema_reject_total: AtomicU64,
    pub permission_check_pass_total: AtomicU64,
    pub permission_check_deny_total: AtomicU64,
    pub tool_unknown_total: AtomicU64,
    pub loop_detection_total: AtomicU64,
    pub bound_termination_total: AtomicU64,
    pub tool_timeout_total: AtomicU64,
    pub tool_failure_total: AtomicU64,
    pub trace_write_failure_total: AtomicU64,
    pub redaction_alert_total: AtomicU64,
    pub approval_refused_total: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Name and value of every counter, for exporting.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("tool_invocation_total", get(&self.tool_invocation_total)),
            ("schema_reject_total", get(&self.schema_reject_total)),
            ("output_schema_reject_total", get(&self.output_schema_reject_total)),
            ("permission_check_pass_total", get(&self.permission_check_pass_total)),
            ("permission_check_deny_total", get(&self.permission_check_deny_total)),
            ("tool_unknown_total", get(&self.tool_unknown_total)),
            ("loop_detection_total", get(&self.loop_detection_total)),
            ("bound_termination_total", get(&self.bound_termination_total)),
            ("tool_timeout_total", get(&self.tool_timeout_total)),
            ("tool_failure_total", get(&self.tool_failure_total)),
            ("trace_write_failure_total", get(&self.trace_write_failure_total)),
            ("redaction_alert_total", get(&self.redaction_alert_total)),
            ("approval_refused_total", get(&self.approval_refused_total)),
        ])
    }
}

/// Everything a run needs, assembled once (from a compiled business config).
pub struct Executor {
    registry: ToolRegistry,
    /// Implementations by name, then version: looked up with the contract's
    /// own strings, no allocation on the call path.
    tools: BTreeMap<String, BTreeMap<String, Arc<dyn Tool>>>,
    permissions: PermissionEnforcer,
    loop_policy: LoopPolicy,
    redaction: RedactionPolicy,
    trace: Arc<dyn TraceSink>,
    clock: Arc<dyn Clock>,
    approvals: Option<Arc<dyn ApprovalGate>>,
    durability: Option<Durability>,
    breakers: Option<Breakers>,
    counters: Counters,
    /// Detections by kind (`scanner_detection_total`), only touched when a
    /// payload had something to redact.
    redaction_stats: std::sync::Mutex<RedactionStats>,
}

/// One run in progress. Created by [`Executor::start`].
#[derive(Debug)]
pub struct Run {
    id: String,
    ctx: TenantContext,
    bounds: BoundsEnforcer,
    loops: LoopDetector,
    seq: u64,
    cost: Cost,
    ended: Option<Termination>,
}

impl Run {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn context(&self) -> &TenantContext {
        &self.ctx
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    pub fn usage(&self) -> Usage {
        self.bounds.usage()
    }

    /// Why the run ended, once it has.
    pub fn termination(&self) -> Option<Termination> {
        self.ended
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

impl Executor {
    pub fn new(
        registry: ToolRegistry,
        permissions: PermissionEnforcer,
        loop_policy: LoopPolicy,
        redaction: RedactionPolicy,
        trace: Arc<dyn TraceSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Executor {
            registry,
            tools: BTreeMap::new(),
            permissions,
            loop_policy,
            redaction,
            trace,
            clock,
            approvals: None,
            durability: None,
            breakers: None,
            counters: Counters::default(),
            redaction_stats: std::sync::Mutex::new(RedactionStats::default()),
        }
    }

    /// Let FINANCIAL calls through when `gate` approves them. Without a
    /// gate they are all refused.
    pub fn with_approvals(mut self, gate: Arc<dyn ApprovalGate>) -> Self {
        self.approvals = Some(gate);
        self
    }

    /// Make every side effect exactly-once (INV-05): claim its idempotency
    /// key before it runs, store its result and receipt in one transaction
    /// after, and refuse tools blocked for an unreceipted effect.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Send every call through the circuit breaker of its dependency (the
    /// tool name's first segment: `stripe` for `stripe.refund.create`): an
    /// open breaker refuses the call before it runs (`CIRCUIT_OPEN`), and
    /// infrastructure failures (timeouts, provider down) count against it.
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = Some(breakers);
        self
    }

    /// Provide the implementation of a registered tool.
    pub fn bind(&mut self, name: &str, version: &str, tool: Arc<dyn Tool>) -> Result<()> {
        self.registry.lookup(name, version)?;
        self.tools.entry(name.to_owned()).or_default().insert(version.to_owned(), tool);
        Ok(())
    }

    pub fn registry(&self) -> &ToolRegistry {
        &self.registry
    }

    /// The clock every record of this executor is stamped with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Redaction detections so far, by kind.
    pub fn redaction_stats(&self) -> RedactionStats {
        self.redaction_stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Start a run under `ctx` (its principal is the one permissions check).
    /// The run-start record must be written, or there is no run.
    pub async fn start(&self, ctx: &TenantContext, run_id: &str, bounds: Bounds, pins: Value) -> Result<Run> {
        let (mut run, rec) = self.start_record(ctx, run_id, bounds, pins);
        self.write(&mut run, rec).await?;
        Ok(run)
    }

    /// [`Executor::start`] whose `run_start` record the caller writes, in
    /// its own transaction (with the run's registration and initial state:
    /// [`Store::start_run`]); if that fails there is no run.
    pub fn start_record(&self, ctx: &TenantContext, run_id: &str, bounds: Bounds, pins: Value) -> (Run, TraceRecord) {
        let mut run = Run {
            id: run_id.to_owned(),
            ctx: ctx.clone(),
            bounds: BoundsEnforcer::new(bounds),
            loops: LoopDetector::new(self.loop_policy.clone()),
            seq: 0,
            cost: Cost::default(),
            ended: None,
        };
        let mut rec = self.record(&mut run, RecordKind::RunStart);
        rec.detail = Some(serde_json::json!({ "principal": ctx.principal().as_str(), "bounds": bounds, "pins": pins }));
        (run, rec)
    }

    /// Pick up run `run_id` again after a crash or a pause: its trace goes
    /// on after `last_seq`, and the bounds count the `steps` it already took.
    pub async fn resume(
        &self,
        ctx: &TenantContext,
        run_id: &str,
        bounds: Bounds,
        last_seq: u64,
        steps: u32,
    ) -> Result<Run> {
        let mut run = Run {
            id: run_id.to_owned(),
            ctx: ctx.clone(),
            bounds: BoundsEnforcer::resumed(bounds, steps, steps),
            loops: LoopDetector::new(self.loop_policy.clone()),
            seq: last_seq,
            cost: Cost::default(),
            ended: None,
        };
        let mut rec = self.record(&mut run, RecordKind::RunStart);
        rec.detail = Some(
            serde_json::json!({ "principal": ctx.principal().as_str(), "bounds": bounds, "resumed": true, "steps_done": steps }),
        );
        self.write(&mut run, rec).await?;
        Ok(run)
    }

    /// Count a step of the run (a workflow step, an agent turn).
    pub async fn begin_step(&self, run: &mut Run) -> Result<()> {
        self.ensure_live(run)?;
        if let Err(t) = run.bounds.begin_step() {
            return Err(self.end_on_bound(run, t, None).await);
        }
        Ok(())
    }

    /// One tool call through every check. See the module docs for the order.
    pub async fn call(&self, run: &mut Run, tool: &str, version: &str, input: Value) -> Result<Value> {
        self.call_into(run, tool, version, input, None).await
    }

    /// [`Executor::call`] whose output becomes `state_key` of the run's state
    /// (a workflow's step id): the trace records the state diff, an RFC 6902
    /// `add` of the (redacted) output at `/state_key`.
    pub async fn call_into(
        &self,
        run: &mut Run,
        tool: &str,
        version: &str,
        input: Value,
        state_key: Option<&str>,
    ) -> Result<Value> {
        let opts = CallOptions { state_key, ..CallOptions::default() };
        self.call_with(run, tool, version, input, opts).await.map(|c| c.value)
    }

    /// [`Executor::call_into`] with everything a workflow engine may add.
    pub async fn call_with(
        &self,
        run: &mut Run,
        tool: &str,
        version: &str,
        input: Value,
        opts: CallOptions<'_>,
    ) -> Result<Called> {
        self.checked_call(run, tool, version, input, opts, None).await
    }

    /// [`Executor::call_with`] that leaves the call's writes (its trace
    /// record; a side effect's result and receipt with it) uncommitted in a
    /// transaction of the trace store, returned beside the answer, for the
    /// caller to commit with its own write (the engine's state version).
    /// Only where the trace sink is a store, and only on the plain path: a
    /// call that fails, whose output is refused, that sets off the redaction
    /// scanner or uses tokens commits as [`Executor::call_with`] does.
    pub async fn call_held(
        &self,
        run: &mut Run,
        tool: &str,
        version: &str,
        input: Value,
        opts: CallOptions<'_>,
    ) -> (Result<Called>, Option<Held>) {
        let mut held = None;
        let called = self.checked_call(run, tool, version, input, opts, Some(&mut held)).await;
        (called, held)
    }

    /// Commit `held` as it is (without a write of the caller's); if the
    /// commit fails, its writes are made apart ([`Executor::redo`]).
    /// `true` when it committed (with whatever the caller added to it);
    /// `false` when it did not and the call's writes were made apart (what
    /// the caller added is lost: write it again).
    pub async fn settle(&self, run: &mut Run, held: Held) -> Result<bool> {
        let Held { tx, redo } = held;
        match tx.commit().await {
            Ok(()) => Ok(true),
            Err(_) => self.redo_writes(run, redo).await.map(|()| false),
        }
    }

    /// `held`'s writes, apart, after its transaction failed (and rolled
    /// back): as an unheld call writes them when its combined write fails.
    /// A trace record that cannot be written ends the run
    /// (`TRACE_WRITE_FAILED`); a receipt that cannot be blocks the tool and
    /// is `RECEIPT_WRITE_FAILED`: the effect happened and is not proven.
    pub async fn redo(&self, run: &mut Run, held: Held) -> Result<()> {
        let Held { tx, redo } = held;
        drop(tx);
        self.redo_writes(run, redo).await
    }

    async fn redo_writes(&self, run: &mut Run, redo: Redo) -> Result<()> {
        match redo {
            Redo::Record(rec) => self.append(run, &rec).await,
            Redo::Completion(c) => {
                let Completion { claim, response, receipt, rec, unreceipted, tool, id } = *c;
                let Some(d) = &self.durability else {
                    return self.append(run, &rec).await;
                };
                match d.store.idempotency_complete(&run.ctx, &claim, &response, &receipt).await {
                    Ok(_) => self.append(run, &rec).await,
                    Err(e) => Err(self.unreceipted(run, d, &tool, &id, unreceipted, &e).await),
                }
            }
        }
    }

    /// The store the trace goes to, when the trace sink is one.
    pub fn trace_store(&self) -> Option<&Store> {
        self.trace.store()
    }

    async fn checked_call(
        &self,
        run: &mut Run,
        tool: &str,
        version: &str,
        input: Value,
        opts: CallOptions<'_>,
        held: Option<&mut Option<Held>>,
    ) -> Result<Called> {
        self.ensure_live(run)?;
        if let Err(t) = run.bounds.begin_tool_call() {
            return Err(self.end_on_bound(run, t, Some(format!("{tool}@{version}"))).await);
        }
        let contract = match self.registry.lookup(tool, version) {
            Ok(c) => c,
            Err(e) => {
                Counters::bump(&self.counters.tool_unknown_total);
                return Err(self.reject(run, &format!("{tool}@{version}"), &input, None, e).await);
            }
        };
        let violations = contract.input.violations(&input);
        if let Some(first) = violations.first() {
            Counters::bump(&self.counters.schema_reject_total);
            // The summary names path and rule, never the value (which may be
            // customer data), so the error is safe for traces and logs.
            let e = Error::new(
                ErrorCode::SchemaInvalid,
                format!("{} input rejected: {} ({} problem(s))", contract.id(), first.summary(), violations.len()),
            );
            return Err(self.reject(run, &contract.id(), &input, None, e).await);
        }
        let decision =
            self.permissions.check(run.ctx.principal().as_str(), run.ctx.tenant().as_str(), tool, version, EXECUTE);
        if !decision.allowed {
            Counters::bump(&self.counters.permission_check_deny_total);
            let e = decision.clone().into_result().expect_err("a denial");
            return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await);
        }
        Counters::bump(&self.counters.permission_check_pass_total);
        if let Some(kind) = run.loops.observe(tool, args_hash(&input)) {
            Counters::bump(&self.counters.loop_detection_total);
            let mut rec = self.record(run, RecordKind::LoopDetected);
            rec.tool = Some(contract.id());
            rec.detail = serde_json::to_value(&kind).ok();
            rec.error = Some(TracedError {
                code: ErrorCode::LoopDetected.as_str().to_owned(),
                message: format!("{} repeats: {kind:?}", contract.id()),
            });
            self.write(run, rec).await?;
            self.end(run, Termination::LoopDetected).await?;
            return Err(Error::new(
                ErrorCode::LoopDetected,
                format!("run {} ended: {} repeats itself", run.id, contract.id()),
            ));
        }
        self.execute(run, contract, input, decision, opts, held).await
    }

    async fn execute(
        &self,
        run: &mut Run,
        contract: &ToolContract,
        input: Value,
        decision: Decision,
        opts: CallOptions<'_>,
        held: Option<&mut Option<Held>>,
    ) -> Result<Called> {
        let state_key = opts.state_key;
        let mut no_hold = None;
        let (may_hold, held) = match held {
            Some(h) => (true, h),
            None => (false, &mut no_hold),
        };
        let Some(tool) = self.tools.get(&contract.name).and_then(|v| v.get(&contract.version)).cloned() else {
            let e = Error::new(
                ErrorCode::ToolUnknown,
                format!("tool {} is declared but has no implementation", contract.id()),
            );
            return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await);
        };
        let seq = run.next_seq();
        let mut call = CallContext {
            ctx: run.ctx.clone(),
            run_id: run.id.clone(),
            seq,
            tool: contract.id(),
            idempotency_key: None,
        };
        if contract.side_effect == SideEffect::Financial && !opts.approved {
            let verdict = match &self.approvals {
                None => Err(Error::new(
                    ErrorCode::ApprovalRequired,
                    format!("{} moves money and this executor has no approval gate: refused", contract.id()),
                )),
                Some(gate) => gate.approve(&call, contract, &input).await,
            };
            if let Err(e) = verdict {
                Counters::bump(&self.counters.approval_refused_total);
                return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await);
            }
        }
        let mut rec = self.record_at(run, RecordKind::ToolCall, seq);
        rec.tool = Some(contract.id());
        rec.input = Some(self.redact(&input, &mut rec));
        rec.decision = Some(decision.clone());
        let permit = match &self.breakers {
            None => None,
            Some(b) => match b.acquire(&run.ctx, dependency(&contract.name)).await {
                Ok(p) => Some(p),
                Err(e) => return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await),
            },
        };
        let claim = match self.claim(run, contract, &input, seq, opts.idempotency).await {
            Ok(Claimed::Execute(claim)) => claim,
            Ok(Claimed::Replay(stored, own)) => {
                // The same call already happened: its stored result is the
                // answer, and nothing executes (INV-05).
                rec.detail = Some(serde_json::json!({"idempotency": "replayed", "external_key": stored.external_key}));
                let output = self.redact(&stored.response, &mut rec);
                if let Some(key) = state_key {
                    let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
                    rec.state_diff = Some(serde_json::json!([{ "op": "add", "path": pointer, "value": output }]));
                }
                rec.output = Some(output);
                if !(may_hold && self.hold_record(run, &rec, held).await) {
                    self.write(run, rec).await?;
                }
                let receipt = if own { stored.receipt_id } else { None };
                return Ok(Called { value: stored.response, replayed: true, receipt });
            }
            Err(e) => return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await),
        };
        if let Some(claim) = &claim {
            call.idempotency_key = Some(claim.key.external().to_owned());
            rec.detail = Some(serde_json::json!({"idempotency": "executed", "external_key": claim.key.external()}));
        }
        let request_sha256 = claim.as_ref().map(|_| crate::receipts::payload_sha256(&input)).transpose()?;
        let input_money = (
            input.get("amount").and_then(Value::as_i64),
            input.get("currency").and_then(Value::as_str).map(str::to_owned),
        );
        let started_at = self.clock.now();
        Counters::bump(&self.counters.tool_invocation_total);
        let remaining = run.bounds.remaining();
        let limit = contract.timeout.min(remaining);
        let started = tokio::time::Instant::now();
        // The tool's future runs here, under the timeout and catch_unwind:
        // on timeout it is dropped, which cancels it at its await point, and
        // a panic is contained. (A spawned task would cost a cross-thread
        // wake-up per call and cancel no sooner: abort also acts at an await.)
        let call_future = std::panic::AssertUnwindSafe(tool.call(call, input)).catch_unwind();
        let outcome = tokio::time::timeout(limit, call_future).await;
        rec.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let result = match outcome {
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_panic)) => Err(Error::new(ErrorCode::ToolFailed, format!("{} panicked", contract.id()))),
            Err(_) => Err(Error::new(
                ErrorCode::ToolTimeout,
                format!("{} did not answer within {} ms and was cancelled", contract.id(), limit.as_millis()),
            )),
        };
        if let Some(permit) = permit {
            // The dependency answered (even "declined") unless the failure is
            // of the infrastructure class. A breaker that cannot record is
            // logged: the call's own outcome stands.
            let recorded = match &result {
                Err(e) if e.class() == crate::error::ErrorClass::Infrastructure => permit.failure().await,
                _ => permit.success().await,
            };
            if let Err(e) = recorded {
                tracing::warn!(target: "autobiz::breaker", code = %e.code(), "breaker outcome not recorded: {}", e.message());
            }
        }
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let ran_out_of_time =
                    e.code() == ErrorCode::ToolTimeout && limit == remaining && limit < contract.timeout;
                Counters::bump(if e.code() == ErrorCode::ToolTimeout {
                    &self.counters.tool_timeout_total
                } else {
                    &self.counters.tool_failure_total
                });
                rec.error = Some(TracedError::from(&e));
                if let (Some(claim), Some(d)) = (&claim, &self.durability) {
                    // A definite refusal (declined, invalid, not found) made
                    // no effect: free the key for a retry. An ambiguous one
                    // (timeout, provider down) may have: keep the claim, so a
                    // resumed run sends the same key and the provider says.
                    if e.class() != crate::error::ErrorClass::Infrastructure {
                        let _ = d.store.idempotency_release(&run.ctx, claim, &e).await;
                    }
                }
                self.write(run, rec).await?;
                if ran_out_of_time {
                    return Err(self.end_on_bound(run, Termination::MaxWallTime, Some(contract.id())).await);
                }
                return Err(e);
            }
        };
        let cost =
            Cost { tokens: out.tokens, provider_calls: out.provider_calls, micro_usd: contract.price.cost(out.tokens) };
        rec.cost = cost;
        run.cost.add(cost);
        let violations = contract.output.violations(&out.value);
        let output_error = violations.first().map(|first| {
            Counters::bump(&self.counters.output_schema_reject_total);
            Error::new(
                ErrorCode::OutputSchemaInvalid,
                format!("{} output rejected: {}", contract.id(), first.summary()),
            )
        });
        // The record as it is if the receipt cannot be written (no output).
        let unreceipted = claim.as_ref().map(|_| rec.clone());
        let output = self.redact(&out.value, &mut rec);
        if let Some(key) = state_key.filter(|_| output_error.is_none()) {
            let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            rec.state_diff = Some(serde_json::json!([{ "op": "add", "path": pointer, "value": output }]));
        }
        rec.output = Some(output);
        if let Some(e) = &output_error {
            rec.error = Some(TracedError::from(e));
        }
        // Held for the caller's commit only on the plain path: no refused
        // output, no scanner alert to record after, no tokens to count.
        let hold = may_hold && output_error.is_none() && out.tokens == 0 && !has_alerts(&rec);
        let mut receipt = None;
        let mut traced = false;
        if let (Some(claim), Some(d), Some(request_sha256)) = (&claim, &self.durability, request_sha256) {
            let new = self.new_receipt(run, contract, claim, request_sha256, input_money, &out.value, started_at);
            // The result, its receipt and the call's trace record in one
            // transaction when the trace goes to the same database (held
            // open for the caller's state version with `hold`); else (or if
            // that fails) the receipt first, then the record, as before.
            let stored = match new {
                Err(e) => Err(e),
                Ok(new) => {
                    let together = match self.trace.store().filter(|s| s.same_pool(&d.store)) {
                        Some(store) if hold => {
                            match store.idempotency_complete_open(&run.ctx, claim, &out.value, &new, Some(&rec)).await {
                                Ok((r, tx)) => {
                                    let redo = Redo::Completion(Box::new(Completion {
                                        claim: claim.clone(),
                                        response: out.value.clone(),
                                        receipt: new.clone(),
                                        rec: rec.clone(),
                                        unreceipted: unreceipted.clone().unwrap_or_else(|| rec.clone()),
                                        tool: contract.name.clone(),
                                        id: contract.id(),
                                    }));
                                    *held = Some(Held { tx, redo });
                                    Some(r)
                                }
                                Err(_) => None,
                            }
                        }
                        Some(store) => {
                            store.idempotency_complete_traced(&run.ctx, claim, &out.value, &new, Some(&rec)).await.ok()
                        }
                        None => None,
                    };
                    traced = together.is_some();
                    match together {
                        Some(r) => Ok(r),
                        None => d.store.idempotency_complete(&run.ctx, claim, &out.value, &new).await,
                    }
                }
            };
            match stored {
                Ok(r) => receipt = Some(r.receipt_id),
                Err(e) => {
                    let rec = unreceipted.unwrap_or(rec);
                    return Err(self.unreceipted(run, d, &contract.name, &contract.id(), rec, &e).await);
                }
            }
        } else if hold {
            // A read (or a call without durability): its record alone,
            // held for the caller's state version.
            traced = self.hold_record(run, &rec, held).await;
        }
        if traced {
            self.alert_after(run, &rec).await?;
        } else {
            self.write(run, rec).await?;
        }
        if let Some(e) = output_error {
            return Err(e);
        }
        if let Err(t) = run.bounds.add_tokens(out.tokens) {
            if let Some(h) = held.take() {
                self.settle(run, h).await?;
            }
            return Err(self.end_on_bound(run, t, Some(contract.id())).await);
        }
        Ok(Called { value: out.value, replayed: false, receipt })
    }

    /// Write `rec` into a new transaction of the trace store, held for the
    /// caller (`true`); `false` (nothing written) when the sink is no store,
    /// the record needs an alert after it, or the write failed: the caller
    /// then writes it as usual.
    async fn hold_record(&self, run: &Run, rec: &TraceRecord, held: &mut Option<Held>) -> bool {
        let Some(store) = self.trace.store() else { return false };
        if has_alerts(rec) {
            return false;
        }
        let Ok(mut tx) = store.begin_batch(&run.ctx).await else { return false };
        if crate::trace::insert_trace(&mut tx, &run.ctx, rec).await.is_err() {
            return false;
        }
        *held = Some(Held { tx, redo: Redo::Record(Box::new(rec.clone())) });
        true
    }

    /// A side effect whose receipt could not be written (`e`): the call
    /// failed, and the tool stays blocked until reconciled; `rec` (without
    /// the output) is traced with the error.
    async fn unreceipted(
        &self,
        run: &mut Run,
        d: &Durability,
        tool: &str,
        id: &str,
        mut rec: TraceRecord,
        e: &Error,
    ) -> Error {
        let _ = d.store.block_tool(&run.ctx, tool, e.message()).await;
        let e = Error::new(
            ErrorCode::ReceiptWriteFailed,
            format!(
                "{id} ran but its receipt could not be written ({}); the tool is blocked until reconciled",
                e.code()
            ),
        );
        rec.error = Some(TracedError::from(&e));
        match self.write(run, rec).await {
            Ok(()) => e,
            Err(trace_error) => trace_error,
        }
    }

    /// Claim the idempotency key of a side effect (durable executors only):
    /// `Execute(None)` for reads and non-durable executors.
    async fn claim(
        &self,
        run: &Run,
        contract: &ToolContract,
        input: &Value,
        seq: u64,
        key: Option<&IdempotencyKey>,
    ) -> Result<Claimed> {
        let Some(d) = self.durability.as_ref().filter(|_| contract.side_effect != SideEffect::Read) else {
            return Ok(Claimed::Execute(None));
        };
        let derived;
        let key = match key {
            Some(k) => k,
            None => {
                derived = IdempotencyKey::derive(&KeyParts {
                    tenant: run.ctx.tenant(),
                    workflow: &run.id,
                    step: &format!("call#{seq}"),
                    tool: &contract.name,
                    tool_version: &contract.version,
                    input,
                })?;
                &derived
            }
        };
        let execution_id = format!("{}/{}", run.id, &key.internal()[..16]);
        let fingerprint = request_fingerprint(input)?;
        let wait = contract.timeout.min(run.bounds.remaining());
        // The tool's block is checked by the claim's own statement.
        let claimed = d.store.idempotency_wait_unblocked(
            &run.ctx,
            &contract.name,
            key,
            &fingerprint,
            &execution_id,
            d.window,
            wait,
        );
        match claimed.await? {
            Begin::Execute(claim) => Ok(Claimed::Execute(Some(claim))),
            Begin::Replay(stored) => {
                let own = stored.execution_id == execution_id;
                Ok(Claimed::Replay(stored, own))
            }
            Begin::InProgress => Err(Error::new(
                ErrorCode::InProgress,
                format!("{} is being executed by another run under the same key", contract.id()),
            )),
        }
    }

    /// The receipt of a claimed side effect's result `output`.
    #[allow(clippy::too_many_arguments)]
    fn new_receipt(
        &self,
        run: &Run,
        contract: &ToolContract,
        claim: &Claim,
        request_sha256: String,
        input_money: (Option<i64>, Option<String>),
        output: &Value,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<NewReceipt> {
        // Amount and currency as the provider reported them, else as asked.
        let amount_minor = output.get("amount").and_then(Value::as_i64).or(input_money.0);
        let currency = output.get("currency").and_then(Value::as_str).map(str::to_owned).or(input_money.1);
        Ok(NewReceipt {
            execution_id: claim.execution_id.clone(),
            run_id: run.id.clone(),
            tool: contract.name.clone(),
            tool_version: contract.version.clone(),
            side_effect: contract.side_effect,
            request_sha256,
            response_sha256: Some(crate::receipts::payload_sha256(output)?),
            status: output.get("status").and_then(Value::as_str).unwrap_or("succeeded").to_owned(),
            started_at,
            completed_at: self.clock.now().max(started_at),
            amount_minor,
            currency,
        })
    }

    /// Trace one LLM call of the run (an agent turn) as a `model_call`
    /// record: the pin, endpoint and attempts in `detail`, tokens, requests
    /// and cost in `cost`. The tokens count against `max_tokens`, so a
    /// talkative model ends the run like a token-hungry tool would.
    pub async fn record_model_call(&self, run: &mut Run, completion: &crate::llm::Completion) -> Result<()> {
        self.ensure_live(run)?;
        let tool = format!("llm:{}", completion.pin.model);
        let mut rec = self.record(run, RecordKind::ModelCall);
        rec.tool = Some(tool.clone());
        rec.cost = Cost {
            tokens: completion.usage.total(),
            provider_calls: u64::from(completion.attempts),
            micro_usd: completion.cost_micro_usd,
        };
        rec.detail = Some(completion.trace_detail());
        run.cost.add(rec.cost);
        self.write(run, rec).await?;
        if let Err(t) = run.bounds.add_tokens(completion.usage.total()) {
            return Err(self.end_on_bound(run, t, Some(tool)).await);
        }
        Ok(())
    }

    /// Trace a refusal decided outside [`Executor::call`] (an agent's
    /// proposal for a tool its step does not allow, a model reply that is
    /// not a proposal) and return the error, or the trace failure that
    /// ended the run.
    pub async fn record_rejection(&self, run: &mut Run, tool: &str, input: &Value, e: Error) -> Error {
        if let Err(dead) = self.ensure_live(run) {
            return dead;
        }
        self.reject(run, tool, input, None, e).await
    }

    /// End the run normally (or with the caller's reason).
    pub async fn finish(&self, run: &mut Run, termination: Termination) -> Result<()> {
        self.ensure_live(run)?;
        self.end(run, termination).await
    }

    /// [`Executor::finish`] whose `run_end` record the caller writes, in
    /// its own transaction (with the run's status: [`Store::end_run`]), or
    /// hands back with [`Executor::write_record`] if that fails.
    pub fn finish_record(&self, run: &mut Run, termination: Termination) -> Result<TraceRecord> {
        self.ensure_live(run)?;
        Ok(self.end_record(run, termination))
    }

    /// Write a record [`Executor::finish_record`] made, alone: failure ends
    /// the run as `trace_write_failed`, as any trace write's does.
    pub async fn write_record(&self, run: &mut Run, rec: TraceRecord) -> Result<()> {
        self.write(run, rec).await
    }

    fn ensure_live(&self, run: &Run) -> Result<()> {
        match run.ended {
            None => Ok(()),
            Some(t) => Err(Error::new(ErrorCode::RunTerminated, format!("run {} has ended ({t})", run.id))),
        }
    }

    fn record(&self, run: &mut Run, kind: RecordKind) -> TraceRecord {
        let seq = run.next_seq();
        self.record_at(run, kind, seq)
    }

    fn record_at(&self, run: &Run, kind: RecordKind, seq: u64) -> TraceRecord {
        TraceRecord::new(&run.ctx, &run.id, seq, kind, self.clock.now())
    }

    /// Redact a payload for the trace; scanner hits raise an alert record.
    fn redact(&self, value: &Value, rec: &mut TraceRecord) -> Value {
        let redacted = self.redaction.redact(value);
        if !redacted.detections.is_empty() {
            self.redaction_stats.lock().unwrap_or_else(|p| p.into_inner()).record(&redacted);
        }
        let alerts = redacted.alerts();
        if !alerts.is_empty() {
            self.counters.redaction_alert_total.fetch_add(alerts.len() as u64, Ordering::Relaxed);
            let detail = rec.detail.get_or_insert_with(|| serde_json::json!({}));
            if let Some(map) = detail.as_object_mut() {
                let list = map.entry("redaction_alerts").or_insert_with(|| Value::Array(Vec::new()));
                if let Some(items) = list.as_array_mut() {
                    items.extend(alerts.iter().filter_map(|a| serde_json::to_value(a).ok()));
                }
            }
        }
        redacted.value
    }

    /// Persist a record; failure ends the run (fail closed). A record whose
    /// payloads set off a scanner is followed by a `redaction_alert` record:
    /// the allowlist let something through that it should not have.
    async fn write(&self, run: &mut Run, rec: TraceRecord) -> Result<()> {
        self.append(run, &rec).await?;
        self.alert_after(run, &rec).await
    }

    /// The `redaction_alert` record that follows `rec` (persisted) when its
    /// payloads set off a scanner.
    async fn alert_after(&self, run: &mut Run, rec: &TraceRecord) -> Result<()> {
        let alerts = rec.detail.as_ref().and_then(|d| d.get("redaction_alerts")).cloned();
        if let Some(alerts) = alerts {
            tracing::warn!(
                target: "autobiz::security",
                run_id = %run.id, tool = rec.tool.as_deref().unwrap_or("-"), alerts = %alerts,
                "redaction scanner hit: review the trace allowlist"
            );
            let mut alert = self.record(run, RecordKind::RedactionAlert);
            alert.tool = rec.tool.clone();
            alert.detail = Some(serde_json::json!({ "redaction_alerts": alerts, "record_seq": rec.seq }));
            self.append(run, &alert).await?;
        }
        Ok(())
    }

    async fn append(&self, run: &mut Run, rec: &TraceRecord) -> Result<()> {
        match self.trace.append(&run.ctx, rec).await {
            Ok(()) => Ok(()),
            Err(e) => {
                Counters::bump(&self.counters.trace_write_failure_total);
                run.ended = Some(Termination::TraceWriteFailed);
                tracing::error!(run_id = %run.id, code = %e.code(), "trace write failed; run stopped");
                Err(Error::new(
                    ErrorCode::TraceWriteFailed,
                    format!("run {} stopped: its trace could not be written ({})", run.id, e.message()),
                ))
            }
        }
    }

    /// Trace a refused call and return its error (the run goes on).
    async fn reject(&self, run: &mut Run, tool: &str, input: &Value, decision: Option<Decision>, e: Error) -> Error {
        let mut rec = self.record(run, RecordKind::Rejection);
        rec.tool = Some(tool.to_owned());
        rec.input = Some(self.redact(input, &mut rec));
        rec.decision = decision;
        rec.error = Some(TracedError::from(&e));
        match self.write(run, rec).await {
            Ok(()) => e,
            Err(trace_error) => trace_error,
        }
    }

    /// End the run because a bound was hit; returns `BOUND_EXCEEDED`.
    async fn end_on_bound(&self, run: &mut Run, t: Termination, tool: Option<String>) -> Error {
        Counters::bump(&self.counters.bound_termination_total);
        let e = Error::new(ErrorCode::BoundExceeded, format!("run {} ended: {t} reached", run.id));
        let mut rec = self.record(run, RecordKind::Rejection);
        rec.tool = tool;
        rec.error = Some(TracedError::from(&e));
        if let Err(trace_error) = self.write(run, rec).await {
            return trace_error;
        }
        match self.end(run, t).await {
            Ok(()) => e,
            Err(trace_error) => trace_error,
        }
    }

    async fn end(&self, run: &mut Run, t: Termination) -> Result<()> {
        let rec = self.end_record(run, t);
        self.write(run, rec).await
    }

    fn end_record(&self, run: &mut Run, t: Termination) -> TraceRecord {
        let mut rec = self.record(run, RecordKind::RunEnd);
        rec.termination = Some(t);
        rec.cost = run.cost;
        rec.detail = serde_json::to_value(run.bounds.usage()).ok();
        run.ended = Some(t);
        rec
    }
}

/// Whether `rec`'s payloads set off the redaction scanner (an alert record
/// follows it).
fn has_alerts(rec: &TraceRecord) -> bool {
    rec.detail.as_ref().is_some_and(|d| d.get("redaction_alerts").is_some())
}

/// A SHA-256 fingerprint of a tool's arguments that is equal for equal JSON
/// values whatever their key order: object keys are fed sorted, every value
/// with a type tag and length prefix, so no two different values feed the
/// same bytes. Streaming (no canonical string is built), because it runs on
/// every call for loop detection; idempotency keys use full RFC 8785.
pub fn args_hash(input: &Value) -> [u8; 32] {
    fn feed(h: &mut Sha256, v: &Value) {
        match v {
            Value::Null => h.update([0u8]),
            Value::Bool(b) => h.update([1u8, u8::from(*b)]),
            Value::Number(n) => {
                // Integers and floats that are equal as JSON numbers feed the
                // same bytes (1 and 1.0), as RFC 8785 would print them.
                let text = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => i.to_string(),
                    (_, Some(u), _) => u.to_string(),
                    (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                    (_, _, Some(f)) => format!("{f:e}"),
                    _ => n.to_string(),
                };
                h.update([2u8]);
                h.update((text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            Value::String(s) => {
                h.update([3u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Array(items) => {
                h.update([4u8]);
                h.update((items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| feed(h, item));
            }
            Value::Object(map) => {
                h.update([5u8]);
                h.update((map.len() as u64).to_le_bytes());
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                for k in keys {
                    h.update((k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    feed(h, &map[k]);
                }
            }
        }
    }
    let mut h = Sha256::new();
    feed(&mut h, input);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::args_hash;

    #[test]
    fn p1_t08_argument_fingerprints_ignore_key_order_and_see_every_difference() {
        assert_eq!(args_hash(&json!({"a": 1, "b": [true, null]})), args_hash(&json!({"b": [true, null], "a": 1})));
        assert_eq!(args_hash(&json!({"n": 1})), args_hash(&json!({"n": 1.0})));
        let distinct = [
            json!(null),
            json!(false),
            json!(true),
            json!(0),
            json!(1),
            json!("1"),
            json!([]),
            json!({}),
            json!([[]]),
            json!(["a", "b"]),
            json!(["ab"]),
            json!({"a": "b"}),
            json!({"ab": ""}),
            json!({"a": {"b": 1}}),
            json!(1.5),
        ];
        for (i, a) in distinct.iter().enumerate() {
            for b in &distinct[i + 1..] {
                assert_ne!(args_hash(a), args_hash(b), "{a} vs {b}");
            }
        }
    }
}
