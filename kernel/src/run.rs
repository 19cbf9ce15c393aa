//! A workflow run as a deterministic state machine.
//!
//! [`RunState`] is everything a run knows: the triggering event, the output
//! of every step so far, how often each step was visited, where it goes next
//! and how it ended. It changes only through [`RunState::apply`], which takes
//! the outcome of the step [`RunState::next`] asked for. Given the same
//! outcomes it always produces the same states, so the same history replays
//! to the same bytes (Temporal's rule: the workflow decides, activities do;
//! only the activities' results are recorded).
//!
//! Two drivers feed it: the live one executes each [`Command::Call`] through
//! the executor, and [`crate::replay`] answers it from a transcript. Both
//! compare on [`RunState::hash`], the SHA-256 of the state's RFC 8785
//! canonical form.
//!
//! The run's lifecycle is an explicit state machine: [`RunStatus`] changes
//! only along [`RUN_TRANSITIONS`], through [`RunStatus::on`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bounds::Termination;
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::{IdempotencyKey, KeyParts};
use crate::tenant::TenantId;
use crate::transcript::ReceiptDigest;
use crate::workflow::{END, Step, Workflow, resolve_with, termination_for};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    /// Paused at a step until a human decides its approval request.
    WaitingApproval,
    Completed,
    /// Ended by a failed step, a bound, or an approval that timed out.
    Failed,
    /// Ended by a human: an approval was denied.
    Aborted,
}

/// What moves a run from one status to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    StepSucceeded,
    /// A step failed and the workflow routes the failure (`on_error`).
    StepRecovered,
    ApprovalRequested,
    Approved,
    Denied,
    ApprovalExpired,
    /// A failure (or a denied or expired approval) after side effects: the
    /// run goes on with the compensations of its completed steps.
    Compensate,
    Finished,
    Failed,
}

/// Every allowed transition of a run, in one table. Anything else is a bug
/// in a driver and is refused with `RUN_TRANSITION_INVALID`.
pub const RUN_TRANSITIONS: &[(RunStatus, RunEvent, RunStatus)] = &[
    (RunStatus::Running, RunEvent::StepSucceeded, RunStatus::Running),
    (RunStatus::Running, RunEvent::StepRecovered, RunStatus::Running),
    (RunStatus::Running, RunEvent::ApprovalRequested, RunStatus::WaitingApproval),
    (RunStatus::WaitingApproval, RunEvent::Approved, RunStatus::Running),
    (RunStatus::WaitingApproval, RunEvent::Denied, RunStatus::Aborted),
    (RunStatus::WaitingApproval, RunEvent::ApprovalExpired, RunStatus::Failed),
    (RunStatus::Running, RunEvent::Finished, RunStatus::Completed),
    (RunStatus::Running, RunEvent::Failed, RunStatus::Failed),
    (RunStatus::Running, RunEvent::Denied, RunStatus::Aborted),
    (RunStatus::Running, RunEvent::Compensate, RunStatus::Running),
    (RunStatus::WaitingApproval, RunEvent::Compensate, RunStatus::Running),
];

impl RunStatus {
    /// The status after `event`, or `RUN_TRANSITION_INVALID`.
    pub fn on(self, event: RunEvent) -> Result<RunStatus> {
        RUN_TRANSITIONS
            .iter()
            .find(|(from, ev, _)| *from == self && *ev == event)
            .map(|(_, _, to)| *to)
            .ok_or_else(|| Error::new(ErrorCode::RunTransitionInvalid, format!("a {self:?} run cannot take {event:?}")))
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Aborted)
    }

    /// The status a run index row names (`RUNNING`, ...).
    pub fn parse(s: &str) -> Option<RunStatus> {
        [RunStatus::Running, RunStatus::WaitingApproval, RunStatus::Completed, RunStatus::Failed, RunStatus::Aborted]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::WaitingApproval => "WAITING_APPROVAL",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Aborted => "ABORTED",
        }
    }
}

/// What the run asks its driver to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Execute `tool@version` with `input` for `step`.
    Call(StepCall),
    /// The run is over.
    Done,
}

/// One step's tool call, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCall {
    pub step: String,
    /// 1 for the first visit of this step in the run, 2 for the second...
    /// Part of the idempotency key, so a deliberate retry is a new call
    /// while a crashed-and-resumed one is not.
    pub visit: u32,
    pub tool: String,
    pub version: String,
    pub input: Value,
}

impl StepCall {
    /// The tool call an agent step's `turn` proposed, as a call of its own
    /// (`classify.turn2`): its approval request and idempotency key are its
    /// own, and the same in a live run, a resumed one and a replay.
    pub fn proposal(&self, turn: u32, tool: &str, version: &str, input: &Value) -> StepCall {
        StepCall {
            step: format!("{}.turn{turn}", self.step),
            visit: self.visit,
            tool: tool.to_owned(),
            version: version.to_owned(),
            input: input.clone(),
        }
    }

    /// The request line of this call: `key` is the external idempotency
    /// key of a side effect.
    pub fn request_entry(&self, key: Option<&str>, at: chrono::DateTime<chrono::Utc>) -> crate::transcript::Entry {
        crate::transcript::Entry::ToolRequest {
            step: self.step.clone(),
            visit: self.visit,
            tool: self.tool.clone(),
            version: self.version.clone(),
            input: self.input.clone(),
            idempotency_key: key.map(str::to_owned),
            at,
        }
    }

    /// The step as the idempotency key names it: `charge`, `charge#2`...
    pub fn step_key(&self) -> String {
        self.step_key_ref().into_owned()
    }

    /// [`StepCall::step_key`], borrowed from the step for a first visit.
    fn step_key_ref(&self) -> std::borrow::Cow<'_, str> {
        visit_key(&self.step, self.visit)
    }
}

/// How a step's call came out, as the run sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Ok { output: Value },
    Err { code: String, message: String },
}

impl StepOutcome {
    pub fn from_result(r: &Result<Value>) -> StepOutcome {
        match r {
            Ok(v) => StepOutcome::Ok { output: v.clone() },
            Err(e) => StepOutcome::Err { code: e.code().as_str().to_owned(), message: e.message().to_owned() },
        }
    }
}

/// Everything a run knows. Serialized, it is the run entity's versioned
/// state; its hash is what replay must reproduce.
///
/// The serialized fields are declared sorted by name (RFC 8785's member
/// order), as are [`Compensation`]'s and [`CompensationDone`]'s, so
/// [`crate::canonical`] hashes the state as `serde_json` writes it instead of
/// re-sorting every member (it checks the order; a field added out of order
/// is hashed the same, only slower).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Where the cursor's step is in the workflow, when known: a lookup
    /// hint (not state), so a long run does not search its steps each time.
    #[serde(skip)]
    at: Option<usize>,
    /// Set once the run unwinds: the compensations of its completed steps
    /// (absent from the state of a run that never compensated, so older
    /// states and transcripts hash as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Compensation>,
    /// The step to run next; `None` once nothing is left.
    pub cursor: Option<String>,
    /// The last step failure (kept when `on_error` routed it).
    pub error: Option<String>,
    pub event: Value,
    /// Output of each step's latest successful visit.
    pub outputs: BTreeMap<String, Value>,
    /// Step ids in the order they ran.
    pub path: Vec<String>,
    pub run_id: String,
    pub status: RunStatus,
    pub termination: Option<Termination>,
    pub visits: BTreeMap<String, u32>,
    pub workflow: String,
}

impl RunState {
    /// A new run of `workflow` for `event`, about to run its first step.
    pub fn new(workflow: &Workflow, run_id: &str, event: Value) -> RunState {
        RunState {
            run_id: run_id.to_owned(),
            workflow: workflow.id.clone(),
            status: RunStatus::Running,
            event,
            outputs: BTreeMap::new(),
            visits: BTreeMap::new(),
            path: Vec::new(),
            cursor: workflow.steps.first().map(|s| s.id.clone()),
            error: None,
            termination: None,
            compensation: None,
            at: Some(0),
        }
    }

    /// The cursor's step and its index (the hint first, then a search).
    pub(crate) fn cursor_step<'w>(&self, workflow: &'w Workflow, id: &str) -> Result<(usize, &'w Step)> {
        if let Some(i) = self.at
            && let Some(step) = workflow.steps.get(i).filter(|s| s.id == id)
        {
            return Ok((i, step));
        }
        let i = workflow.steps.iter().position(|s| s.id == id).ok_or_else(|| {
            Error::new(ErrorCode::RunTransitionInvalid, format!("workflow {} has no step {id:?}", workflow.id))
        })?;
        Ok((i, &workflow.steps[i]))
    }

    /// What to do next. A step whose input does not resolve ends the run
    /// (`SCHEMA_INVALID`) rather than calling a tool with a hole in it.
    pub fn next(&self, workflow: &Workflow) -> Result<Command> {
        if self.status.is_terminal() {
            return Ok(Command::Done);
        }
        let Some(step) = self.cursor.as_deref() else { return Ok(Command::Done) };
        let (_, step) = self.cursor_step(workflow, step)?;
        let root = |name: &str| if name == "event" { Some(&self.event) } else { self.outputs.get(name) };
        let input = resolve_with(&step.input, &root).map_err(|missing| {
            Error::new(
                ErrorCode::SchemaInvalid,
                format!("workflow {} step {}: {missing} does not resolve", workflow.id, step.id),
            )
        })?;
        Ok(Command::Call(StepCall {
            step: step.id.clone(),
            visit: self.visits.get(&step.id).copied().unwrap_or(0) + 1,
            tool: step.tool.clone(),
            version: step.version.clone(),
            input,
        }))
    }

    /// Take the outcome of `call` (the call [`RunState::next`] returned).
    /// A failure goes to the step's `on_error` target if it has one and ends
    /// the run otherwise. Returns the change as an RFC 6902 patch.
    pub fn apply(&mut self, workflow: &Workflow, call: &StepCall, outcome: &StepOutcome) -> Result<Patch> {
        let patch = self.apply_recorded(workflow, call, outcome)?;
        Ok(match outcome {
            StepOutcome::Ok { output } => patch.with_output(&call.step, output),
            StepOutcome::Err { .. } => patch,
        })
    }

    /// [`RunState::apply`] without the `add /outputs/STEP` operation: the
    /// change as a transcript's tool response records it (its output is in
    /// the same line).
    pub fn apply_recorded(&mut self, workflow: &Workflow, call: &StepCall, outcome: &StepOutcome) -> Result<Patch> {
        let before = Shape::of(self);
        self.apply_inner(workflow, call, outcome)?;
        let visits = self.visits.get(&call.step).copied().map_or(Value::Null, Value::from);
        let mut patch = vec![
            PatchOp::add(pointer("visits", &call.step), visits),
            PatchOp::add("/path/-".to_owned(), Value::String(call.step.clone())),
        ];
        before.diff_into(self, &mut patch);
        Ok(Patch(patch))
    }

    fn apply_inner(&mut self, workflow: &Workflow, call: &StepCall, outcome: &StepOutcome) -> Result<()> {
        let (index, step) = self.cursor_step(workflow, &call.step)?;
        if self.cursor.as_deref() != Some(step.id.as_str()) {
            return Err(Error::new(
                ErrorCode::RunTransitionInvalid,
                format!("run {} is at {:?}, not at step {}", self.run_id, self.cursor, step.id),
            ));
        }
        *self.visits.entry(step.id.clone()).or_insert(0) += 1;
        self.path.push(step.id.clone());
        let goto = match outcome {
            StepOutcome::Ok { output } => {
                self.status = self.status.on(RunEvent::StepSucceeded)?;
                self.outputs.insert(step.id.clone(), output.clone());
                step.next.clone()
            }
            StepOutcome::Err { code, message } if self.compensation.is_some() => {
                // A compensation that fails is recorded; the others still run.
                self.status = self.status.on(RunEvent::StepRecovered)?;
                return self.compensated(&step.id, Some(format!("{code}: {message}")));
            }
            StepOutcome::Err { code, message } => {
                self.error = Some(format!("{code}: {message}"));
                let attempts = self.visits.get(&step.id).copied().unwrap_or(0);
                match &step.on_error {
                    // Retry per the step's policy: the next visit is a new
                    // call with its own idempotency key (`step#2`).
                    _ if step.retry.is_some_and(|max| attempts < max) => {
                        self.status = self.status.on(RunEvent::StepRecovered)?;
                        Some(step.id.clone())
                    }
                    Some(target) => {
                        self.status = self.status.on(RunEvent::StepRecovered)?;
                        Some(target.clone())
                    }
                    None => {
                        let code = ErrorCode::from_code(code).unwrap_or(ErrorCode::ToolFailed);
                        return self.fail_or_compensate(workflow, termination_for(code));
                    }
                }
            }
        };
        if self.compensation.is_some() {
            return self.compensated(&step.id, None);
        }
        (self.cursor, self.at) = match goto.as_deref() {
            Some(END) => (None, None),
            Some(target) => (Some(target.to_owned()), None),
            None => (workflow.steps.get(index + 1).map(|s| s.id.clone()), Some(index + 1)),
        };
        if self.cursor.is_none() {
            // Reaching the end, also through on_error, completes the run:
            // the failure was handled (and stays in `error`).
            let t = Termination::Completed;
            return self.end_inner(t);
        }
        Ok(())
    }

    /// End the run with `termination`, unless completed steps have
    /// compensations: then the run goes on with those, latest first, and
    /// ends with `termination` after the last (see [`compensation_plan`]).
    fn fail_or_compensate(&mut self, workflow: &Workflow, termination: Termination) -> Result<()> {
        let pending = compensation_plan(workflow, &self.path, &self.outputs);
        let Some(first) = pending.first().cloned() else { return self.end_inner(termination) };
        self.status = self.status.on(RunEvent::Compensate)?;
        self.compensation = Some(Compensation {
            termination,
            cause: self.error.clone().unwrap_or_default(),
            pending,
            done: Vec::new(),
        });
        (self.cursor, self.at) = (Some(first), None);
        Ok(())
    }

    /// A compensation step ran (`error` when it failed): on to the next one,
    /// or end the run with the termination that started the unwinding.
    fn compensated(&mut self, step: &str, error: Option<String>) -> Result<()> {
        let Some(c) = self.compensation.as_mut() else { return Ok(()) };
        if c.pending.first().map(String::as_str) == Some(step) {
            c.pending.remove(0);
        }
        c.done.push(CompensationDone { step: step.to_owned(), error });
        let (next, termination) = (c.pending.first().cloned(), c.termination);
        self.at = None;
        match next {
            Some(next) => {
                self.cursor = Some(next);
                Ok(())
            }
            None => self.end_inner(termination),
        }
    }

    /// A human denied the step the run waits at, or nobody decided in time:
    /// the run ends with `termination`, after compensating what it did.
    pub fn end_on_decision(&mut self, workflow: &Workflow, termination: Termination) -> Result<Patch> {
        let before = Shape::of(self);
        self.fail_or_compensate(workflow, termination)?;
        Ok(Patch(before.diff(self)))
    }

    /// End the run with `termination` (a bound, a failure the driver saw
    /// before any call, or completion); returns the change.
    pub fn end(&mut self, termination: Termination) -> Result<Patch> {
        let before = Shape::of(self);
        self.end_inner(termination)?;
        Ok(Patch(before.diff(self)))
    }

    /// End the run with `termination` because of `error`: a call that ended
    /// it or whose input failed (`step`, which then counts as visited) or a
    /// bound that ran out before the step began (`None`).
    pub fn stop(&mut self, step: Option<&str>, termination: Termination, error: &str) -> Result<Patch> {
        let before = Shape::of(self);
        let mut head = Vec::new();
        if let Some(step) = step {
            *self.visits.entry(step.to_owned()).or_insert(0) += 1;
            self.path.push(step.to_owned());
            let visits = self.visits.get(step).copied().map_or(Value::Null, Value::from);
            head.push(PatchOp::add(pointer("visits", step), visits));
            head.push(PatchOp::add("/path/-".to_owned(), Value::String(step.to_owned())));
        }
        self.error = Some(error.to_owned());
        self.end_inner(termination)?;
        before.diff_into(self, &mut head);
        Ok(Patch(head))
    }

    fn end_inner(&mut self, termination: Termination) -> Result<()> {
        let event = match termination {
            Termination::Completed => RunEvent::Finished,
            Termination::HitlDenied => RunEvent::Denied,
            Termination::HitlTimeout if self.status == RunStatus::WaitingApproval => RunEvent::ApprovalExpired,
            _ => RunEvent::Failed,
        };
        self.status = self.status.on(event)?;
        self.termination = Some(termination);
        self.cursor = None;
        Ok(())
    }

    /// Pause at the current step for a human decision.
    pub fn wait_for_approval(&mut self) -> Result<Patch> {
        let before = Shape::of(self);
        self.status = self.status.on(RunEvent::ApprovalRequested)?;
        Ok(Patch(before.diff(self)))
    }

    /// A human approved: the run goes on with the step it paused at.
    pub fn approved(&mut self) -> Result<Patch> {
        let before = Shape::of(self);
        self.status = self.status.on(RunEvent::Approved)?;
        Ok(Patch(before.diff(self)))
    }

    /// The serialized state (the run entity's versioned state).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// SHA-256 (hex) of the state's RFC 8785 canonical form.
    pub fn hash(&self) -> Result<String> {
        // Canonicalized straight from the struct: the same bytes as from
        // `to_value()`, without copying every output first.
        crate::canonical::sha256_hex(self)
    }
}

/// A run unwinding: the compensations of its completed steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    /// The failure that started the unwinding.
    pub cause: String,
    /// Compensation steps that ran, in order, with the error of each that failed.
    pub done: Vec<CompensationDone>,
    /// Compensation steps still to run, the next first.
    pub pending: Vec<String>,
    /// How the run ends once the compensations ran.
    pub termination: Termination,
}

/// One compensation step that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationDone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub step: String,
}

/// The compensation steps to run after a failure, in order: for each step
/// that succeeded (latest first) and declares `compensate_with`, its
/// compensation step, once. A step is left out when a later completed step
/// that has a compensation of its own took its output as input (a capture
/// consumes its authorization: refunding the capture undoes both, and
/// voiding the spent authorization would fail).
pub fn compensation_plan(workflow: &Workflow, path: &[String], outputs: &BTreeMap<String, Value>) -> Vec<String> {
    let mut plan: Vec<String> = Vec::new();
    let mut compensated: Vec<&Step> = Vec::new();
    for id in path.iter().rev() {
        let Some(step) = workflow.steps.iter().find(|s| &s.id == id) else { continue };
        let Some(comp) = step.compensate_with.as_ref() else { continue };
        if !outputs.contains_key(id) || compensated.iter().any(|s| s.id == step.id) {
            continue;
        }
        let consumed = compensated.iter().any(|later| references(&later.input, id));
        compensated.push(step);
        if !consumed && !plan.contains(comp) {
            plan.push(comp.clone());
        }
    }
    plan
}

/// Does `template` read the output of step `id` (`$.id` or `$.id.…`)?
fn references(template: &Value, id: &str) -> bool {
    match template {
        Value::String(s) => s
            .strip_prefix("$.")
            .and_then(|rest| rest.strip_prefix(id))
            .is_some_and(|t| t.is_empty() || t.starts_with('.')),
        Value::Object(m) => m.values().any(|v| references(v, id)),
        Value::Array(a) => a.iter().any(|v| references(v, id)),
        _ => false,
    }
}

/// The idempotency key of a step's call: tenant, workflow, step (with its
/// visit), tool, version and input.
pub fn idempotency_key(tenant: &TenantId, workflow: &Workflow, call: &StepCall) -> Result<IdempotencyKey> {
    Ok(step_key(tenant, workflow, call)?.key)
}

/// A side-effect call's idempotency key and the hash of its request.
#[derive(Debug, Clone, PartialEq)]
pub struct StepKey {
    pub key: IdempotencyKey,
    /// SHA-256 (hex) of the input's canonical form (the receipt's request hash).
    pub request_sha256: String,
}

/// The step as the idempotency key names it: `charge` for the first visit,
/// `charge#2` for the second...
fn visit_key(step: &str, visit: u32) -> std::borrow::Cow<'_, str> {
    if visit <= 1 { step.into() } else { format!("{step}#{visit}").into() }
}

/// [`StepKey`] of `call`.
pub fn step_key(tenant: &TenantId, workflow: &Workflow, call: &StepCall) -> Result<StepKey> {
    step_key_of(tenant, workflow, &call.step, call.visit, &call.tool, &call.version, &call.input)
}

/// [`step_key`] of the call of `step`'s visit `visit` to `tool@version`
/// with `input`, from borrowed parts (a recorded request's, in replay).
pub fn step_key_of(
    tenant: &TenantId,
    workflow: &Workflow,
    step: &str,
    visit: u32,
    tool: &str,
    version: &str,
    input: &Value,
) -> Result<StepKey> {
    let parts =
        KeyParts { tenant, workflow: &workflow.id, step: &visit_key(step, visit), tool, tool_version: version, input };
    Ok(StepKey {
        key: IdempotencyKey::derive(&parts)?,
        request_sha256: crate::idempotency::request_fingerprint(input)?,
    })
}

/// What the receipt of `call`'s side effect proves, computed the same way
/// by a live run and by its replay.
pub fn receipt_digest(call: &StepCall, key: &StepKey, output: &Value) -> Result<ReceiptDigest> {
    Ok(receipt_digest_of(call, key, canonical_sha256(output)?))
}

/// [`receipt_digest`] with the output's hash ([`canonical_sha256`]) given.
pub fn receipt_digest_of(call: &StepCall, key: &StepKey, response_sha256: String) -> ReceiptDigest {
    ReceiptDigest {
        step: call.step.clone(),
        visit: call.visit,
        tool: call.tool.clone(),
        version: call.version.clone(),
        external_key: key.key.external().to_owned(),
        request_sha256: key.request_sha256.clone(),
        response_sha256,
    }
}

/// SHA-256 (hex) of `value`'s RFC 8785 canonical form: the one hash used for
/// states, requests and responses, so equal JSON always hashes equal.
pub fn canonical_sha256(value: &Value) -> Result<String> {
    crate::idempotency::request_fingerprint(value)
}

/// An RFC 6902 JSON Patch: what one transition changed in the serialized
/// [`RunState`]. Built from what the transition touched, never by diffing
/// whole states, so its cost does not grow with the run.
///
/// Typed operations rather than `Value` maps: a run's transitions only
/// `add` and `replace`, always with a value, so each operation is one
/// struct (no map and no key strings to build, parse or compare), and its
/// JSON is the RFC 6902 object `{"op","path","value"}` as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Patch(pub Vec<PatchOp>);

/// One RFC 6902 operation of a run's patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOp {
    pub op: PatchOpKind,
    /// RFC 6901 JSON Pointer.
    pub path: String,
    pub value: Value,
}

/// The RFC 6902 operations a run's transitions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchOpKind {
    Add,
    Replace,
}

impl PatchOp {
    pub fn add(path: String, value: Value) -> PatchOp {
        PatchOp { op: PatchOpKind::Add, path, value }
    }

    pub fn replace(path: String, value: Value) -> PatchOp {
        PatchOp { op: PatchOpKind::Replace, path, value }
    }
}

impl Patch {
    /// The patch that sets the whole document to `state` (a run's version 1).
    pub fn initial(state: Value) -> Patch {
        Patch(vec![PatchOp::add(String::new(), state)])
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }

    /// This patch with the `add /outputs/STEP` operation of a successful
    /// call in front (what [`RunState::apply`] returns and the store keeps).
    pub fn with_output(mut self, step: &str, output: &Value) -> Patch {
        self.0.insert(0, PatchOp::add(pointer("outputs", step), output.clone()));
        self
    }
}

/// The scalar fields of a state, to see which a transition changed.
struct Shape {
    status: RunStatus,
    cursor: Option<String>,
    error: Option<String>,
    termination: Option<Termination>,
    compensation: Option<Compensation>,
}

impl Shape {
    fn of(s: &RunState) -> Shape {
        Shape {
            status: s.status,
            cursor: s.cursor.clone(),
            error: s.error.clone(),
            termination: s.termination,
            compensation: s.compensation.clone(),
        }
    }

    fn diff(self, s: &RunState) -> Vec<PatchOp> {
        let mut ops = Vec::new();
        self.diff_into(s, &mut ops);
        ops
    }

    fn diff_into(self, s: &RunState, ops: &mut Vec<PatchOp>) {
        let mut add = |path: &str, value: Value| ops.push(PatchOp::replace(path.to_owned(), value));
        if self.status != s.status {
            add("/status", json!(s.status));
        }
        if self.cursor != s.cursor {
            add("/cursor", s.cursor.clone().map_or(Value::Null, Value::String));
        }
        if self.error != s.error {
            add("/error", json!(s.error));
        }
        if self.termination != s.termination {
            add("/termination", json!(s.termination));
        }
        if self.compensation != s.compensation {
            // `add` creates the member or replaces it.
            ops.push(PatchOp::add("/compensation".to_owned(), json!(s.compensation)));
        }
    }
}

/// `/{field}/{key}` with the key escaped as RFC 6901 requires.
fn pointer(field: &str, key: &str) -> String {
    if key.contains(['~', '/']) {
        format!("/{field}/{}", key.replace('~', "~0").replace('/', "~1"))
    } else {
        let mut p = String::with_capacity(field.len() + key.len() + 2);
        p.push('/');
        p.push_str(field);
        p.push('/');
        p.push_str(key);
        p
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wf() -> Workflow {
        let step = |id: &str, input: Value, next: Option<&str>, on_error: Option<&str>| Step {
            id: id.into(),
            tool: format!("t.{id}"),
            version: "1".into(),
            input,
            next: next.map(Into::into),
            on_error: on_error.map(Into::into),
            agent: None,
            compensate_with: None,
            retry: None,
        };
        Workflow {
            id: "WF01".into(),
            name: "test".into(),
            steps: vec![
                step("fetch", json!({"id": "$.event.order"}), None, None),
                step("charge", json!({"amount": "$.fetch.total"}), None, Some("void")),
                step("mail", json!({}), Some("end"), None),
                step("void", json!({}), Some("end"), None),
            ],
        }
    }

    fn ok(v: Value) -> StepOutcome {
        StepOutcome::Ok { output: v }
    }

    #[test]
    fn every_transition_in_the_table_is_reachable_and_nothing_else() {
        let all = [
            RunStatus::Running,
            RunStatus::WaitingApproval,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Aborted,
        ];
        let events = [
            RunEvent::StepSucceeded,
            RunEvent::StepRecovered,
            RunEvent::ApprovalRequested,
            RunEvent::Approved,
            RunEvent::Denied,
            RunEvent::ApprovalExpired,
            RunEvent::Finished,
            RunEvent::Failed,
        ];
        for from in all {
            for ev in events {
                let listed = RUN_TRANSITIONS.iter().any(|(f, e, _)| *f == from && *e == ev);
                assert_eq!(from.on(ev).is_ok(), listed, "{from:?} on {ev:?}");
            }
            if from.is_terminal() {
                assert!(events.iter().all(|e| from.on(*e).is_err()), "{from:?} is terminal");
            }
        }
    }

    #[test]
    fn a_run_walks_its_steps_and_completes() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001"}));
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!((c.step.as_str(), c.visit, c.input.clone()), ("fetch", 1, json!({"id": "1001"})));
        s.apply(&wf, &c, &ok(json!({"total": 4200}))).unwrap();
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!(c.input, json!({"amount": 4200}));
        s.apply(&wf, &c, &ok(json!({"id": "pi_1"}))).unwrap();
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!(c.step, "mail");
        s.apply(&wf, &c, &ok(json!({}))).unwrap();
        assert_eq!(s.next(&wf).unwrap(), Command::Done);
        assert_eq!((s.status, s.termination), (RunStatus::Completed, Some(Termination::Completed)));
        assert_eq!(s.path, ["fetch", "charge", "mail"]);
    }

    #[test]
    fn a_failure_goes_to_on_error_and_ends_as_a_failure() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001"}));
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        s.apply(&wf, &c, &ok(json!({"total": 1}))).unwrap();
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        s.apply(&wf, &c, &StepOutcome::Err { code: "TOOL_FAILED".into(), message: "declined".into() }).unwrap();
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!(c.step, "void");
        s.apply(&wf, &c, &ok(json!({}))).unwrap();
        // The compensation ran and the run is over; the error is kept.
        assert_eq!(s.status, RunStatus::Completed);
        assert_eq!(s.error.as_deref(), Some("TOOL_FAILED: declined"));
    }

    #[test]
    fn an_unrouted_failure_ends_the_run_with_its_reason() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001"}));
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        s.apply(&wf, &c, &StepOutcome::Err { code: "TOOL_TIMEOUT".into(), message: "slow".into() }).unwrap();
        assert_eq!((s.status, s.termination), (RunStatus::Failed, Some(Termination::ToolTimeout)));
        assert_eq!(s.next(&wf).unwrap(), Command::Done);
        // A terminal run takes nothing more.
        assert_eq!(s.apply(&wf, &c, &ok(json!({}))).unwrap_err().code(), ErrorCode::RunTransitionInvalid);
    }

    #[test]
    fn the_state_hash_is_canonical_and_changes_with_the_state() {
        let wf = wf();
        let a = RunState::new(&wf, "r1", json!({"b": 1, "a": 2}));
        let b = RunState::new(&wf, "r1", json!({"a": 2, "b": 1}));
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        let c = RunState::new(&wf, "r1", json!({"a": 2, "b": 2}));
        assert_ne!(a.hash().unwrap(), c.hash().unwrap());
        assert_eq!(a.hash().unwrap().len(), 64);
        // Hashing the struct is hashing its serialized state.
        assert_eq!(a.hash().unwrap(), canonical_sha256(&a.to_value()).unwrap());
    }

    #[test]
    fn the_state_serializes_in_canonical_member_order() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001", "amount": 1299}));
        s.outputs.insert("fetch".into(), json!({"total": 1299, "currency": "usd"}));
        s.visits.insert("fetch".into(), 1);
        s.path.push("fetch".into());
        s.error = Some("TOOL_FAILED".into());
        s.termination = Some(Termination::ToolFailed);
        s.compensation = Some(Compensation {
            cause: "x".into(),
            done: vec![CompensationDone { error: Some("e".into()), step: "void".into() }],
            pending: vec!["refund".into()],
            termination: Termination::ToolFailed,
        });
        // Declared sorted, so hashing it needs no re-sort (crate::canonical).
        assert!(crate::canonical::takes_checked_path(&s));
        assert_eq!(s.hash().unwrap(), canonical_sha256(&s.to_value()).unwrap());
    }

    #[test]
    fn p1_t14_each_transition_is_a_patch_that_rebuilds_the_state() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001"}));
        let mut doc = s.to_value();
        let step = |s: &mut RunState, out: StepOutcome| {
            let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
            s.apply(&wf, &c, &out).unwrap()
        };
        let patches = vec![
            step(&mut s, ok(json!({"total": 5}))),
            step(&mut s, StepOutcome::Err { code: "TOOL_FAILED".into(), message: "x".into() }),
            step(&mut s, ok(json!({"voided": true}))),
        ];
        for p in patches {
            let patch: json_patch::Patch = serde_json::from_value(p.to_value()).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
        }
        assert_eq!(doc, s.to_value());
    }

    #[test]
    fn p1_t14_a_patch_is_rfc6902_json_and_other_shapes_are_refused() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1001"}));
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        let p = s.apply(&wf, &c, &ok(json!({"total": 5}))).unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"[{"op":"add","path":"/outputs/fetch","value":{"total":5}},{"op":"add","path":"/visits/fetch","value":1},{"op":"add","path":"/path/-","value":"fetch"},{"op":"replace","path":"/cursor","value":"charge"}]"#
        );
        let back: Patch = serde_json::from_value(p.to_value()).unwrap();
        assert_eq!(back, p);
        // A run's patch only adds and replaces, always with a value; anything
        // else is not a patch a run made.
        for other in [
            json!([{"op": "remove", "path": "/cursor"}]),
            json!([{"op": "add", "path": "/cursor"}]),
            json!([{"op": "add", "path": "/cursor", "value": 1, "from": "/x"}]),
        ] {
            assert!(serde_json::from_value::<Patch>(other.clone()).is_err(), "{other}");
        }
        // A key with `/` or `~` is escaped as RFC 6901 requires.
        assert_eq!(pointer("visits", "a/b~c"), "/visits/a~1b~0c");
    }

    /// authorize -> capture (consumes authorize) -> ship -> mail; void and
    /// refund only by compensation.
    fn saga() -> Workflow {
        let step = |id: &str, input: Value, next: Option<&str>, comp: Option<&str>, retry: Option<u32>| Step {
            id: id.into(),
            tool: format!("t.{id}"),
            version: "1".into(),
            input,
            next: next.map(Into::into),
            on_error: None,
            agent: None,
            compensate_with: comp.map(Into::into),
            retry,
        };
        Workflow {
            id: "WF01".into(),
            name: "saga".into(),
            steps: vec![
                step("authorize", json!({}), None, Some("void"), None),
                step("capture", json!({"pi": "$.authorize.id"}), None, Some("refund"), None),
                step("ship", json!({}), None, None, Some(2)),
                step("mail", json!({}), Some("end"), None, None),
                step("void", json!({"pi": "$.authorize.id"}), Some("end"), None, None),
                step("refund", json!({"pi": "$.capture.id"}), Some("end"), None, None),
            ],
        }
    }

    fn drive(s: &mut RunState, wf: &Workflow, outcomes: &[(&str, StepOutcome)]) -> Vec<Patch> {
        let mut patches = Vec::new();
        for (step, out) in outcomes {
            let Command::Call(c) = s.next(wf).unwrap() else { panic!("done before {step}") };
            assert_eq!(&c.step, step);
            patches.push(s.apply(wf, &c, out).unwrap());
        }
        patches
    }

    fn err(code: &str) -> StepOutcome {
        StepOutcome::Err { code: code.into(), message: "no".into() }
    }

    #[test]
    fn p1_t27_a_failure_after_money_moved_runs_the_compensations_latest_first() {
        let wf = saga();
        let mut s = RunState::new(&wf, "r1", json!({}));
        let mut doc = s.to_value();
        // ship fails twice (retry = 2), then refund; the capture consumed the
        // authorization, so no void.
        let patches = drive(
            &mut s,
            &wf,
            &[
                ("authorize", ok(json!({"id": "pi_1"}))),
                ("capture", ok(json!({"id": "pi_1"}))),
                ("ship", err("PROVIDER_UNAVAILABLE")),
                ("ship", err("PROVIDER_UNAVAILABLE")),
                ("refund", ok(json!({"id": "re_1"}))),
            ],
        );
        assert_eq!(s.next(&wf).unwrap(), Command::Done);
        assert_eq!((s.status, s.termination), (RunStatus::Failed, Some(Termination::ToolFailed)));
        let c = s.compensation.clone().unwrap();
        assert_eq!(c.done, vec![CompensationDone { step: "refund".into(), error: None }]);
        assert!(c.pending.is_empty() && c.cause.starts_with("PROVIDER_UNAVAILABLE"));
        assert_eq!(s.visits["ship"], 2);
        for p in patches {
            let patch: json_patch::Patch = serde_json::from_value(p.to_value()).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
        }
        assert_eq!(doc, s.to_value(), "the patches rebuild the compensating run");
    }

    #[test]
    fn p1_t27_a_failed_capture_voids_the_authorization_and_a_failed_compensation_is_recorded() {
        let wf = saga();
        let mut s = RunState::new(&wf, "r1", json!({}));
        drive(&mut s, &wf, &[("authorize", ok(json!({"id": "pi_1"}))), ("capture", err("PROVIDER_DECLINED"))]);
        assert_eq!(s.status, RunStatus::Running, "compensating, not ended");
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!((c.step.as_str(), c.input.clone()), ("void", json!({"pi": "pi_1"})));
        s.apply(&wf, &c, &err("PROVIDER_REJECTED")).unwrap();
        assert_eq!((s.status, s.termination), (RunStatus::Failed, Some(Termination::ToolFailed)));
        let done = &s.compensation.as_ref().unwrap().done;
        assert_eq!(done[0].step, "void");
        assert!(done[0].error.as_deref().unwrap().starts_with("PROVIDER_REJECTED"));
        // The run's error stays the failure that started the unwinding.
        assert!(s.error.as_deref().unwrap().starts_with("PROVIDER_DECLINED"));
    }

    #[test]
    fn p1_t27_nothing_to_compensate_ends_the_run_and_a_denial_compensates() {
        let wf = saga();
        let mut s = RunState::new(&wf, "r1", json!({}));
        drive(&mut s, &wf, &[("authorize", err("PROVIDER_DECLINED"))]);
        assert_eq!((s.status, s.compensation.is_none()), (RunStatus::Failed, true));
        // The state of a run that never compensated serializes as before.
        assert!(s.to_value().get("compensation").is_none());
        let mut d = RunState::new(&wf, "r2", json!({}));
        drive(&mut d, &wf, &[("authorize", ok(json!({"id": "pi_2"})))]);
        d.wait_for_approval().unwrap();
        d.end_on_decision(&wf, Termination::HitlDenied).unwrap();
        assert_eq!(d.status, RunStatus::Running);
        drive(&mut d, &wf, &[("void", ok(json!({})))]);
        assert_eq!((d.status, d.termination), (RunStatus::Aborted, Some(Termination::HitlDenied)));
        // Without anything done, a denial aborts at once.
        let mut e = RunState::new(&wf, "r3", json!({}));
        e.wait_for_approval().unwrap();
        e.end_on_decision(&wf, Termination::HitlTimeout).unwrap();
        assert_eq!((e.status, e.termination), (RunStatus::Failed, Some(Termination::HitlTimeout)));
    }

    #[test]
    fn p1_t27_a_step_retries_per_its_policy_with_a_new_visit_each_time() {
        let wf = saga();
        let mut s = RunState::new(&wf, "r1", json!({}));
        drive(
            &mut s,
            &wf,
            &[
                ("authorize", ok(json!({"id": "pi_1"}))),
                ("capture", ok(json!({"id": "pi_1"}))),
                ("ship", err("PROVIDER_UNAVAILABLE")),
            ],
        );
        let Command::Call(c) = s.next(&wf).unwrap() else { panic!() };
        assert_eq!((c.step.as_str(), c.visit, c.step_key()), ("ship", 2, "ship#2".to_owned()));
        s.apply(&wf, &c, &ok(json!({}))).unwrap();
        drive(&mut s, &wf, &[("mail", ok(json!({})))]);
        assert_eq!((s.status, s.compensation.is_none()), (RunStatus::Completed, true));
    }

    #[test]
    fn approval_pauses_and_resumes_or_aborts() {
        let wf = wf();
        let mut s = RunState::new(&wf, "r1", json!({"order": "1"}));
        s.wait_for_approval().unwrap();
        assert_eq!(s.status, RunStatus::WaitingApproval);
        assert!(s.wait_for_approval().is_err());
        s.approved().unwrap();
        assert_eq!(s.status, RunStatus::Running);
        s.wait_for_approval().unwrap();
        s.end(Termination::HitlDenied).unwrap();
        assert_eq!(s.status, RunStatus::Aborted);
        let mut t = RunState::new(&wf, "r2", json!({}));
        t.wait_for_approval().unwrap();
        t.end(Termination::HitlTimeout).unwrap();
        assert_eq!(t.status, RunStatus::Failed);
    }
}
