//! The soak harness behind `autobiz soak` (P1-TASK-32): a planned stream of
//! deliveries over N days ([`plan`]), each handed to a [`Driver`] that sends
//! it through the ingress and reports how its run ended; a rolling Wilson
//! gate over those outcomes; invariant monitors the driver evaluates against
//! the store and the fakes; a checkpoint so a killed soak resumes without
//! counting any delivery twice; and the outcome that becomes the soak's
//! evidence (predicate `https://autobiz.dev/soak-evidence/v1`, read by
//! `autobiz exit-criteria`).
//!
//! What happened is kept apart from how it is shown: [`run`] reports through
//! [`Progress`]; the command draws the bar.

pub mod checkpoint;
pub mod driver;
pub mod plan;
pub mod traffic;

use std::collections::{BTreeMap, VecDeque};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gate::wilson;
use crate::report::CliError;
use checkpoint::{Checkpoint, Record};
use plan::PlannedEvent;

/// The invariants the monitors watch (the alert label `invariant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// A provider side effect happened twice for one intent (two captures,
    /// two fulfilments of one order).
    DuplicateSideEffect,
    /// A read or write crossed tenants (a `security_events` row).
    CrossTenantAccess,
    /// A run without a trace.
    UntracedRun,
    /// A planted secret or card number reached a persisted trace.
    SecretInTrace,
    /// Money moved without an approved request.
    UnapprovedFinancialStep,
}

impl Invariant {
    pub const ALL: [Invariant; 5] = [
        Invariant::DuplicateSideEffect,
        Invariant::CrossTenantAccess,
        Invariant::UntracedRun,
        Invariant::SecretInTrace,
        Invariant::UnapprovedFinancialStep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Invariant::DuplicateSideEffect => "duplicate_side_effect",
            Invariant::CrossTenantAccess => "cross_tenant_access",
            Invariant::UntracedRun => "untraced_run",
            Invariant::SecretInTrace => "secret_in_trace",
            Invariant::UnapprovedFinancialStep => "unapproved_financial_step",
        }
    }

    pub fn parse(s: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

/// One violation a monitor found, with what shows it (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
    /// The delivery after which it was found.
    pub seq: u64,
}

/// How one delivery's run ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// Did the workflow reach the outcome its plan expects (completed, or
    /// the designed ending of a declined card or a timed-out approval)?
    pub success: bool,
    /// The run's terminal status and reason, for the report.
    pub status: String,
}

/// Sends deliveries and checks invariants. The production driver posts
/// signed webhooks to `autobiz serve` against the fakes; tests script one.
#[async_trait]
pub trait Driver {
    /// Deliver `event` at `now` (the soak's clock) and wait for its run to
    /// end. An error is infrastructure (the server or store is gone): the
    /// soak stops and can be resumed.
    async fn deliver(&mut self, event: &PlannedEvent, now: DateTime<Utc>) -> Result<RunOutcome, CliError>;
    /// Evaluate every invariant monitor over what has happened so far.
    async fn check_invariants(&mut self) -> Result<Vec<(Invariant, String)>, CliError>;
}

/// How the soak's time passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ClockMode {
    /// Real time: a delivery planned for 14:00 on day 3 waits until then.
    Wall,
    /// The injected clock jumps to each delivery's time: days in minutes.
    Virtual,
}

/// The soak's parameters; a resumed soak must be given the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakConfig {
    pub days: u32,
    pub events_per_day: u32,
    pub seed: u64,
    pub clock: ClockMode,
    pub mix: plan::Mix,
    pub start: DateTime<Utc>,
    /// The rolling gate: the last `window` outcomes, judged once there are
    /// at least `warmup` of them.
    pub window: usize,
    pub warmup: usize,
    pub confidence: f64,
    pub threshold: f64,
    /// Check the invariants after every this many deliveries (and at the end).
    pub check_every: u64,
}

impl SoakConfig {
    /// The soak's plan, drawn a day at a time as it is walked.
    pub fn plan(&self) -> plan::Plan<'_> {
        plan::Plan::new(&self.mix, self.days, self.events_per_day, self.seed, self.start)
    }

    /// How many deliveries the plan holds (without drawing it).
    pub fn planned(&self) -> u64 {
        self.plan().len()
    }
}

/// A workflow's tally.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTally {
    pub runs: u64,
    pub completed: u64,
    pub success_rate: f64,
}

/// What the soak came to: the predicate of its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakOutcome {
    pub schema_version: u32,
    pub verdict: &'static str,
    pub clock: ClockMode,
    /// Simulated (virtual) or elapsed (wall) days covered by the deliveries.
    pub days: f64,
    pub events: u64,
    pub planned_events: u64,
    pub threshold: f64,
    pub confidence: f64,
    pub window: usize,
    /// The rolling lower bound at the end.
    pub lower_bound: Option<f64>,
    /// The lowest rolling lower bound after the warm-up.
    pub min_lower_bound: Option<f64>,
    pub violations: Vec<Violation>,
    pub workflows: BTreeMap<String, WorkflowTally>,
    /// Times the soak was resumed from its checkpoint.
    pub resumes: u32,
    pub seed: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Why the verdict is `fail`, in words.
    pub reasons: Vec<String>,
}

/// The rolling Wilson gate: the lower bound over the last `window` outcomes.
#[derive(Debug, Clone)]
pub struct RollingGate {
    window: usize,
    warmup: usize,
    confidence: f64,
    outcomes: VecDeque<bool>,
    successes: u64,
    min: Option<f64>,
}

impl RollingGate {
    pub fn new(window: usize, warmup: usize, confidence: f64) -> RollingGate {
        RollingGate { window: window.max(1), warmup, confidence, outcomes: VecDeque::new(), successes: 0, min: None }
    }

    /// Add one outcome; the current lower bound once warmed up.
    pub fn push(&mut self, success: bool) -> Option<f64> {
        self.outcomes.push_back(success);
        self.successes += u64::from(success);
        if self.outcomes.len() > self.window && self.outcomes.pop_front() == Some(true) {
            self.successes -= 1;
        }
        let lcb = self.lower_bound();
        if let Some(l) = lcb {
            self.min = Some(self.min.map_or(l, |m: f64| m.min(l)));
        }
        lcb
    }

    pub fn lower_bound(&self) -> Option<f64> {
        if self.outcomes.len() < self.warmup.max(1) {
            return None;
        }
        wilson::lower_bound(self.successes, self.outcomes.len() as u64, self.confidence).ok()
    }

    pub fn min_lower_bound(&self) -> Option<f64> {
        self.min
    }

    /// Successes over outcomes in the window (0 before the first).
    pub fn pass_rate(&self) -> f64 {
        if self.outcomes.is_empty() { 0.0 } else { self.successes as f64 / self.outcomes.len() as f64 }
    }
}

/// The rolling gate after a delivery, as the live summary and the
/// metrics show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateNow {
    pub lower_bound: Option<f64>,
    /// Successes over outcomes in the window.
    pub pass_rate: f64,
}

/// What the run loop tells the command as it goes.
pub trait Progress {
    fn started(&self, planned: u64, already_done: u64);
    fn delivered(&self, done: u64, gate: GateNow, violations: &[Violation]);
}

/// What the deliveries counted so far add up to: the rolling gate, the
/// tallies, the violations found and the last delivery's time. A resumed
/// soak folds its checkpoint's records into it one at a time (see
/// [`Checkpoint::open`]), so neither the records nor the plan are held in
/// memory, however long the soak.
#[derive(Debug, Clone)]
pub struct Totals {
    pub gate: RollingGate,
    pub tallies: BTreeMap<String, WorkflowTally>,
    pub violations: Vec<Violation>,
    pub last_at: Option<DateTime<Utc>>,
    /// Deliveries counted.
    pub count: u64,
}

impl Totals {
    pub fn new(config: &SoakConfig) -> Totals {
        Totals::of_gate(RollingGate::new(config.window, config.warmup, config.confidence))
    }

    /// Totals of the same gate that count nothing yet.
    pub fn fresh(&self) -> Totals {
        let g = &self.gate;
        Totals::of_gate(RollingGate::new(g.window, g.warmup, g.confidence))
    }

    fn of_gate(gate: RollingGate) -> Totals {
        Totals { gate, tallies: BTreeMap::new(), violations: Vec::new(), last_at: None, count: 0 }
    }

    /// Count one delivery whose run ended; the rolling lower bound after it.
    pub fn add(&mut self, record: Record) -> Option<f64> {
        let lcb = self.gate.push(record.success);
        let t = self.tallies.entry(record.workflow).or_default();
        t.runs += 1;
        t.completed += u64::from(record.success);
        self.violations.extend(record.violations);
        self.last_at = Some(record.at);
        self.count += 1;
        lcb
    }
}

/// Run (or resume) the soak: every planned delivery not yet in the
/// checkpoint, in order, then a last invariant check. Each delivery is
/// appended to the checkpoint once its run has ended, so a kill at any point
/// re-delivers at most the delivery in flight; the ingress deduplicates it by
/// provider event id, and the checkpoint counts it once.
pub async fn run(
    config: &SoakConfig,
    driver: &mut dyn Driver,
    checkpoint: &mut Checkpoint,
    progress: &dyn Progress,
) -> Result<SoakOutcome, CliError> {
    let events = config.plan();
    let planned = events.len();
    let mut totals = checkpoint.take_totals();
    let done = totals.count;
    progress.started(planned, done);
    for event in events.skip(done as usize) {
        let now = match config.clock {
            ClockMode::Virtual => event.at,
            ClockMode::Wall => {
                let wait = event.at - Utc::now();
                if let Ok(wait) = wait.to_std() {
                    tokio::time::sleep(wait).await;
                }
                Utc::now()
            }
        };
        let outcome = driver.deliver(&event, now).await?;
        let mut found = Vec::new();
        if (event.seq + 1).is_multiple_of(config.check_every.max(1)) || event.seq + 1 == planned {
            for (invariant, detail) in driver.check_invariants().await? {
                let v = Violation { invariant, detail, seq: event.seq };
                let seen = |old: &Violation| old.invariant == v.invariant && old.detail == v.detail;
                if !totals.violations.iter().any(seen) && !found.iter().any(seen) {
                    found.push(v);
                }
            }
        }
        let record = Record {
            seq: event.seq,
            workflow: event.workflow,
            at: now,
            success: outcome.success,
            status: outcome.status,
            violations: found,
        };
        checkpoint.append(&record)?;
        let lcb = totals.add(record);
        progress.delivered(
            event.seq + 1,
            GateNow { lower_bound: lcb, pass_rate: totals.gate.pass_rate() },
            &totals.violations,
        );
    }
    let Totals { gate, mut tallies, violations, last_at, .. } = totals;
    for t in tallies.values_mut() {
        t.success_rate = if t.runs == 0 { 0.0 } else { t.completed as f64 / t.runs as f64 };
    }
    let covered = match (config.clock, last_at) {
        (ClockMode::Virtual, Some(last)) => {
            // The plan's days are covered once the last delivery of the last day ran.
            let complete = checkpoint.len() == planned;
            if complete { f64::from(config.days) } else { (last - config.start).num_seconds() as f64 / 86_400.0 }
        }
        (ClockMode::Wall, Some(last)) => (last - checkpoint.started_at()).num_seconds() as f64 / 86_400.0,
        (_, None) => 0.0,
    };
    let lower_bound = gate.lower_bound();
    let min_lower_bound = gate.min_lower_bound();
    let mut reasons = Vec::new();
    match min_lower_bound {
        Some(m) if m < config.threshold => {
            reasons.push(format!("the rolling lower bound fell to {m:.4} (threshold {})", config.threshold))
        }
        None => reasons.push(format!("fewer outcomes than the warm-up of {}", config.warmup)),
        _ => {}
    }
    if !violations.is_empty() {
        let named: Vec<&str> = violations.iter().map(|v| v.invariant.as_str()).collect();
        reasons.push(format!("invariant violations: {}", named.join(", ")));
    }
    let missing: Vec<String> = config.mix.workflows().into_iter().filter(|w| !tallies.contains_key(w)).collect();
    if !missing.is_empty() {
        reasons.push(format!("workflows not exercised: {}", missing.join(", ")));
    }
    Ok(SoakOutcome {
        schema_version: 1,
        verdict: if reasons.is_empty() { "pass" } else { "fail" },
        clock: config.clock,
        days: covered,
        events: checkpoint.len(),
        planned_events: planned,
        threshold: config.threshold,
        confidence: config.confidence,
        window: config.window,
        lower_bound,
        min_lower_bound,
        violations,
        workflows: tallies,
        resumes: checkpoint.resumes(),
        seed: config.seed,
        started_at: checkpoint.started_at(),
        finished_at: Utc::now(),
        reasons,
    })
}

#[cfg(test)]
mod tests;
