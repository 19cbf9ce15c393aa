//! The command line: every command, flag and environment variable, and the
//! help text that documents them. Parsing only; the work is in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  a check, gate, verification or replay said no (including a refused
     cross-tenant access)
  2  bad input, bad config or usage; a command not yet available
  3  infrastructure failure (database, disk, network)

Environment:
  AUTOBIZ_DATABASE_URL     same as --database-url
  AUTOBIZ_CONFIG           same as --config
  AUTOBIZ_TENANT           same as --tenant
  AUTOBIZ_MASTER_KEY       master key for `secrets` (32 bytes, base64 or hex)
  AUTOBIZ_MASTER_KEY_FILE  file holding the master key (not beside the secrets)
  AUTOBIZ_SECRETS_FILE     same as `secrets --secrets-file`
  AUTOBIZ_EVIDENCE_KEY     private key (PKCS#8 PEM file) that signs gate evidence
  AUTOBIZ_EVIDENCE_PUBKEY  public key (SPKI PEM file) `deploy` verifies evidence with
  AUTOBIZ_LOG              log filter, e.g. `info` or `autobiz=debug` (stderr)
  NO_COLOR                 disables colour in logs

With --format json, the result (or {\"error\": {...}}) is one JSON document on stdout.";

/// autobiz: a safety kernel for business agents, and the harness that gates
/// their deploys.
#[derive(Debug, Parser)]
#[command(name = "autobiz", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Store URL: sqlite://PATH (embedded, created on first use) or
    /// postgres://USER@HOST:PORT/DB. At run time PostgreSQL needs the
    /// autobiz_kernel role; `db` commands need the schema owner.
    #[arg(long, global = true, env = "AUTOBIZ_DATABASE_URL", default_value = autobiz_kernel::store::DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,

    /// Business config file.
    #[arg(long, global = true, env = "AUTOBIZ_CONFIG", default_value = "autobiz.toml")]
    pub config: PathBuf,

    /// Tenant to act as (required by tenant-scoped commands).
    #[arg(long, global = true, env = "AUTOBIZ_TENANT")]
    pub tenant: Option<String>,

    /// Output for people (tables, one-line errors) or machines (JSON).
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, upgrade, inspect or downgrade the store.
    #[command(subcommand)]
    Db(DbCommand),
    /// Compile the business config: schema, compile checks CC-01..CC-04 (with fixes), the config hash.
    Check,
    /// Run one workflow through the kernel and write a transcript.
    Run(PendingArgs),
    /// Re-execute a transcript and compare state hash and receipts.
    Replay(PendingArgs),
    /// Show a run's persisted trace.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Run one test stage: hygiene, unit, integration_internal, integration_external, golden.
    Suite(PendingArgs),
    /// Run every stage, gate with the Wilson lower bound, write signed evidence.
    Gate(PendingArgs),
    /// Generate the ed25519 key pair that signs gate evidence.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify gate evidence for this commit and config, then run the deploy step.
    Deploy(DeployArgs),
    /// The reviewed list of quarantined tests.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Requirement -> test -> latest result, with coverage figures.
    TraceMatrix(PendingArgs),
    /// Long-running traffic over all workflows with rolling gates.
    Soak(PendingArgs),
    /// Report the phase entry and exit criteria from the latest evidence.
    ExitCriteria(PendingArgs),
    /// Webhook ingress, approval API, /healthz, /readyz and /metrics.
    Serve(PendingArgs),
    /// The provider fakes on loopback ports.
    #[command(subcommand)]
    Fakes(FakesCommand),
    /// The human-approval queue.
    #[command(subcommand)]
    Hitl(HitlCommand),
    /// Circuit breakers.
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// Per-tenant credentials, encrypted at rest; values are never printed.
    Secrets(SecretsArgs),
    /// Drift detection and repair.
    #[command(subcommand)]
    Reconcile(ReconcileCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (running it twice is a no-op).
    Migrate,
    /// List the migrations this binary knows and whether each is applied.
    Status,
    /// Revert migrations above --to with their down scripts (data in dropped
    /// tables is lost: back up first).
    Downgrade {
        /// The version to go back to; 0 empties the schema.
        #[arg(long)]
        to: i64,
        /// Confirm that data in reverted tables may be lost.
        #[arg(long)]
        yes: bool,
    },
}

/// Arguments of a command that a later release delivers; accepted and ignored
/// so that scripts written against the documented surface get a clear answer.
#[derive(Debug, Args)]
pub struct PendingArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print a run's trace: every record with tool, decision, error, duration
    /// and cost (inputs and outputs as redacted when written; `--format json`
    /// shows them).
    Show {
        /// The run id.
        run_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new Ed25519 key pair: DIR/evidence.key (private, PKCS#8 PEM,
    /// mode 0600; for AUTOBIZ_EVIDENCE_KEY) and DIR/evidence.pub (public,
    /// SPKI PEM; for AUTOBIZ_EVIDENCE_PUBKEY). Prints the keyid (hex SHA-256
    /// of the raw public key) and the paths, never the private key.
    Generate(KeysGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// Directory for the key files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace existing key files (without it, existing files are an error, exit 2).
    #[arg(long)]
    pub force: bool,
}

/// `autobiz deploy`: no flag skips a check.
#[derive(Debug, Args)]
#[command(after_help = "\
Checks, in order (the first that fails stops the deploy, exit 1):
  the envelope's Ed25519 signature verifies with the public key in the PEM
  file named by AUTOBIZ_EVIDENCE_PUBKEY (required; exit 2 when unset);
  the statement's commit is `git rev-parse HEAD` of the current directory
  (not a git checkout: exit 2); its config digest is the hash of --config;
  predicate.verdict is \"pass\".
Then CMD runs with the terminal's stdin, stdout and stderr, and autobiz exits
with CMD's exit code (3 when it cannot start). Without CMD: `evidence verified`.")]
pub struct DeployArgs {
    /// The gate evidence: a DSSE envelope (JSON) holding a signed in-toto statement.
    #[arg(long, value_name = "FILE")]
    pub evidence: PathBuf,
    /// The deploy step, after `--`: run only when every check passes.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined tests.
    List(PendingArgs),
    /// Quarantine a test.
    Add(PendingArgs),
    /// Release a test from quarantine.
    Remove(PendingArgs),
}

#[derive(Debug, Subcommand)]
pub enum FakesCommand {
    /// Start the fakes and print their addresses.
    Serve(PendingArgs),
}

#[derive(Debug, Subcommand)]
pub enum HitlCommand {
    /// Pending approval requests.
    List(PendingArgs),
    /// Approve a request.
    Approve(PendingArgs),
    /// Deny a request.
    Deny(PendingArgs),
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Every breaker and its state.
    List(PendingArgs),
    /// Close a breaker (audited).
    Reset(PendingArgs),
}

#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// Compare receipts with the providers' records.
    Run(PendingArgs),
    /// Open reconciliation cases.
    List(PendingArgs),
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// The encrypted secrets file.
    #[arg(long, env = "AUTOBIZ_SECRETS_FILE", default_value = ".autobiz/secrets.json", global = true)]
    pub secrets_file: PathBuf,

    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Create a secret or replace it at once. The value is read from stdin
    /// (never from the command line, where it would reach shell history).
    Set {
        name: String,
        #[command(flatten)]
        source: ValueSource,
    },
    /// Write a new version; the previous one stays readable for --grace.
    Rotate {
        name: String,
        /// How long the previous version stays readable (e.g. 24h, 7d, 30m).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        source: ValueSource,
    },
    /// The tenant's secrets: name, version, age, previous versions. Never values.
    List,
}

#[derive(Debug, Args)]
pub struct ValueSource {
    /// Read the value from this environment variable instead of stdin.
    #[arg(long, value_name = "VAR", conflicts_with = "from_file")]
    pub from_env: Option<String>,
    /// Read the value from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
}
