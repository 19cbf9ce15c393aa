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
  AUTOBIZ_BIND             same as `serve --bind`
  AUTOBIZ_SERVE_TENANTS    same as `serve --tenants`
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
    Run(RunArgs),
    /// Re-execute a transcript and compare state hash and receipts.
    Replay(ReplayArgs),
    /// Show a run's persisted trace.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Run one test stage: hygiene, unit, integration_internal, integration_external, golden.
    Suite(SuiteArgs),
    /// Run every stage, gate with the Wilson lower bound, write signed evidence.
    Gate(GateArgs),
    /// Generate the ed25519 key pair that signs gate evidence.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify gate evidence for this commit and config, then run the deploy step.
    Deploy(DeployArgs),
    /// The reviewed list of quarantined tests.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Requirement -> test -> latest result, with coverage figures.
    TraceMatrix(TraceMatrixArgs),
    /// Long-running traffic over all workflows with rolling gates.
    Soak(SoakArgs),
    /// Report the phase entry and exit criteria from the latest evidence.
    ExitCriteria(ExitCriteriaArgs),
    /// Webhook ingress, approval API, /healthz, /readyz and /metrics.
    Serve(ServeArgs),
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

/// `autobiz run`.
#[derive(Debug, Args)]
#[command(after_help = "\
The run is durable: the store holds its state after every step, each side
effect runs once under its idempotency key (with a receipt), and a run killed
at any point continues with `autobiz run --resume RUN_ID` (the transcript is
appended to). A run that waits for a human prints the request id; decide it
with `autobiz hitl`, then resume. Exit 0 when the run completed or waits for
approval, 1 when it failed or was denied.

Agent steps ask an OpenAI-compatible chat-completions endpoint: --llm-url
(AUTOBIZ_LLM_URL), with the key in AUTOBIZ_LLM_API_KEY (never logged or
printed), and optionally --llm-fallback-url (AUTOBIZ_LLM_FALLBACK_URL; key
AUTOBIZ_LLM_FALLBACK_API_KEY, else the primary's), tried on a timeout or a
5xx. --cassette FILE (AUTOBIZ_CASSETTE) answers from a recorded cassette in
the mode AUTOBIZ_CASSETTE_MODE says (replay, the default, sends nothing;
record writes it). The client is pinned to the workflow's first agent step
(model and prompt SHA-256), recorded in the run and in every model turn of
the transcript; a resumed run reuses recorded turns and asks the model only
for new ones. Without an endpoint an agent step fails with
AGENT_LLM_MISSING.")]
pub struct RunArgs {
    /// The workflow id (`WF01`) from the config.
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    pub workflow: Option<String>,
    /// The triggering event (a JSON file).
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub event: Option<PathBuf>,
    /// Where the transcript goes (default .autobiz/transcripts/RUN_ID.jsonl).
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// The run id (default: run-<UTC time>-<random>); never reused.
    #[arg(long, conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Continue a stored run from its last committed step.
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<String>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Where agent steps' model calls go (`autobiz run`, `autobiz serve`).
#[derive(Debug, Args, Clone, Default)]
pub struct LlmArgs {
    /// The chat-completions endpoint of agent steps (base URL, e.g.
    /// http://127.0.0.1:PORT/v1 of the fake). Its key: AUTOBIZ_LLM_API_KEY.
    #[arg(long, value_name = "URL", env = "AUTOBIZ_LLM_URL")]
    pub llm_url: Option<String>,
    /// The endpoint tried when the primary times out or answers 5xx. Its
    /// key: AUTOBIZ_LLM_FALLBACK_API_KEY (default the primary's).
    #[arg(long, value_name = "URL", env = "AUTOBIZ_LLM_FALLBACK_URL")]
    pub llm_fallback_url: Option<String>,
    /// Answer model calls from this cassette (mode: AUTOBIZ_CASSETTE_MODE,
    /// replay by default).
    #[arg(long, value_name = "FILE", env = "AUTOBIZ_CASSETTE")]
    pub cassette: Option<PathBuf>,
}

/// `autobiz soak`.
#[derive(Debug, Args)]
#[command(after_help = "\
A soak drives all seven workflows of --config through the real ingress: the
router and event worker of `autobiz serve` on a loopback port, the provider
fakes and the LLM fake, in this process, over the store (SQLite in the soak's
directory unless --database-url). Each delivery is seeded in the fakes,
signed with the tenant's webhook secret and POSTed as the provider sends it;
approvals go through the approval API, or are left to time out when the plan
says so. The plan (seeded): every workflow every day, WF07 once a day, 3 %
provider 5xx, 3 % 429, 2 % timeouts, 5 % duplicate and 3 % out-of-order
deliveries, 10 % of approvals left to time out.

--clock virtual (the default) moves an injected clock to each delivery's
planned time, so seven days take minutes; --clock wall waits for it (a
production soak; an approval left to time out then holds the soak for the
rule's timeout).

A rolling Wilson gate judges the last --window outcomes once --warmup have
run; invariant monitors check after every --check-every deliveries: no
duplicate side effect, no cross-tenant access, no untraced run, no secret or
planted card number in a trace, no financial step without approval.
--inject-violation NAME commits one of them for real (a drill).

The soak checkpoints each delivery in DIR/progress.jsonl; after a kill,
`autobiz soak --resume DIR` continues where it stopped without counting any
delivery twice. It ends with evidence in DIR: soak.dsse.json signed with the
key in AUTOBIZ_EVIDENCE_KEY (as the gate's), or soak.statement.json with
--unsigned; `autobiz exit-criteria` reads the newest.

Exit codes: 0 the soak passed; 1 it failed (the lower bound fell under the
threshold, an invariant was violated, a workflow was not exercised); 2 bad
arguments or a checkpoint of other parameters; 3 the store, the fakes or the
server failed.")]
pub struct SoakArgs {
    /// Days of traffic.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: u32,
    /// Deliveries per day (at least one per workflow).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_per_day: u32,
    /// How time passes.
    #[arg(long, value_enum, default_value = "virtual")]
    pub clock: crate::soak::ClockMode,
    /// The plan's seed (same seed, same deliveries).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The soak's directory (default .autobiz/soak/<UTC time>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub dir: Option<PathBuf>,
    /// Continue the soak a kill interrupted, from its checkpoint in DIR (its
    /// recorded parameters are used).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// The rolling gate's threshold for the Wilson lower bound.
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f64,
    /// The Wilson bound's confidence.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// The rolling gate's window (outcomes).
    #[arg(long, default_value_t = 300)]
    pub window: usize,
    /// Outcomes before the gate judges.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Run the invariant monitors after every N deliveries (and at the end).
    #[arg(long, default_value_t = 25)]
    pub check_every: u64,
    /// Commit this invariant violation for real (a drill the soak must fail):
    /// duplicate_side_effect, cross_tenant_access, untraced_run,
    /// secret_in_trace or unapproved_financial_step.
    #[arg(long, value_name = "INVARIANT", value_parser = parse_invariant)]
    pub inject_violation: Option<crate::soak::Invariant>,
    /// The delivery after which the injected violation is committed
    /// (default: the middle of the plan).
    #[arg(long, value_name = "SEQ", requires = "inject_violation")]
    pub inject_at: Option<u64>,
    /// Write an unsigned statement when AUTOBIZ_EVIDENCE_KEY is not set.
    #[arg(long)]
    pub unsigned: bool,
}

fn parse_invariant(s: &str) -> Result<crate::soak::Invariant, String> {
    crate::soak::Invariant::parse(s).ok_or_else(|| {
        let names: Vec<&str> = crate::soak::Invariant::ALL.iter().map(|i| i.as_str()).collect();
        format!("not an invariant: {s:?} (one of {})", names.join(", "))
    })
}

/// `autobiz replay`.
#[derive(Debug, Args)]
#[command(after_help = "\
Replay re-executes the workflow of --config against the recorded responses
and clock, and compares every request, state change, the final state hash and
the receipts. Exit 0 identical; 1 diverged (the first divergent line and step,
expected and actual); 2 a truncated, corrupt or newer-format transcript, or a
config other than the one the run used.")]
pub struct ReplayArgs {
    /// The transcript (JSON Lines) a run wrote.
    pub transcript: PathBuf,
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

/// `autobiz deploy`: no flag skips a check; an override by two approvers
/// excuses a fail verdict or stale evidence, and is recorded.
#[derive(Debug, Args)]
#[command(after_help = "\
Checks, in order (the first that fails stops the deploy, exit 1):
  the envelope's Ed25519 signature verifies with the public key in the PEM
  file named by AUTOBIZ_EVIDENCE_PUBKEY (required; exit 2 when unset);
  the statement's commit is `git rev-parse HEAD` of the current directory
  (not a git checkout: exit 2); its config digest is the hash of --config;
  predicate.verdict is \"pass\"; no tracked file is modified; the predicate's
  schema_version is known and it finished within --max-age (24h).
Overrides (--override-approver twice, distinct, and --override-reason) excuse
only a fail verdict or stale evidence. Each deploy allowed is appended to
.autobiz/deploys.jsonl (evidence sha256, commit, config, override) first.
Then CMD runs with the terminal's stdin, stdout and stderr, and autobiz exits
with CMD's exit code (3 when it cannot start). Without CMD: `evidence verified`.")]
pub struct DeployArgs {
    /// The gate evidence: a DSSE envelope (JSON) holding a signed in-toto statement.
    #[arg(long, value_name = "FILE")]
    pub evidence: PathBuf,
    /// The oldest evidence accepted (age of the gate's finish time).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_age: std::time::Duration,
    /// An approver of an override (give two distinct ones): deploy despite a
    /// `fail` verdict or stale evidence, recorded as an override. Nothing
    /// overrides the signature, schema, commit, config or a modified tree.
    #[arg(long, value_name = "NAME")]
    pub override_approver: Vec<String>,
    /// Why the override is needed (required with --override-approver).
    #[arg(long, value_name = "TEXT")]
    pub override_reason: Option<String>,
    /// The deploy step, after `--`: run only when every check passes.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `autobiz suite`: one stage for developers, or the catalogue check.
#[derive(Debug, Args)]
#[command(after_help = "\
Runs the stage's tests with `cargo nextest run -E FILTER --profile gate` (the
filter comes from the catalogue's stage table) and reads nextest's JUnit
report, never its human output. Exit 1 when a test failed or is missing, the
stage crashed or timed out, or --check-catalog found a traceability problem;
2 for an unreadable catalogue; 3 when nextest cannot run.
AUTOBIZ_NEXTEST replaces `cargo nextest` (e.g. for a wrapper).")]
pub struct SuiteArgs {
    /// The stage to run.
    #[arg(value_enum, required_unless_present = "check_catalog")]
    pub stage: Option<crate::catalog::Stage>,
    /// Check the catalogue against the tests nextest lists instead of running.
    #[arg(long)]
    pub check_catalog: bool,
    /// The test catalogue.
    #[arg(long, default_value = crate::catalog::DEFAULT_PATH)]
    pub catalog: PathBuf,
    /// The quarantine file (quarantined tests are marked in the results).
    #[arg(long, default_value = crate::quarantine::DEFAULT_PATH)]
    pub quarantine: PathBuf,
    /// Where to write the stage's JUnit XML (default .autobiz/suite/STAGE.xml).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Wall-clock limit of the run (default: the stage's timeout in the catalogue).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// `autobiz gate`.
#[derive(Debug, Args)]
#[command(after_help = "\
Stages in catalogue order: hygiene once (it must pass entirely, or nothing
else runs), then every other stage --runs times. P0: every test passes in
every run. P1: the Wilson lower bound (two-sided, --confidence) over all P1
trials must be >= --threshold. Missing results, a crashed or timed-out stage,
an empty stage that is not planned, a catalogue problem, an expired or P0
quarantine entry: the gate fails. The evidence (evidence.dsse.json, junit/,
report.html, logs/) is written whether it passes or fails. Signs with the
PKCS#8 PEM key file named by AUTOBIZ_EVIDENCE_KEY; without it, exit 2 before
anything runs, unless --unsigned (then statement.json, which deploy refuses).
Exit 0 pass, 1 fail.")]
pub struct GateArgs {
    /// Runs of each gated stage.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Two-sided confidence of the Wilson interval.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// The least P1 lower bound that passes.
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f64,
    /// The evidence directory (default .autobiz/evidence/<UTC timestamp>/).
    #[arg(long, value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// The test catalogue.
    #[arg(long, default_value = crate::catalog::DEFAULT_PATH)]
    pub catalog: PathBuf,
    /// The quarantine file.
    #[arg(long, default_value = crate::quarantine::DEFAULT_PATH)]
    pub quarantine: PathBuf,
    /// Replace every stage's timeout (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Write unsigned evidence when no key is configured (deploy refuses it).
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Debug, Args)]
pub struct TraceMatrixArgs {
    /// The test catalogue.
    #[arg(long, default_value = crate::catalog::DEFAULT_PATH)]
    pub catalog: PathBuf,
    /// Evidence to take results from (default: the newest under .autobiz/evidence/).
    #[arg(long, value_name = "FILE")]
    pub evidence: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Judges P1-ENTRY-01..04 and P1-EXIT-01..14 from the newest gate evidence
(.autobiz/evidence/), the newest soak evidence (.autobiz/soak/), the
catalogue, the business config's workflows and the repository, and prints
each verdict with its evidence. With AUTOBIZ_EVIDENCE_PUBKEY set, both
evidence files must be envelopes that verify with it (exit 1 otherwise);
without it they are read as reports, and the output says so.

Exit codes: 0 every criterion met; 1 some criterion not met, or evidence
that is malformed or does not verify (as for `deploy`); 2 an unreadable
evidence file, catalogue or config.")]
pub struct ExitCriteriaArgs {
    /// The test catalogue.
    #[arg(long, default_value = crate::catalog::DEFAULT_PATH)]
    pub catalog: PathBuf,
    /// Gate evidence (default: the newest under .autobiz/evidence/).
    #[arg(long, value_name = "FILE")]
    pub evidence: Option<PathBuf>,
    /// Soak evidence (default: the newest under .autobiz/soak/).
    #[arg(long, value_name = "FILE")]
    pub soak_evidence: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QuarantineFileArgs {
    /// The quarantine file.
    #[arg(long, default_value = crate::quarantine::DEFAULT_PATH)]
    pub file: PathBuf,
    /// The test catalogue (a P0 test cannot be quarantined).
    #[arg(long, default_value = crate::catalog::DEFAULT_PATH)]
    pub catalog: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined tests, with their expiry.
    List {
        #[command(flatten)]
        files: QuarantineFileArgs,
    },
    /// Quarantine a P1 test (edits the file for review; commit it).
    Add {
        /// The test as nextest names it: "BINARY NAME".
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        owner: String,
        /// Days until the entry expires (an expired entry fails the gate).
        #[arg(long, default_value_t = 14)]
        days: u32,
        #[command(flatten)]
        files: QuarantineFileArgs,
    },
    /// Release a test from quarantine.
    Remove {
        id: String,
        #[command(flatten)]
        files: QuarantineFileArgs,
    },
}

/// `autobiz serve`: webhook ingress, the event worker, the approval API,
/// health, readiness and metrics.
#[derive(Debug, Args)]
#[command(after_help = "\
Endpoints:
  POST /webhooks/{tenant}/{stripe|shopify|printful}   (Printful: ?token=T or X-Autobiz-Webhook-Token)
  GET  /hitl[?status=pending|all], POST /hitl/{id}/approve|deny  (Authorization: Bearer T, X-Autobiz-Tenant)
  GET  /healthz, /readyz, /metrics
Webhook secrets are tenant secrets: stripe_webhook_secret, shopify_webhook_secret,
printful_webhook_token; approver tokens: approver_token_<approver> (`autobiz secrets set`).
Stops on Ctrl-C or SIGTERM: requests in flight and the event in hand finish first.")]
pub struct ServeArgs {
    /// Address to listen on. Loopback unless told otherwise; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080", env = "AUTOBIZ_BIND")]
    pub bind: std::net::SocketAddr,
    /// Tenants this server accepts webhooks and approvals for (comma-separated;
    /// default: --tenant). Requests for any other tenant get 404.
    #[arg(long, value_delimiter = ',', env = "AUTOBIZ_SERVE_TENANTS")]
    pub tenants: Vec<String>,
    /// Largest accepted request body, in bytes (413 above).
    #[arg(long, default_value_t = 262_144)]
    pub max_body: usize,
    /// How long an event waits for its predecessor before its precondition
    /// is re-checked.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub hold: std::time::Duration,
    /// Accept webhooks only; do not claim events, start workflows or run the
    /// reconciliation detector (another process on the same database does).
    #[arg(long)]
    pub no_worker: bool,
    /// How often the reconciliation detector compares every served tenant's
    /// receipts and state with the providers (as `autobiz reconcile run`),
    /// repairs non-financial drift and sends financial drift to HITL; the
    /// first pass runs one interval after the start. `0s` turns it off.
    /// Without provider credentials only the events routed to reconciliation
    /// are checked.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub reconcile_every: std::time::Duration,
    /// Where the runs' transcripts go.
    #[arg(long, default_value = ".autobiz/transcripts")]
    pub transcripts: PathBuf,
    /// Encrypted secrets file holding the webhook secrets and approver tokens.
    #[arg(long, env = "AUTOBIZ_SECRETS_FILE", default_value = ".autobiz/secrets.json")]
    pub secrets_file: PathBuf,
    /// The model endpoint of the workflows' agent steps (WF05).
    #[command(flatten)]
    pub llm: LlmArgs,
}

#[derive(Debug, Subcommand)]
pub enum FakesCommand {
    /// Start the Stripe, Shopify, Printful and SendGrid fakes on loopback
    /// ports, print their base URLs, and serve until Ctrl-C.
    Serve(FakesServeArgs),
}

#[derive(Debug, Args)]
pub struct FakesServeArgs {
    /// Loopback address to listen on (each fake takes a free port). Only
    /// loopback addresses are accepted: the fakes take any test key.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
}

/// `autobiz hitl`: the tenant's approval requests (`--tenant` required).
#[derive(Debug, Subcommand)]
#[command(after_help = "\
Exit codes: 1 when the request is already decided (HITL_ALREADY_DECIDED), expired
(HITL_EXPIRED) or the approver is not one of the rule's approvers
(HITL_APPROVER_NOT_ALLOWED); 2 for an id the tenant does not have (HITL_NOT_FOUND).")]
pub enum HitlCommand {
    /// Approval requests: id, run, step, tool, status, approvers, expiry.
    List {
        /// Which requests: pending ones, or every request with its decision.
        #[arg(long, value_enum, default_value_t = HitlStatusFilter::Pending)]
        status: HitlStatusFilter,
    },
    /// Approve a pending request; the paused run resumes. Final and audited.
    Approve {
        /// The request id (`hitl_...`, from `hitl list`).
        id: String,
        /// Who decides (must be one of the rule's approvers when it lists any).
        #[arg(long, value_name = "WHO")]
        approver: String,
        /// Why (recorded with the decision).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Deny a pending request; the paused run ends with the reason. Final and audited.
    Deny {
        /// The request id (`hitl_...`, from `hitl list`).
        id: String,
        /// Who decides (must be one of the rule's approvers when it lists any).
        #[arg(long, value_name = "WHO")]
        approver: String,
        /// Why: becomes the run's termination reason.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HitlStatusFilter {
    Pending,
    All,
}

/// `autobiz breaker`: the tenant's circuit breakers (`--tenant` required).
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Every breaker the tenant has used: state, recent failures, since when.
    List,
    /// Close a breaker whatever its state (audited; exit 2 with
    /// BREAKER_NOT_FOUND for a name the tenant never used).
    Reset {
        /// The dependency, e.g. `stripe`.
        name: String,
        /// Who resets it (recorded in the audit log).
        #[arg(long, value_name = "WHO")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// Compare local state and receipts with the providers' records
    /// (`--tenant`): open a drift case per drift (once: a rerun opens no
    /// duplicate), repair non-financial drift with an audit record, send
    /// financial drift to HITL (never repaired automatically), and record
    /// the decisions made since the last run.
    ///
    /// Providers are read with the tenant's credentials from the secrets
    /// file (`AUTOBIZ_SECRETS_FILE`, `AUTOBIZ_MASTER_KEY`) at
    /// `AUTOBIZ_STRIPE_URL`, `AUTOBIZ_SHOPIFY_URL`, `AUTOBIZ_PRINTFUL_URL`.
    ///
    /// Exit codes: 0 the run completed (drift found is reported, not an
    /// error); 1 with `--fail-on-drift` when a case still needs a human;
    /// 2 bad input (no tenant, no credentials without `--skip-providers`);
    /// 3 the store or a provider unreachable.
    Run(ReconcileRunArgs),
    /// The tenant's reconciliation cases (`--tenant`): events whose
    /// precondition failed after their hold, and drift cases, with status
    /// (OPEN, AWAITING_HUMAN, REPAIRED, RESOLVED, DISMISSED).
    List(ReconcileListArgs),
}

#[derive(Debug, Args)]
pub struct ReconcileRunArgs {
    /// Exit 1 when, after the run, a case still needs a human (financial
    /// drift awaiting a decision, a repair that failed).
    #[arg(long)]
    pub fail_on_drift: bool,
    /// Run only the checks that need no provider (the events routed to
    /// reconciliation); the provider checks are reported as skipped.
    #[arg(long)]
    pub skip_providers: bool,
}

#[derive(Debug, Args)]
pub struct ReconcileListArgs {
    /// Only the cases that still need a human (OPEN, AWAITING_HUMAN).
    #[arg(long)]
    pub open: bool,
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
