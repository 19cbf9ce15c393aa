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
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::transition;
use crate::llm::AgentStep;
use crate::llm::agent::{Dialogue, Turn};
use crate::run::{
    Command, Patch, RunState, StepCall, StepKey, StepOutcome, canonical_sha256, receipt_digest, receipt_digest_of,
    step_key, step_key_of,
};
use crate::tenant::TenantId;
use crate::trace::TracedError;
use crate::transcript::{Entry, Line, ReceiptDigest, Transcript};
use crate::workflow::AgentSpec;
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
    let ahead = (transcript.lines.len() >= HASH_AHEAD_MIN_LINES).then(|| Ahead::new(&transcript.lines));
    std::thread::scope(|scope| {
        let mut r = Replayer::new(workflow, registry, tenant, run_id, event, resumes)?;
        // At most one receipt per successful side-effect response: reserved
        // once, not grown (and copied) a doubling at a time.
        let effects = transcript.entries().filter(|e| has_hash(e) && matches!(e, Entry::ToolResponse { .. })).count();
        r.receipts.reserve(effects);
        // A long transcript's canonical hashes are shared out between this
        // thread and a second one (see [`Ahead`]); the guard stops the
        // second thread however the replay ends (identical, diverged,
        // failed), at its next line.
        let _stop = ahead.as_ref().map(|ahead| {
            let tenant = r.tenant.clone();
            scope.spawn(move || ahead.work(workflow, &tenant));
            StopOnDrop(&ahead.stop)
        });
        r.ahead = ahead.as_ref();
        for line in transcript.lines.iter().skip(1) {
            if let Err(d) = r.take(line.seq + 1, &line.entry)? {
                return Ok(ReplayOutcome::Diverged(d));
            }
        }
        r.ahead = None;
        let termination = r.state.termination.unwrap_or(Termination::Completed);
        Ok(ReplayOutcome::Identical(Replayed {
            run_id: run_id.clone(),
            workflow: workflow.id.clone(),
            steps: r.steps,
            termination,
            state_sha256: match r.state_sha256.take() {
                Some(hash) => hash,
                None => r.state.hash()?,
            },
            receipts: r.receipts.len(),
        }))
    })
}

/// Below this many lines a replay hashes on its own thread only (starting
/// a thread costs more than it saves). Debug builds share out the work of
/// every replay, so that the tests run this path on every transcript they
/// replay.
const HASH_AHEAD_MIN_LINES: usize = if cfg!(debug_assertions) { 2 } else { 256 };

/// A hash computed from a recorded line: what replay would compute from
/// the same values when it reaches the line. Replay takes it only where it
/// has checked that its own call is the recorded one (same step, visit,
/// tool, version and input), and the output it hashes is the recorded one,
/// so the hash is the one it would compute itself.
enum Hashed {
    /// The idempotency key and request hash of a side effect's request.
    Key(StepKey),
    /// [`canonical_sha256`] of a successful response's recorded output.
    Response(String),
    /// Hashing failed (or panicked): the replaying thread hashes the line
    /// again itself, to report the error where and as it would have.
    Failed,
}

/// The canonical hashes of a long transcript, shared out between the
/// replaying thread and a second one.
///
/// Replay is serial, but a large part of its cost is hashing (the step
/// keys and the response digests, through [`crate::canonical`]), and each
/// of those hashes is a function of one recorded line. So a second thread
/// walks the transcript from its last line back and hashes every line not
/// yet taken, while the replaying thread, going forward, hashes every line
/// it reaches that the other has not taken, and takes the other's hash for
/// the rest (waiting only for the one line being hashed where they meet).
/// Each line is claimed once (an atomic swap), so no hash is computed
/// twice, and the work balances itself. (Both walking forward was slower:
/// once the second thread caught up, it kept one line ahead, and the
/// replaying thread waited for every hash in turn.)
struct Ahead<'t> {
    lines: &'t [Line],
    /// Per line: taken by the thread that hashes it.
    claimed: Vec<AtomicBool>,
    /// Per line: the hash, once the second thread computed it.
    hashed: Vec<OnceLock<Hashed>>,
    /// Set when the replay ends: the second thread stops.
    stop: AtomicBool,
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<'t> Ahead<'t> {
    fn new(lines: &'t [Line]) -> Ahead<'t> {
        Ahead {
            lines,
            claimed: lines.iter().map(|_| AtomicBool::new(false)).collect(),
            hashed: lines.iter().map(|_| OnceLock::new()).collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// The second thread: from the last line back, the hash of every line
    /// that has one and that the replaying thread has not taken, until the
    /// replay ends.
    fn work(&self, workflow: &Workflow, tenant: &TenantId) {
        for (i, line) in self.lines.iter().enumerate().rev() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if !has_hash(&line.entry) || self.claimed[i].swap(true, Ordering::AcqRel) {
                continue;
            }
            // A panic here must not leave the replaying thread waiting for
            // this line: it gets an error instead, and computes the hash
            // itself (see `Replayer::key_of`).
            let hashed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hash_of(&line.entry, workflow, tenant)))
                    .unwrap_or(Hashed::Failed);
            let _ = self.hashed[i].set(hashed);
        }
    }

    /// The hash of 1-based `line` if the second thread computes it (waiting
    /// for it if need be); `None` when the replaying thread is to compute
    /// it, which it then owns.
    fn take(&self, line: u64) -> Option<&Hashed> {
        let i = usize::try_from(line.checked_sub(1)?).ok()?;
        if !self.claimed.get(i)?.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(self.hashed[i].wait())
    }
}

/// Does replay hash this line?
fn has_hash(entry: &Entry) -> bool {
    matches!(
        entry,
        Entry::ToolRequest { idempotency_key: Some(_), .. }
            | Entry::ToolResponse { outcome: StepOutcome::Ok { .. }, effect: true, .. }
    )
}

/// The hash of a line [`has_hash`] says has one, from its recorded values.
fn hash_of(entry: &Entry, workflow: &Workflow, tenant: &TenantId) -> Hashed {
    match entry {
        Entry::ToolRequest { step, visit, tool, version, input, .. } => {
            step_key_of(tenant, workflow, step, *visit, tool, version, input).map_or(Hashed::Failed, Hashed::Key)
        }
        Entry::ToolResponse { outcome: StepOutcome::Ok { output }, .. } => {
            canonical_sha256(output).map_or(Hashed::Failed, Hashed::Response)
        }
        _ => Hashed::Failed,
    }
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

/// An agent step's recorded lines, by (step, visit, turn).
#[derive(Default)]
struct AgentLines {
    /// (request SHA-256, reply)
    turns: HashMap<(String, u32, u32), (String, String)>,
    /// (tool, version, input, idempotency key, line)
    #[allow(clippy::type_complexity)]
    calls: HashMap<(String, u32, u32), (String, String, Value, Option<String>, u64)>,
    /// (outcome, effect)
    results: HashMap<(String, u32, u32), (StepOutcome, bool)>,
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
    /// Receipts whose step is not committed yet.
    pending_receipts: Vec<ReceiptDigest>,
    /// What agent steps recorded, by (step, visit, turn): kept across
    /// `resumed` lines, as a resumed run reuses them.
    agent: AgentLines,
    /// The call the workflow asked for and the transcript confirmed, with
    /// its key when it is a side effect.
    pending: Option<(StepCall, Option<StepKey>)>,
    /// The change the last transition made, to compare with the next
    /// `state_patch` line.
    patch: Option<Patch>,
    receipts: Vec<ReceiptDigest>,
    steps: u64,
    /// The state hash the `run_end` line was checked against.
    state_sha256: Option<String>,
    /// The side effect of each tool version looked up so far (a registry
    /// lookup builds its key; a run calls few tools many times).
    side_effects: Vec<(&'a str, &'a str, SideEffect)>,
    /// The hashes shared out with a second thread, for a long transcript.
    ahead: Option<&'a Ahead<'a>>,
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
            pending_receipts: Vec::new(),
            agent: AgentLines::default(),
            pending: None,
            patch: None,
            receipts: Vec::new(),
            steps: 0,
            state_sha256: None,
            side_effects: Vec::new(),
            ahead: None,
        })
    }

    /// Roll back to what the store held at `version` when the run resumed.
    fn resume_at(&mut self, line: u64, version: i64) -> Result<()> {
        self.pending = None;
        self.patch = None;
        self.pending_receipts.clear();
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
        let step = self.pending.as_ref().map(|(c, _)| c.step_key()).or_else(|| self.state.cursor.clone());
        self.diverged_at(line, step, what, expected, actual)
    }

    fn diverged_at(&self, line: u64, step: Option<String>, what: &str, expected: Value, actual: Value) -> Step {
        Err(Divergence { line, step, what: what.to_owned(), expected, actual })
    }

    /// An agent step's line must belong to the step being run.
    fn in_agent_step(&self, line: u64, what: &str, step: &str, visit: u32) -> Step {
        match &self.pending {
            Some((call, _)) if call.step == step && call.visit == visit => Ok(()),
            _ => {
                self.diverged(line, what, json!({"step": step, "visit": visit}), json!("no agent step is running here"))
            }
        }
    }

    /// Re-run agent step `call` from its recorded turns: the same dialogue a
    /// live run has (no model is asked), every proposal checked against its
    /// recorded `agent_call`, every answer taken from its `agent_result`,
    /// and the output computed from them compared with the recorded one.
    /// The receipts of its side effects become pending.
    fn agent_step(&mut self, line: u64, agent: &AgentSpec, call: &StepCall, recorded: &StepOutcome) -> Result<Step> {
        let step = AgentStep::new(&call.step, agent.tools.clone()).with_max_turns(agent.max_turns);
        let mut dialogue = Dialogue::with_registry(&step, self.registry, &agent.prompt, &call.input, &call.input);
        let at = Some(call.step_key());
        // `None`: the recorded lines stop before the step's end (the model
        // failed, a bound ran out): only a recorded failure matches.
        let computed: Option<std::result::Result<Value, String>> = loop {
            if let Err(e) = dialogue.check_turns(&step) {
                break Some(Err(e.code().as_str().to_owned()));
            }
            let turn = dialogue.outcome.turns;
            let key = (call.step.clone(), call.visit, turn);
            let Some((request, content)) = self.agent.turns.get(&key) else { break None };
            let ours = dialogue.request_sha256();
            if request != &ours {
                let what = format!("model_turn {turn} request");
                return Ok(self.diverged_at(line, at, &what, json!(request), json!(ours)));
            }
            let (allowed, input) = match dialogue.reply(&step, content) {
                Turn::Final => break Some(Ok(dialogue.output())),
                Turn::Invalid(e) => break Some(Err(e.code().as_str().to_owned())),
                Turn::NotAllowed(_, _, e) => {
                    dialogue.refused(&TracedError::from(&e));
                    continue;
                }
                Turn::Call(allowed, input) => (allowed, input),
            };
            let Some((tool, version, recorded_input, recorded_key, call_line)) = self.agent.calls.get(&key) else {
                break None;
            };
            if (tool, version, recorded_input) != (&allowed.name, &allowed.version, &input) {
                let expected = json!({"tool": tool, "version": version, "input": recorded_input});
                let actual = json!({"tool": allowed.name, "version": allowed.version, "input": input});
                return Ok(self.diverged_at(*call_line, at, "agent_call", expected, actual));
            }
            let sub = call.proposal(turn, &allowed.name, &allowed.version, &input);
            let side_effect = self.registry.lookup(&sub.tool, &sub.version).map(|c| c.side_effect);
            let sub_key = match side_effect {
                Ok(SideEffect::Read) => None,
                _ => Some(step_key(&self.tenant, self.workflow, &sub)?),
            };
            let ours = sub_key.as_ref().map(|k| k.key.external().to_owned());
            if recorded_key.is_some() && recorded_key != &ours {
                return Ok(self.diverged_at(*call_line, at, "idempotency_key", json!(recorded_key), json!(ours)));
            }
            let Some((outcome, effect)) = self.agent.results.get(&key).cloned() else { break None };
            match outcome {
                StepOutcome::Ok { output } => {
                    if let (true, Some(k)) = (effect, &sub_key) {
                        self.pending_receipts.push(receipt_digest(&sub, k, &output)?);
                    }
                    dialogue.executed(allowed, input, output);
                }
                StepOutcome::Err { code, message } => dialogue.refused(&TracedError { code, message }),
            }
        };
        let matches = match (&computed, recorded) {
            (Some(Ok(ours)), StepOutcome::Ok { output }) => ours == output,
            (Some(Err(ours)), StepOutcome::Err { code, .. }) => ours == code,
            (None, StepOutcome::Err { .. }) => true,
            _ => false,
        };
        if matches {
            return Ok(Ok(()));
        }
        let actual = match computed {
            Some(Ok(v)) => json!({"ok": {"output": v}}),
            Some(Err(code)) => json!({"err": {"code": code}}),
            None => json!("the recorded turns end before the step does"),
        };
        Ok(self.diverged_at(line, at, "agent_output", json!(recorded), actual))
    }

    /// The step key of `call`, recorded at `line`: the one the second
    /// thread computed, or computed here.
    fn key_of(&self, line: u64, call: &StepCall) -> Result<StepKey> {
        match self.ahead.and_then(|a| a.take(line)) {
            Some(Hashed::Key(key)) => Ok(key.clone()),
            // A failure is computed again here, for its full detail.
            _ => step_key(&self.tenant, self.workflow, call),
        }
    }

    /// [`canonical_sha256`] of `output`, recorded at `line`: the one the
    /// second thread computed, or computed here.
    fn response_hash_of(&self, line: u64, output: &Value) -> Result<String> {
        match self.ahead.and_then(|a| a.take(line)) {
            Some(Hashed::Response(hash)) => Ok(hash.clone()),
            _ => canonical_sha256(output),
        }
    }

    /// Does `tool@version` have a side effect? Unknown tools count as one.
    fn has_effect(&mut self, tool: &str, version: &str) -> bool {
        if let Some((_, _, s)) = self.side_effects.iter().find(|(t, v, _)| *t == tool && *v == version) {
            return *s != SideEffect::Read;
        }
        match self.registry.lookup(tool, version) {
            Ok(c) => {
                self.side_effects.push((&c.name, &c.version, c.side_effect));
                c.side_effect != SideEffect::Read
            }
            Err(_) => true,
        }
    }

    /// A transition's line was taken: the store would now hold the next
    /// version, with the pending receipt.
    fn committed(&mut self) {
        let receipts_before = self.receipts.len();
        self.receipts.append(&mut self.pending_receipts);
        self.version += 1;
        if let Some((at, _)) = self.committed.take() {
            self.committed = Some((self.state.clone(), Some((at, receipts_before))));
        }
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
            Entry::ToolRequest { step, visit, tool, version, input, idempotency_key, .. } => {
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
                if (&call.step, call.visit, &call.tool, &call.version, &call.input)
                    != (step, *visit, tool, version, input)
                {
                    let recorded =
                        json!({"step": step, "visit": visit, "tool": tool, "version": version, "input": input});
                    let computed = json!({"step": call.step, "visit": call.visit, "tool": call.tool, "version": call.version, "input": call.input});
                    return Ok(self.diverged(line, "request", recorded, computed));
                }
                let key = match idempotency_key {
                    Some(recorded) => {
                        let ours = self.key_of(line, &call)?;
                        if recorded != ours.key.external() {
                            let actual = json!(ours.key.external());
                            return Ok(self.diverged(line, "idempotency_key", json!(recorded), actual));
                        }
                        Some(ours)
                    }
                    None => None,
                };
                self.pending = Some((call, key));
                Ok(())
            }
            Entry::ToolResponse { step, visit, outcome, effect, ended, version, patch, .. } => {
                let Some((call, key)) = self.pending.take() else {
                    return Ok(self.diverged(line, "response", json!("a tool_request first"), json!(step)));
                };
                let at = Some(call.step_key());
                if (&call.step, call.visit) != (step, *visit) {
                    let expected = json!({"step": step, "visit": visit});
                    let actual = json!({"step": call.step, "visit": call.visit});
                    return Ok(self.diverged_at(line, at, "response", expected, actual));
                }
                self.steps += 1;
                // The step is the state's cursor: found by its index hint,
                // not by a search through the workflow's steps.
                let workflow = self.workflow;
                if let Some(agent) = agent_of(workflow, &self.state, &call.step)
                    && let Err(d) = self.agent_step(line, agent, &call, outcome)?
                {
                    return Ok(Err(d));
                }
                let ours = response_transition(workflow, &mut self.state, &call, outcome, *ended)
                    .map_err(|e| impossible(line, e))?;
                if &ours != patch {
                    return Ok(self.diverged_at(line, at, "state_patch", patch.to_value(), ours.to_value()));
                }
                if *version != self.version + 1 {
                    return Ok(self.diverged_at(line, at, "state_version", json!(version), json!(self.version + 1)));
                }
                if *effect
                    && let StepOutcome::Ok { output } = outcome
                    && self.has_effect(&call.tool, &call.version)
                {
                    let key = match key {
                        Some(key) => key,
                        None => step_key(&self.tenant, self.workflow, &call)?,
                    };
                    let response_sha256 = self.response_hash_of(line, output)?;
                    self.pending_receipts.push(receipt_digest_of(&call, &key, response_sha256));
                }
                self.committed();
                Ok(())
            }
            Entry::ModelTurn { step, visit, turn, request_sha256, content, .. } => {
                if let Err(d) = self.in_agent_step(line, "model_turn", step, *visit) {
                    return Ok(Err(d));
                }
                self.agent.turns.insert((step.clone(), *visit, *turn), (request_sha256.clone(), content.clone()));
                Ok(())
            }
            Entry::AgentCall { step, visit, turn, tool, version, input, idempotency_key, .. } => {
                if let Err(d) = self.in_agent_step(line, "agent_call", step, *visit) {
                    return Ok(Err(d));
                }
                let recorded = (tool.clone(), version.clone(), input.clone(), idempotency_key.clone(), line);
                self.agent.calls.insert((step.clone(), *visit, *turn), recorded);
                Ok(())
            }
            Entry::AgentResult { step, visit, turn, outcome, effect, .. } => {
                if let Err(d) = self.in_agent_step(line, "agent_result", step, *visit) {
                    return Ok(Err(d));
                }
                self.agent.results.insert((step.clone(), *visit, *turn), (outcome.clone(), *effect));
                Ok(())
            }
            Entry::HitlRequested { .. } | Entry::HitlDecision { .. } | Entry::RunStopped { .. } => {
                let patch = line_transition(self.workflow, &mut self.state, line, entry)?;
                self.patch = Some(patch.map_err(|e| impossible(line, e))?);
                Ok(())
            }
            Entry::StatePatch { patch, .. } => {
                let ours = self.patch.take().unwrap_or(Patch(Vec::new()));
                if &ours != patch {
                    return Ok(self.diverged(line, "state_patch", patch.to_value(), ours.to_value()));
                }
                self.committed();
                Ok(())
            }
            Entry::RunEnd { status, termination, state_sha256, receipts } => {
                let hash = self.state.hash()?;
                self.state_sha256 = Some(hash.clone());
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

fn impossible(line: u64, e: Error) -> Error {
    Error::new(
        ErrorCode::TranscriptCorrupt,
        format!("line {line}: the recorded history is impossible: {}", e.message()),
    )
}

/// The agent spec of `step`, the state's cursor step, if it is an agent
/// step (found by the cursor's index hint, not by a search).
fn agent_of<'w>(workflow: &'w Workflow, state: &RunState, step: &str) -> Option<&'w AgentSpec> {
    state.cursor_step(workflow, step).ok().and_then(|(_, s)| s.agent.as_ref())
}

/// The transition a recorded response makes: the run's own, with the
/// reason the live engine gives when the call ended the run.
fn response_transition(
    workflow: &Workflow,
    state: &mut RunState,
    call: &StepCall,
    outcome: &StepOutcome,
    ended: Option<Termination>,
) -> Result<Patch> {
    let ended_ok = match agent_of(workflow, state, &call.step) {
        Some(_) => "the run ended during the agent step",
        None => "the run ended during the call",
    };
    transition(workflow, state, call, outcome, ended, ended_ok)
}

/// The transition an approval or stop line makes (`entry` is one of
/// those); the outer error is a broken transcript, the inner an
/// impossible history.
fn line_transition(workflow: &Workflow, state: &mut RunState, line: u64, entry: &Entry) -> Result<Result<Patch>> {
    Ok(match entry {
        Entry::HitlRequested { .. } => state.wait_for_approval(),
        Entry::HitlDecision { decision, .. } => match decision.as_str() {
            "approved" => state.approved(),
            "denied" => state.end_on_decision(workflow, Termination::HitlDenied),
            "expired" => state.end_on_decision(workflow, Termination::HitlTimeout),
            other => {
                return Err(Error::new(
                    ErrorCode::TranscriptCorrupt,
                    format!("line {line}: unknown decision {other:?}"),
                ));
            }
        },
        Entry::RunStopped { termination, error, step } => state.stop(step.as_deref(), *termination, error),
        other => {
            let what = format!("line {line}: a {} line is not an approval or a stop", other.kind());
            return Err(Error::new(ErrorCode::TranscriptCorrupt, what));
        }
    })
}
