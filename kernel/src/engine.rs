//! The live driver of a workflow run: [`RunState`] decides, the
//! [`Executor`] acts, the transcript records.
//!
//! For each step the engine asks the run what to do ([`RunState::next`]),
//! asks the approval policy whether the call may go ahead (pausing the run
//! when a human must decide), reads the clock, sends the call through the
//! executor (validation, permission, bounds, timeout, trace), and feeds the
//! outcome back to the run. Every reading, request, response and state change
//! is written to the transcript first-hand, in the order it happened, so that
//! [`crate::replay`] can re-execute the run and check it.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::bounds::{Bounds, Termination};
use crate::contract::{SideEffect, ToolContract};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallOptions, Called, Executor, Held, Run};
use crate::llm::agent::{Dialogue, Turn, llm_failed, reply_invalid};
use crate::llm::{AgentStep, LlmClient};
use crate::run::{Command, Patch, RunState, RunStatus, StepCall, StepOutcome, receipt_digest, step_key};
use crate::store::{NewRun, Store};
use crate::tenant::EntityId;
use crate::tenant::TenantContext;
use crate::trace::{Cost, TracedError};
use crate::transcript::{Entry, ReceiptDigest, TranscriptWriter};
use crate::workflow::{AgentSpec, Workflow, termination_for};

/// What the approval policy says of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No rule asks for a human here.
    NotRequired,
    Approved {
        request_id: String,
        approver: String,
    },
    /// A request is open (created now or earlier); the run waits.
    Pending {
        request_id: String,
    },
    Denied {
        request_id: String,
        approver: String,
    },
    /// Nobody decided in time. `proceed` only where the rule says so and the
    /// tool moves no money.
    Expired {
        request_id: String,
        proceed: bool,
    },
}

/// Decides whether a call needs a human and what the human said (INV-07).
#[async_trait::async_trait]
pub trait ApprovalPolicy: Send + Sync {
    async fn check(
        &self,
        ctx: &TenantContext,
        run_id: &str,
        call: &StepCall,
        contract: &ToolContract,
    ) -> Result<Verdict>;
}

/// Everything one run needs besides the engine.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    pub workflow: &'a Workflow,
    pub ctx: TenantContext,
    pub run_id: String,
    pub bounds: Bounds,
    pub event: Value,
    /// Model and prompt pins, recorded in the trace and transcript.
    pub pins: Value,
    pub config_hash: String,
}

/// How a run ended, or where it paused.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    pub termination: Option<Termination>,
    pub error: Option<String>,
    pub path: Vec<String>,
    pub outputs: std::collections::BTreeMap<String, Value>,
    pub cost: Cost,
    pub state_sha256: String,
    pub receipts: Vec<ReceiptDigest>,
    /// The approval request the run waits for, when paused.
    pub waiting_for: Option<String>,
}

/// Drives runs through an executor.
pub struct Engine<'a> {
    exec: &'a Executor,
    approvals: Option<&'a dyn ApprovalPolicy>,
    store: Option<&'a Store>,
    transcript_path: Option<String>,
    /// The client agent steps decide with (pinned to their model and prompt).
    llm: Option<&'a LlmClient>,
    /// Each durable run's state as last stored, by run id: (version, state).
    /// The next patch applies to it in memory, so a step writes its version
    /// without reading the last one back (versions never change once
    /// written, and the insert re-checks that it is still the latest).
    bases: std::sync::Mutex<HashMap<String, (i64, Value)>>,
}

impl<'a> Engine<'a> {
    pub fn new(exec: &'a Executor) -> Self {
        Engine { exec, approvals: None, store: None, transcript_path: None, llm: None, bases: Default::default() }
    }

    /// Run agent steps with `llm`: its pin must be each agent step's model
    /// and prompt (`AGENT_PIN_MISMATCH`); without one an agent step fails
    /// with `AGENT_LLM_MISSING`.
    pub fn with_llm(mut self, llm: Option<&'a LlmClient>) -> Self {
        self.llm = llm;
        self
    }

    /// The client for `agent`'s step, or the typed refusal (traced).
    async fn agent_llm(&self, run: &mut Run, agent: &AgentSpec, call: &StepCall) -> Result<&'a LlmClient> {
        let refused = match self.llm {
            None => Error::new(
                ErrorCode::AgentLlmMissing,
                format!(
                    "agent step {} needs an LLM client (autobiz run: AUTOBIZ_LLM_URL; in code: Workflow::run_with_llm, Engine::with_llm)",
                    call.step
                ),
            ),
            Some(llm)
                if llm.pin().model != agent.model || llm.pin().prompt_template_sha256 != agent.prompt.sha256() =>
            {
                Error::new(
                    ErrorCode::AgentPinMismatch,
                    format!(
                        "agent step {} is pinned to model {} with prompt sha256 {}, but the LLM client to model {} with prompt sha256 {}",
                        call.step,
                        agent.model,
                        agent.prompt.sha256(),
                        llm.pin().model,
                        llm.pin().prompt_template_sha256
                    ),
                )
            }
            Some(llm) => return Ok(llm),
        };
        Err(self.exec.record_rejection(run, &format!("agent:{}", call.step), &call.input, refused).await)
    }

    /// Keep runs in `store`: registered, their state versioned step by step,
    /// resumable. `transcript_path` is recorded with the run so a resume
    /// finds the file to append to.
    pub fn with_store(mut self, store: &'a Store, transcript_path: Option<String>) -> Self {
        self.store = Some(store);
        self.transcript_path = transcript_path;
        self
    }

    /// Ask `policy` before every call; without one, FINANCIAL calls go to
    /// the executor's own gate (refused when it has none).
    pub fn with_approvals(mut self, policy: &'a dyn ApprovalPolicy) -> Self {
        self.approvals = Some(policy);
        self
    }

    /// Run `spec` from its first step to its end (or a pause), recording the
    /// history in `transcript`. With a store, the run is registered and every
    /// state change is persisted as a versioned patch before the next step,
    /// so [`Engine::resume`] can pick it up after a crash.
    pub async fn run(&self, spec: &RunSpec<'_>, transcript: &mut TranscriptWriter) -> Result<RunReport> {
        spec.workflow.validate()?;
        let state = RunState::new(spec.workflow, &spec.run_id, spec.event.clone());
        let run = match self.store {
            // Registration, initial state and run_start record in one
            // transaction (the trace in the same store), then the
            // transcript's first line: a crash between leaves a registered
            // run with an empty transcript, which resume starts.
            Some(store) if self.folds() => {
                let (run, rec) = self.exec.start_record(&spec.ctx, &spec.run_id, spec.bounds, spec.pins.clone());
                let patch = parse_patch(&Patch::initial(state.to_value()))?;
                let initial = crate::state::apply(&crate::state::initial_state(), &patch)?;
                store
                    .start_run(&spec.ctx, &new_run(spec, self), &run_entity(spec)?, &initial, &patch, Some(&rec))
                    .await?;
                self.keep_base(&spec.run_id, 1, initial);
                transcript.write(run_start(spec))?;
                run
            }
            store => {
                if let Some(store) = store {
                    store.create_run(&spec.ctx, &new_run(spec, self)).await?;
                    let initial = Patch::initial(state.to_value());
                    self.persist(spec, 0, &initial).await?;
                }
                transcript.write(run_start(spec))?;
                self.exec.start(&spec.ctx, &spec.run_id, spec.bounds, spec.pins.clone()).await?
            }
        };
        // Version 1 is the initial state, stored (durable runs) before the
        // first step; each transition makes the next version.
        let version = 1;
        let report = self.drive(spec, run, state, version, Vec::new(), AgentMemo::default(), transcript).await;
        self.forget_base(&spec.run_id);
        report
    }

    /// Pick up a run this engine's store knows, from its last committed
    /// state: after a crash (a step whose effect was made but not committed
    /// replays its stored result; one whose effect may be in flight runs again
    /// under the same idempotency key) or once its approval is decided.
    /// `history` is what the transcript holds so far (for the receipts made
    /// before the restart); `transcript` appends to it.
    pub async fn resume(
        &self,
        spec: &RunSpec<'_>,
        history: &[Entry],
        transcript: &mut TranscriptWriter,
    ) -> Result<RunReport> {
        let Some(store) = self.store else {
            return Err(Error::new(ErrorCode::InvalidInput, "only a run kept in a store can be resumed"));
        };
        spec.workflow.validate()?;
        let entity = run_entity(spec)?;
        let Some(record) = store.run_record(&spec.ctx, &spec.run_id).await? else {
            return Err(Error::new(ErrorCode::RunNotFound, format!("no run {} in this store", spec.run_id)));
        };
        let (state, version) = match store.state(&spec.ctx, &entity).await? {
            Some(saved) => {
                let state: RunState = serde_json::from_value(saved.state.clone()).map_err(|e| {
                    Error::new(ErrorCode::StoreCorrupt, format!("the state of run {} does not parse: {e}", spec.run_id))
                })?;
                self.keep_base(&spec.run_id, saved.version, saved.state);
                (state, saved.version)
            }
            None => {
                // Registered, then killed before its first state: start it.
                let state = RunState::new(spec.workflow, &spec.run_id, spec.event.clone());
                let initial = Patch::initial(state.to_value());
                self.persist(spec, 0, &initial).await?;
                (state, 1)
            }
        };
        let finished = history.iter().any(|e| matches!(e, Entry::RunEnd { .. }));
        if state.status.is_terminal() && finished {
            self.forget_base(&spec.run_id);
            if record.status != state.status.as_str() {
                // The process died after the transcript's run_end, before
                // the run's end was stored (run_end record and status, one
                // transaction): store it now.
                let last_seq = store.last_trace_seq(&spec.ctx, &spec.run_id).await?;
                let steps = u32::try_from(state.path.len()).unwrap_or(u32::MAX);
                let mut run = self.exec.resume(&spec.ctx, &spec.run_id, spec.bounds, last_seq, steps).await?;
                let t = state.termination.unwrap_or(Termination::Completed);
                let end = if self.folds() {
                    self.exec.finish_record(&mut run, t).ok()
                } else {
                    let _ = self.exec.finish(&mut run, t).await;
                    None
                };
                self.store_end(spec, store, &mut run, &state, None, end).await?;
            }
            return self.report(spec, &state, state.hash()?, crate::trace::Cost::default(), Vec::new(), None);
        }
        // A terminal state without its run_end (the process died while
        // ending the run) goes through `drive`, which only ends it.
        let last_seq = store.last_trace_seq(&spec.ctx, &spec.run_id).await?;
        let steps = u32::try_from(state.path.len()).unwrap_or(u32::MAX);
        let run = self.exec.resume(&spec.ctx, &spec.run_id, spec.bounds, last_seq, steps).await?;
        if history.is_empty() {
            // The process died before its first transcript line.
            transcript.write(run_start(spec))?;
        }
        let receipts = crate::replay::receipts_at(history, spec.workflow, self.exec.registry(), version)?;
        transcript.write(Entry::Resumed { state_version: version })?;
        let memo = AgentMemo::from_history(history);
        let report = self.drive(spec, run, state, version, receipts, memo, transcript).await;
        self.forget_base(&spec.run_id);
        report
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        spec: &RunSpec<'_>,
        mut run: Run,
        mut state: RunState,
        mut version: i64,
        mut receipts: Vec<ReceiptDigest>,
        memo: AgentMemo,
        transcript: &mut TranscriptWriter,
    ) -> Result<RunReport> {
        let mut waiting_for = None;
        loop {
            let call = match state.next(spec.workflow) {
                Ok(Command::Done) => break,
                Ok(Command::Call(c)) => c,
                Err(e) => {
                    let t = termination_for(e.code());
                    let error = format!("{}: {}", e.code(), e.message());
                    let step = state.cursor.clone();
                    transcript.write(Entry::RunStopped { termination: t, error: error.clone(), step: step.clone() })?;
                    self.commit(spec, transcript, &mut version, state.stop(step.as_deref(), t, &error)?).await?;
                    break;
                }
            };
            // The step is the state's cursor: found by its index hint, not
            // by a search through the workflow's steps (O(n²) over a run).
            let agent = state.cursor_step(spec.workflow, &call.step).ok().and_then(|(_, s)| s.agent.as_ref());
            let mut d = Driving { spec, run: &mut run, state: &mut state, version: &mut version, transcript };
            let (result, replayed, effect, key, ended_ok, held) = if let Some(agent) = agent {
                match self.agent_step(&mut d, &memo, &mut receipts, agent, &call).await? {
                    StepEnd::Done(result) => (result, false, false, None, "the run ended during the agent step", None),
                    StepEnd::Waiting(id) => {
                        waiting_for = Some(id);
                        break;
                    }
                    // A denial or expiry ended the run, or started its compensations.
                    StepEnd::Stopped if d.state.status.is_terminal() => break,
                    StepEnd::Stopped => continue,
                }
            } else {
                let contract = self.exec.registry().lookup(&call.tool, &call.version).ok();
                let approved = match self.gate(&mut d, &call, contract).await? {
                    Gate::Go { approved } => approved,
                    Gate::Waiting(id) => {
                        waiting_for = Some(id);
                        break;
                    }
                    Gate::Stopped if d.state.status.is_terminal() => break,
                    Gate::Stopped => continue,
                };
                if !self.begin_step(&mut d).await? {
                    break;
                }
                let side_effect = contract.map(|c| c.side_effect).unwrap_or(SideEffect::Read);
                let key = match side_effect {
                    SideEffect::Read => None,
                    _ => Some(step_key(spec.ctx.tenant(), spec.workflow, &call)?),
                };
                let external = key.as_ref().map(|k| k.key.external());
                d.transcript.write(call.request_entry(external, self.exec.clock().now()))?;
                // With the trace in the run's store, the call's record (and
                // a side effect's result and receipt) stay uncommitted, to
                // commit with the step's state version: one commit a step.
                let opts =
                    CallOptions { state_key: Some(&call.step), approved, idempotency: key.as_ref().map(|k| &k.key) };
                let input = call.input.clone();
                let (called, held) = if self.folds() {
                    self.exec.call_held(d.run, &call.tool, &call.version, input, opts).await
                } else {
                    (self.exec.call_with(d.run, &call.tool, &call.version, input, opts).await, None)
                };
                let (replayed, effect) = effect_of(&called, side_effect);
                (called.map(|c| c.value), replayed, effect, key, "the run ended during the call", held)
            };
            // The transition and the transcript's response line, in memory
            // and the file; nothing here may drop `held` uncommitted.
            let recorded = (|| -> Result<Patch> {
                let at = self.exec.clock().now();
                let outcome = StepOutcome::from_result(&result);
                let ended = ended_by(&run, &result);
                let patch = transition(spec.workflow, &mut state, &call, &outcome, ended, ended_ok)?;
                // The response line carries the transition (without the
                // output it already holds); the store gets the whole patch.
                transcript.write(Entry::ToolResponse {
                    step: call.step.clone(),
                    visit: call.visit,
                    outcome: outcome.clone(),
                    at,
                    replayed,
                    effect,
                    ended,
                    version: version + 1,
                    patch: patch.clone(),
                })?;
                if let (true, Ok(output), Some(key)) = (effect, &result, &key) {
                    receipts.push(receipt_digest(&call, key, output)?);
                }
                Ok(match (&outcome, ended) {
                    (StepOutcome::Ok { output }, None) => patch.with_output(&call.step, output),
                    _ => patch,
                })
            })();
            match (recorded, held) {
                (Ok(stored), Some(held)) => self.persist_held(spec, &mut run, version, &stored, held).await?,
                (Ok(stored), None) => self.persist(spec, version, &stored).await?,
                (Err(e), held) => {
                    // The call's own writes stand (a receipt is never lost).
                    if let Some(held) = held {
                        self.exec.settle(&mut run, held).await?;
                    }
                    return Err(e);
                }
            }
            version += 1;
        }
        // The run_end record: with the trace in the run's store, written
        // with the run's status after the transcript's run_end (one
        // transaction; a crash between is finished by resume); else first,
        // as before.
        let mut end = None;
        if state.status.is_terminal() && run.termination().is_none() {
            let t = state.termination.unwrap_or(Termination::Completed);
            // If even the run-end trace record cannot be written the run is
            // already ended as trace_write_failed; the state keeps its reason.
            if self.folds() {
                end = self.exec.finish_record(&mut run, t).ok();
            } else {
                let _ = self.exec.finish(&mut run, t).await;
            }
        }
        let state_sha256 = state.hash()?;
        if state.status.is_terminal() {
            transcript.write(Entry::RunEnd {
                status: state.status,
                termination: state.termination.unwrap_or(Termination::Completed),
                state_sha256: state_sha256.clone(),
                receipts: receipts.clone(),
            })?;
        }
        if let Some(store) = self.store {
            self.store_end(spec, store, &mut run, &state, waiting_for.as_deref(), end).await?;
        }
        self.report(spec, &state, state_sha256, run.cost(), receipts, waiting_for)
    }

    /// Store where the run is (status, the approval it waits for, how it
    /// ended) and, when it ended here, its run_end record `end`, in one
    /// transaction; if that fails, the record alone and then the status.
    async fn store_end(
        &self,
        spec: &RunSpec<'_>,
        store: &Store,
        run: &mut Run,
        state: &RunState,
        waiting_for: Option<&str>,
        end: Option<crate::trace::TraceRecord>,
    ) -> Result<()> {
        let termination = state.termination.map(|t| t.as_str());
        let together = store.end_run(&spec.ctx, &spec.run_id, state.status, waiting_for, termination, end.as_ref());
        match (together.await, end) {
            (Ok(()), _) => Ok(()),
            (Err(e), None) => Err(e),
            (Err(_), Some(rec)) => {
                let _ = self.exec.write_record(run, rec).await;
                store.set_run_status(&spec.ctx, &spec.run_id, state.status, waiting_for, termination).await
            }
        }
    }

    /// Whether a step's writes and its state version can commit together:
    /// the run is kept in a store and its trace goes to the same database.
    fn folds(&self) -> bool {
        match (self.store, self.exec.trace_store()) {
            (Some(store), Some(trace)) => store.same_pool(trace),
            _ => false,
        }
    }

    /// Ask the approval policy about `call` (a declared step's, or an agent
    /// proposal's). Records the request or the decision; a pending request
    /// pauses the run, a denial or expiry ends it.
    async fn gate(&self, d: &mut Driving<'_, '_>, call: &StepCall, contract: Option<&ToolContract>) -> Result<Gate> {
        let (Some(policy), Some(contract)) = (self.approvals, contract) else {
            return Ok(Gate::Go { approved: false });
        };
        Ok(match policy.check(&d.spec.ctx, &d.spec.run_id, call, contract).await? {
            Verdict::NotRequired | Verdict::Expired { proceed: true, .. } => Gate::Go { approved: true },
            Verdict::Approved { request_id, approver } => {
                if d.state.status == RunStatus::WaitingApproval {
                    d.transcript.write(Entry::HitlDecision {
                        request_id,
                        step: call.step_key(),
                        decision: "approved".into(),
                        approver: Some(approver),
                    })?;
                    let patch = d.state.approved()?;
                    self.commit(d.spec, d.transcript, d.version, patch).await?;
                }
                Gate::Go { approved: true }
            }
            Verdict::Pending { request_id } => {
                if d.state.status != RunStatus::WaitingApproval {
                    d.transcript.write(Entry::HitlRequested {
                        request_id: request_id.clone(),
                        step: call.step_key(),
                        visit: call.visit,
                    })?;
                    let patch = d.state.wait_for_approval()?;
                    self.commit(d.spec, d.transcript, d.version, patch).await?;
                }
                Gate::Waiting(request_id)
            }
            Verdict::Denied { request_id, approver } => {
                self.decided(d.spec, d.transcript, d.state, d.version, call, request_id, "denied", Some(approver))
                    .await?;
                Gate::Stopped
            }
            Verdict::Expired { request_id, proceed: false } => {
                self.decided(d.spec, d.transcript, d.state, d.version, call, request_id, "expired", None).await?;
                Gate::Stopped
            }
        })
    }

    /// Begin a step of the run (a declared step, or an agent's turn);
    /// `false` when a bound ran out, which stops the run (recorded).
    async fn begin_step(&self, d: &mut Driving<'_, '_>) -> Result<bool> {
        let Err(e) = self.exec.begin_step(d.run).await else { return Ok(true) };
        let t = d.run.termination().unwrap_or_else(|| termination_for(e.code()));
        let error = format!("{}: {}", e.code(), e.message());
        d.transcript.write(Entry::RunStopped { termination: t, error: error.clone(), step: None })?;
        let patch = d.state.stop(None, t, &error)?;
        self.commit(d.spec, d.transcript, d.version, patch).await?;
        Ok(false)
    }

    /// Run one agent step durably: the model proposes, the executor decides,
    /// the transcript records every turn (`model_turn`), proposal
    /// (`agent_call`) and answer (`agent_result`). A turn or an answer the
    /// transcript already holds for this step and visit (`memo`: a resumed
    /// run) is reused, never asked for again; a side-effect proposal carries
    /// its own idempotency key, so a crash between the call and its
    /// recording replays the provider's stored result. A proposal that
    /// needs a human pauses the run like a declared step.
    async fn agent_step(
        &self,
        d: &mut Driving<'_, '_>,
        memo: &AgentMemo,
        receipts: &mut Vec<ReceiptDigest>,
        agent: &AgentSpec,
        call: &StepCall,
    ) -> Result<StepEnd> {
        let step = AgentStep::new(&call.step, agent.tools.clone()).with_max_turns(agent.max_turns);
        d.transcript.write(call.request_entry(None, self.exec.clock().now()))?;
        let llm = match self.agent_llm(d.run, agent, call).await {
            Ok(llm) => llm,
            Err(e) => return Ok(StepEnd::Done(Err(e))),
        };
        let model_tool = format!("llm:{}", llm.pin().model);
        let mut dialogue = Dialogue::new(&step, self.exec, &agent.prompt, &call.input, &call.input);
        loop {
            if let Err(e) = dialogue.check_turns(&step) {
                return Ok(StepEnd::Done(Err(self.exec.record_rejection(d.run, &model_tool, &json!({}), e).await)));
            }
            let turn = dialogue.outcome.turns;
            if !self.begin_step(d).await? {
                return Ok(StepEnd::Stopped);
            }
            let at = (call.step.clone(), call.visit, turn);
            let request_sha256 = dialogue.request_sha256();
            let content = match memo.turns.get(&at) {
                Some(content) => content.clone(),
                None => {
                    let completion = match llm.complete(d.run.context(), dialogue.messages()).await {
                        Ok(c) => c,
                        Err(e) => return Ok(StepEnd::Done(Err(llm_failed(self.exec, d.run, &model_tool, e).await))),
                    };
                    // Recorded before it is acted on: a resumed run reuses it.
                    d.transcript.write(Entry::ModelTurn {
                        step: call.step.clone(),
                        visit: call.visit,
                        turn,
                        request_sha256,
                        model: completion.pin.model.clone(),
                        prompt_template_sha256: completion.pin.prompt_template_sha256.clone(),
                        content: completion.content.clone(),
                        prompt_tokens: completion.usage.prompt_tokens,
                        completion_tokens: completion.usage.completion_tokens,
                        cost_micro_usd: completion.cost_micro_usd,
                        at: self.exec.clock().now(),
                    })?;
                    if let Err(e) = self.exec.record_model_call(d.run, &completion).await {
                        return Ok(StepEnd::Done(Err(e)));
                    }
                    completion.content
                }
            };
            let (allowed, input) = match dialogue.reply(&step, &content) {
                Turn::Final => return Ok(StepEnd::Done(Ok(dialogue.output()))),
                Turn::Call(allowed, input) => (allowed, input),
                Turn::Invalid(e) => {
                    return Ok(StepEnd::Done(Err(reply_invalid(self.exec, d.run, &model_tool, e).await)));
                }
                Turn::NotAllowed(tool, input, e) => {
                    let e = self.exec.record_rejection(d.run, &tool, &input, e).await;
                    if d.run.termination().is_some() {
                        return Ok(StepEnd::Done(Err(e)));
                    }
                    dialogue.refused(&TracedError::from(&e));
                    continue;
                }
            };
            // The proposal as a call of its own: `classify.turn2`, with its
            // approval request and idempotency key.
            let sub = call.proposal(turn, &allowed.name, &allowed.version, &input);
            let contract = self.exec.registry().lookup(&sub.tool, &sub.version).ok();
            let side_effect = contract.map(|c| c.side_effect).unwrap_or(SideEffect::Read);
            let key = match side_effect {
                SideEffect::Read => None,
                _ => Some(step_key(d.spec.ctx.tenant(), d.spec.workflow, &sub)?),
            };
            let (outcome, effect) = match memo.results.get(&at) {
                Some(recorded) => recorded.clone(),
                None => {
                    let approved = match self.gate(d, &sub, contract).await? {
                        Gate::Go { approved } => approved,
                        Gate::Waiting(id) => return Ok(StepEnd::Waiting(id)),
                        Gate::Stopped => return Ok(StepEnd::Stopped),
                    };
                    d.transcript.write(Entry::AgentCall {
                        step: call.step.clone(),
                        visit: call.visit,
                        turn,
                        tool: sub.tool.clone(),
                        version: sub.version.clone(),
                        input: input.clone(),
                        idempotency_key: key.as_ref().map(|k| k.key.external().to_owned()),
                        at: self.exec.clock().now(),
                    })?;
                    let opts = CallOptions { state_key: None, approved, idempotency: key.as_ref().map(|k| &k.key) };
                    let called = self.exec.call_with(d.run, &sub.tool, &sub.version, input.clone(), opts).await;
                    let (replayed, effect) = effect_of(&called, side_effect);
                    let outcome = match called {
                        Ok(c) => StepOutcome::Ok { output: c.value },
                        Err(e) if d.run.termination().is_some() => return Ok(StepEnd::Done(Err(e))),
                        // What the model is told, and what replay tells it.
                        Err(e) => {
                            let traced = TracedError::from(&e);
                            StepOutcome::Err { code: traced.code, message: traced.message }
                        }
                    };
                    d.transcript.write(Entry::AgentResult {
                        step: call.step.clone(),
                        visit: call.visit,
                        turn,
                        outcome: outcome.clone(),
                        at: self.exec.clock().now(),
                        replayed,
                        effect,
                    })?;
                    (outcome, effect)
                }
            };
            match outcome {
                StepOutcome::Ok { output } => {
                    if let (true, Some(key)) = (effect, &key) {
                        receipts.push(receipt_digest(&sub, key, &output)?);
                    }
                    dialogue.executed(allowed, input, output);
                }
                StepOutcome::Err { code, message } => dialogue.refused(&TracedError { code, message }),
            }
        }
    }

    fn report(
        &self,
        spec: &RunSpec<'_>,
        state: &RunState,
        state_sha256: String,
        cost: crate::trace::Cost,
        receipts: Vec<ReceiptDigest>,
        waiting_for: Option<String>,
    ) -> Result<RunReport> {
        Ok(RunReport {
            run_id: spec.run_id.clone(),
            workflow: spec.workflow.id.clone(),
            status: state.status,
            termination: state.termination,
            error: state.error.clone(),
            path: state.path.clone(),
            outputs: state.outputs.clone(),
            cost,
            state_sha256,
            receipts,
            waiting_for,
        })
    }

    /// Record a state change: in the transcript, and (durable runs) as the
    /// next version of the run's state. A version another process wrote
    /// first is `STATE_CONFLICT`: two processes never drive one run.
    async fn commit(
        &self,
        spec: &RunSpec<'_>,
        transcript: &mut TranscriptWriter,
        version: &mut i64,
        patch: Patch,
    ) -> Result<()> {
        // The transcript first: a crash between the two leaves the
        // transcript one version ahead, which resume and replay roll back
        // (`Resumed { state_version }`); never the store ahead of it.
        transcript.write(Entry::StatePatch { version: *version + 1, patch: patch.clone() })?;
        self.persist(spec, *version, &patch).await?;
        *version += 1;
        Ok(())
    }

    /// Store `patch` as the version after `version` (durable runs only).
    async fn persist(&self, spec: &RunSpec<'_>, version: i64, patch: &Patch) -> Result<()> {
        let Some(store) = self.store else { return Ok(()) };
        let parsed = parse_patch(patch)?;
        let entity = run_entity(spec)?;
        let stored = match self.next_state(&spec.run_id, version, &parsed)? {
            Some(next) => store.put_state(&spec.ctx, &entity, version, next, &parsed).await?,
            // Not held here (a resumed run's first write after its read
            // failed): read, apply, write.
            None => store.apply_patch(&spec.ctx, &entity, version, &parsed).await?,
        };
        self.keep_base(&spec.run_id, stored.version, stored.state);
        Ok(())
    }

    /// [`Engine::persist`] in the transaction `held` of the step's call
    /// (its trace record, a side effect's result and receipt): one commit.
    /// A version another process wrote first is `STATE_CONFLICT`, and the
    /// call's writes commit all the same: a side effect that happened keeps
    /// its receipt. If the transaction fails, the call's writes are made
    /// apart ([`Executor::redo`]) and the state is written after them. On
    /// SQLite the transaction is batched (`store/batch.rs`): a version
    /// taken first fails its commit, and the same redo reports the conflict.
    async fn persist_held(
        &self,
        spec: &RunSpec<'_>,
        run: &mut Run,
        version: i64,
        patch: &Patch,
        mut held: Held,
    ) -> Result<()> {
        let prepared = (|| -> Result<_> {
            let store = self.store.ok_or_else(|| Error::new(ErrorCode::InvalidInput, "no store"))?;
            let parsed = parse_patch(patch)?;
            let next = self.next_state(&spec.run_id, version, &parsed)?;
            Ok((store, parsed, run_entity(spec)?, next))
        })();
        let (store, parsed, entity, next) = match prepared {
            Ok((store, parsed, entity, Some(next))) => (store, parsed, entity, next),
            _ => {
                self.exec.settle(run, held).await?;
                return self.persist(spec, version, patch).await;
            }
        };
        match store.put_state_in(held.tx(), &spec.ctx, &entity, version, &next, &parsed).await {
            Ok(true) => {
                if self.exec.settle(run, held).await? {
                    self.keep_base(&spec.run_id, version + 1, next);
                    Ok(())
                } else {
                    // The call's writes were made apart; the state alone.
                    self.persist(spec, version, patch).await
                }
            }
            Ok(false) => {
                self.exec.settle(run, held).await?;
                Err(Error::new(
                    ErrorCode::StateConflict,
                    format!(
                        "state of {entity} moved past version {version}: another process drives run {}",
                        spec.run_id
                    ),
                ))
            }
            Err(_) => {
                self.exec.redo(run, held).await?;
                self.persist(spec, version, patch).await
            }
        }
    }

    /// What `patch` makes of the run's state at `version` as this engine
    /// last stored (or read) it; `None` when it does not hold that version.
    /// The held state is taken out: a failed write leaves none, and the
    /// next write reads.
    fn next_state(&self, run_id: &str, version: i64, patch: &json_patch::Patch) -> Result<Option<Value>> {
        let mut base = if version == 0 {
            crate::state::initial_state()
        } else {
            let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
            match bases.remove(run_id) {
                Some((v, state)) if v == version => state,
                _ => return Ok(None),
            }
        };
        json_patch::patch(&mut base, patch)
            .map_err(|e| Error::new(ErrorCode::StatePatchInvalid, format!("the state patch does not apply: {e}")))?;
        Ok(Some(base))
    }

    fn keep_base(&self, run_id: &str, version: i64, state: Value) {
        self.bases.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.to_owned(), (version, state));
    }

    fn forget_base(&self, run_id: &str) {
        self.bases.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
    }

    #[allow(clippy::too_many_arguments)]
    async fn decided(
        &self,
        spec: &RunSpec<'_>,
        transcript: &mut TranscriptWriter,
        state: &mut RunState,
        version: &mut i64,
        call: &StepCall,
        request_id: String,
        decision: &str,
        approver: Option<String>,
    ) -> Result<()> {
        transcript.write(Entry::HitlDecision {
            request_id,
            step: call.step_key(),
            decision: decision.to_owned(),
            approver,
        })?;
        let t = if decision == "denied" { Termination::HitlDenied } else { Termination::HitlTimeout };
        // The run ends, or first compensates what it did (RunState decides).
        let patch = state.end_on_decision(spec.workflow, t)?;
        self.commit(spec, transcript, version, patch).await
    }
}

/// The state a step is driven in: the run and its state, version and
/// transcript.
struct Driving<'s, 'r> {
    spec: &'s RunSpec<'r>,
    run: &'s mut Run,
    state: &'s mut RunState,
    version: &'s mut i64,
    transcript: &'s mut TranscriptWriter,
}

/// What the approval policy let a call do.
enum Gate {
    Go {
        approved: bool,
    },
    /// A request is open: the run pauses.
    Waiting(String),
    /// A human decision (or a bound) ended the run; recorded.
    Stopped,
}

/// How an agent step came out.
enum StepEnd {
    Done(Result<Value>),
    Waiting(String),
    Stopped,
}

/// What a resumed run's transcript already holds of its agent steps, by
/// (step, visit, turn): the model's replies and the executor's answers.
#[derive(Debug, Default)]
pub(crate) struct AgentMemo {
    pub turns: HashMap<(String, u32, u32), String>,
    /// The outcome as fed back, and whether it was this run's side effect.
    pub results: HashMap<(String, u32, u32), (StepOutcome, bool)>,
}

impl AgentMemo {
    pub fn from_history(history: &[Entry]) -> AgentMemo {
        let mut memo = AgentMemo::default();
        for e in history {
            match e {
                Entry::ModelTurn { step, visit, turn, content, .. } => {
                    memo.turns.insert((step.clone(), *visit, *turn), content.clone());
                }
                Entry::AgentResult { step, visit, turn, outcome, effect, .. } => {
                    memo.results.insert((step.clone(), *visit, *turn), (outcome.clone(), *effect));
                }
                _ => {}
            }
        }
        memo
    }
}

/// (replayed, effect) of a call: `effect` when this run made the side
/// effect (now, or before a crash when the stored result is its own), so it
/// has a receipt here.
fn effect_of(called: &Result<Called>, side_effect: SideEffect) -> (bool, bool) {
    match called {
        Ok(c) => (c.replayed, side_effect != SideEffect::Read && (!c.replayed || c.receipt.is_some())),
        Err(_) => (false, false),
    }
}

/// The termination when `result` ended the run.
fn ended_by(run: &Run, result: &Result<Value>) -> Option<Termination> {
    match result {
        Err(e) if e.code() == ErrorCode::TraceWriteFailed || run.termination().is_some() => {
            Some(run.termination().unwrap_or_else(|| termination_for(e.code())))
        }
        _ => None,
    }
}

/// The run's transition for `call`'s `outcome` (without the output
/// operation): `ended` when the call ended the run.
pub(crate) fn transition(
    workflow: &Workflow,
    state: &mut RunState,
    call: &StepCall,
    outcome: &StepOutcome,
    ended: Option<Termination>,
    ended_ok: &str,
) -> Result<Patch> {
    match (ended, outcome) {
        (Some(t), StepOutcome::Err { code, message }) => state.stop(Some(&call.step), t, &format!("{code}: {message}")),
        (Some(t), StepOutcome::Ok { .. }) => state.stop(Some(&call.step), t, ended_ok),
        (None, _) => state.apply_recorded(workflow, call, outcome),
    }
}

fn run_start(spec: &RunSpec<'_>) -> Entry {
    Entry::RunStart {
        run_id: spec.run_id.clone(),
        tenant: spec.ctx.tenant().as_str().to_owned(),
        principal: spec.ctx.principal().as_str().to_owned(),
        workflow: spec.workflow.id.clone(),
        config_hash: spec.config_hash.clone(),
        pins: spec.pins.clone(),
        event: spec.event.clone(),
    }
}

/// A run patch as the store applies it.
fn parse_patch(patch: &Patch) -> Result<json_patch::Patch> {
    serde_json::from_value(patch.to_value())
        .map_err(|e| Error::new(ErrorCode::RunTransitionInvalid, format!("a run patch does not parse: {e}")))
}

/// The registration of `spec`'s run.
fn new_run<'s>(spec: &'s RunSpec<'_>, engine: &'s Engine<'_>) -> NewRun<'s> {
    NewRun {
        run_id: &spec.run_id,
        workflow: &spec.workflow.id,
        config_hash: &spec.config_hash,
        event: &spec.event,
        pins: &spec.pins,
        transcript: engine.transcript_path.as_deref(),
    }
}

/// The entity whose versioned state is `spec`'s run.
fn run_entity(spec: &RunSpec<'_>) -> Result<EntityId> {
    EntityId::new(spec.ctx.tenant().clone(), "run", &spec.run_id)
}
