//! The gate harness end to end, with a script playing cargo-nextest
//! (`AUTOBIZ_NEXTEST`): it prints a fixed test list and, for each run of a
//! stage, the JUnit report the test prepared. So every outcome (a P0 failure
//! in one run, P1 failures, a flake, a crash, garbage) is forced exactly, and
//! the gate, its evidence and `deploy` are the real binary.

mod common;

use std::path::PathBuf;

use autobiz::evidence::{self, Envelope};
use common::{EXAMPLE, autobiz, git, json_of};
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

const FAKE_NEXTEST: &str = r#"#!/usr/bin/env bash
# Plays cargo-nextest for the gate's tests. Files in $FAKE_DIR:
#   list-all.json, list-unit.json, list-integration.json   (nextest list JSON)
#   junit-<stage>-run<N>.xml and optional exit-<stage>-run<N>
set -u
cmd="$1"; shift
filter=""
while [ $# -gt 0 ]; do
  if [ "$1" = "-E" ]; then filter="$2"; shift; fi
  shift
done
stage=""
case "$filter" in
  *"kind(lib)"*) stage=unit ;;
  *"kind(test)"*) stage=integration ;;
esac
if [ "$cmd" = list ]; then
  cat "$FAKE_DIR/list-${stage:-all}.json"
  exit 0
fi
count="$FAKE_DIR/count-$stage"
n=$(( $(cat "$count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$count"
echo "fake nextest: $stage run $n"
mkdir -p target/nextest/gate
if [ -f "$FAKE_DIR/junit-$stage-run$n.xml" ]; then
  cp "$FAKE_DIR/junit-$stage-run$n.xml" target/nextest/gate/junit.xml
fi
if [ -f "$FAKE_DIR/exit-$stage-run$n" ]; then exit "$(cat "$FAKE_DIR/exit-$stage-run$n")"; fi
if grep -q "<failure" "$FAKE_DIR/junit-$stage-run$n.xml" 2>/dev/null; then exit 100; fi
exit 0
"#;

const CATALOG: &str = r#"version = 1
[stages.hygiene]
planned = true
issue = 5
[stages.unit]
filter = "kind(lib)"
[stages.integration_internal]
filter = "kind(test)"
[stages.integration_external]
planned = true
issue = 5
[stages.golden]
planned = true
issue = 6

[[test]]
id = "P1-T01"
title = "schemas"
priority = "P0"
stage = "unit"
requirements = ["P1-R01"]
tests = ["p1_t01_*"]

[[test]]
id = "P1-T02"
title = "permissions"
priority = "P1"
stage = "integration_internal"
requirements = ["P1-R02"]
tests = ["p1_t02_*"]

[[test]]
id = "P1-T11"
title = "idempotency"
priority = "P0"
stage = "integration_internal"
requirements = ["P1-R06"]
status = "planned"
issue = 4
tests = []
"#;

const UNIT: [&str; 2] = ["schema::tests::p1_t01_valid", "schema::tests::p1_t01_invalid"];
const P1_TESTS: usize = 30;

fn integration_tests() -> Vec<String> {
    (0..P1_TESTS).map(|i| format!("p1_t02_case_{i:02}")).collect()
}

fn list_json(suites: &[(&str, &str, Vec<String>)]) -> String {
    let mut rust_suites = serde_json::Map::new();
    for (binary, kind, tests) in suites {
        let cases: serde_json::Map<String, Value> = tests
            .iter()
            .map(|t| (t.clone(), serde_json::json!({"ignored": false, "filter-match": {"status": "matches"}})))
            .collect();
        rust_suites.insert((*binary).to_owned(), serde_json::json!({"kind": kind, "testcases": cases}));
    }
    serde_json::json!({"rust-build-meta": {"target-directory": "target"}, "rust-suites": rust_suites}).to_string()
}

/// A JUnit report for `binary` where `failing` tests fail.
fn junit(binary: &str, tests: &[String], failing: &[&str]) -> String {
    let cases: String = tests
        .iter()
        .map(|t| {
            if failing.contains(&t.as_str()) {
                format!("<testcase name=\"{t}\" classname=\"{binary}\"><failure type=\"test failure\">boom</failure></testcase>")
            } else {
                format!("<testcase name=\"{t}\" classname=\"{binary}\"/>")
            }
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?><testsuites name=\"nextest-run\"><testsuite name=\"{binary}\">{cases}</testsuite></testsuites>"
    )
}

/// A committed repository with the catalogue and config, a fake nextest, and keys.
struct Fixture {
    repo: TempDir,
    fake: TempDir,
    keys: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "-q"]);
        std::fs::copy(EXAMPLE, repo.path().join("autobiz.toml")).unwrap();
        std::fs::create_dir_all(repo.path().join("suites")).unwrap();
        std::fs::write(repo.path().join("suites/catalog.toml"), CATALOG).unwrap();
        std::fs::write(repo.path().join(".gitignore"), ".autobiz/\ntarget/\n").unwrap();
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "fixture"]);
        let fake = tempfile::tempdir().unwrap();
        let script = fake.path().join("nextest");
        std::fs::write(&script, FAKE_NEXTEST).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let unit: Vec<String> = UNIT.iter().map(|s| (*s).to_owned()).collect();
        let all = list_json(&[("demo", "lib", unit.clone()), ("demo::it", "test", integration_tests())]);
        std::fs::write(fake.path().join("list-all.json"), all).unwrap();
        std::fs::write(fake.path().join("list-unit.json"), list_json(&[("demo", "lib", unit)])).unwrap();
        std::fs::write(
            fake.path().join("list-integration.json"),
            list_json(&[("demo::it", "test", integration_tests())]),
        )
        .unwrap();
        let keys = tempfile::tempdir().unwrap();
        autobiz(keys.path()).args(["keys", "generate", "--out", "k"]).assert().success();
        let f = Fixture { repo, fake, keys };
        for run in 1..=3 {
            f.results("unit", run, &[]);
            f.results("integration", run, &[]);
        }
        f
    }

    /// Prepare run `run` of `stage` (`unit` or `integration`) with these failures.
    fn results(&self, stage: &str, run: u32, failing: &[&str]) {
        let xml = match stage {
            "unit" => junit("demo", &UNIT.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), failing),
            _ => junit("demo::it", &integration_tests(), failing),
        };
        std::fs::write(self.fake.path().join(format!("junit-{stage}-run{run}.xml")), xml).unwrap();
    }

    fn raw(&self, stage: &str, run: u32, xml: Option<&str>, exit: Option<i32>) {
        let path = self.fake.path().join(format!("junit-{stage}-run{run}.xml"));
        match xml {
            Some(x) => std::fs::write(&path, x).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        if let Some(code) = exit {
            std::fs::write(self.fake.path().join(format!("exit-{stage}-run{run}")), code.to_string()).unwrap();
        }
    }

    fn evidence_dir(&self) -> PathBuf {
        self.repo.path().join(".autobiz/evidence/test")
    }

    fn gate(&self) -> assert_cmd::Command {
        for stage in ["unit", "integration"] {
            let _ = std::fs::remove_file(self.fake.path().join(format!("count-{stage}")));
        }
        let mut cmd = autobiz(self.repo.path());
        cmd.env("AUTOBIZ_NEXTEST", self.fake.path().join("nextest"))
            .env("FAKE_DIR", self.fake.path())
            .env("AUTOBIZ_EVIDENCE_KEY", self.keys.path().join("k/evidence.key"))
            .args(["--config", "autobiz.toml", "--format", "json", "gate", "--evidence-dir"])
            .arg(self.evidence_dir());
        cmd
    }

    /// Run the gate; its JSON result and exit code.
    fn run_gate(&self) -> (Value, i32) {
        let out = self.gate().output().unwrap();
        (json_of(&out.stdout), out.status.code().unwrap())
    }

    fn envelope_path(&self) -> PathBuf {
        self.evidence_dir().join("evidence.dsse.json")
    }

    fn deploy(&self) -> assert_cmd::Command {
        let mut cmd = autobiz(self.repo.path());
        cmd.env("AUTOBIZ_EVIDENCE_PUBKEY", self.keys.path().join("k/evidence.pub"))
            .args(["--config", "autobiz.toml", "deploy", "--evidence"])
            .arg(self.envelope_path());
        cmd
    }

    fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        evidence::load_verifying_key(&self.keys.path().join("k/evidence.pub")).unwrap()
    }
}

#[test]
fn p1_t18_an_all_passing_gate_writes_signed_evidence_that_deploy_accepts() {
    let f = Fixture::new();
    let (json, code) = f.run_gate();
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["verdict"], "pass");
    let result = &json["result"];
    assert_eq!(result["computation"]["p0"]["trials"], 6);
    assert_eq!(result["computation"]["p1"]["trials"], 90);
    assert_eq!(result["computation"]["p1"]["successes"], 90);
    let statuses: Vec<&str> =
        result["stages"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["planned", "passed", "passed", "planned", "planned"]);
    assert_eq!(result["traceability"]["not_covered"][0], "P1-T11 (planned, issue 4)");
    for file in ["junit/unit-run1.xml", "junit/integration_internal-run3.xml", "report.html", "evidence.dsse.json"] {
        assert!(f.evidence_dir().join(file).is_file(), "{file} missing");
    }
    let html = std::fs::read_to_string(f.evidence_dir().join("report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("PASS") && !html.contains("<script"));

    let envelope = Envelope::from_json(&std::fs::read(f.envelope_path()).unwrap()).unwrap();
    let statement = evidence::verify(&envelope, &f.public_key()).unwrap();
    assert_eq!(statement.verdict(), Some("pass"));
    assert_eq!(statement.predicate["schema_version"], 1);
    assert_eq!(statement.predicate["tree_clean"], true);
    f.deploy().assert().success().stdout(predicate::str::contains("evidence verified"));
}

#[test]
fn p1_t18_a_p0_failure_in_a_single_run_fails_the_gate_and_deploy_refuses() {
    let f = Fixture::new();
    f.results("unit", 2, &["schema::tests::p1_t01_invalid"]);
    let (json, code) = f.run_gate();
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["verdict"], "fail");
    let p0 = &json["result"]["computation"]["p0"];
    assert_eq!(
        (p0["successes"].as_u64(), p0["trials"].as_u64(), p0["verdict"].as_str()),
        (Some(5), Some(6), Some("fail"))
    );
    assert_eq!(json["result"]["computation"]["p1"]["verdict"], "pass");
    // The evidence is written with the verdict inside; deploy refuses it.
    f.deploy().assert().code(1).stderr(predicate::str::contains("EVIDENCE_VERDICT_FAIL"));
}

#[test]
fn p1_t18_forced_p1_failures_below_the_lower_bound_fail_the_gate() {
    let f = Fixture::new();
    // 89/90: raw 0.989, but the Wilson lower bound ~0.940 is under 0.95.
    f.results("integration", 3, &["p1_t02_case_07"]);
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    let p1 = &json["result"]["computation"]["p1"];
    assert_eq!((p1["successes"].as_u64(), p1["trials"].as_u64()), (Some(89), Some(90)));
    assert!(p1["raw_rate"].as_f64().unwrap() > 0.95);
    let lcb = p1["lower_bound"].as_f64().unwrap();
    assert!((lcb - autobiz::gate::wilson::lower_bound(89, 90, 0.95).unwrap()).abs() < 1e-12 && lcb < 0.95);
    assert_eq!(
        (p1["verdict"].as_str(), json["result"]["computation"]["p0"]["verdict"].as_str()),
        (Some("fail"), Some("pass"))
    );
    // A lower threshold lets the same results pass.
    let out = f.gate().args(["--threshold", "0.9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn p1_t18_a_flaky_test_is_detected_from_three_runs_and_proposed_not_quarantined() {
    let f = Fixture::new();
    f.results("integration", 2, &["p1_t02_case_03"]);
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    let flakes = json["result"]["flakes"].as_array().unwrap();
    assert_eq!(flakes.len(), 1, "{flakes:?}");
    assert_eq!(flakes[0]["test_id"], "demo::it p1_t02_case_03");
    assert_eq!(flakes[0]["passed_runs"], serde_json::json!([1, 3]));
    assert_eq!(flakes[0]["failed_runs"], serde_json::json!([2]));
    let rate = flakes[0]["pass_rate"].as_f64().unwrap();
    assert!((rate - 2.0 / 3.0).abs() < 1e-12);
    let (lo, hi) = (flakes[0]["interval"][0].as_f64().unwrap(), flakes[0]["interval"][1].as_f64().unwrap());
    assert!(lo < rate && rate < hi && (lo - autobiz::gate::wilson::lower_bound(2, 3, 0.95).unwrap()).abs() < 1e-12);
    // Proposed in the evidence directory, never written to the reviewed file.
    let proposed = std::fs::read_to_string(f.evidence_dir().join("proposed-quarantine.toml")).unwrap();
    assert!(proposed.contains("demo::it p1_t02_case_03"), "{proposed}");
    assert!(!f.repo.path().join("suites/quarantine.toml").exists());
}

#[test]
fn p1_t18_quarantined_tests_run_but_do_not_count_and_p0_or_expired_entries_fail() {
    let f = Fixture::new();
    f.results("integration", 2, &["p1_t02_case_03"]);
    let today = chrono::Utc::now().date_naive();
    let entry = |id: &str, expires: chrono::NaiveDate| {
        format!(
            "[[quarantine]]\nid = \"{id}\"\nreason = \"flaky\"\nowner = \"qa\"\nadded = \"{}\"\nexpires = \"{expires}\"\n",
            today - chrono::Duration::days(30)
        )
    };
    let q = f.repo.path().join("suites/quarantine.toml");
    std::fs::write(&q, entry("demo::it p1_t02_case_03", today + chrono::Duration::days(7))).unwrap();
    // 29 counted tests x 3 runs, all pass: 87/87 -> lower bound 0.958.
    let (json, code) = f.run_gate();
    assert_eq!(code, 0, "{:#}", json["result"]["problems"]);
    assert_eq!(json["result"]["computation"]["p1"]["trials"], 87);
    assert_eq!(json["result"]["flakes"][0]["quarantined"], true);

    std::fs::write(&q, entry("demo::it p1_t02_case_03", today - chrono::Duration::days(1))).unwrap();
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    assert!(json["result"]["problems"][0].as_str().unwrap().contains("expired"), "{:#}", json["result"]["problems"]);

    std::fs::write(&q, entry("demo schema::tests::p1_t01_valid", today + chrono::Duration::days(7))).unwrap();
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    assert!(json["result"]["problems"][0].as_str().unwrap().contains("P0"), "{:#}", json["result"]["problems"]);
}

#[test]
fn p1_t18_quarantine_add_list_remove_and_p0_is_refused() {
    let f = Fixture::new();
    let q = |args: &[&str]| {
        let mut cmd = autobiz(f.repo.path());
        cmd.arg("quarantine").args(args);
        cmd
    };
    q(&["add", "demo schema::tests::p1_t01_valid", "--reason", "slow", "--owner", "qa"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("QUARANTINE_P0"));
    q(&["add", "demo::it p1_t02_case_01", "--reason", "flaky", "--owner", "qa", "--days", "3"]).assert().success();
    q(&["add", "demo::it p1_t02_case_01", "--reason", "again", "--owner", "qa"]).assert().code(2);
    q(&["list"]).assert().success().stdout(predicate::str::contains("demo::it p1_t02_case_01"));
    q(&["remove", "demo::it p1_t02_case_01"]).assert().success();
    q(&["remove", "demo::it p1_t02_case_01"]).assert().code(2).stderr(predicate::str::contains("QUARANTINE_NOT_FOUND"));
    q(&["list"]).assert().success().stdout(predicate::str::contains("no quarantined tests"));
}

#[test]
fn inv08_a_crashed_or_garbled_run_fails_closed() {
    // nextest exits 101 (a build failure) and writes no report.
    let f = Fixture::new();
    f.raw("integration", 2, None, Some(101));
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    assert!(json["result"]["problems"].to_string().contains("crashed"), "{:#}", json["result"]["problems"]);
    assert_eq!(json["result"]["computation"]["p1"]["missing"], 30);

    // A report that is not JUnit.
    let f = Fixture::new();
    f.raw("unit", 1, Some("<testsuites><testsuite name=\"demo\"><testcase"), None);
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    assert!(json["result"]["problems"].to_string().contains("RESULTS_MALFORMED"), "{:#}", json["result"]["problems"]);

    // A run that reports fewer tests than were listed: the rest are missing.
    let f = Fixture::new();
    f.raw("unit", 3, Some(&junit("demo", &["schema::tests::p1_t01_valid".to_owned()], &[])), None);
    let (json, code) = f.run_gate();
    assert_eq!(code, 1);
    assert_eq!(json["result"]["computation"]["p0"]["missing"], 1);
}

#[test]
fn inv08_nextest_missing_or_no_key_stop_the_gate_with_their_codes() {
    let f = Fixture::new();
    f.gate()
        .env("AUTOBIZ_NEXTEST", "/nonexistent/nextest")
        .assert()
        .code(3)
        .stdout(predicate::str::contains("NEXTEST_UNAVAILABLE"));
    f.gate()
        .env_remove("AUTOBIZ_EVIDENCE_KEY")
        .assert()
        .code(2)
        .stdout(predicate::str::contains("EVIDENCE_KEY_REQUIRED"));
    assert!(!f.envelope_path().exists());
    // --unsigned: a statement deploy cannot use.
    f.gate().env_remove("AUTOBIZ_EVIDENCE_KEY").arg("--unsigned").assert().success();
    assert!(f.evidence_dir().join("statement.json").is_file() && !f.envelope_path().exists());
}

#[test]
fn inv08_flipping_any_byte_of_the_evidence_or_changing_commit_or_config_makes_deploy_refuse() {
    let f = Fixture::new();
    assert_eq!(f.run_gate().1, 0);
    let bytes = std::fs::read(f.envelope_path()).unwrap();
    let key = f.public_key();
    let head = git(f.repo.path(), &["rev-parse", "HEAD"]);
    let config = autobiz_kernel::config::BusinessConfig::load(&f.repo.path().join("autobiz.toml")).unwrap();
    let digest = evidence::config_digest(&config);
    let accepts = |b: &[u8]| {
        Envelope::from_json(b)
            .and_then(|e| evidence::verify(&e, &key))
            .and_then(|s| s.check_deployable(&head, &digest))
            .is_ok()
    };
    assert!(accepts(&bytes));
    // Every byte but the keyid, which DSSE makes an unauthenticated hint
    // (verification tries the configured key whatever the hint says).
    let text = String::from_utf8(bytes.clone()).unwrap();
    let keyid_start = text.find("\"keyid\"").unwrap();
    let value_start = keyid_start + text[keyid_start + 8..].find('"').unwrap() + 9;
    let keyid_end = value_start + text[value_start..].find('"').unwrap() + 1;
    let mut checked = 0;
    for i in (0..bytes.len()).filter(|i| !(keyid_start..keyid_end).contains(i)) {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        if serde_json::from_slice::<Value>(&tampered).ok() == serde_json::from_slice::<Value>(&bytes).ok() {
            continue; // whitespace flipped into whitespace: the same document
        }
        assert!(!accepts(&tampered), "flipping byte {i} ({:?}) was accepted", bytes[i] as char);
        checked += 1;
    }
    assert!(checked > bytes.len() / 2);
    // One tampered file through the real deploy.
    let mut tampered = bytes.clone();
    let at = bytes.len() / 2;
    tampered[at] ^= 0x01;
    std::fs::write(f.envelope_path(), &tampered).unwrap();
    f.deploy().assert().code(1);
    std::fs::write(f.envelope_path(), &bytes).unwrap();
    f.deploy().assert().success();

    // Another config.
    let original = std::fs::read_to_string(f.repo.path().join("autobiz.toml")).unwrap();
    std::fs::write(f.repo.path().join("autobiz.toml"), format!("{original}\n[bounds]\nmax_steps = 3\n")).unwrap();
    let changed = f.deploy().output().unwrap();
    assert_ne!(changed.status.code(), Some(0));
    std::fs::write(f.repo.path().join("autobiz.toml"), original).unwrap();
    // Another commit.
    std::fs::write(f.repo.path().join("NEW"), "x").unwrap();
    git(f.repo.path(), &["add", "NEW"]);
    git(f.repo.path(), &["commit", "-q", "-m", "another"]);
    f.deploy().assert().code(1).stderr(predicate::str::contains("EVIDENCE_SUBJECT_MISMATCH"));
}

#[test]
fn p1_t18_check_catalog_and_trace_matrix_report_coverage() {
    let f = Fixture::new();
    let cmd = |args: &[&str]| {
        let mut c = autobiz(f.repo.path());
        c.env("AUTOBIZ_NEXTEST", f.fake.path().join("nextest")).env("FAKE_DIR", f.fake.path()).args(args);
        c
    };
    cmd(&["suite", "--check-catalog"]).assert().success().stdout(predicate::str::contains("planned: P1-T11 (issue 4)"));
    cmd(&["trace-matrix"]).assert().success().stdout(
        predicate::str::contains("requirements covered 2/3").and(predicate::str::contains("tests mapped 32/32")),
    );
    assert_eq!(f.run_gate().1, 0);
    let out = cmd(&["--format", "json", "trace-matrix"]).output().unwrap();
    let json = json_of(&out.stdout);
    let r02 = json["requirements"].as_array().unwrap().iter().find(|r| r["requirement"] == "P1-R02").unwrap();
    assert_eq!((r02["tests"].as_u64(), r02["passed"].as_u64()), (Some(30), Some(30)));

    // A test carrying an id the catalogue lacks.
    let extra = list_json(&[("demo", "lib", vec!["p1_t09_not_in_the_catalogue".to_owned()])]);
    std::fs::write(f.fake.path().join("list-all.json"), extra).unwrap();
    cmd(&["suite", "--check-catalog"]).assert().code(1).stdout(
        predicate::str::contains("TEST_ID_NOT_IN_CATALOG").and(predicate::str::contains("BINDING_MATCHES_NOTHING")),
    );
    // A catalogue with a duplicate id is refused outright.
    std::fs::write(
        f.repo.path().join("suites/catalog.toml"),
        format!("{CATALOG}\n{}", &CATALOG[CATALOG.find("[[test]]").unwrap()..]),
    )
    .unwrap();
    cmd(&["suite", "--check-catalog"]).assert().code(2).stderr(predicate::str::contains("duplicate test id"));
}

#[test]
fn p1_t18_suite_runs_one_stage_and_exits_1_on_failure() {
    let f = Fixture::new();
    let cmd = || {
        let mut c = autobiz(f.repo.path());
        c.env("AUTOBIZ_NEXTEST", f.fake.path().join("nextest")).env("FAKE_DIR", f.fake.path());
        c
    };
    cmd().args(["suite", "unit"]).assert().success().stdout(predicate::str::contains("passed"));
    assert!(f.repo.path().join(".autobiz/suite/unit.xml").is_file());
    f.results("unit", 2, &["schema::tests::p1_t01_valid"]);
    cmd().args(["suite", "unit"]).assert().code(1).stdout(predicate::str::contains("demo schema::tests::p1_t01_valid"));
    cmd().args(["suite", "golden"]).assert().code(1).stderr(predicate::str::contains("STAGE_PLANNED"));
}
