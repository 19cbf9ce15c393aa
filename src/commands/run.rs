//! `autobiz run WORKFLOW --event FILE`: one durable run through the kernel,
//! with its transcript; `autobiz run --resume RUN_ID` picks a stored run up
//! again after a crash or once its approval is decided.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use autobiz_kernel::assembly::Assembly;
use autobiz_kernel::breaker::{BreakerPolicy, Breakers};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::engine::{Engine, RunReport, RunSpec};
use autobiz_kernel::executor::{Durability, Executor};
use autobiz_kernel::hitl::HitlRules;
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::hitl::slack::SlackNotifier;
use autobiz_kernel::idempotency::DEFAULT_WINDOW;
use autobiz_kernel::llm::{Cassette, Endpoint, LlmClient, LlmConfig, LlmSettings, PriceTable};
use autobiz_kernel::providers::{self, HttpSettings, ProviderEndpoints, Providers, SandboxGuard, SendgridSettings};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::secrets::{FileSecrets, MasterKey};
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::transcript::TranscriptWriter;
use autobiz_kernel::workflow::Workflow;
use secrecy::SecretString;
use serde_json::Value;

use crate::cli::{GlobalArgs, LlmArgs, RunArgs};
use crate::report::{CliError, Reporter, exit, table};

pub async fn run(global: &GlobalArgs, args: RunArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let config = BusinessConfig::load(&global.config)?;
    let assembly = Assembly::from_config(&config)?;
    let cli_ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let rules = HitlRules::from_model(&config.model()?)?;
    let result = drive(&args, assembly, rules, &cli_ctx, &store).await;
    store.close().await;
    let report = result?;
    reporter.result(|| render(&report), &report);
    Ok(match report.report.status {
        RunStatus::Completed | RunStatus::WaitingApproval => ExitCode::SUCCESS,
        RunStatus::Failed | RunStatus::Aborted | RunStatus::Running => ExitCode::from(exit::SAID_NO),
    })
}

/// What the command ran: the engine's report and where the transcript is.
#[derive(Debug, serde::Serialize)]
struct Ran {
    #[serde(flatten)]
    report: RunReport,
    transcript: String,
}

async fn drive(
    args: &RunArgs,
    mut assembly: Assembly,
    rules: HitlRules,
    cli_ctx: &TenantContext,
    store: &Store,
) -> Result<Ran, CliError> {
    let (workflow_id, run_id, event, pins, transcript, resuming) = match (&args.resume, &args.workflow) {
        (Some(run_id), None) => {
            let Some(record) = store.run_record(cli_ctx, run_id).await? else {
                return Err(CliError::input(
                    "RUN_NOT_FOUND",
                    format!("tenant {} has no run {run_id:?}", cli_ctx.tenant()),
                ));
            };
            if record.config_hash != assembly.config_hash {
                return Err(CliError::input(
                    "RUN_CONFIG_CHANGED",
                    format!(
                        "run {run_id} started under config {} and the config is now {}: resume it with the config it started under",
                        record.config_hash, assembly.config_hash
                    ),
                ));
            }
            let transcript = args
                .transcript
                .clone()
                .or_else(|| record.transcript.as_ref().map(PathBuf::from))
                .unwrap_or_else(|| default_transcript(run_id));
            (record.workflow.clone(), run_id.clone(), record.event.clone(), record.pins.clone(), transcript, true)
        }
        (None, Some(workflow)) => {
            let Some(event_path) = &args.event else {
                return Err(CliError::input("EVENT_REQUIRED", "a new run needs its triggering event: --event FILE"));
            };
            let event = read_event(event_path)?;
            let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
            let transcript = args.transcript.clone().unwrap_or_else(|| default_transcript(&run_id));
            (workflow.clone(), run_id, event, Value::Null, transcript, false)
        }
        _ => {
            return Err(CliError::input("USAGE", "give either WORKFLOW --event FILE or --resume RUN_ID"));
        }
    };
    let Some(wf) = assembly.workflows.remove(&workflow_id) else {
        let known: Vec<&str> = assembly.workflows.keys().map(String::as_str).collect();
        return Err(CliError::input(
            "WORKFLOW_UNKNOWN",
            format!("the config has no workflow {workflow_id:?} (it has {})", known.join(", ")),
        ));
    };
    // The run acts as the workflow's principal (CC-03), for the CLI's tenant.
    let ctx = TenantContext::new(cli_ctx.tenant().clone(), Principal::new(&wf.principal), CorrelationId::random());
    let config_hash = assembly.config_hash.clone();
    let llm = llm_client(&args.llm, &wf.workflow, store)?;
    // A new run records the client's pin; a resumed one keeps what it recorded.
    let pins = match (pins, &llm) {
        (Value::Null, Some(llm)) => llm.pin().as_pins(),
        (Value::Null, None) => serde_json::json!({}),
        (pins, _) => pins,
    };
    let exec = executor(assembly, store)?;
    let mut approvals = StoreApprovals::new(store.clone(), rules, Arc::new(SystemClock));
    if let Ok(url) = std::env::var("AUTOBIZ_SLACK_WEBHOOK_URL") {
        approvals = approvals.with_slack(SlackNotifier::new(&url)?);
    }
    let transcript_name = transcript.display().to_string();
    let engine = Engine::new(&exec)
        .with_store(store, Some(transcript_name.clone()))
        .with_approvals(&approvals)
        .with_llm(llm.as_ref());
    let spec = RunSpec { workflow: &wf.workflow, ctx, run_id, bounds: wf.bounds, event, pins, config_hash };
    let report = if resuming {
        let (mut w, history) = TranscriptWriter::resume(&transcript)?;
        engine.resume(&spec, &history, &mut w).await?
    } else {
        if transcript.exists() {
            return Err(CliError::input(
                "TRANSCRIPT_EXISTS",
                format!("{} exists: choose another --transcript or --run-id", transcript.display()),
            ));
        }
        let mut w = TranscriptWriter::create(&transcript)?;
        engine.run(&spec, &mut w).await?
    };
    Ok(Ran { report, transcript: transcript_name })
}

/// The executor of the config, durable on `store`, with the tools this
/// build can bind.
fn executor(assembly: Assembly, store: &Store) -> Result<Executor, CliError> {
    let clock = Arc::new(SystemClock);
    let (mut exec, _) = assembly.into_executor(RedactionPolicy::default(), Arc::new(store.clone()), clock.clone());
    if let Some(providers) = providers(store)? {
        providers::bind_all(&mut exec, Arc::new(providers))?;
    }
    autobiz_kernel::closeout::bind(&mut exec, store.clone())?;
    let breakers = Breakers::new(store.clone(), BreakerPolicy::default(), clock)?;
    Ok(exec.with_durability(Durability { store: store.clone(), window: DEFAULT_WINDOW }).with_breakers(breakers))
}

/// The provider clients, when the tenant's credentials can be read: the
/// encrypted secrets file (`AUTOBIZ_SECRETS_FILE`, default
/// `.autobiz/secrets.json`) and its master key (`AUTOBIZ_MASTER_KEY` or
/// `AUTOBIZ_MASTER_KEY_FILE`). Without a secrets file no provider tool is
/// bound, and a step that needs one fails with `TOOL_UNKNOWN` naming it.
/// Endpoints default to the providers' own hosts; `AUTOBIZ_STRIPE_URL`,
/// `AUTOBIZ_SHOPIFY_URL` (the shop's admin base URL), `AUTOBIZ_PRINTFUL_URL`
/// and `AUTOBIZ_SENDGRID_URL` point them elsewhere (`autobiz fakes serve`
/// prints the fakes' URLs). Always the sandbox profile: live keys and hosts
/// off the allowlist are refused.
pub(super) fn providers(store: &Store) -> Result<Option<Providers>, CliError> {
    let file =
        std::env::var_os("AUTOBIZ_SECRETS_FILE").map_or_else(|| PathBuf::from(".autobiz/secrets.json"), PathBuf::from);
    if !file.exists() {
        return Ok(None);
    }
    let key = MasterKey::from_env(&file)?;
    let secrets = FileSecrets::open(&file, key, Arc::new(store.clone()))?;
    let url = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let endpoints = ProviderEndpoints::parse(
        &url("AUTOBIZ_STRIPE_URL", "https://api.stripe.com"),
        &url("AUTOBIZ_SHOPIFY_URL", "https://shop.invalid"),
        &url("AUTOBIZ_PRINTFUL_URL", "https://api.printful.com"),
        &url("AUTOBIZ_SENDGRID_URL", "https://api.sendgrid.com"),
    )?;
    Ok(Some(Providers::new(
        endpoints,
        Arc::new(secrets),
        SandboxGuard::sandbox(),
        Arc::new(store.clone()),
        HttpSettings::default(),
        SendgridSettings::default(),
    )?))
}

/// The LLM client of the workflow's agent steps, pinned to the first one's
/// model and prompt: from `--llm-url` / `AUTOBIZ_LLM_URL` (key
/// `AUTOBIZ_LLM_API_KEY`), `--llm-fallback-url` / `AUTOBIZ_LLM_FALLBACK_URL`
/// (key `AUTOBIZ_LLM_FALLBACK_API_KEY`, else the primary's) and `--cassette`
/// / `AUTOBIZ_CASSETTE` (mode `AUTOBIZ_CASSETTE_MODE`). None for a workflow
/// without agent steps, or without an endpoint (its agent steps then fail
/// with `AGENT_LLM_MISSING`). Always the sandbox profile.
pub(crate) fn llm_client(args: &LlmArgs, workflow: &Workflow, store: &Store) -> Result<Option<LlmClient>, CliError> {
    if !workflow.steps.iter().any(|s| s.agent.is_some()) {
        return Ok(None);
    }
    let Some(url) = args.llm_url.as_deref() else {
        if args.cassette.is_some() {
            return Err(CliError::input(
                "LLM_URL_REQUIRED",
                "--cassette needs the endpoint it was recorded against: --llm-url or AUTOBIZ_LLM_URL",
            ));
        }
        return Ok(None);
    };
    let key = |var: &str| std::env::var(var).ok().filter(|k| !k.is_empty()).map(SecretString::from);
    let primary_key = key("AUTOBIZ_LLM_API_KEY");
    let primary = Endpoint::new(url, primary_key.clone())?;
    let fallback = match args.llm_fallback_url.as_deref() {
        Some(url) => Some(Endpoint::new(url, key("AUTOBIZ_LLM_FALLBACK_API_KEY").or(primary_key))?),
        None => None,
    };
    let cassette = args.cassette.as_ref().map(Cassette::from_env).transpose()?;
    agent_llm(workflow, primary, fallback, cassette, store)
}

/// The sandboxed model client of `workflow`'s first agent step (model and
/// prompt pinned), or `None` for a workflow without agent steps.
pub(crate) fn agent_llm(
    workflow: &Workflow,
    primary: Endpoint,
    fallback: Option<Endpoint>,
    cassette: Option<Cassette>,
    store: &Store,
) -> Result<Option<LlmClient>, CliError> {
    let Some(agent) = workflow.steps.iter().find_map(|s| s.agent.as_ref()) else { return Ok(None) };
    let config = LlmConfig {
        model: agent.model.clone(),
        template: agent.prompt.clone(),
        primary,
        fallback,
        prices: PriceTable::default(),
        settings: LlmSettings::default(),
        cassette,
    };
    Ok(Some(LlmClient::new(config, SandboxGuard::sandbox(), Arc::new(store.clone()))?))
}

fn read_event(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input("EVENT_IO", format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::input("EVENT_INVALID", format!("{} is not JSON: {e}", path.display())))
}

fn default_transcript(run_id: &str) -> PathBuf {
    PathBuf::from(".autobiz/transcripts").join(format!("{run_id}.jsonl"))
}

fn new_run_id() -> String {
    format!("run-{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"), &CorrelationId::random().as_str()[..8])
}

fn render(ran: &Ran) -> String {
    let r = &ran.report;
    let mut t = table(&["step", "output"]);
    for step in &r.path {
        let out = r.outputs.get(step).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        t.add_row(vec![step.clone(), out.chars().take(80).collect()]);
    }
    let status = match (r.status, r.termination, &r.waiting_for) {
        (RunStatus::WaitingApproval, _, Some(id)) => {
            format!(
                "waiting for approval {id} (decide with `autobiz hitl approve|deny {id}`, then `autobiz run --resume {}`)",
                r.run_id
            )
        }
        (s, Some(t), _) => format!("{} ({t})", s.as_str()),
        (s, None, _) => s.as_str().to_owned(),
    };
    let error = r.error.as_deref().map(|e| format!("\nlast error: {e}")).unwrap_or_default();
    format!(
        "run {} of {}: {status}{error}\n{t}\n{} receipt(s); state hash {}; transcript {}",
        r.run_id,
        r.workflow,
        r.receipts.len(),
        r.state_sha256,
        ran.transcript
    )
}
