//! The hygiene suite's repository checks (P1-H01, H02, H05, H09): run
//! first by the gate, because a committed live key or live host makes every
//! later stage unsafe to run. The run-time halves (the sandbox guard
//! refusing live keys, hosts and recipients before any request, P1-H01..H03
//! and H06) are in `kernel/tests/providers_clients.rs`; the fakes' health
//! checks (P1-H04) in `tests/fakes.rs`; key formats (P1-H07, H08) in
//! `kernel/tests/idempotency.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use autobiz::hygiene::{self, Kind};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scan_repository() -> hygiene::Scan {
    let root = root();
    let allow = hygiene::load_allow(&root.join("suites/hygiene-allow.toml")).unwrap();
    let files = hygiene::repository_files(&root).unwrap();
    hygiene::scan_files(&root, &files, &allow).unwrap()
}

fn show(findings: &[hygiene::Finding]) -> String {
    findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn p1_h01_no_live_key_in_the_repository_configs_or_cassettes() {
    let scan = scan_repository();
    assert!(scan.files > 100, "the scan saw the repository ({} files)", scan.files);
    let keys: Vec<_> = scan.findings.iter().filter(|f| f.kind == Kind::LiveKey).cloned().collect();
    assert!(keys.is_empty(), "live keys committed (excuse a fixture in suites/hygiene-allow.toml):\n{}", show(&keys));
    assert!(scan.unused_allow.is_empty(), "stale entries in suites/hygiene-allow.toml: {:?}", scan.unused_allow);
}

#[test]
fn p1_h02_no_live_host_in_configs_fixtures_transcripts_or_cassettes() {
    let scan = scan_repository();
    let hosts: Vec<_> = scan.findings.iter().filter(|f| f.kind == Kind::LiveHost).cloned().collect();
    assert!(hosts.is_empty(), "data files name hosts the sandbox guard refuses:\n{}", show(&hosts));
}

fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git").arg("-C").arg(dir).args(args).status().unwrap();
    assert!(status.success(), "git {args:?}");
}

/// The scan is not vacuous: a key or host planted in a work tree, committed
/// or not yet, is found, named by file and line, and never printed.
#[test]
fn p1_h01_a_planted_live_key_or_live_host_fails_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::create_dir_all(dir.path().join("examples/shop")).unwrap();
    std::fs::create_dir_all(dir.path().join("cassettes")).unwrap();
    let key = format!("sk_live_{}", "51Hq0000LyjWDarjtT1zdp7dcXYZ");
    std::fs::write(dir.path().join("examples/shop/autobiz.toml"), "[tools]\nurl = \"http://127.0.0.1:1/\"\n").unwrap();
    git(dir.path(), &["add", "."]);
    let clean = hygiene::scan_files(dir.path(), &hygiene::repository_files(dir.path()).unwrap(), &[]).unwrap();
    assert_eq!(clean.findings, [], "loopback only: clean");

    std::fs::write(dir.path().join("examples/shop/autobiz.toml"), format!("[tools]\nkey = \"{key}\"\n")).unwrap();
    // Untracked and not ignored: found before it is committed.
    std::fs::write(dir.path().join("cassettes/llm.json"), "{\"uri\": \"https://api.openai.com/v1/chat/completions\"}")
        .unwrap();
    let scan = hygiene::scan_files(dir.path(), &hygiene::repository_files(dir.path()).unwrap(), &[]).unwrap();
    let got: Vec<_> = scan.findings.iter().map(|f| (f.path.as_str(), f.line, f.kind)).collect();
    assert_eq!(got, [("cassettes/llm.json", 1, Kind::LiveHost), ("examples/shop/autobiz.toml", 2, Kind::LiveKey)]);
    assert!(!show(&scan.findings).contains(&key), "the key is never shown");
}

/// A step of a run and its visit number.
type StepVisit = (String, u64);

/// (step, visit) pairs of one transcript: the side effects it made (a call
/// that carried an idempotency key and succeeded) and the receipts its
/// `run_end` lists.
fn effects_and_receipts(lines: &[Value]) -> (BTreeSet<StepVisit>, BTreeSet<StepVisit>) {
    // A v2 line: {"v", "seq", "prev", KIND: {fields}}.
    let entries = |kind: &'static str| lines.iter().filter_map(move |l| l.get(kind));
    let at = |l: &Value| (l["step"].as_str().unwrap_or_default().to_owned(), l["visit"].as_u64().unwrap_or(0));
    let keyed: BTreeSet<_> = entries("tool_request").filter(|l| l["idempotency_key"].is_string()).map(at).collect();
    let effects = entries("tool_response")
        .filter(|l| l["outcome"].get("ok").is_some())
        .map(at)
        .filter(|k| keyed.contains(k))
        .collect();
    let end = entries("run_end").next_back().expect("a finished run");
    let receipts = end["receipts"].as_array().unwrap().iter().map(at).collect();
    (effects, receipts)
}

/// Every side effect of every recorded run has its receipt, and every
/// receipt an effect (P1-H09, INV-05); removing one receipt is caught.
#[test]
fn p1_h09_every_side_effect_of_a_recorded_run_has_a_receipt() {
    let dir = root().join("golden/transcripts");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (effects, receipts) = effects_and_receipts(&lines);
        assert!(!effects.is_empty(), "{}: a run with side effects", path.display());
        assert_eq!(effects, receipts, "{}: effects and receipts differ", path.display());

        // The check can fail: drop one receipt.
        let end = lines.iter_mut().rev().find_map(|l| l.get_mut("run_end")).unwrap();
        end["receipts"].as_array_mut().unwrap().pop();
        let (effects, receipts) = effects_and_receipts(&lines);
        assert_ne!(effects, receipts);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} transcripts in {}", dir.display());
}

/// Files under `dirs` (relative to the root) whose text names `needle`.
fn files_naming(dirs: &[&str], needle: &str) -> Vec<String> {
    let root = root();
    let mut found = Vec::new();
    for dir in dirs {
        for rel in hygiene::walk_files(&root.join(dir)).unwrap() {
            let path = root.join(dir).join(&rel);
            if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
                found.push(format!("{dir}/{}", rel.display()));
            }
        }
    }
    found
}

/// Every cassette parses, holds only chat completions to labelled or
/// loopback endpoints without credentials, and is replayed by a test or
/// scenario (P1-H05); a cassette with a recorded key, a real host or no
/// user is refused.
#[test]
fn p1_h05_every_cassette_parses_has_no_credentials_and_is_replayed() {
    let dir = root().join("cassettes");
    let mut checked = 0;
    for rel in hygiene::walk_files(&dir).unwrap() {
        let name = rel.display().to_string();
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(&rel)).unwrap();
        let used_by = files_naming(&["kernel/tests", "tests", "golden"], &name);
        let problems = hygiene::check_cassette(&name, &text, &used_by);
        assert!(problems.is_empty(), "{problems:#?}");
        checked += 1;

        // The check can fail: plant a key, a real host, drop every user.
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let req = &mut doc["http_interactions"][0]["request"];
        req["headers"]["Authorization"] = serde_json::json!(["Bearer sk-planted"]);
        req["uri"] = serde_json::json!("https://api.openai.com/v1/chat/completions");
        let planted = hygiene::check_cassette(&name, &doc.to_string(), &[]);
        assert_eq!(planted.len(), 3, "{planted:#?}");
        assert_eq!(hygiene::check_cassette(&name, "[]", &used_by).len(), 1);
    }
    assert!(checked >= 1, "no cassette in {}", dir.display());
}
