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
    /// Every test binary the list read (matching tests or not): what the
    /// list is a function of. `None` when the list did not name them all.
    pub binaries: Option<Vec<PathBuf>>,
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
    #[serde(rename = "binary-path", default)]
    binary_path: Option<PathBuf>,
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
    let mut binaries = Some(Vec::new());
    for (binary_id, suite) in list.suites {
        binaries = binaries.zip(suite.binary_path).map(|(mut all, path)| {
            all.push(path);
            all
        });
        for (name, case) in suite.testcases {
            if case.filter_match.status == "matches" {
                tests.push(ListedTest { binary_id: binary_id.clone(), kind: suite.kind.clone(), name });
            }
        }
    }
    tests.sort();
    if let Some(b) = binaries.as_mut() {
        b.sort();
    }
    Ok(Listing { tests, target_dir: list.build_meta.target_directory, binaries })
}

/// A test list kept between runs of `autobiz suite`, so that a re-run of
/// unchanged binaries needs one cargo invocation (the run), not two.
///
/// Listing is a pure function of the test binaries (nextest runs each with
/// `--list`) and the filter, so the cache names both: the nextest command,
/// the filter, and every binary the list read with its size and
/// modification time (what cargo and make trust too). It is used only when
/// every binary is unchanged *after* the run's own build, and only when the
/// run reported no test outside it (a new test binary); anything else lists
/// again. A wrong or unreadable cache file is ignored, never trusted.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListCache {
    program: Vec<String>,
    filter: String,
    binaries: Vec<BinaryStamp>,
    tests: Vec<ListedTest>,
    target_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct BinaryStamp {
    path: PathBuf,
    size: u64,
    modified_ns: u128,
}

impl BinaryStamp {
    fn of(path: &Path) -> Option<BinaryStamp> {
        let meta = std::fs::metadata(path).ok()?;
        let modified_ns = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        Some(BinaryStamp { path: path.to_owned(), size: meta.len(), modified_ns })
    }
}

impl ListCache {
    /// The cache of `listing`, or `None` when a binary cannot be stamped.
    pub fn of(nextest: &Nextest, filter: &str, listing: &Listing) -> Option<ListCache> {
        Some(ListCache {
            program: nextest.program.clone(),
            filter: filter.to_owned(),
            binaries: listing.binaries.as_ref()?.iter().map(|b| BinaryStamp::of(b)).collect::<Option<_>>()?,
            tests: listing.tests.clone(),
            target_dir: listing.target_dir.clone(),
        })
    }

    /// The cached listing at `path`, if it is for this nextest and filter
    /// and every binary it read is unchanged.
    pub fn load(path: &Path, nextest: &Nextest, filter: &str) -> Option<Listing> {
        let cache: ListCache = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let fresh = cache.program == nextest.program
            && cache.filter == filter
            && cache.binaries.iter().all(|b| BinaryStamp::of(&b.path).as_ref() == Some(b));
        fresh.then(|| Listing {
            tests: cache.tests,
            target_dir: cache.target_dir,
            binaries: Some(cache.binaries.into_iter().map(|b| b.path).collect()),
        })
    }

    /// Write the cache; failing to is not an error (the next run lists).
    pub fn save(&self, path: &Path) {
        if let (Some(dir), Ok(bytes)) = (path.parent(), serde_json::to_vec(self)) {
            let tmp = path.with_extension("tmp");
            let _ = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, path));
        }
    }
}

/// Whether every test a run reported is in `listing` (else the listing is
/// older than the binaries: a test binary was added).
pub fn listing_covers(listing: &Listing, run: &StageRun) -> bool {
    let listed: std::collections::BTreeSet<(&str, &str)> =
        listing.tests.iter().map(|t| (t.binary_id.as_str(), t.name.as_str())).collect();
    run.cases.iter().all(|c| listed.contains(&(c.binary.as_str(), c.test_name.as_str())))
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

    fn listing_of(bins: &[PathBuf]) -> Listing {
        Listing {
            tests: vec![ListedTest { binary_id: "b".into(), kind: "lib".into(), name: "t1".into() }],
            target_dir: PathBuf::from("target"),
            binaries: Some(bins.to_vec()),
        }
    }

    fn run_of(cases: &[(&str, &str)]) -> StageRun {
        StageRun {
            status: RunStatus::Completed { exit_code: 0 },
            cases: cases
                .iter()
                .map(|(b, t)| JunitCase {
                    binary: (*b).into(),
                    test_name: (*t).into(),
                    outcome: crate::gate::Outcome::Passed,
                })
                .collect(),
            junit_xml: String::new(),
            duration: Duration::ZERO,
        }
    }

    /// The cached list is trusted only for the same nextest, filter and
    /// unchanged binaries; a rebuilt or removed binary, another filter, a
    /// garbled file or a run reporting an unlisted test all mean: list again.
    #[test]
    fn p1_t18_a_cached_list_is_used_only_while_its_binaries_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("test-bin");
        std::fs::write(&bin, b"binary v1").unwrap();
        let cache = dir.path().join("unit.list.json");
        let nextest = Nextest { program: vec!["cargo".into(), "nextest".into()] };
        let listing = listing_of(std::slice::from_ref(&bin));
        ListCache::of(&nextest, "kind(lib)", &listing).unwrap().save(&cache);
        let loaded = ListCache::load(&cache, &nextest, "kind(lib)").expect("fresh");
        assert_eq!(loaded.tests, listing.tests);
        assert!(ListCache::load(&cache, &nextest, "kind(test)").is_none(), "another filter");
        let other = Nextest { program: vec!["fake-nextest".into()] };
        assert!(ListCache::load(&cache, &other, "kind(lib)").is_none(), "another nextest");
        assert!(listing_covers(&loaded, &run_of(&[("b", "t1")])));
        assert!(!listing_covers(&loaded, &run_of(&[("b", "t1"), ("new-bin", "t9")])), "a new binary's test");

        std::fs::write(&bin, b"binary v2, rebuilt").unwrap();
        assert!(ListCache::load(&cache, &nextest, "kind(lib)").is_none(), "a rebuilt binary");
        ListCache::of(&nextest, "kind(lib)", &listing).unwrap().save(&cache);
        std::fs::remove_file(&bin).unwrap();
        assert!(ListCache::load(&cache, &nextest, "kind(lib)").is_none(), "a removed binary");
        std::fs::write(&cache, b"{garbage").unwrap();
        assert!(ListCache::load(&cache, &nextest, "kind(lib)").is_none(), "a garbled cache");
        // A list that does not name its binaries (a scripted nextest) is never cached.
        let unnamed = Listing { binaries: None, ..listing_of(&[]) };
        assert!(ListCache::of(&nextest, "kind(lib)", &unnamed).is_none());
    }
}
