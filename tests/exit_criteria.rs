//! `autobiz exit-criteria` as a user meets it (P1-TASK-31, P1-TASK-32): a
//! repository whose gate and soak evidence show every criterion met exits 0;
//! each missing piece is named and exits 1; evidence that does not verify
//! with the configured key exits 1; garbage evidence exits 2.
//!
//! The evidence is what `autobiz gate` and `autobiz soak` write, built with
//! the library (`autobiz::evidence`) from the real catalogue: one passing
//! test per active entry, as many runs as the gate makes.

mod common;

use std::path::Path;

use autobiz::catalog::{Catalog, Status};
use autobiz::evidence::{self, Statement};
use common::{EXAMPLE, autobiz, json_of};
use serde_json::{Value, json};
use tempfile::TempDir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A repository root with what the criteria read: the catalogue, the
/// example config, ARCHITECTURE.md, .ci/run, the ops files and runbooks, the
/// layout's directories, and an oracle catalogue naming every oracle type.
fn repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["src", "kernel", "suites", "golden", "cassettes", "oracles", "migrations", "ci", ".ci", "docs/runbooks"]
    {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::create_dir_all(d.join("ops/grafana")).unwrap();
    std::fs::create_dir_all(d.join("ops/prometheus")).unwrap();
    for file in [
        "suites/catalog.toml",
        "ARCHITECTURE.md",
        ".ci/run",
        "ops/grafana/autobiz-overview.json",
        "ops/prometheus/alerts.yml",
    ] {
        std::fs::copy(Path::new(ROOT).join(file), d.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs/runbooks")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), d.join("docs/runbooks").join(entry.file_name())).unwrap();
    }
    std::fs::copy(EXAMPLE, d.join("autobiz.toml")).unwrap();
    let oracles: std::collections::BTreeSet<String> =
        catalog().entries.iter().flat_map(|e| e.oracles.clone()).collect();
    let doc: String = oracles.iter().map(|o| format!("## {o}\n\nWhat it asserts.\n\n")).collect();
    std::fs::write(d.join("oracles/README.md"), format!("# Oracles\n\n{doc}")).unwrap();
    dir
}

fn catalog() -> Catalog {
    Catalog::load(&Path::new(ROOT).join("suites/catalog.toml")).unwrap()
}

/// A test id bound by `pattern`: `*` filled in, a binary added when the
/// pattern names only the test.
fn test_for(pattern: &str) -> String {
    let name = pattern.replace('*', "x");
    if name.contains(' ') { name } else { format!("autobiz-kernel::bin {name}") }
}

/// The gate's predicate: every active entry's tests passed in all `runs`,
/// plus 12 negative tests and a golden scenario per workflow.
fn gate_predicate(runs: u32) -> Value {
    let mut stages: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let mut add = |stage: &str, id: String, priority: &str| {
        let tests = stages.entry(stage.to_owned()).or_default();
        tests.push(json!({"id": id, "priority": priority, "outcome": "passed"}));
    };
    for entry in catalog().entries.iter().filter(|e| e.status == Status::Active) {
        let priority = serde_json::to_value(entry.priority).unwrap();
        for pattern in &entry.tests {
            add(entry.stage.as_str(), test_for(pattern), priority.as_str().unwrap());
        }
    }
    for n in 0..12 {
        add("unit", format!("autobiz-kernel p1_t01_neg_case_{n}"), "P0");
    }
    for wf in 1..=7 {
        add("golden", format!("autobiz::golden p1_t19_wf0{wf}_happy_path_sqlite"), "P0");
    }
    let stages: Vec<Value> = stages
        .into_iter()
        .map(|(stage, tests)| {
            let runs: Vec<Value> = (1..=runs).map(|r| json!({"run": r, "tests": tests})).collect();
            json!({"stage": stage, "runs": runs})
        })
        .collect();
    json!({
        "schema_version": 1, "verdict": "pass", "finished_at": "2026-12-01T10:00:00Z",
        "result": {
            "runs": runs, "stages": stages, "flakes": [], "quarantine": [],
            "computation": {
                "p0": {"successes": 900, "trials": 900, "verdict": "pass"},
                "p1": {"successes": 402, "trials": 402, "lower_bound": 0.9905, "z": 1.96, "confidence": 0.95, "threshold": 0.95}
            }
        }
    })
}

fn soak_predicate() -> Value {
    let workflows: serde_json::Map<String, Value> = (1..=7)
        .map(|n| (format!("WF0{n}"), json!({"runs": 60, "completed": 59, "success_rate": 59.0 / 60.0})))
        .collect();
    json!({
        "schema_version": 1, "verdict": "pass", "clock": "virtual", "days": 7.0, "events": 2100,
        "threshold": 0.95, "lower_bound": 0.962, "min_lower_bound": 0.955, "violations": [], "workflows": workflows
    })
}

fn statement(predicate: Value, predicate_type: &str) -> Statement {
    let mut s = Statement::new(&"a".repeat(40), &"b".repeat(64), &"c".repeat(64), predicate);
    s.predicate_type = predicate_type.to_owned();
    s
}

fn write_unsigned(dir: &Path, name: &str, s: &Statement) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(s).unwrap()).unwrap();
    path.display().to_string()
}

fn exit_criteria(dir: &Path, gate: &str, soak: Option<&str>) -> assert_cmd::Command {
    let mut cmd = autobiz(dir);
    cmd.args(["--format", "json", "exit-criteria", "--evidence", gate]);
    if let Some(soak) = soak {
        cmd.args(["--soak-evidence", soak]);
    }
    cmd
}

fn verdicts(out: &[u8]) -> std::collections::BTreeMap<String, (String, String)> {
    let report = json_of(out);
    report["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_owned();
            (id, (c["verdict"].as_str().unwrap().to_owned(), c["evidence"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// Everything a command printed (`--format json` errors go to stdout).
fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_criterion_met_exits_0_and_shows_its_evidence() {
    let dir = repo();
    let gate = write_unsigned(dir.path(), "gate.json", &statement(gate_predicate(3), evidence::PREDICATE_TYPE));
    let soak = write_unsigned(dir.path(), "soak.json", &statement(soak_predicate(), evidence::SOAK_PREDICATE_TYPE));
    let out = exit_criteria(dir.path(), &gate, Some(&soak)).output().unwrap();
    let got = verdicts(&out.stdout);
    let not_met: Vec<_> = got.iter().filter(|(_, (v, _))| v != "met").collect();
    assert!(not_met.is_empty(), "not met: {not_met:#?}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(got.len(), 18);
    assert!(got["P1-EXIT-02"].1.contains("0.9905"), "{}", got["P1-EXIT-02"].1);
    assert!(
        got["P1-EXIT-04"].1.contains("7 days (virtual clock), 2100 events, 7 workflows"),
        "{}",
        got["P1-EXIT-04"].1
    );
    let report = json_of(&out.stdout);
    assert_eq!(report["gate_evidence"]["trust"]["trust"], "unverified");
}

#[test]
fn missing_soak_runs_and_failing_tests_are_named_and_exit_1() {
    let dir = repo();
    // Two runs only, and a failing P0 test: EXIT-01 and EXIT-09 fail too.
    let mut predicate = gate_predicate(2);
    predicate["result"]["computation"]["p0"] = json!({"successes": 899, "trials": 900, "verdict": "fail"});
    let gate = write_unsigned(dir.path(), "gate.json", &statement(predicate, evidence::PREDICATE_TYPE));
    let out = exit_criteria(dir.path(), &gate, None).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let got = verdicts(&out.stdout);
    for id in ["P1-EXIT-01", "P1-EXIT-04", "P1-EXIT-09", "P1-EXIT-12"] {
        assert_eq!(got[id].0, "not_met", "{id}: {}", got[id].1);
    }
    assert!(got["P1-EXIT-04"].1.contains("no soak evidence"));
    assert!(got["P1-EXIT-01"].1.contains("899/900"));
    assert_eq!(got["P1-EXIT-02"].0, "met");
}

#[test]
fn evidence_that_does_not_verify_with_the_configured_key_exits_1() {
    let dir = repo();
    let key = evidence::generate_key();
    let other = evidence::generate_key();
    let gate_statement = statement(gate_predicate(3), evidence::PREDICATE_TYPE);
    let signed = dir.path().join("gate.dsse.json");
    std::fs::write(&signed, evidence::sign(&gate_statement, &key).to_json()).unwrap();
    let pubkey = dir.path().join("evidence.pub");
    std::fs::write(&pubkey, evidence::verifying_key_to_pem(&key.verifying_key())).unwrap();
    let other_pub = dir.path().join("other.pub");
    std::fs::write(&other_pub, evidence::verifying_key_to_pem(&other.verifying_key())).unwrap();
    let signed = signed.display().to_string();

    // The right key: verified.
    let out = exit_criteria(dir.path(), &signed, None).env("AUTOBIZ_EVIDENCE_PUBKEY", &pubkey).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the soak is missing");
    assert_eq!(json_of(&out.stdout)["gate_evidence"]["trust"]["trust"], "verified");

    // Another key: refused, exit 1.
    let out = exit_criteria(dir.path(), &signed, None).env("AUTOBIZ_EVIDENCE_PUBKEY", &other_pub).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIGNATURE_INVALID") || String::from_utf8_lossy(&out.stdout).contains("SIGNATURE_INVALID"),
        "{err}"
    );

    // An unsigned statement while a key is configured: refused, exit 1.
    let unsigned = write_unsigned(dir.path(), "gate.json", &gate_statement);
    let out = exit_criteria(dir.path(), &unsigned, None).env("AUTOBIZ_EVIDENCE_PUBKEY", &pubkey).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn garbage_or_wrong_kind_of_evidence_is_refused_and_an_unreadable_file_exits_2() {
    // As for `deploy`: evidence that is not what it claims is a "no" (exit 1).
    let dir = repo();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let out = exit_criteria(dir.path(), &garbage.display().to_string(), None).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said(&out).contains("EVIDENCE_MALFORMED"));

    // Soak evidence given as gate evidence: another predicate type.
    let soak = write_unsigned(dir.path(), "soak.json", &statement(soak_predicate(), evidence::SOAK_PREDICATE_TYPE));
    let out = exit_criteria(dir.path(), &soak, None).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(said(&out).contains("predicateType"));

    let out = exit_criteria(dir.path(), "/nonexistent/evidence.json", None).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("EVIDENCE_IO"));
}

#[test]
fn without_evidence_the_newest_directories_are_used_and_their_absence_is_reported() {
    let dir = repo();
    let out = autobiz(dir.path()).args(["--format", "json", "exit-criteria"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out.stdout);
    assert!(report["gate_evidence"].is_null() && report["soak_evidence"].is_null());
    // Two gate runs: the newest directory wins.
    for (name, p1) in [("20261130T000000Z", 0.90), ("20261201T000000Z", 0.99)] {
        let d = dir.path().join(".autobiz/evidence").join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut predicate = gate_predicate(3);
        predicate["result"]["computation"]["p1"]["lower_bound"] = json!(p1);
        write_unsigned(&d, "statement.json", &statement(predicate, evidence::PREDICATE_TYPE));
    }
    let out = autobiz(dir.path()).args(["--format", "json", "exit-criteria"]).output().unwrap();
    let report = json_of(&out.stdout);
    assert!(report["gate_evidence"]["path"].as_str().unwrap().contains("20261201T000000Z"), "{report}");
    assert_eq!(verdicts(&out.stdout)["P1-EXIT-02"].0, "met");
}
