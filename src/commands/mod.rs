//! One module per command. Each takes parsed arguments, calls the kernel and
//! hands the outcome to the [`Reporter`].

mod breaker;
mod check;
mod db;
mod deploy;
mod exit_criteria;
mod fakes;
mod gate;
mod hitl;
mod keys;
mod quarantine;
mod reconcile;
mod replay;
pub(crate) mod run;
mod secrets;
mod serve;
mod soak;
mod suite;
mod trace;
mod trace_matrix;

use std::process::ExitCode;

use autobiz_kernel::store::DatabaseUrl;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};

use crate::cli::{Cli, Command, GlobalArgs, ReconcileCommand};
use crate::report::{CliError, Reporter};

pub async fn run(cli: Cli, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Db(cmd) => db::run(global, cmd, reporter).await,
        Command::Check => check::run(global, reporter),
        Command::Secrets(args) => secrets::run(global, args, reporter).await,
        Command::Run(args) => run::run(global, args, reporter).await,
        Command::Replay(args) => replay::run(global, args.transcript, reporter),
        Command::Trace(cmd) => trace::run(global, cmd, reporter).await,
        Command::Suite(args) => suite::run(args, reporter).await,
        Command::Gate(args) => gate::run(global, args, reporter).await,
        Command::Keys(cmd) => keys::run(cmd, reporter),
        Command::Deploy(args) => deploy::run(global, args, reporter),
        Command::Quarantine(cmd) => quarantine::run(cmd, reporter),
        Command::TraceMatrix(args) => trace_matrix::run(args, reporter).await,
        Command::Soak(args) => soak::run(global, args, reporter).await,
        Command::ExitCriteria(args) => exit_criteria::run(global, args, reporter),
        Command::Serve(args) => serve::run(global, args, reporter).await,
        Command::Fakes(cmd) => fakes::run(cmd, reporter).await,
        Command::Hitl(cmd) => hitl::run(global, cmd, reporter).await,
        Command::Breaker(cmd) => breaker::run(global, cmd, reporter).await,
        Command::Reconcile(ReconcileCommand::List(args)) => reconcile::list(global, &args, reporter).await,
        Command::Reconcile(ReconcileCommand::Run(args)) => reconcile::run(global, &args, reporter).await,
    }
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
