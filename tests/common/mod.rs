//! Helpers shared by the CLI's integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

/// The example business config shipped in the repository.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop/autobiz.toml");

/// The binary run in `dir` with a clean environment: no inherited AUTOBIZ_*
/// or GIT_* settings can change what a test sees.
pub fn autobiz(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("autobiz").unwrap();
    cmd.current_dir(dir);
    for var in [
        "AUTOBIZ_DATABASE_URL",
        "AUTOBIZ_CONFIG",
        "AUTOBIZ_TENANT",
        "AUTOBIZ_MASTER_KEY",
        "AUTOBIZ_MASTER_KEY_FILE",
        "AUTOBIZ_SECRETS_FILE",
        "AUTOBIZ_LOG",
        "AUTOBIZ_EVIDENCE_KEY",
        "AUTOBIZ_EVIDENCE_PUBKEY",
        "AUTOBIZ_NEXTEST",
        "AUTOBIZ_LLM_URL",
        "AUTOBIZ_LLM_API_KEY",
        "AUTOBIZ_LLM_FALLBACK_URL",
        "AUTOBIZ_LLM_FALLBACK_API_KEY",
        "AUTOBIZ_CASSETTE",
        "AUTOBIZ_CASSETTE_MODE",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Parse a command's stdout as JSON, or fail with what it printed.
pub fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// `git ARGS` in `dir` with a fixed identity and no signing; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(["-c", "user.name=autobiz test", "-c", "user.email=test@autobiz.invalid", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The series `ops/metrics.toml` says `exporter` (`serve`, `soak`) exports today.
pub fn exported_metrics(exporter: &str) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/metrics.toml")).unwrap();
    let contract: toml::Value = toml::from_str(&text).unwrap();
    contract["metric"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["exporter"].as_str() == Some(exporter) && m["exported"].as_bool() == Some(true))
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}
