//! One scenario, in-process: fresh fakes, a freshly migrated store, the
//! example business's executor with every check (durability, breakers,
//! approvals), the durable engine, the human decisions, then everything the
//! oracles look at.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use autobiz_fakes::{Fakes, Fault, LlmFake};
use autobiz_kernel::assembly::Assembly;
use autobiz_kernel::breaker::{BreakerPolicy, Breakers};
use autobiz_kernel::clock::{Clock, ManualClock};
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::engine::{Engine, RunReport, RunSpec};
use autobiz_kernel::executor::{CallContext, Durability, Executor, Tool, ToolOutput};
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::hitl::{ApprovalState, Decision, HitlRules, StatusFilter};
use autobiz_kernel::idempotency::DEFAULT_WINDOW;
use autobiz_kernel::llm::{
    Cassette, CassetteMode, Endpoint, LlmClient, LlmConfig, LlmSettings, ModelPrice, PriceTable,
};
use autobiz_kernel::providers::{
    self, HttpSettings, PRINTFUL_SECRET, ProviderEndpoints, Providers, RetryPolicy, SENDGRID_SECRET, SHOPIFY_SECRET,
    STRIPE_SECRET, SandboxGuard, SendgridSettings,
};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::replay::{ReplayOutcome, replay};
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::secrets::{SecretInfo, SecretsProvider};
use autobiz_kernel::store::{DatabaseUrl, SqliteDurability, Store};
use autobiz_kernel::tenant::{CorrelationId, EntityId, Principal, TenantContext};
use autobiz_kernel::trace::{Cost, RecordKind};
use autobiz_kernel::transcript::{Entry, Transcript, TranscriptWriter};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::{FaultSpec, LlmSpec, Scenario, Setup};

/// The tenant every scenario runs as.
pub const TENANT: &str = "golden";
const STRIPE_KEY: &str = "sk_test_golden";
const PRINTFUL_KEY: &str = "pf-golden";
/// The key the LLM fake is sent (a cassette never holds it).
const LLM_KEY: &str = "sk-golden-llm";
/// Where a cassette-only scenario's client "sends": nothing listens, the
/// cassette answers (its origin is normalized away when matched).
const CASSETTE_ENDPOINT: &str = "http://127.0.0.1:9/v1";
const CASSETTE_FALLBACK: &str = "http://127.0.0.1:10/v1";

/// Which store a scenario runs on (the test names carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where a scenario runs: the config, the database (owner and kernel role
/// URLs, the same for SQLite) and a directory for its transcripts.
pub struct Env<'a> {
    pub config: &'a BusinessConfig,
    pub admin_url: &'a str,
    pub kernel_url: &'a str,
    pub work_dir: &'a Path,
    /// Where a scenario's `cassette` lies (`cassettes/`).
    pub cassette_dir: &'a Path,
    /// What the commits of a SQLite store survive: the golden suite's store
    /// is thrown away with its scenario, so `ProcessCrash` (no fsync per
    /// commit, everything else as in production); PostgreSQL is unaffected.
    pub sqlite_durability: SqliteDurability,
}

/// Everything the oracles judge.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The last report of each delivery's run (after its human decisions).
    pub reports: Vec<RunReport>,
    /// The final stored state of the last run.
    pub state: Value,
    /// Receipts in the store by tool, over every run.
    pub receipts: BTreeMap<String, u64>,
    /// The fakes' state: `/stripe/payment_intents`, `/stripe/captures`,
    /// `/stripe/refunds`, `/shopify/orders/<id>`, `/printful/orders`,
    /// `/sendgrid/sent`.
    pub fakes: Value,
    /// Side-effect counters derived from `fakes`.
    pub counters: BTreeMap<String, i64>,
    /// Approval requests by status, and `requests` in all.
    pub hitl: BTreeMap<String, u64>,
    /// Trace gaps: tool requests without a trace record, missing run records.
    pub trace_gaps: Vec<String>,
    /// Transcripts that did not replay identically, and why.
    pub replay_problems: Vec<String>,
    /// Cost over every run and resume.
    pub cost: Cost,
    /// Model calls answered (`model_call` trace records), over every run.
    pub model_calls: u64,
    /// Model calls (and runs that made them) whose cost is zero.
    pub model_cost_problems: Vec<String>,
    /// Wall time of the runs themselves (engine runs and resumes, human
    /// decisions included; not the store's migration, the fakes' start or
    /// the observation), for the benchmark.
    pub run_time: Duration,
    /// Every request the fakes answered during the runs, in order per fake
    /// (`stripe`, `shopify`, `printful`, `sendgrid`, and `llm` and
    /// `llm_fallback` when the LLM fake answered the model turns; the
    /// benchmark sends them again with plain reqwest).
    pub requests: Vec<(&'static str, autobiz_fakes::RecordedRequest)>,
}

/// Run `scenario` in `env`. `Err` is a scenario that could not run at all
/// (bad config, unknown workflow, a database that does not open), never an
/// outcome that differs from the expected one: that is for the oracles.
pub async fn run(scenario: &Scenario, env: &Env<'_>) -> Result<Observed, String> {
    let assembly = Assembly::from_config(env.config).map_err(err("config"))?;
    let rules = HitlRules::from_model(&env.config.model().map_err(err("config"))?).map_err(err("hitl rules"))?;
    let workflows = assembly.workflows.clone();
    let Some(wf) = assembly.workflows.get(&scenario.workflow).cloned() else {
        return Err(format!("the config has no workflow {}", scenario.workflow));
    };
    let config_hash = assembly.config_hash.clone();
    let url = |u: &str| u.parse::<DatabaseUrl>().map_err(err("database URL"));
    let admin = Store::open_admin(&url(env.admin_url)?).await.map_err(err("open admin"))?;
    admin.migrate().await.map_err(err("migrate"))?;
    // Kept open until the scenario ends, then closed, not dropped: a
    // dropped pool closes its SQLite connections in the background, and
    // the last one to close checkpoints the WAL into the database under
    // its lock while the run's first statements wait in SQLite's busy
    // handler (sleeps of 1, 2, 5 ms...): 8-9 ms of a 5 ms run
    // (docs/benchmarks.md). Open, it is never the last.
    let clock = Arc::new(ManualClock::new(t0()));
    let store = Store::open_with_durability(&url(env.kernel_url)?, clock.clone(), env.sqlite_durability)
        .await
        .map_err(err("open store"))?;

    let fakes = Arc::new(Fakes::start().await);
    // The providers stamp their objects on the scenario's clock (the daily
    // closeout lists the PaymentIntents made around the event's day).
    let provider_clock = clock.clone();
    fakes.set_clock(move || std::time::SystemTime::from(provider_clock.now()));
    setup(&fakes, &scenario.setup).await?;
    let after_setup = [
        fakes.stripe.requests().len(),
        fakes.shopify.requests().len(),
        fakes.printful.requests().len(),
        fakes.sendgrid.requests().len(),
    ];
    let faults = validate_faults(&scenario.faults)?;
    let exec = executor(assembly, &store, clock.clone(), fakes.clone(), faults)?;
    let needs_llm = wf.workflow.steps.iter().find_map(|s| s.agent.as_ref());
    let (llm, llm_fakes) = match needs_llm {
        Some(agent) => llm_client(scenario, env, &store, &agent.model, &agent.prompt).await?,
        None => (None, Vec::new()),
    };
    let pins = llm.as_ref().map_or_else(|| json!({}), |l| l.pin().as_pins());
    let approvals = StoreApprovals::new(store.clone(), rules, clock.clone());

    let mut observed = Observed {
        reports: Vec::new(),
        state: Value::Null,
        receipts: BTreeMap::new(),
        fakes: Value::Null,
        counters: BTreeMap::new(),
        hitl: BTreeMap::new(),
        trace_gaps: Vec::new(),
        replay_problems: Vec::new(),
        cost: Cost::default(),
        model_calls: 0,
        model_cost_problems: Vec::new(),
        run_time: Duration::ZERO,
        requests: Vec::new(),
    };
    let mut decisions = scenario.hitl.iter();
    let tenant: autobiz_kernel::tenant::TenantId = TENANT.parse().map_err(err("tenant"))?;
    for (n, before) in scenario.before.iter().enumerate() {
        let Some(bwf) = workflows.get(&before.workflow) else {
            return Err(format!("before: the config has no workflow {}", before.workflow));
        };
        let run_id = format!("before-{}", n + 1);
        let ctx = TenantContext::new(tenant.clone(), Principal::new(&bwf.principal), CorrelationId::new(&run_id));
        let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&approvals);
        let spec = RunSpec {
            workflow: &bwf.workflow,
            ctx,
            run_id: run_id.clone(),
            bounds: bwf.bounds,
            event: before.event.clone(),
            pins: json!({}),
            config_hash: config_hash.clone(),
        };
        let mut w =
            TranscriptWriter::create(&env.work_dir.join(format!("{run_id}.jsonl"))).map_err(err("transcript"))?;
        let report = engine.run(&spec, &mut w).await.map_err(err("before run"))?;
        if !report.status.is_terminal() {
            return Err(format!("before: run {run_id} of {} did not end ({:?})", before.workflow, report.status));
        }
    }
    for delivery in 1..=scenario.deliveries.max(1) {
        let run_id = format!("{}-{delivery}", scenario.workflow.to_ascii_lowercase());
        let ctx = TenantContext::new(tenant.clone(), Principal::new(&wf.principal), CorrelationId::new(&run_id));
        let transcript = env.work_dir.join(format!("{run_id}.jsonl"));
        let engine = Engine::new(&exec)
            .with_store(&store, Some(transcript.display().to_string()))
            .with_approvals(&approvals)
            .with_llm(llm.as_ref());
        let spec = RunSpec {
            workflow: &wf.workflow,
            ctx: ctx.clone(),
            run_id: run_id.clone(),
            bounds: wf.bounds,
            event: scenario.event.clone(),
            pins: pins.clone(),
            config_hash: config_hash.clone(),
        };
        let started = std::time::Instant::now();
        let mut w = TranscriptWriter::create(&transcript).map_err(err("transcript"))?;
        let mut report = engine.run(&spec, &mut w).await.map_err(err("run"))?;
        drop(w);
        observed.cost.add(report.cost);
        while report.status == RunStatus::WaitingApproval {
            let (Some(decision), Some(request)) = (decisions.next(), report.waiting_for.clone()) else { break };
            match decision.decision.as_str() {
                "approve" | "deny" => {
                    let d = if decision.decision == "approve" { Decision::Approve } else { Decision::Deny };
                    let reason = decision.reason.clone().or_else(|| (d == Decision::Deny).then(|| "golden".into()));
                    store
                        .hitl_decide(&ctx, &request, d, &decision.approver, reason.as_deref(), clock.now())
                        .await
                        .map_err(err("decide"))?;
                }
                "expire" => {
                    let a = store.hitl_get(&ctx, &request).await.map_err(err("approval"))?;
                    let wait = a.expires_at - clock.now() + chrono::Duration::seconds(1);
                    clock.advance(wait);
                }
                other => return Err(format!("hitl decision {other:?}: approve, deny or expire")),
            }
            let (mut w, history) = TranscriptWriter::resume(&transcript).map_err(err("transcript"))?;
            report = engine.resume(&spec, &history, &mut w).await.map_err(err("resume"))?;
            observed.cost.add(report.cost);
        }
        observed.run_time += started.elapsed();
        observe_run(&store, &ctx, &exec, &wf.workflow, &config_hash, &transcript, &report, &mut observed).await?;
        if delivery == scenario.deliveries.max(1) {
            let entity = EntityId::new(tenant.clone(), "run", &run_id).map_err(err("entity"))?;
            observed.state = store.state(&ctx, &entity).await.map_err(err("state"))?.map_or(Value::Null, |s| s.state);
        }
        observed.reports.push(report);
    }
    let ctx = TenantContext::new(tenant, Principal::new("golden:oracle"), CorrelationId::new("oracle"));
    for a in store.hitl_list(&ctx, StatusFilter::All).await.map_err(err("hitl list"))? {
        *observed.hitl.entry("requests".into()).or_default() += 1;
        let status = match a.status {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        };
        *observed.hitl.entry(status.into()).or_default() += 1;
    }
    observed.fakes = snapshot(&fakes);
    for ((name, fake), skip) in [
        ("stripe", fakes.stripe.requests()),
        ("shopify", fakes.shopify.requests()),
        ("printful", fakes.printful.requests()),
        ("sendgrid", fakes.sendgrid.requests()),
    ]
    .into_iter()
    .zip(after_setup)
    {
        observed.requests.extend(fake.into_iter().skip(skip).map(|r| (name, r)));
    }
    for (fake, name) in llm_fakes.iter().zip(["llm", "llm_fallback"]) {
        observed.requests.extend(fake.requests().into_iter().map(|r| (name, r)));
    }
    observed.counters = counters(&observed.fakes);
    // A recording cassette is written when its client goes.
    drop(llm);
    store.close().await;
    admin.close().await;
    Ok(observed)
}

/// Receipts, trace completeness and replay of one run.
#[allow(clippy::too_many_arguments)]
async fn observe_run(
    store: &Store,
    ctx: &TenantContext,
    exec: &Executor,
    workflow: &autobiz_kernel::workflow::Workflow,
    config_hash: &str,
    transcript: &Path,
    report: &RunReport,
    observed: &mut Observed,
) -> Result<(), String> {
    for r in store.receipts(ctx, &report.run_id).await.map_err(err("receipts"))? {
        *observed.receipts.entry(r.tool).or_default() += 1;
    }
    let t = Transcript::read(transcript).map_err(err("transcript"))?;
    let trace = store.trace(ctx, &report.run_id).await.map_err(err("trace"))?;
    let mut traced: Vec<String> = trace
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::ToolCall | RecordKind::Rejection))
        .filter_map(|r| r.tool.clone())
        .collect();
    for e in t.entries() {
        // An agent step's own request names no tool: its model turns and
        // proposals are judged below and by their own requests.
        if let Entry::ToolRequest { step, tool, .. } = e
            && !tool.is_empty()
        {
            match traced.iter().position(|t| t == tool || t.starts_with(&format!("{tool}@"))) {
                Some(i) => {
                    traced.remove(i);
                }
                None => {
                    observed.trace_gaps.push(format!("{}: step {step} ({tool}) has no trace record", report.run_id))
                }
            }
        }
    }
    let model_calls: Vec<_> = trace.iter().filter(|r| r.kind == RecordKind::ModelCall).collect();
    let turns = t.entries().filter(|e| matches!(e, Entry::ModelTurn { .. })).count();
    if turns != model_calls.len() {
        observed.trace_gaps.push(format!(
            "{}: {turns} model turn(s) in the transcript, {} model_call trace record(s)",
            report.run_id,
            model_calls.len()
        ));
    }
    for r in &model_calls {
        if r.cost.tokens == 0 || r.cost.micro_usd == 0 {
            observed.model_cost_problems.push(format!(
                "{}: model call seq {} cost {} tokens, {} micro-USD",
                report.run_id, r.seq, r.cost.tokens, r.cost.micro_usd
            ));
        }
    }
    if !model_calls.is_empty() && (report.cost.tokens == 0 || report.cost.micro_usd == 0) {
        observed.model_cost_problems.push(format!(
            "{}: called the model but the run cost {} tokens, {} micro-USD",
            report.run_id, report.cost.tokens, report.cost.micro_usd
        ));
    }
    observed.model_calls += model_calls.len() as u64;
    if trace.first().map(|r| r.kind) != Some(RecordKind::RunStart) {
        observed.trace_gaps.push(format!("{}: the trace does not open with run_start", report.run_id));
    }
    if report.status.is_terminal() {
        if !trace.iter().any(|r| r.kind == RecordKind::RunEnd) {
            observed.trace_gaps.push(format!("{}: an ended run without run_end in its trace", report.run_id));
        }
        match replay(&t, workflow, exec.registry(), config_hash) {
            Ok(ReplayOutcome::Identical(r)) if r.state_sha256 == report.state_sha256 => {}
            Ok(ReplayOutcome::Identical(r)) => observed.replay_problems.push(format!(
                "{}: replayed to state {} but the run ended at {}",
                report.run_id, r.state_sha256, report.state_sha256
            )),
            Ok(ReplayOutcome::Diverged(d)) => observed.replay_problems.push(format!(
                "{}: diverged at line {} ({}): expected {} actual {}",
                report.run_id, d.line, d.what, d.expected, d.actual
            )),
            Err(e) => observed.replay_problems.push(format!("{}: {}: {}", report.run_id, e.code(), e.message())),
        }
    }
    Ok(())
}

/// A kernel error as the harness reports it, with what it was doing.
fn err(what: &'static str) -> impl Fn(autobiz_kernel::Error) -> String {
    move |e| format!("{what}: {}: {}", e.code(), e.message())
}

fn fail_http(what: &'static str) -> impl Fn(reqwest::Error) -> String {
    move |e| format!("setup {what}: {e}")
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

/// The example business's executor on `store`, each provider tool bound
/// through [`Faulting`] so a scenario's faults land on the call it names.
fn executor(
    assembly: Assembly,
    store: &Store,
    clock: Arc<ManualClock>,
    fakes: Arc<Fakes>,
    faults: Vec<(FaultSpec, Fault)>,
) -> Result<Executor, String> {
    let (mut exec, _) = assembly.into_executor(RedactionPolicy::default(), Arc::new(store.clone()), clock.clone());
    let endpoints = ProviderEndpoints::parse(
        &fakes.stripe.uri(),
        &fakes.shopify.uri(),
        &fakes.printful.uri(),
        &fakes.sendgrid.uri(),
    )
    .map_err(err("endpoints"))?;
    let providers = Arc::new(
        Providers::new(
            endpoints,
            Arc::new(Keys::golden()),
            SandboxGuard::sandbox(),
            Arc::new(store.clone()),
            http_settings(),
            SendgridSettings::default(),
        )
        .map_err(err("providers"))?,
    );
    for name in providers::TOOLS {
        if exec.registry().lookup(name, "1").is_err() {
            continue;
        }
        let mine: Vec<(FaultSpec, Fault)> = faults.iter().filter(|(s, _)| s.tool == name).cloned().collect();
        let tool = Faulting {
            name,
            providers: providers.clone(),
            fakes: fakes.clone(),
            faults: mine,
            calls: AtomicU32::new(0),
        };
        exec.bind(name, "1", Arc::new(tool)).map_err(err("bind"))?;
    }
    autobiz_kernel::closeout::bind(&mut exec, store.clone()).map_err(err("bind"))?;
    let breakers = Breakers::new(store.clone(), BreakerPolicy::default(), clock).map_err(err("breakers"))?;
    Ok(exec.with_durability(Durability { store: store.clone(), window: DEFAULT_WINDOW }).with_breakers(breakers))
}

/// Real clients with quick retries: a scenario asserts counts, never times.
pub fn http_settings() -> HttpSettings {
    HttpSettings {
        request_timeout: Duration::from_millis(250),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            jitter_seed: 7,
        },
    }
}

/// The LLM client's settings: the providers' quick retries and timeout.
pub fn llm_settings() -> LlmSettings {
    let http = http_settings();
    LlmSettings { request_timeout: http.request_timeout, retry: http.retry, ..LlmSettings::default() }
}

/// The golden price table: `gpt-4o-mini` at its list price ($0.15 and
/// $0.60 per million prompt and completion tokens) rounded up to the
/// table's unit, whole micro-USD per 1,000 tokens.
pub fn llm_prices() -> PriceTable {
    PriceTable::new().with("gpt-4o-mini", ModelPrice { prompt_per_1k_micro_usd: 1, completion_per_1k_micro_usd: 1 })
}

/// The LLM client of a workflow with an agent step, pinned to `model` and
/// `prompt`, and the fakes it talks to (kept alive by the caller):
///
/// * a `cassette` and no `[llm]`: replay the cassette, nothing is sent;
/// * a `cassette` and an `[llm]`: replay, or with `AUTOBIZ_CASSETTE_MODE=record`
///   record it against the LLM fake scripted with `[llm]`;
/// * only `[llm]`: the fake (faults, a fallback endpoint);
/// * neither: no client (the agent step fails with `AGENT_LLM_MISSING`).
async fn llm_client(
    scenario: &Scenario,
    env: &Env<'_>,
    store: &Store,
    model: &str,
    prompt: &autobiz_kernel::llm::PromptTemplate,
) -> Result<(Option<LlmClient>, Vec<LlmFake>), String> {
    // Only a scenario that says how its cassette was made (`[llm]`) records.
    let mode = match (CassetteMode::from_env().map_err(err("cassette mode"))?, &scenario.llm) {
        (CassetteMode::Record, Some(_)) => CassetteMode::Record,
        _ => CassetteMode::Replay,
    };
    let cassette = scenario.cassette.as_ref().map(|name| env.cassette_dir.join(name));
    let key = || Some(SecretString::from(LLM_KEY.to_owned()));
    let (primary, fallback, fakes) = match (&cassette, &scenario.llm) {
        (None, None) => return Ok((None, Vec::new())),
        (Some(_), None) => (Endpoint::new(CASSETTE_ENDPOINT, key()).map_err(err("LLM endpoint"))?, None, Vec::new()),
        (Some(_), Some(spec)) if mode == CassetteMode::Replay => {
            let fallback = match spec.fallback {
                Some(_) => Some(Endpoint::new(CASSETTE_FALLBACK, key()).map_err(err("LLM endpoint"))?),
                None => None,
            };
            (Endpoint::new(CASSETTE_ENDPOINT, key()).map_err(err("LLM endpoint"))?, fallback, Vec::new())
        }
        (_, Some(spec)) => {
            let (primary, fallback) = llm_fakes(spec, true).await?;
            let p = Endpoint::new(&primary.base_url(), key()).map_err(err("LLM endpoint"))?;
            let f = match &fallback {
                Some(f) => Some(Endpoint::new(&f.base_url(), key()).map_err(err("LLM endpoint"))?),
                None => None,
            };
            (p, f, std::iter::once(primary).chain(fallback).collect())
        }
    };
    if mode == CassetteMode::Record
        && let Some(path) = cassette.as_ref().filter(|p| p.exists())
    {
        // reqwest-vcr appends to what the file holds: a re-recording starts empty.
        std::fs::remove_file(path).map_err(|e| format!("cassette {}: {e}", path.display()))?;
    }
    let config = LlmConfig {
        model: model.to_owned(),
        template: prompt.clone(),
        primary,
        fallback,
        prices: llm_prices(),
        settings: llm_settings(),
        cassette: cassette.map(|path| Cassette::new(path, mode)),
    };
    let client = LlmClient::new(config, SandboxGuard::sandbox(), Arc::new(store.clone())).map_err(err("LLM client"))?;
    Ok((Some(client), fakes))
}

/// The primary LLM fake, scripted (and with `faults`, faulted) as `spec`
/// says, and the fallback one if it has one.
pub async fn llm_fakes(spec: &LlmSpec, faults: bool) -> Result<(LlmFake, Option<LlmFake>), String> {
    let primary = LlmFake::start_loopback().await;
    for reply in &spec.replies {
        primary.script(reply.clone());
    }
    for f in spec.faults.iter().filter(|_| faults) {
        primary.inject_times(fault_kind(&f.fault, f.delay_ms, f.retry_after_s)?, f.times);
    }
    let fallback = match &spec.fallback {
        Some(replies) => {
            let fake = LlmFake::start_loopback().await;
            for reply in replies {
                fake.script(reply.clone());
            }
            Some(fake)
        }
        None => None,
    };
    Ok((primary, fallback))
}

/// A provider tool whose fake misbehaves as the scenario says, right before
/// the call it names.
struct Faulting {
    name: &'static str,
    providers: Arc<Providers>,
    fakes: Arc<Fakes>,
    faults: Vec<(FaultSpec, Fault)>,
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl Tool for Faulting {
    async fn call(&self, call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        for (spec, fault) in self.faults.iter().filter(|(s, _)| s.call == n) {
            inject(&self.fakes, self.name, fault.clone(), spec.times);
        }
        self.providers.call(self.name, &call, &input).await
    }
}

/// Answer the next `times` requests to the fake of `tool` (a tool name or a
/// provider's: `stripe.refund.create`, `stripe`) with `fault`.
pub fn inject(fakes: &Fakes, tool: &str, fault: Fault, times: u32) {
    match tool.split('.').next() {
        Some("stripe") => fakes.stripe.inject_times(fault, times),
        Some("shopify") => fakes.shopify.inject_times(fault, times),
        Some("printful") => fakes.printful.inject_times(fault, times),
        _ => fakes.sendgrid.inject_times(fault, times),
    }
}

/// Each fault spec with its fake fault; unknown tools and kinds refused.
fn validate_faults(specs: &[FaultSpec]) -> Result<Vec<(FaultSpec, Fault)>, String> {
    specs
        .iter()
        .map(|s| {
            if !providers::TOOLS.contains(&s.tool.as_str()) {
                return Err(format!("fault for {:?}: not a provider tool ({})", s.tool, providers::TOOLS.join(", ")));
            }
            Ok((s.clone(), fault_kind(&s.fault, s.delay_ms, s.retry_after_s)?))
        })
        .collect()
}

/// The fake fault a scenario names.
fn fault_kind(kind: &str, delay_ms: Option<u64>, retry_after_s: Option<u64>) -> Result<Fault, String> {
    Ok(match kind {
        "status500" => Fault::Status500,
        "rate_limited" => Fault::RateLimited { retry_after_s: retry_after_s.unwrap_or(0) },
        "delay" => Fault::Delay(Duration::from_millis(delay_ms.unwrap_or(400))),
        "malformed" => Fault::Malformed,
        "html" => Fault::Html,
        "truncated" => Fault::Truncated,
        "error_in_200" => Fault::ErrorIn200,
        other => {
            return Err(format!(
                "fault {other:?}: status500, rate_limited, delay, malformed, html, truncated or error_in_200"
            ));
        }
    })
}

/// Make the provider state a scenario starts from, through the fakes' APIs.
pub async fn setup(fakes: &Fakes, setup: &Setup) -> Result<(), String> {
    setup_with(&reqwest::Client::new(), fakes, setup).await
}

/// [`setup`] over a client the caller keeps (the soak seeds every delivery:
/// a client, its connection pool and TLS roots, made once, not per delivery).
pub async fn setup_with(http: &reqwest::Client, fakes: &Fakes, setup: &Setup) -> Result<(), String> {
    for order in &setup.shopify_orders {
        fakes
            .shopify
            .seed_order(order.clone())
            .ok_or_else(|| format!("setup: Shopify order without a numeric id: {order}"))?;
    }
    for (i, (amount, capture)) in setup
        .captured_payments
        .iter()
        .map(|a| (a, true))
        .chain(setup.authorized_payments.iter().map(|a| (a, false)))
        .enumerate()
    {
        let pi: Value = http
            .post(format!("{}/v1/payment_intents", fakes.stripe.uri()))
            .bearer_auth(STRIPE_KEY)
            .form(&[
                ("amount", amount.to_string()),
                ("currency", "usd".into()),
                ("capture_method", "manual".into()),
                ("confirm", "true".into()),
                ("payment_method", "pm_card_visa".into()),
                ("metadata[order_id]", format!("setup-{i}")),
            ])
            .send()
            .await
            .map_err(fail_http("payment"))?
            .json()
            .await
            .map_err(fail_http("payment"))?;
        let id = pi["id"].as_str().ok_or_else(|| format!("setup payment: no id in {pi}"))?;
        if capture {
            http.post(format!("{}/v1/payment_intents/{id}/capture", fakes.stripe.uri()))
                .bearer_auth(STRIPE_KEY)
                .send()
                .await
                .map_err(fail_http("capture"))?
                .error_for_status()
                .map_err(fail_http("capture"))?;
        }
    }
    for (order, confirm) in
        setup.printful_orders.iter().map(|o| (o, false)).chain(setup.printful_confirmed.iter().map(|o| (o, true)))
    {
        let path = if confirm { "/orders?confirm=true" } else { "/orders" };
        http.post(format!("{}{path}", fakes.printful.uri()))
            .bearer_auth(PRINTFUL_KEY)
            .json(order)
            .send()
            .await
            .map_err(fail_http("printful order"))?
            .error_for_status()
            .map_err(fail_http("printful order"))?;
    }
    for shipped in &setup.printful_shipped {
        let field = |k: &str| shipped[k].as_str().map(str::to_owned);
        let (Some(carrier), Some(tracking)) = (field("carrier"), field("tracking_number")) else {
            return Err(format!("setup: a shipped Printful order needs carrier and tracking_number: {shipped}"));
        };
        let mut order = shipped.clone();
        if let Some(o) = order.as_object_mut() {
            o.remove("carrier");
            o.remove("tracking_number");
        }
        let created: Value = http
            .post(format!("{}/orders?confirm=true", fakes.printful.uri()))
            .bearer_auth(PRINTFUL_KEY)
            .json(&order)
            .send()
            .await
            .map_err(fail_http("printful order"))?
            .error_for_status()
            .map_err(fail_http("printful order"))?
            .json()
            .await
            .map_err(fail_http("printful order"))?;
        let id = created.pointer("/result/id").and_then(Value::as_u64);
        if !id.is_some_and(|id| fakes.printful.ship(id, &carrier, &tracking)) {
            return Err(format!("setup: cannot ship Printful order {created}"));
        }
    }
    Ok(())
}

/// The fakes' state, as the oracles' JSON pointers address it.
pub fn snapshot(fakes: &Fakes) -> Value {
    let shopify: serde_json::Map<String, Value> =
        fakes.shopify.orders().into_iter().map(|o| (o["id"].to_string(), o)).collect();
    let sent: Vec<Value> = fakes
        .sendgrid
        .sent()
        .into_iter()
        .map(|m| json!({"to": m.to, "template_id": m.template_id, "data": m.dynamic_template_data, "sandbox": m.sandbox}))
        .collect();
    json!({
        "stripe": {
            "payment_intents": fakes.stripe.payment_intents(),
            "captures": fakes.stripe.captures(),
            "refunds": fakes.stripe.refunds(),
        },
        "shopify": { "orders": shopify },
        "printful": { "orders": fakes.printful.orders() },
        "sendgrid": { "sent": sent },
    })
}

/// Side-effect counters over a snapshot.
pub fn counters(snapshot: &Value) -> BTreeMap<String, i64> {
    let list = |p: &str| snapshot.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default();
    let count = |items: &[Value], field: &str, value: &str| {
        i64::try_from(items.iter().filter(|i| i[field] == value).count()).unwrap_or(i64::MAX)
    };
    let len = |items: &[Value]| i64::try_from(items.len()).unwrap_or(i64::MAX);
    let pis = list("/stripe/payment_intents");
    let printful = list("/printful/orders");
    let shopify: Vec<Value> = snapshot
        .pointer("/shopify/orders")
        .and_then(Value::as_object)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    BTreeMap::from([
        ("stripe_payment_intents".into(), len(&pis)),
        ("stripe_authorized".into(), count(&pis, "status", "requires_capture")),
        ("stripe_canceled".into(), count(&pis, "status", "canceled")),
        ("stripe_captures".into(), len(&list("/stripe/captures"))),
        ("stripe_refunds".into(), len(&list("/stripe/refunds"))),
        ("printful_orders".into(), len(&printful)),
        ("printful_draft".into(), count(&printful, "status", "draft")),
        ("printful_pending".into(), count(&printful, "status", "pending")),
        ("printful_canceled".into(), count(&printful, "status", "canceled")),
        (
            "shopify_cancelled".into(),
            i64::try_from(shopify.iter().filter(|o| !o["cancelled_at"].is_null()).count()).unwrap_or(i64::MAX),
        ),
        ("mails_sent".into(), len(&list("/sendgrid/sent"))),
    ])
}

/// The four sandbox credentials, in memory.
struct Keys(BTreeMap<&'static str, &'static str>);

impl Keys {
    fn golden() -> Keys {
        Keys(BTreeMap::from([
            (STRIPE_SECRET, STRIPE_KEY),
            (SHOPIFY_SECRET, "shpat_golden"),
            (PRINTFUL_SECRET, PRINTFUL_KEY),
            (SENDGRID_SECRET, "SG.golden"),
        ]))
    }
}

#[async_trait::async_trait]
impl SecretsProvider for Keys {
    async fn get(&self, _ctx: &TenantContext, reference: &str) -> autobiz_kernel::Result<SecretString> {
        self.0.get(reference).map(|v| SecretString::from((*v).to_owned())).ok_or_else(|| {
            autobiz_kernel::Error::new(autobiz_kernel::ErrorCode::SecretNotFound, format!("no secret {reference}"))
        })
    }
    async fn get_version(&self, ctx: &TenantContext, reference: &str, _v: u32) -> autobiz_kernel::Result<SecretString> {
        self.get(ctx, reference).await
    }
    async fn set(&self, _: &TenantContext, _: &str, _: SecretString) -> autobiz_kernel::Result<SecretInfo> {
        Err(read_only())
    }
    async fn rotate(
        &self,
        _: &TenantContext,
        _: &str,
        _: SecretString,
        _: chrono::Duration,
    ) -> autobiz_kernel::Result<SecretInfo> {
        Err(read_only())
    }
    async fn list(&self, _: &TenantContext) -> autobiz_kernel::Result<Vec<SecretInfo>> {
        Ok(Vec::new())
    }
}

fn read_only() -> autobiz_kernel::Error {
    autobiz_kernel::Error::new(autobiz_kernel::ErrorCode::SecretsIo, "the golden keys are read-only")
}
