//! The deploy gate's arithmetic: from test outcomes over several runs to a
//! verdict that may be signed as evidence (P1-TASK-18, P1-TASK-30, INV-08).
//!
//! The suite runs `runs` times (three by default). Every expected test then
//! has one *trial* per run: passed, failed, skipped, or missing. The gate
//! judges the two priority classes differently:
//!
//! * **P0**: every test passes in every run. One failed, skipped or missing
//!   P0 trial fails the gate; no statistics can excuse it.
//! * **P1**: the Wilson score lower bound ([`wilson`]) of the P1 pass rate,
//!   over all P1 trials of all runs, at the configured confidence (0.95), is
//!   at least the threshold (0.95). The bound, not the raw rate, is gated: a
//!   raw 100 % over a handful of trials proves little. Because all-pass trials
//!   only reach 0.95 from 73 on, a class too small for its run count fails
//!   even when everything passes, and the report's `note` says how many runs
//!   would reach the threshold ([`wilson::runs_needed`]).
//!
//! It fails closed. A test expected (from the catalogue) but absent from a
//! run's results is a failed trial (`missing`), as is a skipped one: taking a
//! test out of the gate is the reviewed quarantine's job, not an `#[ignore]`.
//! A run number outside `1..=runs`, no runs, no tests at all, or an invalid
//! confidence or threshold fail the gate with a `problem`. When the catalogue
//! and the results disagree on a test's priority, the stricter (P0) holds.
//! Two results for one test in one run keep the worse.
//!
//! A test that passed in one run and failed in another is a **flake**; the
//! report lists flakes (for the quarantine), and their failures count like
//! any other.
//!
//! [`GateReport`] serializes to the gate computation of the signed evidence
//! (successes, trials, raw rate, lower bound, z, threshold, verdict per class,
//! the flakes). Its input comes from nextest's JUnit report ([`junit`]).

pub mod harness;
pub mod html;
pub mod junit;
pub mod wilson;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A test's priority class in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Must pass in every run.
    P0,
    /// Gated on the Wilson lower bound of the class's pass rate.
    P1,
}

/// What one run said about one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
    /// Expected but absent from the run's results.
    Missing,
}

impl Outcome {
    /// Which of two results for the same test and run is kept: the worse.
    fn severity(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Skipped => 1,
            Outcome::Missing => 2,
            Outcome::Failed => 3,
        }
    }
}

/// One test's outcome in one run (runs are numbered from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub test_id: String,
    pub priority: Priority,
    pub run: u32,
    pub outcome: Outcome,
}

/// The gate's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateConfig {
    /// Two-sided confidence of the Wilson interval (0.95).
    pub confidence: f64,
    /// The least P1 lower bound that passes (0.95).
    pub p1_threshold: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig { confidence: wilson::DEFAULT_CONFIDENCE, p1_threshold: 0.95 }
    }
}

/// Pass or fail, for the whole gate or one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
}

impl Verdict {
    fn from_bool(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Fail }
    }
}

/// A trial that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotPassed {
    pub test_id: String,
    pub run: u32,
    pub outcome: Outcome,
}

/// The gate computation for one priority class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    pub priority: Priority,
    /// The rule in words, for whoever reads the evidence.
    pub rule: &'static str,
    /// Distinct tests in the class (expected or seen).
    pub tests: usize,
    /// `tests × runs`: every expected cell is a trial, present or not.
    pub trials: u64,
    pub successes: u64,
    pub failed: u64,
    pub skipped: u64,
    pub missing: u64,
    /// `successes / trials`; absent without trials.
    pub raw_rate: Option<f64>,
    /// The Wilson lower bound; absent without trials or with an invalid confidence.
    pub lower_bound: Option<f64>,
    pub z: Option<f64>,
    pub confidence: f64,
    /// P0: 1 (the raw rate must be 1). P1: the configured threshold for the lower bound.
    pub threshold: f64,
    pub verdict: Verdict,
    pub not_passed: Vec<NotPassed>,
    /// P1, when even all-pass trials cannot reach the threshold with this many
    /// runs: the least number of runs that would (absent if none would).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_needed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A test that both passed and failed across runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flake {
    pub test_id: String,
    pub priority: Priority,
    pub passed_runs: Vec<u32>,
    pub failed_runs: Vec<u32>,
}

/// The gate's verdict and the computation behind it; the predicate of the
/// signed evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    pub verdict: Verdict,
    pub runs: u32,
    pub confidence: f64,
    pub p0: ClassReport,
    pub p1: ClassReport,
    pub flakes: Vec<Flake>,
    /// Why the input itself cannot be trusted; any problem fails the gate.
    pub problems: Vec<String>,
}

/// One test's row: its priority and its result in each run, if any.
struct Row {
    priority: Priority,
    cells: Vec<Option<Outcome>>,
}

impl Row {
    /// `(run, outcome)` for runs 1..=runs; no result is `Missing`.
    fn outcomes(&self) -> impl Iterator<Item = (u32, Outcome)> + '_ {
        (1..).zip(self.cells.iter().map(|cell| cell.unwrap_or(Outcome::Missing)))
    }
}

/// Judge `trials` from `runs` runs of the suite against the catalogue's
/// `expected_tests` (test id -> priority). See the module documentation.
pub fn evaluate(
    trials: &[Trial],
    expected_tests: &BTreeMap<String, Priority>,
    runs: u32,
    config: &GateConfig,
) -> GateReport {
    let mut problems = Vec::new();
    if runs == 0 {
        problems.push("no runs: the gate needs at least one".to_owned());
    }
    let z = match wilson::z_score(config.confidence) {
        Ok(z) => Some(z),
        Err(e) => {
            problems.push(format!("{}: {e}", e.code()));
            None
        }
    };
    if !(config.p1_threshold > 0.0 && config.p1_threshold <= 1.0) {
        problems.push(format!("P1 threshold {} is not in (0, 1]", config.p1_threshold));
    }

    let empty_row = |priority| Row { priority, cells: vec![None; runs as usize] };
    let mut rows: BTreeMap<&str, Row> =
        expected_tests.iter().map(|(id, &priority)| (id.as_str(), empty_row(priority))).collect();
    for trial in trials {
        if trial.run == 0 || trial.run > runs {
            problems.push(format!("{}: run {} is not one of 1..={runs}", trial.test_id, trial.run));
            continue;
        }
        let row = rows.entry(trial.test_id.as_str()).or_insert_with(|| empty_row(trial.priority));
        row.priority = row.priority.min(trial.priority);
        let cell = &mut row.cells[(trial.run - 1) as usize];
        if cell.is_none_or(|kept| trial.outcome.severity() > kept.severity()) {
            *cell = Some(trial.outcome);
        }
    }
    if rows.is_empty() {
        problems.push("no tests: nothing was expected and no results were given".to_owned());
    }

    let flakes = rows
        .iter()
        .filter_map(|(id, row)| {
            let runs_with =
                |outcome| row.outcomes().filter(|&(_, o)| o == outcome).map(|(run, _)| run).collect::<Vec<_>>();
            let (passed_runs, failed_runs) = (runs_with(Outcome::Passed), runs_with(Outcome::Failed));
            (!passed_runs.is_empty() && !failed_runs.is_empty()).then(|| Flake {
                test_id: (*id).to_owned(),
                priority: row.priority,
                passed_runs,
                failed_runs,
            })
        })
        .collect();

    let p0 = class_report(Priority::P0, &rows, runs, z, config);
    let p1 = class_report(Priority::P1, &rows, runs, z, config);
    let pass = problems.is_empty() && p0.verdict == Verdict::Pass && p1.verdict == Verdict::Pass;
    GateReport { verdict: Verdict::from_bool(pass), runs, confidence: config.confidence, p0, p1, flakes, problems }
}

fn class_report(
    priority: Priority,
    rows: &BTreeMap<&str, Row>,
    runs: u32,
    z: Option<f64>,
    config: &GateConfig,
) -> ClassReport {
    let class: Vec<(&str, &Row)> =
        rows.iter().filter(|(_, row)| row.priority == priority).map(|(id, r)| (*id, r)).collect();
    let mut report = ClassReport {
        priority,
        rule: match priority {
            Priority::P0 => "every test passes in every run",
            Priority::P1 => "Wilson lower bound of the pass rate over all runs >= threshold",
        },
        tests: class.len(),
        trials: 0,
        successes: 0,
        failed: 0,
        skipped: 0,
        missing: 0,
        raw_rate: None,
        lower_bound: None,
        z,
        confidence: config.confidence,
        threshold: match priority {
            Priority::P0 => 1.0,
            Priority::P1 => config.p1_threshold,
        },
        verdict: Verdict::Fail,
        not_passed: Vec::new(),
        runs_needed: None,
        note: None,
    };
    for (id, row) in &class {
        for (run, outcome) in row.outcomes() {
            report.trials += 1;
            match outcome {
                Outcome::Passed => report.successes += 1,
                Outcome::Failed => report.failed += 1,
                Outcome::Skipped => report.skipped += 1,
                Outcome::Missing => report.missing += 1,
            }
            if outcome != Outcome::Passed {
                report.not_passed.push(NotPassed { test_id: (*id).to_owned(), run, outcome });
            }
        }
    }
    if report.trials > 0 {
        report.raw_rate = Some(report.successes as f64 / report.trials as f64);
        report.lower_bound = z.and_then(|z| wilson::lower_bound_z(report.successes, report.trials, z).ok());
    }

    let all_passed = report.successes == report.trials;
    let pass = match priority {
        // Vacuously true for an empty class; the gate fails on "no tests" separately.
        Priority::P0 => all_passed,
        Priority::P1 if report.tests == 0 => {
            report.note = Some("no P1 tests".to_owned());
            true
        }
        Priority::P1 => report.lower_bound.is_some_and(|lcb| lcb >= config.p1_threshold),
    };
    report.verdict = Verdict::from_bool(pass);

    // P1 too small for its run count: even all passing cannot reach the threshold.
    if let Some(z) = z
        && priority == Priority::P1
        && report.tests > 0
        && report.trials > 0
        && let best = wilson::lower_bound_z(report.trials, report.trials, z).unwrap_or(0.0)
        && best < config.p1_threshold
    {
        let tests = u32::try_from(report.tests).unwrap_or(u32::MAX);
        report.runs_needed = wilson::runs_needed(config.p1_threshold, tests, config.confidence);
        let reach = match report.runs_needed {
            Some(n) => format!("{n} runs would reach it"),
            None => "no number of runs would reach it".to_owned(),
        };
        report.note = Some(format!(
            "even with all {} P1 trials passing ({} tests x {runs} runs) the lower bound is {best:.4} < {}; {reach}",
            report.trials, report.tests, config.p1_threshold
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue(p0: usize, p1: usize) -> BTreeMap<String, Priority> {
        (0..p0)
            .map(|i| (format!("p0_{i:03}"), Priority::P0))
            .chain((0..p1).map(|i| (format!("p1_{i:03}"), Priority::P1)))
            .collect()
    }

    /// Every expected test passes in every run.
    fn all_pass(expected: &BTreeMap<String, Priority>, runs: u32) -> Vec<Trial> {
        (1..=runs)
            .flat_map(|run| {
                expected.iter().map(move |(id, &priority)| Trial {
                    test_id: id.clone(),
                    priority,
                    run,
                    outcome: Outcome::Passed,
                })
            })
            .collect()
    }

    fn set(trials: &mut [Trial], test_id: &str, run: u32, outcome: Outcome) {
        let trial = trials.iter_mut().find(|t| t.test_id == test_id && t.run == run).unwrap();
        trial.outcome = outcome;
    }

    #[test]
    fn p1_t18_all_pass_with_enough_trials_passes() {
        // 25 P1 tests x 3 runs = 75 all-pass trials: lower bound 0.9512 >= 0.95.
        let expected = catalogue(5, 25);
        let report = evaluate(&all_pass(&expected, 3), &expected, 3, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
        assert_eq!((report.p0.successes, report.p0.trials, report.p0.verdict), (15, 15, Verdict::Pass));
        assert_eq!((report.p1.successes, report.p1.trials, report.p1.verdict), (75, 75, Verdict::Pass));
        let lcb = report.p1.lower_bound.unwrap();
        assert!((lcb - 75.0 / (75.0 + 1.959_963_984_540_054f64.powi(2))).abs() < 1e-9, "{lcb}");
        assert!(report.flakes.is_empty() && report.problems.is_empty() && report.p1.note.is_none());
    }

    #[test]
    fn p1_t18_a_forced_p0_failure_fails_the_gate() {
        let expected = catalogue(5, 100);
        let mut trials = all_pass(&expected, 3);
        set(&mut trials, "p0_002", 2, Outcome::Failed);
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.p0.verdict, Verdict::Fail);
        assert_eq!(report.p1.verdict, Verdict::Pass);
        assert_eq!((report.p0.successes, report.p0.trials, report.p0.failed), (14, 15, 1));
        assert_eq!(
            report.p0.not_passed,
            vec![NotPassed { test_id: "p0_002".into(), run: 2, outcome: Outcome::Failed }]
        );
        // 14/15 is a raw 93 %: P0 is not judged on rates.
        assert!(report.p0.raw_rate.unwrap() > 0.9);
    }

    #[test]
    fn p1_t18_p1_lower_bound_below_threshold_fails() {
        // 100 P1 tests x 3 runs, 6 failures: raw 0.98, lower bound 0.9569 passes;
        // 12 failures: raw 0.96, lower bound ~0.931 fails though the raw rate is above 0.95.
        let expected = catalogue(2, 100);
        let mut trials = all_pass(&expected, 3);
        for i in 0..6 {
            set(&mut trials, &format!("p1_{i:03}"), 1, Outcome::Failed);
        }
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.p1);
        for i in 6..12 {
            set(&mut trials, &format!("p1_{i:03}"), 2, Outcome::Failed);
        }
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.p1.successes, report.p1.trials), (288, 300));
        assert!(report.p1.raw_rate.unwrap() > 0.95);
        let lcb = report.p1.lower_bound.unwrap();
        assert!(lcb < 0.95 && (lcb - wilson::lower_bound(288, 300, 0.95).unwrap()).abs() < 1e-12, "{lcb}");
        assert_eq!(
            (report.p1.verdict, report.verdict, report.p0.verdict),
            (Verdict::Fail, Verdict::Fail, Verdict::Pass)
        );
        assert!(report.p1.note.is_none(), "all-pass would reach the threshold: no runs note");
    }

    #[test]
    fn p1_t18_missing_results_fail_closed() {
        let expected = catalogue(3, 100);
        // A P0 test absent from run 3.
        let trials: Vec<Trial> =
            all_pass(&expected, 3).into_iter().filter(|t| !(t.test_id == "p0_001" && t.run == 3)).collect();
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.verdict, report.p0.verdict), (Verdict::Fail, Verdict::Fail));
        assert_eq!((report.p0.missing, report.p0.trials), (1, 9));
        assert_eq!(report.p0.not_passed[0].outcome, Outcome::Missing);

        // A whole run's results absent: every P1 trial of it counts as failed.
        let trials: Vec<Trial> = all_pass(&expected, 3).into_iter().filter(|t| t.run != 2).collect();
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.p1.successes, report.p1.trials, report.p1.missing), (200, 300, 100));
        assert_eq!((report.verdict, report.p1.verdict), (Verdict::Fail, Verdict::Fail));
    }

    #[test]
    fn inv08_no_results_never_pass() {
        let expected = catalogue(2, 30);
        let report = evaluate(&[], &expected, 3, &GateConfig::default());
        assert_eq!(
            (report.verdict, report.p0.verdict, report.p1.verdict),
            (Verdict::Fail, Verdict::Fail, Verdict::Fail)
        );
        assert_eq!(report.p1.missing, 90);

        // Nothing expected, nothing run.
        let report = evaluate(&[], &BTreeMap::new(), 3, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Fail);
        assert!(report.problems.iter().any(|p| p.contains("no tests")), "{:?}", report.problems);

        // No runs.
        let report = evaluate(&[], &expected, 0, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Fail);
        assert!(report.problems.iter().any(|p| p.contains("no runs")), "{:?}", report.problems);
    }

    #[test]
    fn inv08_skips_and_bad_input_fail_closed() {
        let expected = catalogue(1, 100);
        let mut trials = all_pass(&expected, 3);
        set(&mut trials, "p0_000", 1, Outcome::Skipped);
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.p0.verdict, report.p0.skipped), (Verdict::Fail, 1));

        // A run number outside 1..=runs is a problem, not a trial.
        let mut trials = all_pass(&expected, 3);
        trials.push(Trial { test_id: "p1_000".into(), priority: Priority::P1, run: 4, outcome: Outcome::Passed });
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!(
            (report.verdict, report.p0.verdict, report.p1.verdict),
            (Verdict::Fail, Verdict::Pass, Verdict::Pass)
        );
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);

        // An invalid confidence or threshold.
        let trials = all_pass(&expected, 3);
        for config in [
            GateConfig { confidence: 1.0, ..GateConfig::default() },
            GateConfig { confidence: f64::NAN, ..GateConfig::default() },
            GateConfig { p1_threshold: 0.0, ..GateConfig::default() },
            GateConfig { p1_threshold: f64::NAN, ..GateConfig::default() },
        ] {
            let report = evaluate(&trials, &expected, 3, &config);
            assert_eq!(report.verdict, Verdict::Fail, "{config:?}");
            assert!(!report.problems.is_empty(), "{config:?}");
        }
    }

    #[test]
    fn inv08_the_stricter_priority_holds_and_the_worse_result_is_kept() {
        let expected = catalogue(0, 100);
        let mut trials = all_pass(&expected, 3);
        // The results call p1_000 a P0 test; it failed once, which P1 would tolerate.
        for t in trials.iter_mut().filter(|t| t.test_id == "p1_000") {
            t.priority = Priority::P0;
        }
        set(&mut trials, "p1_000", 3, Outcome::Failed);
        // A second, passing result for the same cell does not hide the failure.
        trials.push(Trial { test_id: "p1_000".into(), priority: Priority::P0, run: 3, outcome: Outcome::Passed });
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.p0.tests, report.p0.failed, report.p0.verdict), (1, 1, Verdict::Fail));
        assert_eq!(report.p1.tests, 99);

        // A test the catalogue does not know still counts, under its own priority.
        let mut trials = all_pass(&expected, 3);
        trials.push(Trial { test_id: "extra".into(), priority: Priority::P0, run: 1, outcome: Outcome::Passed });
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!((report.p0.tests, report.p0.missing, report.verdict), (1, 2, Verdict::Fail));
    }

    #[test]
    fn p1_t18_runs_needed_note_when_all_pass_cannot_reach_the_threshold() {
        // 10 P1 tests x 3 runs, all passing: 30/30 gives 0.8865 < 0.95; 8 runs (80 trials) would reach it.
        let expected = catalogue(1, 10);
        let report = evaluate(&all_pass(&expected, 3), &expected, 3, &GateConfig::default());
        assert_eq!(
            (report.verdict, report.p0.verdict, report.p1.verdict),
            (Verdict::Fail, Verdict::Pass, Verdict::Fail)
        );
        assert_eq!(report.p1.runs_needed, Some(8));
        let note = report.p1.note.as_deref().unwrap();
        assert!(note.contains("8 runs would reach it") && note.contains("0.8865"), "{note}");
        let report = evaluate(&all_pass(&expected, 8), &expected, 8, &GateConfig::default());
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!((report.p1.note.as_deref(), report.p1.runs_needed), (None, None));

        // A threshold of 1 is never reached by a lower bound.
        let config = GateConfig { p1_threshold: 1.0, ..GateConfig::default() };
        let report = evaluate(&all_pass(&expected, 3), &expected, 3, &config);
        assert_eq!((report.p1.verdict, report.p1.runs_needed), (Verdict::Fail, None));
        assert!(report.p1.note.as_deref().unwrap().contains("no number of runs"));
    }

    #[test]
    fn inv08_flakes_are_listed() {
        let expected = catalogue(1, 100);
        let mut trials = all_pass(&expected, 3);
        set(&mut trials, "p1_007", 2, Outcome::Failed);
        set(&mut trials, "p1_009", 1, Outcome::Failed);
        set(&mut trials, "p1_009", 2, Outcome::Failed);
        set(&mut trials, "p1_009", 3, Outcome::Failed); // consistently failing: not a flake
        set(&mut trials, "p1_011", 1, Outcome::Skipped); // skipped and passed: not a flake
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        assert_eq!(
            report.flakes,
            vec![Flake {
                test_id: "p1_007".into(),
                priority: Priority::P1,
                passed_runs: vec![1, 3],
                failed_runs: vec![2]
            }]
        );
        assert_eq!(report.p1.failed, 4);
    }

    #[test]
    fn inv08_the_report_serializes_as_evidence() {
        let expected = catalogue(1, 10);
        let mut trials = all_pass(&expected, 3);
        set(&mut trials, "p1_003", 1, Outcome::Failed);
        let report = evaluate(&trials, &expected, 3, &GateConfig::default());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["p0"]["verdict"], "pass");
        assert_eq!(json["p1"]["priority"], "P1");
        assert_eq!(json["p1"]["successes"], 29);
        assert_eq!(json["p1"]["trials"], 30);
        assert_eq!(json["p1"]["threshold"], 0.95);
        assert_eq!(json["p1"]["runs_needed"], 8);
        assert!(json["p1"]["z"].as_f64().is_some_and(|z| (z - 1.959_963_984_540_054).abs() < 1e-9));
        assert!(json["p1"]["lower_bound"].as_f64().is_some_and(|l| l > 0.0 && l < 29.0 / 30.0));
        assert_eq!(
            json["p1"]["not_passed"][0],
            serde_json::json!({"test_id": "p1_003", "run": 1, "outcome": "failed"})
        );
        assert_eq!(json["flakes"][0]["test_id"], "p1_003");
        assert!(json["p0"].get("note").is_none());
    }
}
