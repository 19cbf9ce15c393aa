//! One module per command. Each takes parsed arguments, calls the kernel and
//! hands the outcome to the [`Reporter`].

mod check;
mod db;
mod deploy;
mod keys;
mod secrets;
mod trace;

use std::process::ExitCode;

use autobiz_kernel::store::DatabaseUrl;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};

use crate::cli::{Cli, Command, GlobalArgs};
use crate::report::{CliError, Reporter};

pub async fn run(cli: Cli, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Db(cmd) => db::run(global, cmd, reporter).await,
        Command::Check => check::run(global, reporter),
        Command::Secrets(args) => secrets::run(global, args, reporter).await,
        Command::Run(_) => not_yet("run", "the workflow executor"),
        Command::Replay(_) => not_yet("replay", "transcripts and deterministic replay"),
        Command::Trace(cmd) => trace::run(global, cmd, reporter).await,
        Command::Suite(_) => not_yet("suite", "the test harness"),
        Command::Gate(_) => not_yet("gate", "the gate harness"),
        Command::Keys(cmd) => keys::run(cmd, reporter),
        Command::Deploy(args) => deploy::run(global, args, reporter),
        Command::Quarantine(_) => not_yet("quarantine", "flake detection and quarantine"),
        Command::TraceMatrix(_) => not_yet("trace-matrix", "the test catalogue"),
        Command::Soak(_) => not_yet("soak", "the soak harness"),
        Command::ExitCriteria(_) => not_yet("exit-criteria", "the soak harness"),
        Command::Serve(_) => not_yet("serve", "webhook ingress and the approval API"),
        Command::Fakes(_) => not_yet("fakes serve", "the provider fakes"),
        Command::Hitl(_) => not_yet("hitl", "human approvals"),
        Command::Breaker(_) => not_yet("breaker", "circuit breakers"),
        Command::Reconcile(_) => not_yet("reconcile", "reconciliation"),
    }
}

/// A command of the documented surface that this version does not have yet:
/// a clear answer and exit 2, never a silent success.
fn not_yet(command: &str, feature: &str) -> Result<ExitCode, CliError> {
    Err(CliError::input(
        "NOT_YET_AVAILABLE",
        format!("`autobiz {command}` is not yet available in this version ({feature} is on the roadmap in README.md)"),
    ))
}

fn database_url(global: &GlobalArgs) -> Result<DatabaseUrl, CliError> {
    Ok(global.database_url.parse::<DatabaseUrl>()?)
}

/// The tenant context of a CLI invocation: `--tenant`, the invoking user as
/// principal, a fresh correlation id.
fn tenant_context(global: &GlobalArgs) -> Result<TenantContext, CliError> {
    let Some(tenant) = global.tenant.as_deref() else {
        return Err(CliError::input(
            "TENANT_REQUIRED",
            "this command acts for one tenant: pass --tenant ID or set AUTOBIZ_TENANT",
        ));
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    Ok(TenantContext::new(tenant.parse()?, Principal::new(format!("cli:{user}")), CorrelationId::random()))
}
