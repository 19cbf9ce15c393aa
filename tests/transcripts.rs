//! Every transcript recorded in `golden/transcripts/` replays to its state
//! hash and receipts under the config it ran under (INV-06, P1-T15), and a
//! changed byte in any of them is refused.

mod common;

use std::path::{Path, PathBuf};

use common::autobiz;

fn corpus() -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    (dir.join("config.toml"), files)
}

#[test]
fn p1_t15_every_recorded_transcript_replays_identically() {
    let (config, files) = corpus();
    assert!(files.len() >= 3, "the corpus is {files:?}");
    let tmp = tempfile::tempdir().unwrap();
    for file in &files {
        let out = autobiz(tmp.path()).arg("--config").arg(&config).arg("replay").arg(file).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
        assert!(text.starts_with("identical:"), "{}: {text}", file.display());
    }
}

#[test]
fn p1_t15_a_tampered_recorded_transcript_is_refused() {
    let (config, files) = corpus();
    let tmp = tempfile::tempdir().unwrap();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Change what a provider answered: the status of the first response.
        let tampered = text.replacen("\"status\":\"requires_capture\"", "\"status\":\"succeeded\"", 1);
        assert_ne!(tampered, text, "{} has no authorization response", file.display());
        let copy = tmp.path().join("tampered.jsonl");
        std::fs::write(&copy, tampered).unwrap();
        let out = autobiz(tmp.path()).arg("--config").arg(&config).arg("replay").arg(&copy).assert().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(stderr.contains("TRANSCRIPT_CORRUPT"), "{}: {stderr}", file.display());
    }
}
