//! The repository half of the hygiene suite (P1-H01, P1-H02): nothing that
//! could reach real money or real customers is committed.
//!
//! The sandbox guard (`autobiz_kernel::providers::SandboxGuard`) stops a live
//! key or a live host at run time; this scan stops them at review time, in
//! the files a run would read: configs, fixtures, transcripts, cassettes,
//! code. Two kinds of finding:
//!
//! * **live keys**: credentials shaped like real ones (Stripe `sk_live_`,
//!   `rk_live_`, `pk_live_` with a real key's length, Shopify `shpat_` /
//!   `shpss_` / `shpca_` with 32 hex digits, SendGrid `SG.` keys in their
//!   real two-part shape, AWS access key ids). Short fixtures such as
//!   `sk_live_abc` (used to prove the guard refuses live keys) are not
//!   key-shaped and pass.
//! * **live hosts**: a URL in a config, fixture, transcript or cassette whose
//!   host the default sandbox guard would refuse (anything but loopback).
//!   Documentation and code may name real hosts; data a run reads may not.
//!
//! A finding that is a deliberate fixture is excused only by a reviewed entry
//! in `suites/hygiene-allow.toml` naming the file and the finding's
//! fingerprint (never the value), in the way secret scanners keep ignore
//! files. Findings and errors never print a matched value: only the kind,
//! the file, the line and the fingerprint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use autobiz_kernel::providers::SandboxGuard;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::CliError;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    LiveKey,
    LiveHost,
}

/// One committed value that could reach the real world.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The file, relative to the scanned root.
    pub path: String,
    pub line: usize,
    pub kind: Kind,
    /// What matched, by name (`stripe live key`, `host api.stripe.com`);
    /// for a key never the key itself.
    pub what: String,
    /// The first 16 hex digits of SHA-256 of the matched text: how an
    /// allow entry names a finding without repeating it.
    pub fingerprint: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {} (fingerprint {})", self.path, self.line, self.what, self.fingerprint)
    }
}

/// Credentials shaped like real ones, with the name a finding reports.
static LIVE_KEYS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        // Stripe secret, restricted and publishable live keys: 24 or more
        // characters after the prefix (real ones have 24 to 99).
        ("stripe live key", r"\b[srp]k_live_[0-9A-Za-z]{24,}"),
        // Shopify admin API, shared-secret and custom-app tokens.
        ("shopify access token", r"\bshp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}\b"),
        // SendGrid: SG.<22>.<43>.
        ("sendgrid api key", r"\bSG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}\b"),
        ("aws access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ]
    .into_iter()
    .map(|(name, re)| (name, Regex::new(re).expect("static pattern")))
    .collect()
});

static URL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r#"https?://[^\s"'<>()\\]+"#).expect("static pattern"));

/// Files a run reads as data, where a real host must never appear.
fn is_data_file(path: &str) -> bool {
    let data_dir = ["examples/", "golden/", "cassettes/", "fakes/fixtures/"].iter().any(|d| path.starts_with(d));
    let data_ext = [".toml", ".json", ".jsonl", ".yaml", ".yml"].iter().any(|e| path.ends_with(e));
    data_dir && data_ext
}

/// The host of `url` when the sandbox guard would refuse it and it is not
/// a reserved name: a host a run must never reach.
fn live_host(guard: &SandboxGuard, url: &url::Url) -> Option<String> {
    let refused = guard.check_destination("hygiene", url).is_err() && !reserved(url);
    refused.then(|| url.host_str().unwrap_or_default().to_owned())
}

/// Names that never resolve to a real host (RFC 2606, RFC 6761): the
/// reserved top-level domains and the example domains. Fixtures and
/// cassettes use them as labels for endpoints (`primary.llm.invalid`).
fn reserved(url: &url::Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
    let tld = host.rsplit('.').next().unwrap_or_default();
    matches!(tld, "test" | "example" | "invalid" | "localhost")
        || ["example.com", "example.org", "example.net"].iter().any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

fn fingerprint(matched: &str) -> String {
    hex::encode(&Sha256::digest(matched.as_bytes())[..8])
}

/// Scan one file's text. `path` is relative to the scanned root, with `/`.
pub fn scan_text(path: &str, text: &str) -> Vec<Finding> {
    let guard = SandboxGuard::sandbox();
    let data = is_data_file(path);
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (name, re) in LIVE_KEYS.iter() {
            for m in re.find_iter(line) {
                found.push(Finding {
                    path: path.to_owned(),
                    line: n + 1,
                    kind: Kind::LiveKey,
                    what: (*name).to_owned(),
                    fingerprint: fingerprint(m.as_str()),
                });
            }
        }
        if !data {
            continue;
        }
        for m in URL.find_iter(line) {
            let Ok(url) = url::Url::parse(m.as_str()) else { continue };
            if let Some(host) = live_host(&guard, &url) {
                found.push(Finding {
                    path: path.to_owned(),
                    line: n + 1,
                    kind: Kind::LiveHost,
                    what: format!("host {host}"),
                    fingerprint: fingerprint(&host),
                });
            }
        }
    }
    found
}

/// A reviewed exception: `path` and `fingerprint` of a deliberate fixture.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    pub path: String,
    pub fingerprint: String,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    allow: Vec<Allowed>,
}

/// Read `suites/hygiene-allow.toml` (absent: nothing is excused).
pub fn load_allow(path: &Path) -> Result<Vec<Allowed>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CliError::infrastructure("HYGIENE_IO", format!("cannot read {}: {e}", path.display()))),
    };
    let file: AllowFile = toml::from_str(&text)
        .map_err(|e| CliError::input("HYGIENE_ALLOW_INVALID", format!("{}: {}", path.display(), e.message())))?;
    for a in &file.allow {
        if a.reason.trim().is_empty() {
            return Err(CliError::input(
                "HYGIENE_ALLOW_INVALID",
                format!("{}: the entry for {} has no reason", path.display(), a.path),
            ));
        }
    }
    Ok(file.allow)
}

/// The result of scanning a tree.
#[derive(Debug, Default, Serialize)]
pub struct Scan {
    pub files: usize,
    /// Findings no allow entry excuses: each one fails the hygiene suite.
    pub findings: Vec<Finding>,
    /// Allow entries that excuse nothing any more: stale, to be removed.
    pub unused_allow: Vec<String>,
}

/// Scan `files` (relative to `root`), excusing what `allow` lists.
/// Binary and unreadable-as-UTF-8 files are skipped: no key or URL a run
/// reads lives there.
pub fn scan_files(root: &Path, files: &[PathBuf], allow: &[Allowed]) -> Result<Scan, CliError> {
    let mut scan = Scan::default();
    let mut used = BTreeSet::new();
    for rel in files {
        let text = match std::fs::read(root.join(rel)) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => continue,
            },
            // Deleted from the work tree but still in the index.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(CliError::infrastructure("HYGIENE_IO", format!("cannot read {}: {e}", rel.display())));
            }
        };
        scan.files += 1;
        let rel = rel.to_string_lossy().replace('\\', "/");
        for f in scan_text(&rel, &text) {
            match allow.iter().position(|a| a.path == f.path && a.fingerprint == f.fingerprint) {
                Some(i) => {
                    used.insert(i);
                }
                None => scan.findings.push(f),
            }
        }
    }
    scan.unused_allow = allow
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(_, a)| format!("{} {}", a.path, a.fingerprint))
        .collect();
    scan.findings.sort();
    Ok(scan)
}

/// The files of a git work tree: tracked, plus untracked ones not ignored
/// (a key about to be committed is caught before the commit).
pub fn repository_files(root: &Path) -> Result<Vec<PathBuf>, CliError> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .map_err(|e| CliError::infrastructure("GIT_UNAVAILABLE", format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(CliError::input(
            "GIT_CHECKOUT_REQUIRED",
            format!("{} is not a git work tree: {}", root.display(), String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let mut files: Vec<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).as_ref()))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every file under `root`, recursively, relative to it (for trees that
/// are not git work trees).
pub fn walk_files(root: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(root.join(&dir))
            .map_err(|e| CliError::infrastructure("HYGIENE_IO", format!("cannot list {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| CliError::infrastructure("HYGIENE_IO", e.to_string()))?;
            let rel = dir.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| CliError::infrastructure("HYGIENE_IO", e.to_string()))?;
            if kind.is_dir() {
                dirs.push(rel);
            } else if kind.is_file() {
                files.push(rel);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What is wrong with one cassette (P1-H05), empty when nothing: it must
/// be VCR JSON with at least one interaction; every request a chat
/// completion (`model`, `messages`) to a loopback or reserved-name host
/// (`primary.llm.invalid`), carrying none of the headers the recorder strips
/// (`Authorization`, API keys, cookies); every response a status and, when
/// 2xx, a chat-completion body. `used_by` lists the files (tests, golden
/// scenarios) that name the cassette: one nobody replays has drifted from
/// its scenario.
pub fn check_cassette(name: &str, text: &str, used_by: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let doc: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("{name}: not JSON: {e}")],
    };
    let Some(interactions) = doc["http_interactions"].as_array().filter(|a| !a.is_empty()) else {
        return vec![format!("{name}: no `http_interactions`")];
    };
    let guard = SandboxGuard::sandbox();
    for (i, x) in interactions.iter().enumerate() {
        let req = &x["request"];
        let at = format!("{name}: interaction {i}");
        match req["uri"].as_str().map(url::Url::parse) {
            Some(Ok(u)) => {
                if let Some(host) = live_host(&guard, &u) {
                    problems.push(format!("{at}: request to host {host}"));
                }
            }
            _ => problems.push(format!("{at}: request without a URI")),
        }
        if let Some(headers) = req["headers"].as_object() {
            for h in headers.keys() {
                if autobiz_kernel::llm::cassette::STRIPPED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                    problems.push(format!("{at}: request header {h} (a credential) was recorded"));
                }
            }
        }
        let body = |v: &serde_json::Value| {
            v["body"]["string"].as_str().and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        };
        match body(req) {
            Some(b) if b["model"].is_string() && b["messages"].is_array() => {}
            _ => problems.push(format!("{at}: the request is not a chat completion (`model`, `messages`)")),
        }
        let resp = &x["response"];
        match resp["status"]["code"].as_u64() {
            Some(code) if (200..300).contains(&code) => {
                if body(resp).is_none_or(|b| !b["choices"].is_array()) {
                    problems.push(format!("{at}: a {code} answer without `choices`"));
                }
            }
            Some(_) => {}
            None => problems.push(format!("{at}: response without a status code")),
        }
    }
    if used_by.is_empty() {
        problems.push(format!("{name}: no test or scenario replays it"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_h01_key_shaped_live_credentials_are_found_and_never_printed() {
        let stripe = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc");
        let shopify = format!("shpat_{}", "0123456789abcdef0123456789abcdef");
        let sendgrid = format!("SG.{}.{}", "a".repeat(22), "b".repeat(43));
        let aws = format!("AKIA{}", "ABCDEFGHIJKLMNOP");
        let text = format!("a = \"{stripe}\"\nb = \"{shopify}\"\nc = \"{sendgrid}\" d = \"{aws}\"\n");
        let found = scan_text("src/x.rs", &text);
        let whats: Vec<_> = found.iter().map(|f| (f.line, f.what.as_str())).collect();
        assert_eq!(
            whats,
            [(1, "stripe live key"), (2, "shopify access token"), (3, "sendgrid api key"), (3, "aws access key id")]
        );
        for f in &found {
            let shown = f.to_string();
            for secret in [&stripe, &shopify, &sendgrid, &aws] {
                assert!(!shown.contains(secret.as_str()), "{shown}");
            }
        }
    }

    #[test]
    fn p1_h01_test_keys_and_short_fixtures_are_not_live_keys() {
        let text = "sk_test_4eC39HqLyjWDarjtT1zdp7dc sk_live_abc shpat_test SG.test pk_test_TYooMQauvdEDq54NiTphI7jx";
        assert_eq!(scan_text("kernel/tests/x.rs", text), []);
    }

    #[test]
    fn p1_h02_a_real_host_in_a_config_or_cassette_is_found_but_loopback_is_not() {
        let text = "url = \"http://127.0.0.1:9999/v1\"\nother = \"https://api.stripe.com/v1/charges\"\nx = \"http://localhost/\"";
        let found = scan_text("examples/shop/autobiz.toml", text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].kind, found[0].what.as_str()), (2, Kind::LiveHost, "host api.stripe.com"));
        assert_eq!(scan_text("cassettes/c.json", "{\"uri\": \"https://api.openai.com/v1/chat\"}").len(), 1);
        // Reserved names never resolve: labels, not hosts.
        let labels =
            "a = \"http://primary.llm.invalid/v1\"\nb = \"https://shop.example.com/x\"\nc = \"http://x.test/\"";
        assert_eq!(scan_text("cassettes/c.json", labels), []);
        assert_eq!(scan_text("cassettes/c.json", "\"https://example.com.evil.io/\"").len(), 1);
        // Documentation and code may name real hosts.
        assert_eq!(scan_text("README.md", text), []);
        assert_eq!(scan_text("kernel/src/providers/mod.rs", text), []);
    }

    #[test]
    fn p1_h01_an_allow_entry_excuses_only_its_file_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let key = format!("rk_live_{}", "Z".repeat(30));
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/one.rs"), format!("k = \"{key}\"")).unwrap();
        std::fs::write(dir.path().join("two.rs"), format!("k = \"{key}\"")).unwrap();
        let files = walk_files(dir.path()).unwrap();
        assert_eq!(files, [PathBuf::from("a/one.rs"), PathBuf::from("two.rs")]);
        let allow = vec![
            Allowed { path: "a/one.rs".into(), fingerprint: fingerprint(&key), reason: "fixture".into() },
            Allowed { path: "gone.rs".into(), fingerprint: "00".into(), reason: "stale".into() },
        ];
        let scan = scan_files(dir.path(), &files, &allow).unwrap();
        assert_eq!(scan.files, 2);
        assert_eq!(scan.findings.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["two.rs"]);
        assert_eq!(scan.unused_allow, ["gone.rs 00"]);
    }

    #[test]
    fn allow_entries_need_a_reason_and_known_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("allow.toml");
        std::fs::write(&p, "[[allow]]\npath = \"x\"\nfingerprint = \"ab\"\nreason = \" \"\n").unwrap();
        assert_eq!(load_allow(&p).unwrap_err().code, "HYGIENE_ALLOW_INVALID");
        std::fs::write(&p, "[[allow]]\npath = \"x\"\nfingerprint = \"ab\"\nreason = \"r\"\nvalue = \"k\"\n").unwrap();
        assert_eq!(load_allow(&p).unwrap_err().code, "HYGIENE_ALLOW_INVALID");
        assert_eq!(load_allow(&dir.path().join("absent.toml")).unwrap(), []);
    }
}
