//! Running the stages: from the catalogue and nextest to the trials
//! [`super::evaluate`] judges, and to the predicate of the signed evidence.
//!
//! Order and rules (fail closed throughout):
//!
//! 1. The catalogue is checked against `nextest list`; any traceability
//!    problem fails the gate (the stages still run, so the evidence shows
//!    everything).
//! 2. Stages run in catalogue order. A `planned` stage is recorded as planned
//!    and not run. A stage that is not planned but selects no test is
//!    `empty` and fails the gate.
//! 3. Hygiene runs once and must pass entirely; if it does not, no other
//!    stage runs (`not_run`) and the gate fails.
//! 4. Every other stage runs `runs` times. A run that crashes, times out or
//!    writes no report fails the gate; its expected tests are `missing`.
//! 5. Quarantined tests run and are reported, but their trials are left out;
//!    a P0 test in the quarantine, an expired entry, or an entry naming no
//!    test fail the gate.
//! 6. The verdict is [`super::evaluate`] over the trials of every gated stage
//!    (P0 all pass in every run; P1 Wilson lower bound over all P1 trials),
//!    and the problems above.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::{Flake, GateConfig, GateReport, Outcome, Priority, Trial, Verdict, evaluate, wilson};
use crate::catalog::{Catalog, CatalogCheck, ListedTest, Stage, Status};
use crate::nextest::{Nextest, RunStatus, StageRun};
use crate::quarantine::{Quarantine, QuarantineEntry};
use crate::report::CliError;

/// The evidence predicate's schema version; `deploy` refuses others.
pub const SCHEMA_VERSION: u32 = 1;

/// What one stage came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Passed,
    Failed,
    /// Declared planned in the catalogue: not run, not counted.
    Planned,
    /// Not planned, yet it selects no test: fails the gate.
    Empty,
    /// Not run because hygiene failed.
    NotRun,
}

/// One test's result in one run.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub id: String,
    pub priority: Priority,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}

/// One run of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run: u32,
    #[serde(flatten)]
    pub status: RunStatus,
    pub duration_ms: u64,
    /// The JUnit report, relative to the evidence directory.
    pub junit: Option<String>,
    pub passed: usize,
    pub failed: usize,
    pub missing: usize,
    pub tests: Vec<TestResult>,
    /// nextest's JUnit text (written to `junit`, not serialized twice).
    #[serde(skip)]
    pub junit_xml: String,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub status: StageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<u32>,
    pub filter: Option<String>,
    pub tests: usize,
    pub runs: Vec<RunRecord>,
    /// The gate arithmetic over this stage alone (for the per-stage table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computation: Option<GateReport>,
}

/// A flake with its pass rate and Wilson interval.
#[derive(Debug, Clone, Serialize)]
pub struct FlakeReport {
    #[serde(flatten)]
    pub flake: Flake,
    pub pass_rate: f64,
    pub interval: (f64, f64),
    pub quarantined: bool,
}

/// Parameters of one gate.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub runs: u32,
    pub config: GateConfig,
    /// Replaces every stage's timeout when set.
    pub timeout: Option<Duration>,
    /// Where JUnit copies and nextest logs go (the evidence directory).
    pub out_dir: PathBuf,
    pub today: NaiveDate,
}

/// Everything the gate found; the bulk of the evidence predicate.
#[derive(Debug, Clone, Serialize)]
pub struct GateOutcome {
    pub verdict: Verdict,
    pub runs: u32,
    pub config: GateConfig,
    pub stages: Vec<StageRecord>,
    pub computation: GateReport,
    pub flakes: Vec<FlakeReport>,
    pub quarantine: Vec<QuarantineEntry>,
    pub traceability: Traceability,
    /// Why the gate failed apart from the arithmetic (crash, timeout, empty stage...).
    pub problems: Vec<String>,
    /// New flakes as quarantine entries to review (never applied silently).
    pub proposed_quarantine: Vec<QuarantineEntry>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Catalogue coverage, as recorded in the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Traceability {
    #[serde(flatten)]
    pub check: CatalogCheck,
    /// Entries not covered: planned ones with their issue.
    pub not_covered: Vec<String>,
}

/// Progress callbacks, so the command can drive a progress bar.
pub trait Progress {
    /// `tests`: how many the run selects, when already known.
    fn stage_started(&self, stage: Stage, run: u32, runs: u32, tests: Option<usize>);
    fn stage_finished(&self, stage: Stage, run: u32, status: &RunStatus);
}

/// What every run of a stage needs.
pub struct StageContext<'a> {
    pub nextest: &'a Nextest,
    pub catalog: &'a Catalog,
    pub quarantine: &'a Quarantine,
    /// Where nextest's logs go (`logs/<stage>-run<N>.log`).
    pub out_dir: &'a Path,
}

/// Run one stage once and compare with its expected tests.
pub async fn run_stage_once(
    ctx: &StageContext<'_>,
    stage: Stage,
    filter: &str,
    expected: &[ListedTest],
    run: u32,
    timeout: Duration,
) -> Result<RunRecord, CliError> {
    let ran = ctx.nextest.run(filter, &ctx.log_path(stage, run), timeout).await?;
    Ok(record_run(ctx, expected, run, ran))
}

impl StageContext<'_> {
    /// nextest's own output of one run: `logs/<stage>-run<N>.log`.
    pub fn log_path(&self, stage: Stage, run: u32) -> PathBuf {
        self.out_dir.join("logs").join(format!("{}-run{run}.log", stage.as_str()))
    }
}

/// Compare what one run reported with the tests it was expected to run: an
/// expected test absent from the report is `Missing` (a failed trial), and
/// a reported test nobody expected is kept as P1.
pub fn record_run(ctx: &StageContext<'_>, expected: &[ListedTest], run: u32, ran: StageRun) -> RunRecord {
    let StageContext { catalog, quarantine, .. } = *ctx;
    let StageRun { status, cases, junit_xml, duration } = ran;
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    for case in &cases {
        let id = format!("{} {}", case.binary, case.test_name);
        let slot = outcomes.entry(id).or_insert(case.outcome);
        if case.outcome == Outcome::Failed {
            *slot = Outcome::Failed;
        }
    }
    let priorities: BTreeMap<String, Priority> =
        expected.iter().map(|t| (t.full_id(), catalog.priority_of(t))).collect();
    let mut tests: Vec<TestResult> = priorities
        .iter()
        .map(|(id, &priority)| TestResult {
            id: id.clone(),
            priority,
            outcome: outcomes.get(id).copied().unwrap_or(Outcome::Missing),
            quarantined: quarantine.get(id).is_some(),
        })
        .collect();
    // Results for tests nobody expected are kept, never dropped.
    for (id, outcome) in &outcomes {
        if !priorities.contains_key(id) {
            let quarantined = quarantine.get(id).is_some();
            tests.push(TestResult { id: id.clone(), priority: Priority::P1, outcome: *outcome, quarantined });
        }
    }
    let count = |o| tests.iter().filter(|t| t.outcome == o).count();
    let (passed, failed, missing) = (count(Outcome::Passed), count(Outcome::Failed), count(Outcome::Missing));
    RunRecord {
        run,
        status,
        duration_ms: duration.as_millis() as u64,
        junit: None,
        passed,
        failed,
        missing,
        tests,
        junit_xml,
    }
}

/// Run the whole gate. Errors are for inputs that stop it before anything
/// ran (nextest missing, unreadable catalogue); everything later is a failed
/// verdict with its reason.
pub async fn run_gate(
    nextest: &Nextest,
    catalog: &Catalog,
    quarantine: &Quarantine,
    options: &GateOptions,
    progress: &dyn Progress,
) -> Result<GateOutcome, CliError> {
    let started_at = Utc::now();
    let mut problems = Vec::new();
    let all = nextest.list(None).await?;
    let check = catalog.check(&all.tests);
    for p in &check.problems {
        problems.push(format!("catalogue {}: {}", p.code, p.message));
    }
    let not_covered = check
        .planned
        .iter()
        .map(|(id, issue)| match issue {
            Some(n) => format!("{id} (planned, issue {n})"),
            None => format!("{id} (planned)"),
        })
        .collect();
    let traceability = Traceability { check, not_covered };

    // Quarantine rules.
    for entry in &quarantine.entries {
        match all.tests.iter().find(|t| t.full_id() == entry.id) {
            None => problems.push(format!("quarantine: {} names no test", entry.id)),
            Some(t) if catalog.priority_of(t) == Priority::P0 => {
                problems.push(format!("quarantine: {} is a P0 test and cannot be quarantined", entry.id))
            }
            Some(_) => {}
        }
        if entry.expired(options.today) {
            problems.push(format!("quarantine: the entry for {} expired on {}", entry.id, entry.expires));
        }
    }

    let mut stages = Vec::new();
    let mut hygiene_failed = false;
    let mut trials: Vec<Trial> = Vec::new();
    let mut expected: BTreeMap<String, Priority> = BTreeMap::new();
    for stage in Stage::ALL {
        let decl = catalog.stages.get(&stage).cloned().unwrap_or_default();
        let filter = catalog.stage_filter(stage);
        let mut record = StageRecord {
            stage,
            status: StageStatus::Passed,
            issue: decl.issue,
            filter: filter.clone(),
            tests: 0,
            runs: vec![],
            computation: None,
        };
        if decl.planned {
            record.status = StageStatus::Planned;
            stages.push(record);
            continue;
        }
        if hygiene_failed {
            record.status = StageStatus::NotRun;
            stages.push(record);
            continue;
        }
        let listed = match &filter {
            Some(f) => nextest.list(Some(f)).await?.tests,
            None => Vec::new(),
        };
        record.tests = listed.len();
        if listed.is_empty() {
            record.status = StageStatus::Empty;
            problems.push(format!("stage {} selects no test and is not planned", stage.as_str()));
            stages.push(record);
            continue;
        }
        let filter = filter.unwrap_or_default();
        let timeout = match options.timeout {
            Some(t) => t,
            None => decl.timeout()?,
        };
        let runs = if stage == Stage::Hygiene { 1 } else { options.runs };
        let mut stage_trials = Vec::new();
        let mut stage_expected = BTreeMap::new();
        for t in &listed {
            if quarantine.get(&t.full_id()).is_none() {
                stage_expected.insert(t.full_id(), catalog.priority_of(t));
            }
        }
        for run in 1..=runs {
            progress.stage_started(stage, run, runs, Some(listed.len()));
            let mut rec = run_stage_once(
                &StageContext { nextest, catalog, quarantine, out_dir: &options.out_dir },
                stage,
                &filter,
                &listed,
                run,
                timeout,
            )
            .await?;
            progress.stage_finished(stage, run, &rec.status);
            match &rec.status {
                RunStatus::Completed { .. } => {}
                RunStatus::Crashed { reason } => {
                    problems.push(format!("stage {} run {run} crashed: {reason}", stage.as_str()))
                }
                RunStatus::TimedOut { after_secs } => {
                    problems.push(format!("stage {} run {run} timed out after {after_secs}s", stage.as_str()))
                }
            }
            if !rec.junit_xml.is_empty() {
                let rel = format!("junit/{}-run{run}.xml", stage.as_str());
                write_file(&options.out_dir.join(&rel), rec.junit_xml.as_bytes())?;
                rec.junit = Some(rel);
            }
            for t in rec.tests.iter().filter(|t| !t.quarantined) {
                stage_trials.push(Trial { test_id: t.id.clone(), priority: t.priority, run, outcome: t.outcome });
            }
            record.runs.push(rec);
        }
        let computation = evaluate(&stage_trials, &stage_expected, runs, &options.config);
        let all_passed = record.runs.iter().all(|r| {
            matches!(r.status, RunStatus::Completed { .. })
                && r.tests.iter().all(|t| t.quarantined || t.outcome == Outcome::Passed)
        });
        if stage == Stage::Hygiene {
            record.status = if all_passed { StageStatus::Passed } else { StageStatus::Failed };
            if !all_passed {
                hygiene_failed = true;
                problems.push("hygiene did not pass entirely: no other stage ran".to_owned());
            }
        } else {
            record.status = if all_passed { StageStatus::Passed } else { StageStatus::Failed };
            trials.extend(stage_trials);
            expected.extend(stage_expected);
        }
        record.computation = Some(computation);
        stages.push(record);
    }

    let computation = evaluate(&trials, &expected, options.runs, &options.config);
    let z = wilson::z_score(options.config.confidence).ok();
    let flakes: Vec<FlakeReport> = stages
        .iter()
        .filter_map(|s| s.computation.as_ref())
        .flat_map(|c| c.flakes.iter())
        .cloned()
        .chain(quarantined_flakes(&stages))
        .map(|flake| {
            let n = (flake.passed_runs.len() + flake.failed_runs.len()) as u64;
            let s = flake.passed_runs.len() as u64;
            let interval = z
                .and_then(|z| {
                    let lo = wilson::lower_bound_z(s, n, z).ok()?;
                    let hi = 1.0 - wilson::lower_bound_z(n - s, n, z).ok()?;
                    Some((lo, hi))
                })
                .unwrap_or((0.0, 1.0));
            let quarantined = quarantine.get(&flake.test_id).is_some();
            FlakeReport { pass_rate: s as f64 / n.max(1) as f64, interval, quarantined, flake }
        })
        .collect();
    let proposed_quarantine = flakes
        .iter()
        .filter(|f| !f.quarantined && f.flake.priority == Priority::P1)
        .map(|f| QuarantineEntry {
            id: f.flake.test_id.clone(),
            reason: format!(
                "flaky: passed {}/{} runs in the gate of {}",
                f.flake.passed_runs.len(),
                f.flake.passed_runs.len() + f.flake.failed_runs.len(),
                options.today
            ),
            owner: "unassigned".to_owned(),
            added: options.today,
            expires: options.today + chrono::Duration::days(14),
        })
        .collect();

    let pass = problems.is_empty() && computation.verdict == Verdict::Pass;
    Ok(GateOutcome {
        verdict: if pass { Verdict::Pass } else { Verdict::Fail },
        runs: options.runs,
        config: options.config,
        stages,
        computation,
        flakes,
        quarantine: quarantine.entries.clone(),
        traceability,
        problems,
        proposed_quarantine,
        started_at,
        finished_at: Utc::now(),
    })
}

/// Flakes among quarantined tests (their trials are not evaluated, but a
/// flake report should still name them).
fn quarantined_flakes(stages: &[StageRecord]) -> Vec<Flake> {
    let mut rows: BTreeMap<&str, (Priority, Vec<u32>, Vec<u32>)> = BTreeMap::new();
    for stage in stages {
        for run in &stage.runs {
            for t in run.tests.iter().filter(|t| t.quarantined) {
                let row = rows.entry(&t.id).or_insert((t.priority, vec![], vec![]));
                match t.outcome {
                    Outcome::Passed => row.1.push(run.run),
                    Outcome::Failed => row.2.push(run.run),
                    _ => {}
                }
            }
        }
    }
    rows.into_iter()
        .filter(|(_, (_, p, f))| !p.is_empty() && !f.is_empty())
        .map(|(id, (priority, passed_runs, failed_runs))| Flake {
            test_id: id.to_owned(),
            priority,
            passed_runs,
            failed_runs,
        })
        .collect()
}

/// Write `bytes` to `path`, creating its directory.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let io =
        |e: std::io::Error| CliError::infrastructure("EVIDENCE_IO", format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

/// A short label for a stage's runs in tables.
pub fn entry_status(catalog: &Catalog, id: &str) -> &'static str {
    match catalog.entry(id).map(|e| e.status) {
        Some(Status::Planned) => "planned",
        Some(Status::Active) => "active",
        None => "unknown",
    }
}
