//! Driving cargo-nextest: list tests (`--message-format json`) and run a
//! filterset with the `gate` profile, whose JUnit report
//! (`<target>/nextest/gate/junit.xml`) is the only thing read back. nextest's
//! human output is captured to a log file, never parsed.
//!
//! `AUTOBIZ_NEXTEST` replaces `cargo nextest` (split on whitespace): the
//! harness's own tests point it at a script that plays nextest. Failures are
//! typed: nextest that cannot start is `NEXTEST_UNAVAILABLE`, a list that
//! fails or is not the documented JSON is `NEXTEST_FAILED` /
//! `RESULTS_MALFORMED` (all exit 3 or 2); a run that crashes or times out is
//! a [`RunStatus`], which the gate turns into a failed stage (fail closed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalog::ListedTest;
use crate::gate::junit::{self, JunitCase};
use crate::report::CliError;

/// The environment variable that replaces `cargo nextest`.
pub const NEXTEST_ENV: &str = "AUTOBIZ_NEXTEST";
/// The nextest profile the harness runs with (see `.config/nextest.toml`).
pub const PROFILE: &str = "gate";
/// Where nextest writes that profile's JUnit report: its store directory is
/// `target/nextest` under the workspace root whatever `CARGO_TARGET_DIR`
/// says, so `suite` and `gate` run from the repository root.
pub const JUNIT_REPORT: &str = "target/nextest/gate/junit.xml";

/// How to invoke nextest.
#[derive(Debug, Clone)]
pub struct Nextest {
    program: Vec<String>,
}

/// The test list and where nextest writes its reports.
#[derive(Debug, Clone)]
pub struct Listing {
    pub tests: Vec<ListedTest>,
    pub target_dir: PathBuf,
}

/// How one run of a stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// nextest finished: 0 all passed, 100 some failed.
    Completed {
        exit_code: i32,
    },
    /// nextest ended otherwise (build failure, crash, signal) or wrote no report.
    Crashed {
        reason: String,
    },
    TimedOut {
        after_secs: u64,
    },
}

/// One run of a stage.
#[derive(Debug, Clone)]
pub struct StageRun {
    pub status: RunStatus,
    pub cases: Vec<JunitCase>,
    /// The JUnit report as nextest wrote it (empty when there was none).
    pub junit_xml: String,
    pub duration: Duration,
}

#[derive(Deserialize)]
struct ListJson {
    #[serde(rename = "rust-build-meta")]
    build_meta: BuildMeta,
    #[serde(rename = "rust-suites")]
    suites: std::collections::BTreeMap<String, SuiteJson>,
}

#[derive(Deserialize)]
struct BuildMeta {
    #[serde(rename = "target-directory")]
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct SuiteJson {
    kind: String,
    testcases: std::collections::BTreeMap<String, CaseJson>,
}

#[derive(Deserialize)]
struct CaseJson {
    #[serde(rename = "filter-match")]
    filter_match: FilterMatch,
}

#[derive(Deserialize)]
struct FilterMatch {
    status: String,
}

impl Nextest {
    /// `AUTOBIZ_NEXTEST` or `cargo nextest`.
    pub fn from_env() -> Nextest {
        let program = std::env::var(NEXTEST_ENV)
            .ok()
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["cargo".to_owned(), "nextest".to_owned()]);
        Nextest { program }
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program[0]);
        cmd.args(&self.program[1..]);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    fn unavailable(&self, e: std::io::Error) -> CliError {
        CliError::infrastructure(
            "NEXTEST_UNAVAILABLE",
            format!(
                "cannot run `{}`: {e} (install it with `cargo install cargo-nextest --locked`)",
                self.program.join(" ")
            ),
        )
    }

    /// The tests of the workspace that `filter` selects (all without one).
    pub async fn list(&self, filter: Option<&str>) -> Result<Listing, CliError> {
        let mut cmd = self.command();
        cmd.args(["list", "--workspace", "--message-format", "json"]);
        if let Some(f) = filter {
            cmd.args(["-E", f]);
        }
        let out = cmd.output().await.map_err(|e| self.unavailable(e))?;
        if !out.status.success() {
            return Err(CliError::infrastructure(
                "NEXTEST_FAILED",
                format!("`nextest list` failed ({}): {}", out.status, tail(&String::from_utf8_lossy(&out.stderr), 20)),
            ));
        }
        parse_list(&out.stdout)
    }

    /// Run the tests `filter` selects, under `timeout`; nextest's human
    /// output goes to `log`.
    pub async fn run(&self, filter: &str, log: &Path, timeout: Duration) -> Result<StageRun, CliError> {
        let junit_path = Path::new(JUNIT_REPORT);
        // A report left by an earlier run must never be read as this one's.
        match std::fs::remove_file(junit_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::infrastructure(
                    "RESULTS_IO",
                    format!("cannot remove the old report {}: {e}", junit_path.display()),
                ));
            }
        }
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| log_io(log, e))?;
        }
        let log_file = std::fs::File::create(log).map_err(|e| log_io(log, e))?;
        let log_err = log_file.try_clone().map_err(|e| log_io(log, e))?;
        let mut cmd = self.command();
        cmd.args(["run", "--workspace", "--no-fail-fast", "--profile", PROFILE, "--no-tests", "pass", "-E", filter]);
        cmd.stdout(Stdio::from(log_file)).stderr(Stdio::from(log_err));
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| self.unavailable(e))?;
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(CliError::infrastructure("NEXTEST_FAILED", format!("waiting for nextest: {e}")));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Ok(StageRun {
                    status: RunStatus::TimedOut { after_secs: timeout.as_secs() },
                    cases: Vec::new(),
                    junit_xml: String::new(),
                    duration: started.elapsed(),
                });
            }
        };
        let duration = started.elapsed();
        let junit_xml = std::fs::read_to_string(junit_path).unwrap_or_default();
        let crashed = |reason: String| StageRun {
            status: RunStatus::Crashed { reason },
            cases: Vec::new(),
            junit_xml: String::new(),
            duration,
        };
        let code = status.code();
        if !matches!(code, Some(0) | Some(100)) {
            let log_tail = std::fs::read_to_string(log).map(|t| tail(&t, 5)).unwrap_or_default();
            return Ok(crashed(format!("nextest exited with {status}: {log_tail}")));
        }
        if junit_xml.is_empty() {
            return Ok(crashed(format!("nextest wrote no JUnit report at {}", junit_path.display())));
        }
        match junit::parse(&junit_xml) {
            Ok(cases) => Ok(StageRun {
                status: RunStatus::Completed { exit_code: code.unwrap_or(-1) },
                cases,
                junit_xml,
                duration,
            }),
            Err(e) => Ok(crashed(format!("{}: {e}", e.code()))),
        }
    }
}

fn log_io(log: &Path, e: std::io::Error) -> CliError {
    CliError::infrastructure("RESULTS_IO", format!("cannot write {}: {e}", log.display()))
}

/// Parse `nextest list --message-format json`: the tests whose filter matched.
pub fn parse_list(bytes: &[u8]) -> Result<Listing, CliError> {
    let list: ListJson = serde_json::from_slice(bytes).map_err(|e| {
        CliError::input("RESULTS_MALFORMED", format!("`nextest list` did not print its documented JSON: {e}"))
    })?;
    let mut tests = Vec::new();
    for (binary_id, suite) in list.suites {
        for (name, case) in suite.testcases {
            if case.filter_match.status == "matches" {
                tests.push(ListedTest { binary_id: binary_id.clone(), kind: suite.kind.clone(), name });
            }
        }
    }
    tests.sort();
    Ok(Listing { tests, target_dir: list.build_meta.target_directory })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_t18_the_list_json_is_read_and_unmatched_tests_dropped() {
        let json = br#"{"rust-build-meta": {"target-directory": "/t"}, "test-count": 2, "rust-suites": {
            "autobiz::cli": {"kind": "test", "binary-id": "autobiz::cli", "testcases": {
                "a": {"ignored": false, "filter-match": {"status": "matches"}},
                "b": {"ignored": false, "filter-match": {"status": "mismatch", "reason": "expression"}}}}}}"#;
        let listing = parse_list(json).unwrap();
        assert_eq!(listing.target_dir, PathBuf::from("/t"));
        assert_eq!(
            listing.tests,
            vec![ListedTest { binary_id: "autobiz::cli".into(), kind: "test".into(), name: "a".into() }]
        );
        let e = parse_list(b"running 3 tests\n").unwrap_err();
        assert_eq!((e.code.as_str(), e.exit), ("RESULTS_MALFORMED", 2));
    }
}
