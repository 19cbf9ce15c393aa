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
use crate::clock::Clock;
use crate::contract::{SideEffect, ToolContract, ToolRegistry};
use crate::error::{Error, ErrorCode, Result};
use crate::permission::{Decision, EXECUTE, PermissionEnforcer};
use crate::redaction::{RedactionPolicy, RedactionStats};
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

    /// Provide the implementation of a registered tool.
    pub fn bind(&mut self, name: &str, version: &str, tool: Arc<dyn Tool>) -> Result<()> {
        self.registry.lookup(name, version)?;
        self.tools.entry(name.to_owned()).or_default().insert(version.to_owned(), tool);
        Ok(())
    }

    pub fn registry(&self) -> &ToolRegistry {
        &self.registry
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
        self.execute(run, contract, input, decision, state_key).await
    }

    async fn execute(
        &self,
        run: &mut Run,
        contract: &ToolContract,
        input: Value,
        decision: Decision,
        state_key: Option<&str>,
    ) -> Result<Value> {
        let Some(tool) = self.tools.get(&contract.name).and_then(|v| v.get(&contract.version)).cloned() else {
            let e = Error::new(
                ErrorCode::ToolUnknown,
                format!("tool {} is declared but has no implementation", contract.id()),
            );
            return Err(self.reject(run, &contract.id(), &input, Some(decision), e).await);
        };
        let seq = run.next_seq();
        let call = CallContext { ctx: run.ctx.clone(), run_id: run.id.clone(), seq, tool: contract.id() };
        if contract.side_effect == SideEffect::Financial {
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
        Counters::bump(&self.counters.tool_invocation_total);
        let mut rec = self.record_at(run, RecordKind::ToolCall, seq);
        rec.tool = Some(contract.id());
        rec.input = Some(self.redact(&input, &mut rec));
        rec.decision = Some(decision);
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
        let output = self.redact(&out.value, &mut rec);
        if let Some(key) = state_key.filter(|_| output_error.is_none()) {
            let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            rec.state_diff = Some(serde_json::json!([{ "op": "add", "path": pointer, "value": output }]));
        }
        rec.output = Some(output);
        if let Some(e) = &output_error {
            rec.error = Some(TracedError::from(e));
        }
        self.write(run, rec).await?;
        if let Some(e) = output_error {
            return Err(e);
        }
        if let Err(t) = run.bounds.add_tokens(out.tokens) {
            return Err(self.end_on_bound(run, t, Some(contract.id())).await);
        }
        Ok(out.value)
    }

    /// End the run normally (or with the caller's reason).
    pub async fn finish(&self, run: &mut Run, termination: Termination) -> Result<()> {
        self.ensure_live(run)?;
        self.end(run, termination).await
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
        let alerts = rec.detail.as_ref().and_then(|d| d.get("redaction_alerts")).cloned();
        self.append(run, &rec).await?;
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
        let mut rec = self.record(run, RecordKind::RunEnd);
        rec.termination = Some(t);
        rec.cost = run.cost;
        rec.detail = serde_json::to_value(run.bounds.usage()).ok();
        run.ended = Some(t);
        self.write(run, rec).await
    }
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
