use std::collections::BTreeSet;

use super::plan::Mix;
use super::*;

fn config(days: u32, per_day: u32) -> SoakConfig {
    SoakConfig {
        days,
        events_per_day: per_day,
        seed: 11,
        clock: ClockMode::Virtual,
        mix: Mix::shop(),
        start: "2026-12-01T00:00:00Z".parse().unwrap(),
        window: 500,
        warmup: 200,
        confidence: 0.95,
        threshold: 0.95,
        check_every: 50,
    }
}

/// A driver whose runs succeed except where told, that can plant a
/// violation and fail like a dead server at a given delivery.
#[derive(Default)]
struct Scripted {
    delivered: Vec<u64>,
    fail_every: Option<u64>,
    violation_after: Option<(u64, Invariant)>,
    die_at: Option<u64>,
    last: u64,
}

#[async_trait]
impl Driver for Scripted {
    async fn deliver(&mut self, event: &PlannedEvent, _now: DateTime<Utc>) -> Result<RunOutcome, CliError> {
        if self.die_at == Some(event.seq) {
            return Err(CliError::infrastructure("SERVE_UNREACHABLE", "the server went away"));
        }
        self.delivered.push(event.seq);
        self.last = event.seq;
        let success = self.fail_every.is_none_or(|n| !event.seq.is_multiple_of(n));
        Ok(RunOutcome { success, status: if success { "COMPLETED".into() } else { "FAILED".into() } })
    }

    async fn check_invariants(&mut self) -> Result<Vec<(Invariant, String)>, CliError> {
        Ok(match self.violation_after {
            Some((seq, inv)) if self.last >= seq => vec![(inv, "order 1001: 2 captures".to_owned())],
            _ => vec![],
        })
    }
}

struct Quiet;
impl Progress for Quiet {
    fn started(&self, _: u64, _: u64) {}
    fn delivered(&self, _: u64, _: GateNow, _: &[Violation]) {}
}

async fn soak(config: &SoakConfig, driver: &mut Scripted, dir: &std::path::Path) -> Result<SoakOutcome, CliError> {
    let mut cp = checkpoint::Checkpoint::open(dir, config)?;
    run(config, driver, &mut cp, &Quiet).await
}

#[tokio::test]
async fn seven_virtual_days_of_clean_traffic_pass_with_every_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(7, 300);
    let mut driver = Scripted::default();
    let out = soak(&config, &mut driver, dir.path()).await.unwrap();
    assert_eq!(out.verdict, "pass", "{:?}", out.reasons);
    assert_eq!((out.days, out.events, out.planned_events), (7.0, 2100, 2100));
    assert_eq!(out.workflows.len(), 7);
    assert!(out.workflows.values().all(|w| w.runs > 0 && (w.success_rate - 1.0).abs() < 1e-9));
    assert!(out.min_lower_bound.unwrap() >= 0.95);
    assert_eq!(driver.delivered.len(), 2100);
}

#[tokio::test]
async fn an_injected_invariant_violation_fails_the_soak_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(2, 300);
    let mut driver = Scripted { violation_after: Some((120, Invariant::DuplicateSideEffect)), ..Default::default() };
    let out = soak(&config, &mut driver, dir.path()).await.unwrap();
    assert_eq!(out.verdict, "fail");
    assert_eq!(out.violations.len(), 1, "found once, not at every check: {:?}", out.violations);
    assert_eq!(out.violations[0].invariant, Invariant::DuplicateSideEffect);
    assert_eq!(out.violations[0].seq, 149, "found at the first check after it happened");
    assert!(out.reasons.iter().any(|r| r.contains("duplicate_side_effect")), "{:?}", out.reasons);
}

#[tokio::test]
async fn a_pass_rate_under_the_threshold_fails_on_the_rolling_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(2, 300);
    // One run in ten fails: the rolling lower bound sits near 0.87.
    let mut driver = Scripted { fail_every: Some(10), ..Default::default() };
    let out = soak(&config, &mut driver, dir.path()).await.unwrap();
    assert_eq!(out.verdict, "fail");
    assert!(out.min_lower_bound.unwrap() < 0.95);
    assert!(out.reasons[0].contains("rolling lower bound"), "{:?}", out.reasons);
}

#[tokio::test]
async fn a_killed_soak_resumes_from_its_checkpoint_without_counting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(3, 300);
    let mut first = Scripted { die_at: Some(700), ..Default::default() };
    let err = soak(&config, &mut first, dir.path()).await.unwrap_err();
    assert_eq!(err.code, "SERVE_UNREACHABLE");
    assert_eq!(first.delivered.len(), 700);

    let mut second = Scripted::default();
    let out = soak(&config, &mut second, dir.path()).await.unwrap();
    assert_eq!(second.delivered.first(), Some(&700), "resumes at the first uncounted delivery");
    assert_eq!(out.events, 900);
    assert_eq!(out.resumes, 1);
    let all: BTreeSet<u64> = first.delivered.iter().chain(&second.delivered).copied().collect();
    assert_eq!(all.len(), 900);
    assert_eq!(out.workflows.values().map(|w| w.runs).sum::<u64>(), 900, "each delivery counted once");
    assert_eq!(out.verdict, "pass", "{:?}", out.reasons);

    // A finished soak reopened has nothing left to deliver.
    let mut third = Scripted::default();
    let again = soak(&config, &mut third, dir.path()).await.unwrap();
    assert!(third.delivered.is_empty());
    assert_eq!((again.events, again.resumes), (900, 2));
}

#[tokio::test]
async fn a_resumed_soak_adds_up_to_what_an_unbroken_one_does() {
    // The checkpoint is folded into the gate, tallies and violations line
    // by line on open (nothing of it kept): the outcome must not depend on
    // where the soak was killed.
    let config = config(3, 300);
    let script = || Scripted {
        fail_every: Some(37),
        violation_after: Some((500, Invariant::UntracedRun)),
        ..Default::default()
    };
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = soak(&config, &mut script(), whole_dir.path()).await.unwrap();
    for kill_at in [1, 499, 551, 899] {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Scripted { die_at: Some(kill_at), ..script() };
        soak(&config, &mut first, dir.path()).await.unwrap_err();
        let out = soak(&config, &mut script(), dir.path()).await.unwrap();
        assert_eq!(out.events, whole.events, "killed at {kill_at}");
        assert_eq!(out.workflows, whole.workflows, "killed at {kill_at}");
        assert_eq!(out.violations, whole.violations, "killed at {kill_at}");
        assert_eq!((out.lower_bound, out.min_lower_bound), (whole.lower_bound, whole.min_lower_bound));
        assert_eq!(out.verdict, whole.verdict);
    }
    assert_eq!(whole.violations.len(), 1, "{:?}", whole.violations);
    assert!(whole.workflows.values().any(|w| w.completed < w.runs));
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_that_delivery_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(1, 300);
    let mut first = Scripted { die_at: Some(40), ..Default::default() };
    soak(&config, &mut first, dir.path()).await.unwrap_err();
    let path = dir.path().join(checkpoint::FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"line":"delivery","seq":40,"workf"#);
    std::fs::write(&path, text).unwrap();
    let mut second = Scripted::default();
    let out = soak(&config, &mut second, dir.path()).await.unwrap();
    assert_eq!(second.delivered.first(), Some(&40));
    assert_eq!(out.events, 300);
}

#[tokio::test]
async fn resuming_with_other_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Scripted { die_at: Some(10), ..Default::default() };
    soak(&config(1, 300), &mut first, dir.path()).await.unwrap_err();
    let mut other = config(1, 300);
    other.seed = 12;
    let err = soak(&other, &mut Scripted::default(), dir.path()).await.unwrap_err();
    assert_eq!((err.code.as_str(), err.exit), ("SOAK_CONFIG_CHANGED", crate::report::exit::BAD_INPUT));
}

#[test]
fn the_rolling_gate_judges_the_window_after_the_warmup() {
    let mut gate = RollingGate::new(100, 50, 0.95);
    for _ in 0..49 {
        assert_eq!(gate.push(true), None);
    }
    assert!(gate.push(true).unwrap() > 0.9);
    for _ in 0..30 {
        gate.push(false);
    }
    let low = gate.lower_bound().unwrap();
    for _ in 0..100 {
        gate.push(true);
    }
    // The failures left the window; the minimum remembers them.
    assert!(gate.lower_bound().unwrap() > 0.96);
    assert!((gate.min_lower_bound().unwrap() - low).abs() < 1e-12);
}

#[tokio::test]
async fn the_outcome_is_the_soak_evidence_exit_criteria_reads() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(7, 300);
    let out = soak(&config, &mut Scripted::default(), dir.path()).await.unwrap();
    let predicate = serde_json::to_value(&out).unwrap();
    let mut statement = crate::evidence::Statement::new("ab", "cd", "ef", predicate);
    statement.predicate_type = crate::evidence::SOAK_PREDICATE_TYPE.to_owned();
    let loaded = crate::exit_criteria::Loaded {
        path: "soak".into(),
        trust: crate::evidence::Trust::Unverified { reason: "test".into() },
        statement,
    };
    let catalog = crate::catalog::Catalog::parse(crate::catalog::tests::STAGES).unwrap();
    let inputs = crate::exit_criteria::Inputs {
        gate: None,
        soak: Some(&loaded),
        catalog: &catalog,
        root: std::path::Path::new("."),
        workflows: config.mix.workflows(),
    };
    let got = crate::exit_criteria::evaluate(&inputs);
    for id in ["P1-EXIT-04", "P1-EXIT-12"] {
        let c = got.iter().find(|c| c.id == id).unwrap();
        assert_eq!(c.verdict, crate::exit_criteria::Verdict::Met, "{id}: {}", c.evidence);
    }
}
