//! The `autobiz` command line. `main.rs` calls [`main`]; everything here
//! parses arguments, calls the kernel, and reports.
//!
//! * [`cli`]: the command surface (clap).
//! * `commands/`: one module per command.
//! * [`gate`]: the deploy gate's arithmetic (Wilson lower bound, P0/P1
//!   verdicts, flakes) and its input, nextest's JUnit report.
//! * [`evidence`]: signed gate evidence (in-toto statement, DSSE, Ed25519).
//! * [`catalog`]: the test catalogue (`suites/catalog.toml`) and its
//!   traceability check; [`quarantine`]: the reviewed quarantine file;
//!   [`nextest`]: listing and running tests through cargo-nextest.
//! * [`hygiene`]: the repository scan of the hygiene suite (no live keys,
//!   no live hosts in the data a run reads).
//! * [`golden`]: the golden suite's harness: scenario files, the in-process
//!   runner over fresh fakes and a fresh store, the oracles and their diff.
//! * [`serve`]: `autobiz serve`'s router (webhooks, approvals, health,
//!   metrics) and its event worker.
//! * [`report`]: how results and errors are shown (human or JSON) and the
//!   mapping of errors to exit codes.

pub mod catalog;
pub mod cli;
mod commands;
pub mod evidence;
pub mod exit_criteria;
pub mod gate;
pub mod golden;
pub mod hygiene;
pub mod nextest;
mod progress;
pub mod quarantine;
pub mod report;
pub mod serve;
pub mod soak;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::report::{CliError, Reporter};

/// Parse the command line, run the command, and turn the outcome into an
/// exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporter = Reporter::new(cli.global.format, cli.global.quiet);
    report::init_logging(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return reporter
                .error(&CliError::infrastructure("RUNTIME", format!("cannot start the async runtime: {e}")));
        }
    };
    match runtime.block_on(commands::run(cli, &reporter)) {
        Ok(code) => code,
        Err(e) => reporter.error(&e),
    }
}
