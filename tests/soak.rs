//! `autobiz soak` as an operator runs it: the real binary, a virtual-clock
//! soak through the in-process `autobiz serve` router, worker and fakes, on
//! SQLite and PostgreSQL; every invariant drill fails the soak with the
//! violation named (and only it); a soak killed with SIGKILL resumes from
//! its checkpoint without counting a delivery twice; evidence in the gate's
//! format with the soak predicate.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_testkit::TestDatabase;
use serde_json::Value;

/// A git checkout (the evidence names the commit) to run the soak in.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::git(dir.path(), &["init", "-q"]);
    common::git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "soak test"]);
    dir
}

fn soak(dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = common::autobiz(dir)
        .args(["--config", common::EXAMPLE, "--format", "json", "soak", "--unsigned"])
        .args(args)
        .env("AUTOBIZ_LOG", "error")
        .timeout(Duration::from_secs(170))
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "soak exited {code}: {}", String::from_utf8_lossy(&out.stderr));
    (code, common::json_of(&out.stdout))
}

fn assert_passed_over_every_workflow(code: i32, out: &Value, events: u64) {
    let o = &out["outcome"];
    assert_eq!((code, o["verdict"].as_str()), (0, Some("pass")), "{o:#}");
    assert_eq!(o["events"], events);
    assert_eq!(o["planned_events"], events);
    assert_eq!(o["violations"], serde_json::json!([]));
    let workflows: Vec<&str> = o["workflows"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(workflows, ["WF01", "WF02", "WF03", "WF04", "WF05", "WF06", "WF07"]);
    for (wf, t) in o["workflows"].as_object().unwrap() {
        assert_eq!(t["runs"], t["completed"], "{wf}: every run reached its designed ending: {t}");
    }
    assert!(o["min_lower_bound"].as_f64().unwrap() >= 0.95, "{o:#}");
    let evidence: Value = serde_json::from_slice(&std::fs::read(out["evidence"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(evidence["predicateType"], "https://autobiz.dev/soak-evidence/v1");
    assert_eq!(evidence["predicate"]["verdict"], "pass");
}

#[test]
fn p1_soak_virtual_day_of_300_deliveries_passes_over_every_workflow_sqlite() {
    let dir = workdir();
    let soak_dir = dir.path().join("soak");
    let (code, out) =
        soak(dir.path(), &["--days", "1", "--events-per-day", "300", "--dir", soak_dir.to_str().unwrap()]);
    assert_passed_over_every_workflow(code, &out, 300);
    assert_eq!(out["outcome"]["clock"], "virtual");
    assert_eq!(out["outcome"]["days"], 1.0);
    // The soak's series (ops/metrics.toml, exporter soak), for the textfile collector.
    let prom = std::fs::read_to_string(soak_dir.join("soak.prom")).unwrap();
    let exported = common::exported_metrics("soak");
    assert_eq!(exported.len(), 3, "{exported:?}");
    for name in exported {
        assert!(prom.contains(&format!("# TYPE {name} ")), "{name} is exported by the soak, but not in\n{prom}");
    }
    assert!(prom.contains("gate_lower_bound{gate=\"soak\"} 0.9"), "{prom}");
    assert!(prom.contains("invariant_violation_total{invariant=\"duplicate_side_effect\"} 0"), "{prom}");
}

#[tokio::test(flavor = "multi_thread")]
async fn p1_soak_virtual_soak_passes_on_postgres() {
    let db = TestDatabase::postgres().await;
    let admin: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
    let dir = workdir();
    let soak_dir = dir.path().join("soak");
    let (code, out) = tokio::task::spawn_blocking({
        let (root, url, soak_dir) = (dir.path().to_owned(), db.kernel_url().to_owned(), soak_dir.clone());
        move || {
            soak(
                &root,
                &[
                    "--database-url",
                    &url,
                    "--days",
                    "1",
                    "--events-per-day",
                    "120",
                    "--dir",
                    soak_dir.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_passed_over_every_workflow(code, &out, 120);
    assert!(!soak_dir.join("soak.db").exists(), "the soak used PostgreSQL, not its own SQLite");
}

/// A small soak with a lenient gate, so only the drill can fail it.
fn drill(invariant: &str) -> Value {
    let dir = workdir();
    let soak_dir = dir.path().join("soak");
    let (code, out) = soak(
        dir.path(),
        &[
            "--days",
            "1",
            "--events-per-day",
            "24",
            "--warmup",
            "5",
            "--threshold",
            "0.5",
            "--check-every",
            "5",
            "--inject-violation",
            invariant,
            "--inject-at",
            "12",
            "--dir",
            soak_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "a soak with {invariant} committed must fail: {out:#}");
    let prom = std::fs::read_to_string(soak_dir.join("soak.prom")).unwrap();
    assert!(
        prom.lines().any(|l| l.starts_with(&format!("invariant_violation_total{{invariant=\"{invariant}\"}} "))
            && !l.ends_with(" 0")),
        "the drill is counted in soak.prom: {prom}"
    );
    out["outcome"].clone()
}

fn assert_only(outcome: &Value, invariant: &str) {
    let named: Vec<&str> =
        outcome["violations"].as_array().unwrap().iter().map(|v| v["invariant"].as_str().unwrap()).collect();
    assert!(!named.is_empty() && named.iter().all(|n| *n == invariant), "expected only {invariant}: {outcome:#}");
    assert!(outcome["violations"][0]["seq"].as_u64().unwrap() >= 12, "found after the drill, not before: {outcome:#}");
    let reasons = outcome["reasons"].to_string();
    assert!(reasons.contains(invariant), "the failure names {invariant}: {reasons}");
}

#[test]
fn p1_soak_injected_duplicate_side_effect_fails_the_soak_naming_it() {
    assert_only(&drill("duplicate_side_effect"), "duplicate_side_effect");
}

#[test]
fn p1_soak_injected_cross_tenant_access_fails_the_soak_naming_it() {
    assert_only(&drill("cross_tenant_access"), "cross_tenant_access");
}

#[test]
fn p1_soak_injected_untraced_run_fails_the_soak_naming_it() {
    assert_only(&drill("untraced_run"), "untraced_run");
}

#[test]
fn p1_soak_injected_secret_in_trace_fails_the_soak_naming_it() {
    assert_only(&drill("secret_in_trace"), "secret_in_trace");
}

#[test]
fn p1_soak_injected_unapproved_financial_step_fails_the_soak_naming_it() {
    assert_only(&drill("unapproved_financial_step"), "unapproved_financial_step");
}

/// A check reads the newest runs by pages, growing the page until it meets
/// a run an earlier check judged: a run registered without a trace some 120
/// runs of its tenant before the check (more than the first page) is still
/// found by it.
#[test]
fn p1_soak_a_run_further_back_than_the_first_page_is_still_checked() {
    let dir = workdir();
    let soak_dir = dir.path().join("soak");
    let (code, out) = soak(
        dir.path(),
        &["--days", "1", "--events-per-day", "600", "--warmup", "5", "--threshold", "0.5", "--check-every", "250"]
            .into_iter()
            .chain(["--inject-violation", "untraced_run", "--inject-at", "260", "--dir", soak_dir.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 1, "the drill must fail the soak: {out:#}");
    let outcome = &out["outcome"];
    assert_only(outcome, "untraced_run");
    assert_eq!(outcome["violations"][0]["seq"], 499, "found by the check right after it: {outcome:#}");
}

#[test]
fn p1_soak_bad_arguments_exit_2_with_a_clear_error() {
    let dir = workdir();
    for (args, needle) in [
        (vec!["--inject-violation", "tea_spill"], "not an invariant"),
        (vec!["--days", "0"], "days"),
        (vec!["--resume", "/nonexistent/soak"], "SOAK_CHECKPOINT_MISSING"),
    ] {
        let out = common::autobiz(dir.path())
            .args(["--config", common::EXAMPLE, "soak", "--unsigned"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    let out = common::autobiz(dir.path()).args(["--config", common::EXAMPLE, "soak", "--days", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no signing key and no --unsigned");
    assert!(String::from_utf8_lossy(&out.stderr).contains("EVIDENCE_KEY_REQUIRED"));
}

fn deliveries(progress: &Path) -> Vec<u64> {
    std::fs::read_to_string(progress)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["line"] == "delivery")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn p1_soak_killed_with_sigkill_resumes_without_counting_a_delivery_twice() {
    let dir = workdir();
    let soak_dir = dir.path().join("soak");
    let progress = soak_dir.join("progress.jsonl");
    let gate = ["--warmup", "10", "--threshold", "0.6", "--check-every", "10"];
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("autobiz"))
        .current_dir(dir.path())
        .env_remove("AUTOBIZ_EVIDENCE_KEY")
        .env_remove("AUTOBIZ_DATABASE_URL")
        .env("AUTOBIZ_LOG", "error")
        .args(["--config", common::EXAMPLE, "--format", "json", "soak", "--unsigned", "--days", "1"])
        .args(["--events-per-day", "80", "--dir", soak_dir.to_str().unwrap()])
        .args(gate)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while deliveries(&progress).len() < 20 {
        assert!(Instant::now() < deadline, "the soak made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the soak ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = deliveries(&progress);
    assert!(before.len() >= 20 && before.len() < 80, "killed mid-way: {}", before.len());

    let (code, out) = soak(dir.path(), &["--resume", soak_dir.to_str().unwrap()]);
    let o = &out["outcome"];
    assert_eq!(o["resumes"], 1, "{o:#}");
    assert_eq!(o["events"], 80, "every planned delivery counted once: {o:#}");
    let after = deliveries(&progress);
    assert_eq!(after, (0..80).collect::<Vec<u64>>(), "each delivery once, in order");
    assert_eq!(&after[..before.len()], &before[..], "the records before the kill are kept as they were");
    assert_eq!(o["violations"], serde_json::json!([]), "the re-delivered event made no second side effect: {o:#}");
    // At most the run cut by the kill fails (its provider objects lived in
    // the killed process's fakes); every other delivery ends as designed.
    let failed: u64 = o["workflows"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["runs"].as_u64().unwrap() - t["completed"].as_u64().unwrap())
        .sum();
    assert!(failed <= 1, "{failed} deliveries failed after the resume: {o:#}");
    assert_eq!(code, 0, "{o:#}");
}
