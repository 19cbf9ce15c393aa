//! `autobiz suite STAGE`: one stage, once, for developers; and
//! `autobiz suite --check-catalog`: traceability of the catalogue.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::catalog::{Catalog, Stage};
use crate::cli::SuiteArgs;
use crate::gate::Outcome;
use crate::gate::harness::{self, write_file};
use crate::nextest::{ListCache, Listing, Nextest, RunStatus, listing_covers};
use crate::progress::Spinner;
use crate::quarantine::Quarantine;
use crate::report::{CliError, Reporter, table};

/// How long the list waits so that the run takes cargo's build lock first.
const LIST_DELAY: std::time::Duration = std::time::Duration::from_millis(150);

pub async fn run(args: SuiteArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let catalog = Catalog::load(&args.catalog)?;
    let nextest = Nextest::from_env();
    let Some(stage) = args.stage.filter(|_| !args.check_catalog) else {
        return check_catalog(&catalog, &nextest, reporter).await;
    };
    let quarantine = Quarantine::load(&args.quarantine)?;
    let decl = catalog.stages.get(&stage).cloned().unwrap_or_default();
    if decl.planned {
        return Err(CliError::refused(
            "STAGE_PLANNED",
            format!(
                "stage {} has no tests yet (planned, issue {}); nothing to run",
                stage.as_str(),
                decl.issue.unwrap_or(0)
            ),
        ));
    }
    let Some(filter) = catalog.stage_filter(stage) else {
        return Err(CliError::refused("STAGE_EMPTY", format!("stage {} selects no test", stage.as_str())));
    };
    let timeout = match args.timeout {
        Some(t) => t,
        None => decl.timeout()?,
    };
    let out_dir = PathBuf::from(".autobiz/suite");
    let ctx =
        harness::StageContext { nextest: &nextest, catalog: &catalog, quarantine: &quarantine, out_dir: &out_dir };
    let spinner = Spinner::new(reporter);
    harness::Progress::stage_started(&spinner, stage, 1, 1, None);
    // The run must report every test the stage selects (a missing one
    // fails), so the harness needs the list, from a second cargo
    // invocation, which in sequence was most of its overhead over bare
    // nextest. So: a list cached from an earlier run is reused while the
    // binaries it read are unchanged (checked again after the run's own
    // build); without one, the list is taken beside the run, starting a
    // moment later so that the run takes cargo's build lock first.
    let log = ctx.log_path(stage, 1);
    let cache_path = out_dir.join(format!("{}.list.json", stage.as_str()));
    let (ran, listing) = if ListCache::load(&cache_path, &nextest, &filter).is_some() {
        let ran = nextest.run(&filter, &log, timeout).await;
        spinner.finish();
        let ran = ran?;
        let listing = match ListCache::load(&cache_path, &nextest, &filter) {
            Some(l) if listing_covers(&l, &ran) => l,
            _ => fresh_list(&nextest, &filter, &cache_path).await?,
        };
        (ran, listing)
    } else {
        let listing = async {
            tokio::time::sleep(LIST_DELAY).await;
            fresh_list(&nextest, &filter, &cache_path).await
        };
        let (ran, listing) = tokio::join!(nextest.run(&filter, &log, timeout), listing);
        spinner.finish();
        (ran?, listing?)
    };
    if listing.tests.is_empty() {
        return Err(CliError::refused("STAGE_EMPTY", format!("stage {} selects no test ({filter})", stage.as_str())));
    }
    let record = harness::record_run(&ctx, &listing.tests, 1, ran);
    let junit = args.junit.unwrap_or_else(|| out_dir.join(format!("{}.xml", stage.as_str())));
    if !record.junit_xml.is_empty() {
        write_file(&junit, record.junit_xml.as_bytes())?;
    }
    let completed = matches!(record.status, RunStatus::Completed { .. });
    let ok = completed && record.tests.iter().all(|t| t.outcome == Outcome::Passed || t.quarantined);
    let not_passed: Vec<_> = record.tests.iter().filter(|t| t.outcome != Outcome::Passed).collect();
    reporter.result(
        || {
            let mut t = table(&["stage", "tests", "passed", "failed", "missing", "seconds", "result"]);
            t.add_row(vec![
                stage.as_str().to_owned(),
                record.tests.len().to_string(),
                record.passed.to_string(),
                record.failed.to_string(),
                record.missing.to_string(),
                format!("{:.1}", record.duration_ms as f64 / 1000.0),
                status_text(&record.status, ok),
            ]);
            let mut text = t.to_string();
            if !not_passed.is_empty() {
                let mut f = table(&["test", "priority", "outcome", "quarantined"]);
                for test in &not_passed {
                    f.add_row(vec![
                        test.id.clone(),
                        format!("{:?}", test.priority),
                        format!("{:?}", test.outcome).to_lowercase(),
                        test.quarantined.to_string(),
                    ]);
                }
                text.push_str(&format!("\n{f}"));
            }
            if !record.junit_xml.is_empty() {
                text.push_str(&format!("\nJUnit: {}", junit.display()));
            }
            text
        },
        &serde_json::json!({
            "stage": stage,
            "filter": filter,
            "passed": ok,
            "junit": (!record.junit_xml.is_empty()).then_some(&junit),
            "run": record,
        }),
    );
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(crate::report::exit::SAID_NO) })
}

/// List the stage's tests and keep the list for the next run.
async fn fresh_list(nextest: &Nextest, filter: &str, cache: &std::path::Path) -> Result<Listing, CliError> {
    let listing = nextest.list(Some(filter)).await?;
    if let Some(c) = ListCache::of(nextest, filter, &listing) {
        c.save(cache);
    }
    Ok(listing)
}

fn status_text(status: &RunStatus, ok: bool) -> String {
    match status {
        RunStatus::Completed { .. } if ok => "passed".to_owned(),
        RunStatus::Completed { .. } => "FAILED".to_owned(),
        RunStatus::Crashed { reason } => format!("CRASHED: {reason}"),
        RunStatus::TimedOut { after_secs } => format!("TIMED OUT after {after_secs}s"),
    }
}

async fn check_catalog(catalog: &Catalog, nextest: &Nextest, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let listing = nextest.list(None).await?;
    let check = catalog.check(&listing.tests);
    let per_stage: Vec<(Stage, usize)> =
        Stage::ALL.iter().map(|&s| (s, catalog.entries.iter().filter(|e| e.stage == s).count())).collect();
    reporter.result(
        || {
            let mut text = format!(
                "catalogue: {} entries, {} bound, {} planned; tests: {} listed, {} mapped, {} plumbing (no id: P1)\n",
                check.entries,
                check.entries_bound,
                check.planned.len(),
                check.tests,
                check.tests_mapped,
                check.plumbing
            );
            let stages: Vec<String> = per_stage.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
            text.push_str(&format!("entries per stage: {}\n", stages.join(", ")));
            for (id, issue) in &check.planned {
                text.push_str(&format!("planned: {id} (issue {})\n", issue.unwrap_or(0)));
            }
            for p in &check.problems {
                text.push_str(&format!("error[{}]: {}\n", p.code, p.message));
            }
            text.push_str(if check.problems.is_empty() { "traceability: ok" } else { "traceability: FAILED" });
            text
        },
        &check,
    );
    Ok(if check.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(crate::report::exit::SAID_NO) })
}
