//! `autobiz exit-criteria`: P1-ENTRY-01..04 and P1-EXIT-01..14 from the
//! newest gate evidence (`.autobiz/evidence/`), the newest soak evidence
//! (`.autobiz/soak/`), the catalogue and the repository. Exit 0 when every
//! criterion is met, 1 otherwise. With `AUTOBIZ_EVIDENCE_PUBKEY` set, both
//! evidence files must verify with it; without, they are read as reports
//! and the output says so.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;

use super::deploy::PUBKEY_ENV;
use crate::catalog::Catalog;
use crate::cli::{ExitCriteriaArgs, GlobalArgs};
use crate::evidence::{self, PREDICATE_TYPE, SOAK_PREDICATE_TYPE, Trust};
use crate::exit_criteria::{Criterion, Inputs, Loaded, Verdict, evaluate};
use crate::report::{CliError, Reporter, exit, table};

/// Where `autobiz gate` writes its evidence directories.
pub const GATE_EVIDENCE_ROOT: &str = ".autobiz/evidence";
/// Where `autobiz soak` writes its evidence directories (UTC-named, like the gate's).
pub const SOAK_EVIDENCE_ROOT: &str = ".autobiz/soak";
/// The soak's envelope and unsigned statement inside its directory.
pub const SOAK_ENVELOPE_FILE: &str = "soak.dsse.json";
pub const SOAK_UNSIGNED_FILE: &str = "soak.statement.json";

pub fn run(global: &GlobalArgs, args: ExitCriteriaArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let catalog = Catalog::load(&args.catalog)?;
    let config = BusinessConfig::load(&global.config)?;
    let workflows: Vec<String> = config.model()?.workflows.iter().map(|w| w.id.clone()).collect();
    let key = match std::env::var_os(PUBKEY_ENV) {
        Some(p) if !p.is_empty() => Some(evidence::load_verifying_key(Path::new(&p))?),
        _ => None,
    };
    let gate_path = args.evidence.or_else(|| {
        super::gate::newest(Path::new(GATE_EVIDENCE_ROOT), &[super::gate::ENVELOPE_FILE, super::gate::UNSIGNED_FILE])
    });
    let soak_path = args
        .soak_evidence
        .or_else(|| super::gate::newest(Path::new(SOAK_EVIDENCE_ROOT), &[SOAK_ENVELOPE_FILE, SOAK_UNSIGNED_FILE]));
    let gate = gate_path.map(|p| load(&p, key.as_ref(), PREDICATE_TYPE)).transpose()?;
    let soak = soak_path.map(|p| load(&p, key.as_ref(), SOAK_PREDICATE_TYPE)).transpose()?;

    let root = PathBuf::from(".");
    let criteria =
        evaluate(&Inputs { gate: gate.as_ref(), soak: soak.as_ref(), catalog: &catalog, root: &root, workflows });
    let met = criteria.iter().filter(|c| c.verdict == Verdict::Met).count();
    let all = met == criteria.len();
    reporter.result(
        || render(&criteria, gate.as_ref(), soak.as_ref()),
        &serde_json::json!({
            "met": met,
            "total": criteria.len(),
            "all_met": all,
            "gate_evidence": gate.as_ref().map(|g| serde_json::json!({"path": g.path, "trust": g.trust})),
            "soak_evidence": soak.as_ref().map(|s| serde_json::json!({"path": s.path, "trust": s.trust})),
            "criteria": criteria,
        }),
    );
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(exit::SAID_NO) })
}

fn load(path: &Path, key: Option<&ed25519_dalek::VerifyingKey>, predicate_type: &str) -> Result<Loaded, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::input("EVIDENCE_IO", format!("cannot read the evidence {}: {e}", path.display())))?;
    let (statement, trust) = evidence::read(&bytes, key, predicate_type).map_err(|e| {
        let e = CliError::from(e);
        CliError { message: format!("{}: {}", path.display(), e.message), ..e }
    })?;
    Ok(Loaded { path: path.display().to_string(), trust, statement })
}

fn render(criteria: &[Criterion], gate: Option<&Loaded>, soak: Option<&Loaded>) -> String {
    let mut t = table(&["criterion", "what", "verdict", "evidence"]);
    for c in criteria {
        let verdict = match c.verdict {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
        };
        t.add_row(vec![c.id.to_owned(), c.title.to_owned(), verdict.to_owned(), c.evidence.clone()]);
    }
    let met = criteria.iter().filter(|c| c.verdict == Verdict::Met).count();
    let source = |what: &str, l: Option<&Loaded>| match l {
        Some(l) => match &l.trust {
            Trust::Verified { keyid } => {
                format!("{what}: {} (signature verified, key {})", l.path, evidence::abbrev(keyid))
            }
            Trust::Unverified { reason } => format!("{what}: {} (not verified: {reason})", l.path),
        },
        None => format!("{what}: none"),
    };
    format!(
        "{t}\n{met}/{} criteria met\n{}\n{}",
        criteria.len(),
        source("gate evidence", gate),
        source("soak evidence", soak)
    )
}
