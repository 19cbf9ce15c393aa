//! `autobiz trace-matrix`: requirement -> catalogue entries -> tests ->
//! latest results. Tests come from `nextest list`; results from the newest
//! gate evidence under `.autobiz/evidence/` (or `--evidence`). The evidence
//! is read as a report here, not trusted: its signature is `deploy`'s
//! business. Planned entries never count as covering a requirement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use base64::Engine;
use serde::Serialize;

use crate::catalog::{Catalog, Status, binds};
use crate::cli::TraceMatrixArgs;
use crate::evidence::Envelope;
use crate::nextest::Nextest;
use crate::report::{CliError, Reporter, table};

#[derive(Debug, Serialize)]
struct Row {
    requirement: String,
    entries: Vec<String>,
    planned: Vec<String>,
    tests: usize,
    passed: usize,
    failed: usize,
    no_result: usize,
    covered: bool,
}

pub async fn run(args: TraceMatrixArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let catalog = Catalog::load(&args.catalog)?;
    let listing = Nextest::from_env().list(None).await?;
    let evidence = match args.evidence {
        Some(path) => Some(path),
        None => super::gate::newest(
            Path::new(super::exit_criteria::GATE_EVIDENCE_ROOT),
            &[super::gate::ENVELOPE_FILE, super::gate::UNSIGNED_FILE],
        ),
    };
    let results = match &evidence {
        Some(path) => latest_results(path)?,
        None => BTreeMap::new(),
    };
    let check = catalog.check(&listing.tests);

    let mut requirements: BTreeMap<String, Row> = BTreeMap::new();
    for entry in &catalog.entries {
        let tests: Vec<String> =
            listing.tests.iter().filter(|t| entry.tests.iter().any(|p| binds(p, t))).map(|t| t.full_id()).collect();
        for req in &entry.requirements {
            let row = requirements.entry(req.clone()).or_insert_with(|| Row {
                requirement: req.clone(),
                entries: vec![],
                planned: vec![],
                tests: 0,
                passed: 0,
                failed: 0,
                no_result: 0,
                covered: false,
            });
            if entry.status == Status::Planned {
                row.planned.push(entry.id.clone());
                continue;
            }
            row.entries.push(entry.id.clone());
            row.covered |= !tests.is_empty();
            let seen: BTreeSet<&String> = tests.iter().collect();
            for t in seen {
                row.tests += 1;
                match results.get(t).map(String::as_str) {
                    Some("passed") => row.passed += 1,
                    Some(_) => row.failed += 1,
                    None => row.no_result += 1,
                }
            }
        }
    }
    let rows: Vec<Row> = requirements.into_values().collect();
    let covered = rows.iter().filter(|r| r.covered).count();
    reporter.result(
        || {
            let mut t = table(&["requirement", "entries", "planned", "tests", "passed", "failed", "no result"]);
            for r in &rows {
                t.add_row(vec![
                    r.requirement.clone(),
                    r.entries.join(" "),
                    r.planned.join(" "),
                    r.tests.to_string(),
                    r.passed.to_string(),
                    r.failed.to_string(),
                    r.no_result.to_string(),
                ]);
            }
            format!(
                "{t}\nrequirements covered {covered}/{}\ntests mapped {}/{}\nresults from: {}",
                rows.len(),
                check.tests_mapped,
                check.tests,
                evidence.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "no gate evidence yet".to_owned())
            )
        },
        &serde_json::json!({
            "requirements": rows,
            "requirements_covered": covered,
            "requirements_total": rows.len(),
            "tests_mapped": check.tests_mapped,
            "tests_total": check.tests,
            "evidence": evidence,
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Test id -> outcome of its last run, from an envelope or an unsigned statement.
fn latest_results(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let bad = |m: String| CliError::input("EVIDENCE_MALFORMED", format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::input("EVIDENCE_IO", format!("cannot read {}: {e}", path.display())))?;
    let statement: serde_json::Value = match Envelope::from_json(&bytes) {
        Ok(envelope) => {
            let body = base64::engine::general_purpose::STANDARD
                .decode(envelope.payload.as_bytes())
                .map_err(|e| bad(format!("payload: {e}")))?;
            serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?
        }
        Err(_) => serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?,
    };
    let mut out = BTreeMap::new();
    let stages = statement["predicate"]["result"]["stages"].as_array().cloned().unwrap_or_default();
    for stage in stages {
        for run in stage["runs"].as_array().cloned().unwrap_or_default() {
            for test in run["tests"].as_array().cloned().unwrap_or_default() {
                if let (Some(id), Some(outcome)) = (test["id"].as_str(), test["outcome"].as_str()) {
                    out.insert(id.to_owned(), outcome.to_owned());
                }
            }
        }
    }
    Ok(out)
}
