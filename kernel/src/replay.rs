//! Deterministic replay of a transcript (INV-06).
//!
//! Replay runs the workflow's own logic again ([`RunState`]) and answers every
//! tool call with the response the transcript recorded, on the recorded
//! clock. At each line it checks that the workflow asks for exactly what the
//! live run asked for (same step, visit, tool, version and input), that each
//! transition changes the state exactly as recorded, and at the end that the
//! state hash and the receipts are identical. The first difference is
//! reported as a [`Divergence`] with the line, the step, and the expected
//! (recorded) and actual (recomputed) values.
//!
//! Nothing here touches a store or a provider: replay is pure, so a
//! 10,000-step transcript replays in milliseconds (see `docs/benchmarks.md`).

use serde::Serialize;
use serde_json::{Value, json};

use crate::bounds::Termination;
use crate::contract::{SideEffect, ToolRegistry};
use crate::error::{Error, ErrorCode, Result};
use crate::run::{Command, Patch, RunState, StepCall, StepOutcome, receipt_digest};
use crate::tenant::TenantId;
use crate::transcript::{Entry, ReceiptDigest, Transcript};
use crate::workflow::Workflow;

/// The first place a replay differs from its transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// 1-based line of the transcript.
    pub line: u64,
    pub step: Option<String>,
    /// What differs: `request`, `state_patch`, `state_hash`, `receipts`...
    pub what: String,
    pub expected: Value,
    pub actual: Value,
}

/// A replay that matched its transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replayed {
    pub run_id: String,
    pub workflow: String,
    pub steps: u64,
    pub termination: Termination,
    pub state_sha256: String,
    pub receipts: usize,
}

/// How a replay came out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayOutcome {
    Identical(Replayed),
    Diverged(Divergence),
}

/// Replay `transcript` against `workflow` (from the config whose hash is
/// `config_hash`). Bad transcripts and a different config are errors; a
/// workflow that behaves differently is a [`ReplayOutcome::Diverged`].
pub fn replay(
    transcript: &Transcript,
    workflow: &Workflow,
    registry: &ToolRegistry,
    config_hash: &str,
) -> Result<ReplayOutcome> {
    transcript.require_complete()?;
    let Some(Entry::RunStart { run_id, tenant, workflow: wf_id, config_hash: recorded_hash, event, .. }) =
        transcript.entries().next()
    else {
        return Err(Error::new(ErrorCode::TranscriptCorrupt, "the transcript does not start with run_start"));
    };
    if wf_id != &workflow.id {
        return Err(Error::new(
            ErrorCode::ReplayConfigMismatch,
            format!("the transcript is of workflow {wf_id}, not {}", workflow.id),
        ));
    }
    if recorded_hash != config_hash {
        return Err(Error::new(
            ErrorCode::ReplayConfigMismatch,
            format!(
                "the transcript ran under config {recorded_hash}, the given config is {config_hash}: replay with the config it ran under"
            ),
        ));
    }
    let resumes = transcript.entries().any(|e| matches!(e, Entry::Resumed { .. }));
    let mut r = Replayer::new(workflow, registry, tenant, run_id, event, resumes)?;
    for line in transcript.lines.iter().skip(1) {
        if let Err(d) = r.take(line.seq + 1, &line.entry)? {
            return Ok(ReplayOutcome::Diverged(d));
        }
    }
    let termination = r.state.termination.unwrap_or(Termination::Completed);
    Ok(ReplayOutcome::Identical(Replayed {
        run_id: run_id.clone(),
        workflow: workflow.id.clone(),
        steps: r.steps,
        termination,
        state_sha256: r.state.hash()?,
        receipts: r.receipts.len(),
    }))
}

/// The receipts a partial history (a crashed run's transcript so far)
/// holds up to state version `version`: what a resumed run carries over.
pub fn receipts_at(
    history: &[Entry],
    workflow: &Workflow,
    registry: &ToolRegistry,
    version: i64,
) -> Result<Vec<ReceiptDigest>> {
    let Some(Entry::RunStart { run_id, tenant, event, .. }) = history.first() else { return Ok(Vec::new()) };
    let mut r = Replayer::new(workflow, registry, tenant, run_id, event, true)?;
    for (i, entry) in history.iter().enumerate().skip(1) {
        if let Err(d) = r.take(i as u64 + 1, entry)? {
            return Err(Error::new(
                ErrorCode::ReplayDiverged,
                format!("the transcript so far does not match the run at line {}: {}", d.line, d.what),
            ));
        }
    }
    r.take(history.len() as u64 + 1, &Entry::Resumed { state_version: version })?.map_err(|d| {
        Error::new(ErrorCode::ReplayDiverged, format!("cannot resume at version {version}: {}", d.what))
    })?;
    Ok(r.receipts)
}

struct Replayer<'a> {
    workflow: &'a Workflow,
    registry: &'a ToolRegistry,
    tenant: TenantId,
    state: RunState,
    /// The state version the last `state_patch` line made (1: initial).
    version: i64,
    /// Snapshots at `version` and `version - 1`, kept only when the
    /// transcript has `resumed` lines to roll back to.
    committed: Option<(RunState, Option<(RunState, usize)>)>,
    /// A receipt whose step is not committed yet.
    pending_receipt: Option<ReceiptDigest>,
    /// The call the workflow asked for and the transcript confirmed.
    pending: Option<StepCall>,
    /// The change the last transition made, to compare with the next
    /// `state_patch` line.
    patch: Option<Patch>,
    receipts: Vec<ReceiptDigest>,
    steps: u64,
}

type Step = std::result::Result<(), Divergence>;

impl<'a> Replayer<'a> {
    fn new(
        workflow: &'a Workflow,
        registry: &'a ToolRegistry,
        tenant: &str,
        run_id: &str,
        event: &Value,
        snapshots: bool,
    ) -> Result<Replayer<'a>> {
        let state = RunState::new(workflow, run_id, event.clone());
        Ok(Replayer {
            workflow,
            registry,
            tenant: tenant.parse()?,
            committed: snapshots.then(|| (state.clone(), None)),
            state,
            version: 1,
            pending_receipt: None,
            pending: None,
            patch: None,
            receipts: Vec::new(),
            steps: 0,
        })
    }

    /// Roll back to what the store held at `version` when the run resumed.
    fn resume_at(&mut self, line: u64, version: i64) -> Result<()> {
        self.pending = None;
        self.patch = None;
        self.pending_receipt = None;
        let Some((at, before)) = self.committed.take() else { return Ok(()) };
        let (state, before) = match before {
            _ if version == self.version => (at, before),
            Some((prev, receipts)) if version == self.version - 1 => {
                self.receipts.truncate(receipts);
                self.version -= 1;
                (prev, None)
            }
            _ => {
                return Err(Error::new(
                    ErrorCode::TranscriptCorrupt,
                    format!(
                        "line {line}: the run resumed at state version {version}, the transcript is at {}",
                        self.version
                    ),
                ));
            }
        };
        self.state = state.clone();
        self.committed = Some((state, before));
        Ok(())
    }

    fn diverged(&self, line: u64, what: &str, expected: Value, actual: Value) -> Step {
        Err(Divergence {
            line,
            step: self.pending.as_ref().map(|c| c.step_key()).or_else(|| self.state.cursor.clone()),
            what: what.to_owned(),
            expected,
            actual,
        })
    }

    /// Take one line; `Ok(Err(d))` is a divergence, `Err` a broken transcript.
    fn take(&mut self, line: u64, entry: &Entry) -> Result<Step> {
        if self.patch.is_some() && !matches!(entry, Entry::StatePatch { .. } | Entry::Resumed { .. }) {
            let expected = json!("a state_patch line");
            return Ok(self.diverged(line, "state_patch", expected, json!(entry.kind())));
        }
        Ok(match entry {
            Entry::RunStart { .. } => {
                return Err(Error::new(ErrorCode::TranscriptCorrupt, format!("line {line}: a second run_start")));
            }
            Entry::Clock { .. } => Ok(()),
            Entry::Resumed { state_version } => {
                // The process died; the run goes on from what the store held.
                // A request without its response, a response without its
                // committed state: both are asked again.
                self.resume_at(line, *state_version)?;
                Ok(())
            }
            Entry::ToolRequest { step, visit, tool, version, input, idempotency_key } => {
                let call = match self.state.next(self.workflow) {
                    Ok(Command::Call(c)) => c,
                    Ok(Command::Done) => {
                        return Ok(self.diverged(line, "request", json!({"step": step}), json!("the run is over")));
                    }
                    Err(e) => {
                        let actual = json!(format!("{}: {}", e.code(), e.message()));
                        return Ok(self.diverged(line, "request", json!({"step": step}), actual));
                    }
                };
                let recorded = json!({"step": step, "visit": visit, "tool": tool, "version": version, "input": input});
                let computed = json!({"step": call.step, "visit": call.visit, "tool": call.tool, "version": call.version, "input": call.input});
                if recorded != computed {
                    return Ok(self.diverged(line, "request", recorded, computed));
                }
                if let Some(key) = idempotency_key {
                    let ours = receipt_key(&self.tenant, self.workflow, &call)?;
                    if key != &ours {
                        return Ok(self.diverged(line, "idempotency_key", json!(key), json!(ours)));
                    }
                }
                self.pending = Some(call);
                Ok(())
            }
            Entry::ToolResponse { step, visit, outcome, effect, ended, .. } => {
                let Some(call) = self.pending.take() else {
                    return Ok(self.diverged(line, "response", json!("a tool_request first"), json!(step)));
                };
                if (&call.step, call.visit) != (step, *visit) {
                    let expected = json!({"step": step, "visit": visit});
                    return Ok(self.diverged(
                        line,
                        "response",
                        expected,
                        json!({"step": call.step, "visit": call.visit}),
                    ));
                }
                self.steps += 1;
                let patch = match (ended, outcome) {
                    (Some(t), StepOutcome::Err { code, message }) => {
                        self.state.stop(Some(&call.step), *t, &format!("{code}: {message}"))
                    }
                    (Some(t), StepOutcome::Ok { .. }) => {
                        self.state.stop(Some(&call.step), *t, "the run ended during the call")
                    }
                    (None, _) => self.state.apply(self.workflow, &call, outcome),
                };
                self.patch = Some(patch.map_err(|e| transition(line, e))?);
                if *effect && let StepOutcome::Ok { output } = outcome {
                    let side_effect = self.registry.lookup(&call.tool, &call.version).map(|c| c.side_effect);
                    if side_effect.map(|s| s != SideEffect::Read).unwrap_or(true) {
                        self.pending_receipt = Some(receipt_digest(&self.tenant, self.workflow, &call, output)?);
                    }
                }
                Ok(())
            }
            Entry::HitlRequested { .. } => {
                self.patch = Some(self.state.wait_for_approval().map_err(|e| transition(line, e))?);
                Ok(())
            }
            Entry::HitlDecision { decision, .. } => {
                let patch = match decision.as_str() {
                    "approved" => self.state.approved(),
                    "denied" => self.state.end_on_decision(self.workflow, Termination::HitlDenied),
                    "expired" => self.state.end_on_decision(self.workflow, Termination::HitlTimeout),
                    other => {
                        return Err(Error::new(
                            ErrorCode::TranscriptCorrupt,
                            format!("line {line}: unknown decision {other:?}"),
                        ));
                    }
                };
                self.patch = Some(patch.map_err(|e| transition(line, e))?);
                Ok(())
            }
            Entry::RunStopped { termination, error, step } => {
                let patch = self.state.stop(step.as_deref(), *termination, error);
                self.patch = Some(patch.map_err(|e| transition(line, e))?);
                Ok(())
            }
            Entry::StatePatch { patch, .. } => {
                let ours = self.patch.take().unwrap_or(Patch(Vec::new()));
                if &ours != patch {
                    return Ok(self.diverged(line, "state_patch", patch.to_value(), ours.to_value()));
                }
                let receipts_before = self.receipts.len();
                self.receipts.extend(self.pending_receipt.take());
                self.version += 1;
                if let Some((at, _)) = self.committed.take() {
                    self.committed = Some((self.state.clone(), Some((at, receipts_before))));
                }
                Ok(())
            }
            Entry::RunEnd { status, termination, state_sha256, receipts } => {
                let hash = self.state.hash()?;
                if (status, Some(*termination)) != (&self.state.status, self.state.termination) {
                    let expected = json!({"status": status, "termination": termination});
                    let actual = json!({"status": self.state.status, "termination": self.state.termination});
                    self.diverged(line, "termination", expected, actual)
                } else if state_sha256 != &hash {
                    self.diverged(line, "state_hash", json!(state_sha256), json!(hash))
                } else if receipts != &self.receipts {
                    self.diverged(line, "receipts", json!(receipts), json!(self.receipts))
                } else {
                    Ok(())
                }
            }
        })
    }
}

fn transition(line: u64, e: Error) -> Error {
    Error::new(
        ErrorCode::TranscriptCorrupt,
        format!("line {line}: the recorded history is impossible: {}", e.message()),
    )
}

/// The external idempotency key of a step's call.
fn receipt_key(tenant: &TenantId, workflow: &Workflow, call: &StepCall) -> Result<String> {
    Ok(crate::run::idempotency_key(tenant, workflow, call)?.external().to_owned())
}
