//! `autobiz gate`: every stage, the verdict, and the signed evidence
//! directory (`evidence.dsse.json`, `junit/`, `logs/`, `report.html`, and
//! `proposed-quarantine.toml` when new flakes appeared). The key is checked
//! before anything runs; the evidence is written whether the gate passes or
//! fails, with the verdict inside.

use std::path::PathBuf;
use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;
use chrono::Utc;

use crate::catalog::Catalog;
use crate::cli::{GateArgs, GlobalArgs};
use crate::evidence::{self, Statement};
use crate::gate::harness::{self, GateOptions, GateOutcome, SCHEMA_VERSION, StageStatus, write_file};
use crate::gate::{ClassReport, GateConfig, Verdict};
use crate::nextest::Nextest;
use crate::progress::Spinner;
use crate::quarantine::Quarantine;
use crate::report::{CliError, Reporter, table};

/// The environment variable naming the private key file.
pub const KEY_ENV: &str = "AUTOBIZ_EVIDENCE_KEY";
/// The envelope's file name inside the evidence directory.
pub const ENVELOPE_FILE: &str = "evidence.dsse.json";
/// The unsigned statement's file name (`--unsigned` without a key).
pub const UNSIGNED_FILE: &str = "statement.json";

/// The newest of `files` in the newest directory under `root` that holds
/// one (directory names are UTC timestamps, so they sort by time).
pub fn newest(root: &std::path::Path, files: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|d| files.iter().map(|f| d.join(f)).find(|p| p.is_file()))
}

/// The key in `AUTOBIZ_EVIDENCE_KEY` that signs evidence; `None` with
/// `--unsigned`; `EVIDENCE_KEY_REQUIRED` (exit 2) otherwise. Read before
/// any test or traffic runs, so a missing key costs nothing.
pub fn signing_key(unsigned: bool) -> Result<Option<ed25519_dalek::SigningKey>, CliError> {
    match std::env::var_os(KEY_ENV).filter(|v| !v.is_empty()) {
        Some(path) => Ok(Some(evidence::load_signing_key(&PathBuf::from(path))?)),
        None if unsigned => Ok(None),
        None => Err(CliError::input(
            "EVIDENCE_KEY_REQUIRED",
            format!(
                "set {KEY_ENV} to the private key file (from `autobiz keys generate`) that signs the evidence, or pass --unsigned"
            ),
        )),
    }
}

pub async fn run(global: &GlobalArgs, args: GateArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let key = signing_key(args.unsigned)?;
    if args.runs == 0 {
        return Err(CliError::input("GATE_BAD_RUNS", "--runs must be at least 1"));
    }
    let config = BusinessConfig::load(&global.config)?;
    let catalog = Catalog::load(&args.catalog)?;
    let quarantine = Quarantine::load(&args.quarantine)?;
    let commit = super::deploy::git_head()?;
    let tree_clean = super::deploy::git_tree_clean()?;
    // Hashed before any test runs: the stages may rebuild (relink) the binary.
    let binary_sha256 = evidence::current_binary_digest()
        .map_err(|e| CliError::infrastructure("EVIDENCE_IO", format!("cannot hash the autobiz binary: {e}")))?;
    let now = Utc::now();
    let dir = args
        .evidence_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".autobiz/evidence").join(now.format("%Y%m%dT%H%M%SZ").to_string()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::infrastructure("EVIDENCE_IO", format!("cannot create {}: {e}", dir.display())))?;
    let options = GateOptions {
        runs: args.runs,
        config: GateConfig { confidence: args.confidence, p1_threshold: args.threshold },
        timeout: args.timeout,
        out_dir: dir.clone(),
        today: now.date_naive(),
    };
    let nextest = Nextest::from_env();
    let spinner = Spinner::new(reporter);
    let outcome = harness::run_gate(&nextest, &catalog, &quarantine, &options, &spinner).await;
    spinner.finish();
    let outcome = outcome?;

    let config_hash = config.hash();
    let predicate = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "verdict": outcome.verdict,
        "tree_clean": tree_clean,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "toolchain": toolchain(),
        "catalog": args.catalog,
        "result": outcome,
    });
    let statement = Statement::new(&commit, &evidence::config_digest(&config), &binary_sha256, predicate);
    let evidence_file = match &key {
        Some(key) => {
            let envelope = evidence::sign(&statement, key);
            let path = dir.join(ENVELOPE_FILE);
            write_file(&path, envelope.to_json().as_bytes())?;
            path
        }
        None => {
            let path = dir.join(UNSIGNED_FILE);
            let json = serde_json::to_string_pretty(&statement).unwrap_or_default();
            write_file(&path, json.as_bytes())?;
            path
        }
    };
    write_file(&dir.join("report.html"), crate::gate::html::render(&outcome, &commit, &config_hash).as_bytes())?;
    let proposed = dir.join("proposed-quarantine.toml");
    if !outcome.proposed_quarantine.is_empty() {
        let q = Quarantine { entries: outcome.proposed_quarantine.clone() };
        write_file(&proposed, q.to_toml().as_bytes())?;
    }

    reporter.result(
        || human(&outcome, &evidence_file, key.is_some(), &proposed),
        &serde_json::json!({
            "verdict": outcome.verdict,
            "evidence": evidence_file,
            "signed": key.is_some(),
            "commit": commit,
            "config_hash": config_hash,
            "result": outcome,
        }),
    );
    Ok(match outcome.verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Fail => ExitCode::from(crate::report::exit::SAID_NO),
    })
}

fn toolchain() -> serde_json::Value {
    let version = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
    };
    serde_json::json!({
        "autobiz": env!("CARGO_PKG_VERSION"),
        "rustc": version("rustc", &["--version"]),
        "cargo_nextest": version("cargo", &["nextest", "--version"]),
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".to_owned())
}

/// One row of the gate table. Only the `GATE` rows decide; a stage's own
/// rows inform (a stage with few P1 trials cannot reach the bound alone,
/// although every trial passed), so their verdict is shown as such.
fn class_row(scope: &str, c: &ClassReport, gated: bool) -> Vec<String> {
    let verdict = match (gated, c.verdict) {
        (true, v) => format!("{v:?}").to_lowercase(),
        (false, Verdict::Pass) => "(pass)".to_owned(),
        (false, Verdict::Fail) => "(below)".to_owned(),
    };
    vec![
        scope.to_owned(),
        format!("{:?}", c.priority),
        c.successes.to_string(),
        c.trials.to_string(),
        fmt(c.raw_rate),
        fmt(c.lower_bound),
        c.threshold.to_string(),
        verdict,
    ]
}

fn human(outcome: &GateOutcome, evidence_file: &std::path::Path, signed: bool, proposed: &std::path::Path) -> String {
    let mut stages = table(&["stage", "status", "tests", "runs"]);
    for s in &outcome.stages {
        let status = match s.status {
            StageStatus::Planned => format!("planned (issue {})", s.issue.unwrap_or(0)),
            other => format!("{other:?}").to_lowercase(),
        };
        let runs: Vec<String> = s.runs.iter().map(|r| format!("{}/{} passed", r.passed, r.tests.len())).collect();
        stages.add_row(vec![s.stage.as_str().to_owned(), status, s.tests.to_string(), runs.join(", ")]);
    }
    let mut gate = table(&["scope", "class", "successes", "trials", "raw rate", "lower bound", "threshold", "verdict"]);
    for s in &outcome.stages {
        if let Some(c) = &s.computation {
            gate.add_row(class_row(s.stage.as_str(), &c.p0, false));
            gate.add_row(class_row(s.stage.as_str(), &c.p1, false));
        }
    }
    gate.add_row(class_row("GATE (all gated stages)", &outcome.computation.p0, true));
    gate.add_row(class_row("GATE (all gated stages)", &outcome.computation.p1, true));
    let mut text = format!("{stages}\n{gate}\nthe GATE rows decide; a stage's own rows, in parentheses, inform\n");
    for note in [&outcome.computation.p0.note, &outcome.computation.p1.note].into_iter().flatten() {
        text.push_str(&format!("note: {note}\n"));
    }
    for f in &outcome.flakes {
        text.push_str(&format!(
            "flake: {} passed {:?} failed {:?}, rate {:.3}, Wilson [{:.3}, {:.3}]{}\n",
            f.flake.test_id,
            f.flake.passed_runs,
            f.flake.failed_runs,
            f.pass_rate,
            f.interval.0,
            f.interval.1,
            if f.quarantined { " (quarantined)" } else { "" }
        ));
    }
    if !outcome.proposed_quarantine.is_empty() {
        text.push_str(&format!(
            "new flakes: proposed quarantine entries in {} (review, then `autobiz quarantine add`)\n",
            proposed.display()
        ));
    }
    for p in &outcome.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    let t = &outcome.traceability.check;
    text.push_str(&format!(
        "traceability: entries bound {}/{} ({} planned), tests mapped {}/{}\n",
        t.entries_bound,
        t.entries,
        t.planned.len(),
        t.tests_mapped,
        t.tests
    ));
    text.push_str(&format!(
        "evidence: {} ({})\nverdict: {}",
        evidence_file.display(),
        if signed { "signed" } else { "UNSIGNED: deploy refuses it" },
        format!("{:?}", outcome.verdict).to_uppercase()
    ));
    text
}
