//! `autobiz replay TRANSCRIPT`: re-execute a recorded run against the
//! config it ran under and compare, step by step, with what was recorded.

use std::path::PathBuf;
use std::process::ExitCode;

use autobiz_kernel::assembly::Assembly;
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::replay::{ReplayOutcome, replay};
use autobiz_kernel::transcript::{Entry, Transcript};

use crate::cli::GlobalArgs;
use crate::report::{CliError, Reporter, exit};

pub fn run(global: &GlobalArgs, transcript: PathBuf, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let t = Transcript::read(&transcript)?;
    t.require_complete()?;
    let config = BusinessConfig::load(&global.config)?;
    let assembly = Assembly::from_config(&config)?;
    let Some(Entry::RunStart { workflow, .. }) = t.entries().next() else {
        return Err(CliError::input("TRANSCRIPT_CORRUPT", "the transcript does not start with run_start"));
    };
    let Some(wf) = assembly.workflows.get(workflow) else {
        return Err(CliError::input(
            "REPLAY_CONFIG_MISMATCH",
            format!("{} has no workflow {workflow}: replay with the config the run used", global.config.display()),
        ));
    };
    let outcome = replay(&t, &wf.workflow, &assembly.registry, &assembly.config_hash)?;
    match &outcome {
        ReplayOutcome::Identical(r) => {
            reporter.result(
                || {
                    format!(
                        "identical: run {} ({}) replayed {} step(s) to {} with state hash {} and {} receipt(s)",
                        r.run_id, r.workflow, r.steps, r.termination, r.state_sha256, r.receipts
                    )
                },
                &outcome,
            );
            Ok(ExitCode::SUCCESS)
        }
        ReplayOutcome::Diverged(d) => {
            reporter.result(
                || {
                    format!(
                        "error[REPLAY_DIVERGED] {} line {}{}: {} differs\n  expected (recorded): {}\n  actual (replayed):   {}",
                        transcript.display(),
                        d.line,
                        d.step.as_deref().map(|s| format!(", step {s}")).unwrap_or_default(),
                        d.what,
                        d.expected,
                        d.actual
                    )
                },
                &outcome,
            );
            Ok(ExitCode::from(exit::SAID_NO))
        }
    }
}
