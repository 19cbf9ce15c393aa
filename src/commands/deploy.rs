//! `autobiz deploy --evidence FILE [-- CMD...]`: no deploy without gate
//! evidence (INV-08). The inputs are gathered first (public key from
//! `AUTOBIZ_EVIDENCE_PUBKEY`, the evidence file, `git rev-parse HEAD`, the
//! config hash): a missing one is bad input (exit 2). Then the evidence must
//! verify with the key, name this commit and this config, and carry the
//! verdict `pass` (exit 1 with the stable code otherwise). Only then does the
//! deploy step run, and its exit code becomes ours. No flag skips a check.

use std::path::PathBuf;
use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;

use crate::cli::{DeployArgs, GlobalArgs};
use crate::evidence::{self, Envelope, abbrev};
use crate::report::{CliError, Reporter};

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

    let envelope = Envelope::from_json(&bytes)?;
    let statement = evidence::verify(&envelope, &key)?;
    statement.check_deployable(&head, &config_digest)?;

    let keyid = evidence::keyid(&key);
    tracing::info!(commit = %head, config = %config_digest, keyid = %keyid, "evidence verified");
    let Some((program, rest)) = args.cmd.split_first() else {
        reporter.result(
            || {
                format!(
                    "evidence verified: commit {}, config sha256:{}, verdict pass, signed by key {}",
                    abbrev(&head),
                    abbrev(&config_digest),
                    abbrev(&keyid)
                )
            },
            &serde_json::json!({
                "verified": true,
                "commit": head,
                "config_hash": format!("sha256:{config_digest}"),
                "verdict": "pass",
                "keyid": keyid,
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

/// `git rev-parse HEAD` in the current directory.
fn git_head() -> Result<String, CliError> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "HEAD^{commit}"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CliError::infrastructure("GIT_UNAVAILABLE", format!("cannot run git: {e}")))?;
    let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || head.is_empty() || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().next().unwrap_or("no commit").trim();
        return Err(CliError::input(
            "GIT_CHECKOUT_REQUIRED",
            format!("deploy needs a git checkout with a commit in the current directory (git rev-parse HEAD: {why})"),
        ));
    }
    Ok(head)
}
