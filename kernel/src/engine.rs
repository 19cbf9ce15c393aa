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

use serde_json::{Value, json};

use crate::bounds::{Bounds, Termination};
use crate::contract::{SideEffect, ToolContract};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallOptions, Executor, Run};
use crate::llm::{AgentStep, LlmClient};
use crate::run::{Command, Patch, RunState, RunStatus, StepCall, StepOutcome, idempotency_key, receipt_digest};
use crate::store::{NewRun, Store};
use crate::tenant::EntityId;
use crate::tenant::TenantContext;
use crate::trace::Cost;
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

/// Whether this engine runs agent steps.
#[derive(Clone, Copy)]
enum Agents<'a> {
    /// The durable engine (a store, or a transcript meant to be replayed):
    /// a workflow with an agent step is refused before it starts, since
    /// model turns are not recorded for replay yet.
    Durable,
    /// The store-less runner ([`Workflow::run_with_llm`]), with the client
    /// agent steps decide with, if any.
    InMemory(Option<&'a LlmClient>),
}

/// Drives runs through an executor.
pub struct Engine<'a> {
    exec: &'a Executor,
    approvals: Option<&'a dyn ApprovalPolicy>,
    store: Option<&'a Store>,
    transcript_path: Option<String>,
    agents: Agents<'a>,
}

impl<'a> Engine<'a> {
    pub fn new(exec: &'a Executor) -> Self {
        Engine { exec, approvals: None, store: None, transcript_path: None, agents: Agents::Durable }
    }

    /// Run agent steps with `llm` (store-less runs only: the transcript of
    /// such a run does not hold the model's turns and cannot be replayed).
    pub(crate) fn in_memory_agents(mut self, llm: Option<&'a LlmClient>) -> Self {
        self.agents = Agents::InMemory(llm);
        self
    }

    /// `AGENT_STEP_UNSUPPORTED` for a workflow with an agent step in a
    /// durable run.
    fn refuse_durable_agents(&self, workflow: &Workflow) -> Result<()> {
        if let (Agents::Durable, Some(step)) = (self.agents, workflow.steps.iter().find(|s| s.agent.is_some())) {
            return Err(Error::new(
                ErrorCode::AgentStepUnsupported,
                format!(
                    "workflow {} step {} is an agent step: agent steps are not yet supported in durable runs (the store-less Workflow::run runs them)",
                    workflow.id, step.id
                ),
            ));
        }
        Ok(())
    }

    /// Run one agent step: the model proposes, the executor decides. Its
    /// output is the final answer with the calls that ran.
    async fn agent_step(&self, run: &mut Run, agent: &AgentSpec, call: &StepCall) -> Result<Value> {
        let refused = |code: ErrorCode, message: String| Error::new(code, message);
        let llm = match self.agents {
            Agents::InMemory(Some(llm)) => Ok(llm),
            Agents::InMemory(None) => Err(refused(
                ErrorCode::AgentLlmMissing,
                format!("agent step {} needs an LLM client; run the workflow with Workflow::run_with_llm", call.step),
            )),
            Agents::Durable => Err(refused(
                ErrorCode::AgentStepUnsupported,
                format!("agent step {}: agent steps are not yet supported in durable runs", call.step),
            )),
        };
        let llm = match llm {
            Ok(llm) if llm.pin().model != agent.model || llm.pin().prompt_template_sha256 != agent.prompt.sha256() => {
                Err(refused(
                    ErrorCode::AgentPinMismatch,
                    format!(
                        "agent step {} is pinned to model {} with prompt sha256 {}, but the LLM client to model {} with prompt sha256 {}",
                        call.step,
                        agent.model,
                        agent.prompt.sha256(),
                        llm.pin().model,
                        llm.pin().prompt_template_sha256
                    ),
                ))
            }
            other => other,
        };
        let llm = match llm {
            Ok(llm) => llm,
            Err(e) => {
                return Err(self.exec.record_rejection(run, &format!("agent:{}", call.step), &call.input, e).await);
            }
        };
        let step = AgentStep::new(&call.step, agent.tools.clone()).with_max_turns(agent.max_turns);
        let outcome = step.run(self.exec, run, llm, &call.input, &call.input).await?;
        let calls: Vec<Value> = outcome
            .calls
            .into_iter()
            .map(|c| json!({ "tool": c.tool, "version": c.version, "input": c.input, "output": c.output }))
            .collect();
        Ok(json!({ "final": outcome.output, "calls": calls, "turns": outcome.turns }))
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
        self.refuse_durable_agents(spec.workflow)?;
        let state = RunState::new(spec.workflow, &spec.run_id, spec.event.clone());
        // Version 1 is the initial state, stored (durable runs) before the
        // first step; each transition makes the next version.
        let mut version = 0i64;
        if let Some(store) = self.store {
            store
                .create_run(
                    &spec.ctx,
                    &NewRun {
                        run_id: &spec.run_id,
                        workflow: &spec.workflow.id,
                        config_hash: &spec.config_hash,
                        event: &spec.event,
                        pins: &spec.pins,
                        transcript: self.transcript_path.as_deref(),
                    },
                )
                .await?;
            let initial = Patch(vec![serde_json::json!({"op": "add", "path": "", "value": state.to_value()})]);
            self.persist(spec, version, &initial).await?;
        }
        version = 1;
        transcript.write(run_start(spec))?;
        let run = self.exec.start(&spec.ctx, &spec.run_id, spec.bounds, spec.pins.clone()).await?;
        self.drive(spec, run, state, version, Vec::new(), transcript).await
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
        self.refuse_durable_agents(spec.workflow)?;
        let entity = run_entity(spec)?;
        if store.run_record(&spec.ctx, &spec.run_id).await?.is_none() {
            return Err(Error::new(ErrorCode::RunNotFound, format!("no run {} in this store", spec.run_id)));
        }
        let (state, version) = match store.state(&spec.ctx, &entity).await? {
            Some(saved) => {
                let state: RunState = serde_json::from_value(saved.state).map_err(|e| {
                    Error::new(ErrorCode::StoreCorrupt, format!("the state of run {} does not parse: {e}", spec.run_id))
                })?;
                (state, saved.version)
            }
            None => {
                // Registered, then killed before its first state: start it.
                let state = RunState::new(spec.workflow, &spec.run_id, spec.event.clone());
                let initial = Patch(vec![serde_json::json!({"op": "add", "path": "", "value": state.to_value()})]);
                self.persist(spec, 0, &initial).await?;
                (state, 1)
            }
        };
        let finished = history.iter().any(|e| matches!(e, Entry::RunEnd { .. }));
        if state.status.is_terminal() && finished {
            return self.report(spec, &state, crate::trace::Cost::default(), Vec::new(), None);
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
        self.drive(spec, run, state, version, receipts, transcript).await
    }

    async fn drive(
        &self,
        spec: &RunSpec<'_>,
        mut run: Run,
        mut state: RunState,
        mut version: i64,
        mut receipts: Vec<ReceiptDigest>,
        transcript: &mut TranscriptWriter,
    ) -> Result<RunReport> {
        let mut waiting_for = None;
        let has_agents = spec.workflow.has_agent_steps();
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
            let agent = if has_agents {
                spec.workflow.steps.iter().find(|s| s.id == call.step).and_then(|s| s.agent.as_ref())
            } else {
                None
            };
            if let Some(agent) = agent {
                // Each turn is a step of the run (AgentStep begins it); the
                // store-less transcript keeps only the state patches.
                let result = self.agent_step(&mut run, agent, &call).await;
                let outcome = StepOutcome::from_result(&result);
                let ended = match &result {
                    Err(e) if e.code() == ErrorCode::TraceWriteFailed || run.termination().is_some() => {
                        Some(run.termination().unwrap_or_else(|| termination_for(e.code())))
                    }
                    _ => None,
                };
                let patch = match (ended, &outcome) {
                    (Some(t), StepOutcome::Err { code, message }) => {
                        state.stop(Some(&call.step), t, &format!("{code}: {message}"))?
                    }
                    (Some(t), StepOutcome::Ok { .. }) => {
                        state.stop(Some(&call.step), t, "the run ended during the agent step")?
                    }
                    (None, _) => state.apply(spec.workflow, &call, &outcome)?,
                };
                self.commit(spec, transcript, &mut version, patch).await?;
                continue;
            }
            let contract = self.exec.registry().lookup(&call.tool, &call.version).ok();
            let mut approved = false;
            if let (Some(policy), Some(contract)) = (self.approvals, contract) {
                match policy.check(&spec.ctx, &spec.run_id, &call, contract).await? {
                    Verdict::NotRequired => approved = true,
                    Verdict::Approved { request_id, approver } => {
                        if state.status == RunStatus::WaitingApproval {
                            transcript.write(Entry::HitlDecision {
                                request_id,
                                step: call.step_key(),
                                decision: "approved".into(),
                                approver: Some(approver),
                            })?;
                            self.commit(spec, transcript, &mut version, state.approved()?).await?;
                        }
                        approved = true;
                    }
                    Verdict::Pending { request_id } => {
                        if state.status != RunStatus::WaitingApproval {
                            transcript.write(Entry::HitlRequested {
                                request_id: request_id.clone(),
                                step: call.step_key(),
                                visit: call.visit,
                            })?;
                            self.commit(spec, transcript, &mut version, state.wait_for_approval()?).await?;
                        }
                        waiting_for = Some(request_id);
                        break;
                    }
                    Verdict::Denied { request_id, approver } => {
                        let approver = Some(approver);
                        self.decided(spec, transcript, &mut state, &mut version, &call, request_id, "denied", approver)
                            .await?;
                        // Compensations of what the run did may follow.
                        if state.status.is_terminal() {
                            break;
                        }
                        continue;
                    }
                    Verdict::Expired { request_id, proceed: false } => {
                        self.decided(spec, transcript, &mut state, &mut version, &call, request_id, "expired", None)
                            .await?;
                        if state.status.is_terminal() {
                            break;
                        }
                        continue;
                    }
                    Verdict::Expired { request_id: _, proceed: true } => approved = true,
                }
            }
            if let Err(e) = self.exec.begin_step(&mut run).await {
                let t = run.termination().unwrap_or_else(|| termination_for(e.code()));
                let error = format!("{}: {}", e.code(), e.message());
                transcript.write(Entry::RunStopped { termination: t, error: error.clone(), step: None })?;
                self.commit(spec, transcript, &mut version, state.stop(None, t, &error)?).await?;
                break;
            }
            let started_at = self.exec.clock().now();
            transcript.write(Entry::Clock { at: started_at })?;
            let side_effect = contract.map(|c| c.side_effect).unwrap_or(SideEffect::Read);
            let key = match side_effect {
                SideEffect::Read => None,
                _ => Some(idempotency_key(spec.ctx.tenant(), spec.workflow, &call)?),
            };
            transcript.write(Entry::ToolRequest {
                step: call.step.clone(),
                visit: call.visit,
                tool: call.tool.clone(),
                version: call.version.clone(),
                input: call.input.clone(),
                idempotency_key: key.as_ref().map(|k| k.external().to_owned()),
            })?;
            let opts = CallOptions { state_key: Some(&call.step), approved, idempotency: key.as_ref() };
            let called = self.exec.call_with(&mut run, &call.tool, &call.version, call.input.clone(), opts).await;
            let at = self.exec.clock().now();
            // `effect`: this run made the side effect (now, or before a crash
            // when the stored result is its own), so it has a receipt here.
            let (replayed, effect) = match &called {
                Ok(c) => (c.replayed, side_effect != SideEffect::Read && (!c.replayed || c.receipt.is_some())),
                Err(_) => (false, false),
            };
            let result = called.map(|c| c.value);
            let outcome = StepOutcome::from_result(&result);
            let ended = match &result {
                Err(e) if e.code() == ErrorCode::TraceWriteFailed || run.termination().is_some() => {
                    Some(run.termination().unwrap_or_else(|| termination_for(e.code())))
                }
                _ => None,
            };
            transcript.write(Entry::ToolResponse {
                step: call.step.clone(),
                visit: call.visit,
                outcome: outcome.clone(),
                at,
                replayed,
                effect,
                ended,
            })?;
            if let (true, Ok(output)) = (effect, &result) {
                receipts.push(receipt_digest(spec.ctx.tenant(), spec.workflow, &call, output)?);
            }
            let patch = match (ended, &outcome) {
                (Some(t), StepOutcome::Err { code, message }) => {
                    state.stop(Some(&call.step), t, &format!("{code}: {message}"))?
                }
                (Some(t), StepOutcome::Ok { .. }) => {
                    state.stop(Some(&call.step), t, "the run ended during the call")?
                }
                (None, _) => state.apply(spec.workflow, &call, &outcome)?,
            };
            self.commit(spec, transcript, &mut version, patch).await?;
        }
        if state.status.is_terminal() && run.termination().is_none() {
            let t = state.termination.unwrap_or(Termination::Completed);
            // If even the run-end trace record cannot be written the run is
            // already ended as trace_write_failed; the state keeps its reason.
            let _ = self.exec.finish(&mut run, t).await;
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
            let termination = state.termination.map(|t| t.as_str());
            store.set_run_status(&spec.ctx, &spec.run_id, state.status, waiting_for.as_deref(), termination).await?;
        }
        self.report(spec, &state, run.cost(), receipts, waiting_for)
    }

    fn report(
        &self,
        spec: &RunSpec<'_>,
        state: &RunState,
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
            state_sha256: state.hash()?,
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
        let parsed: json_patch::Patch = serde_json::from_value(patch.to_value())
            .map_err(|e| Error::new(ErrorCode::RunTransitionInvalid, format!("a run patch does not parse: {e}")))?;
        store.apply_patch(&spec.ctx, &run_entity(spec)?, version, &parsed).await?;
        Ok(())
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
        let patch = state.end_on_decision(spec.workflow, t)?;
        self.commit(spec, transcript, version, patch).await
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

/// The entity whose versioned state is `spec`'s run.
fn run_entity(spec: &RunSpec<'_>) -> Result<EntityId> {
    EntityId::new(spec.ctx.tenant().clone(), "run", &spec.run_id)
}
