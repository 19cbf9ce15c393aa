//! `autobiz deploy --evidence FILE [-- CMD...]`: no deploy without gate
//! evidence (INV-08). The inputs are gathered first (public key from
//! `AUTOBIZ_EVIDENCE_PUBKEY`, the evidence file, `git rev-parse HEAD`, the
//! config hash): a missing one is bad input (exit 2). Then the evidence must
//! verify with the key, have the predicate schema this binary knows, name
//! this commit (with no modified tracked file) and this config, carry the
//! verdict `pass`, and be younger than `--max-age` (exit 1 with the stable
//! code otherwise). An override, signed off by two distinct approvers, may
//! excuse only a `fail` verdict or stale evidence, never the signature, the
//! schema, the subjects or the tree. Every deploy that passes is appended to
//! `.autobiz/deploys.jsonl` (evidence hash, commit, config, override, and
//! whether it is a rollback: a commit that is an ancestor of the previous
//! deploy's) before the deploy step runs; if that record cannot be written
//! nothing runs. The log's counters are then rewritten to
//! `.autobiz/deploy.prom` (`deploy_rollback_total`, the
//! `AutobizDeployRollback` alert's series).

use std::path::PathBuf;
use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;

use sha2::{Digest, Sha256};

use crate::cli::{DeployArgs, GlobalArgs};
use crate::evidence::{self, Envelope, abbrev};
use crate::gate::harness::SCHEMA_VERSION;
use crate::report::{CliError, Reporter};

/// Where every authorized deploy is recorded, one JSON object a line.
pub const DEPLOY_LOG: &str = ".autobiz/deploys.jsonl";

/// `--override-approver` twice (distinct) and a reason, or no override.
fn approval(args: &DeployArgs) -> Result<Option<(Vec<String>, String)>, CliError> {
    if args.override_approver.is_empty() && args.override_reason.is_none() {
        return Ok(None);
    }
    let mut approvers: Vec<String> = args.override_approver.iter().map(|a| a.trim().to_owned()).collect();
    approvers.sort_by_key(|a| a.to_lowercase());
    approvers.dedup_by_key(|a| a.to_lowercase());
    approvers.retain(|a| !a.is_empty());
    let reason = args.override_reason.clone().unwrap_or_default();
    if approvers.len() < 2 || reason.trim().is_empty() {
        return Err(CliError::input(
            "OVERRIDE_INVALID",
            "an override needs two distinct --override-approver names and an --override-reason",
        ));
    }
    Ok(Some((approvers, reason)))
}

/// Append one line to [`DEPLOY_LOG`], fsynced; a deploy that cannot be
/// recorded does not run.
fn record_deploy(entry: &serde_json::Value) -> Result<(), CliError> {
    use std::io::Write;
    let path = std::path::Path::new(DEPLOY_LOG);
    let fail = |e: std::io::Error| {
        CliError::infrastructure("DEPLOY_RECORD_FAILED", format!("cannot record the deploy in {DEPLOY_LOG}: {e}"))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(fail)?;
    writeln!(file, "{entry}").map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// The deploy counters as a Prometheus textfile (`deploy_total`,
/// `deploy_rollback_total`), rewritten after every recorded deploy, for the
/// node exporter's textfile collector or a push to a Pushgateway.
pub const DEPLOY_METRICS: &str = ".autobiz/deploy.prom";

/// The last recorded deploy, if the log has one that parses.
fn previous_deploy() -> Option<serde_json::Value> {
    let log = std::fs::read_to_string(DEPLOY_LOG).ok()?;
    log.lines().rev().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str(l).ok())
}

/// Whether deploying `head` after `previous` goes back in history: `head`
/// is a different commit and an ancestor of the previous deploy's commit.
/// A previous commit this checkout does not know is not a rollback (git
/// cannot say), nor is a first deploy or a redeploy of the same commit.
fn is_rollback(head: &str, previous: Option<&serde_json::Value>) -> Result<bool, CliError> {
    let Some(prev) = previous.and_then(|p| p["commit"].as_str()) else { return Ok(false) };
    if prev == head || !prev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    Ok(git(&["merge-base", "--is-ancestor", head, prev])?.status.success())
}

/// Rewrite [`DEPLOY_METRICS`] from the log (counters derived from an
/// append-only log only grow). Written to a temporary file and renamed, so
/// a collector never reads half a file. A failure is logged, not fatal: the
/// deploy itself is recorded.
fn write_deploy_metrics() {
    let log = std::fs::read_to_string(DEPLOY_LOG).unwrap_or_default();
    let entries: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let rollbacks = entries.iter().filter(|e| e["rollback"] == true).count();
    let text = format!(
        "# HELP deploy_total Deploys recorded by autobiz deploy\n# TYPE deploy_total counter\ndeploy_total {}\n\
         # HELP deploy_rollback_total Deploys recorded as a rollback to an earlier commit\n\
         # TYPE deploy_rollback_total counter\ndeploy_rollback_total {rollbacks}\n",
        entries.len()
    );
    let tmp = format!("{DEPLOY_METRICS}.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, DEPLOY_METRICS)) {
        tracing::warn!("cannot write {DEPLOY_METRICS}: {e}");
    }
}

/// The environment variable naming the public key file.
pub const PUBKEY_ENV: &str = "AUTOBIZ_EVIDENCE_PUBKEY";

pub fn run(global: &GlobalArgs, args: DeployArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let pubkey_path = match std::env::var_os(PUBKEY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(CliError::input(
                "EVIDENCE_PUBKEY_REQUIRED",
                format!(
                    "set {PUBKEY_ENV} to the public key file (SPKI PEM, from `autobiz keys generate`) that verifies gate evidence"
                ),
            ));
        }
    };
    let key = evidence::load_verifying_key(&pubkey_path)?;
    let bytes = std::fs::read(&args.evidence).map_err(|e| {
        CliError::input("EVIDENCE_IO", format!("cannot read the evidence {}: {e}", args.evidence.display()))
    })?;
    let head = git_head()?;
    let config = BusinessConfig::load(&global.config)?;
    let config_digest = evidence::config_digest(&config);

    let override_ = approval(&args)?;
    let envelope = Envelope::from_json(&bytes)?;
    let statement = evidence::verify(&envelope, &key)?;
    let schema = statement.predicate.get("schema_version").and_then(serde_json::Value::as_u64);
    if schema != Some(u64::from(SCHEMA_VERSION)) {
        return Err(CliError::refused(
            "EVIDENCE_SCHEMA_UNSUPPORTED",
            format!("the evidence's predicate schema_version is {schema:?}; this autobiz reads {SCHEMA_VERSION}"),
        ));
    }
    let mut bypassed = Vec::new();
    if let Err(e) = statement.check_deployable(&head, &config_digest) {
        if e.code() == evidence::EvidenceCode::VerdictFail && override_.is_some() {
            bypassed.push(e.code().as_str());
        } else {
            return Err(e.into());
        }
    }
    if !git_tree_clean()? {
        return Err(CliError::refused(
            "TREE_DIRTY",
            "tracked files differ from HEAD: the evidence covers the commit, not these changes (commit or stash them)",
        ));
    }
    let finished = statement
        .predicate
        .get("finished_at")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    let now = chrono::Utc::now();
    let age_ok = finished.is_some_and(|t| {
        let age = now.signed_duration_since(t);
        age >= -chrono::Duration::minutes(5) && age.to_std().map_or(true, |a| a <= args.max_age)
    });
    if !age_ok {
        if override_.is_some() {
            bypassed.push("EVIDENCE_EXPIRED");
        } else {
            return Err(CliError::refused(
                "EVIDENCE_EXPIRED",
                format!(
                    "the evidence was finished at {}; the maximum age is {}",
                    finished.map(|t| t.to_rfc3339()).unwrap_or_else(|| "an unknown time".to_owned()),
                    humantime::format_duration(args.max_age)
                ),
            ));
        }
    }
    let override_record = override_.map(
        |(approvers, reason)| serde_json::json!({ "approvers": approvers, "reason": reason, "bypassed": bypassed }),
    );
    let previous = previous_deploy();
    let rollback = is_rollback(&head, previous.as_ref())?;
    record_deploy(&serde_json::json!({
        "at": now.to_rfc3339(),
        "commit": head,
        "rollback": rollback,
        "previous_commit": previous.as_ref().and_then(|p| p["commit"].as_str()),
        "config_hash": format!("sha256:{config_digest}"),
        "evidence": args.evidence,
        "evidence_sha256": hex::encode(Sha256::digest(&bytes)),
        "verdict": statement.verdict(),
        "keyid": evidence::keyid(&key),
        "override": override_record,
        "command": args.cmd,
    }))?;
    write_deploy_metrics();

    let keyid = evidence::keyid(&key);
    tracing::info!(commit = %head, config = %config_digest, keyid = %keyid, "evidence verified");
    let Some((program, rest)) = args.cmd.split_first() else {
        reporter.result(
            || {
                format!(
                    "evidence verified: commit {}, config sha256:{}, verdict {}, signed by key {}{}{}",
                    abbrev(&head),
                    abbrev(&config_digest),
                    statement.verdict().unwrap_or("?"),
                    abbrev(&keyid),
                    if bypassed.is_empty() { String::new() } else { format!(" (OVERRIDE of {})", bypassed.join(", ")) },
                    if rollback { ", a rollback to an earlier commit" } else { "" }
                )
            },
            &serde_json::json!({
                "verified": true,
                "commit": head,
                "config_hash": format!("sha256:{config_digest}"),
                "verdict": statement.verdict(),
                "keyid": keyid,
                "override": !bypassed.is_empty(),
                "rollback": rollback,
            }),
        );
        return Ok(ExitCode::SUCCESS);
    };
    let status = std::process::Command::new(program).args(rest).status().map_err(|e| {
        CliError::infrastructure("DEPLOY_STEP_FAILED", format!("cannot start the deploy step `{program}`: {e}"))
    })?;
    Ok(ExitCode::from(exit_code_of(status)))
}

/// The child's exit code; 128 + the signal when a signal ended it (as shells
/// report it).
fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return code as u8;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return (128 + signal) as u8;
        }
    }
    1
}

/// `git ARGS` in the current directory (`GIT_UNAVAILABLE` when git cannot run).
fn git(args: &[&str]) -> Result<std::process::Output, CliError> {
    std::process::Command::new("git")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CliError::infrastructure("GIT_UNAVAILABLE", format!("cannot run git: {e}")))
}

/// Whether no tracked file differs from HEAD (untracked files do not count:
/// they are not part of what was built from the commit).
pub(crate) fn git_tree_clean() -> Result<bool, CliError> {
    let out = git(&["status", "--porcelain", "--untracked-files=no"])?;
    if !out.status.success() {
        return Err(CliError::input("GIT_CHECKOUT_REQUIRED", "git status failed: not a git checkout"));
    }
    Ok(out.stdout.iter().all(u8::is_ascii_whitespace))
}

/// `git rev-parse HEAD` in the current directory.
pub(crate) fn git_head() -> Result<String, CliError> {
    let out = git(&["rev-parse", "--verify", "HEAD^{commit}"])?;
    let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || head.is_empty() || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().next().unwrap_or("no commit").trim();
        return Err(CliError::input(
            "GIT_CHECKOUT_REQUIRED",
            format!(
                "run this in a git checkout with a commit: the evidence names the commit it is about \
                 (git rev-parse HEAD in the current directory: {why})"
            ),
        ));
    }
    Ok(head)
}
