//! The soak's production [`Driver`]: `autobiz serve`'s router on a loopback
//! port, its event worker, the provider fakes and the LLM fake, all in this
//! process, over a real store.
//!
//! Each delivery is seeded in the fakes ([`traffic`]), signed with the
//! tenant's webhook secret and POSTed to the router as the provider would
//! (Stripe-Signature, X-Shopify-Hmac-Sha256, a token for Printful and the
//! helpdesk); the worker claims the events and runs the workflows exactly as
//! `autobiz serve` does. A run that asks a human is approved through the
//! approval API with the approver's bearer token, or left to time out when
//! the plan says so. The daily closeout (WF07) has no webhook: the soak's
//! scheduler starts it through the same engine.
//!
//! Time: with `--clock virtual` the store, the ingress, the HITL deadlines
//! and every run read one [`ManualClock`] the soak moves to each delivery's
//! planned time (and past a deadline it lets expire), so seven days take
//! minutes; with `--clock wall` they read the system clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autobiz_fakes::{Fakes, Fault, LlmFake};
use autobiz_kernel::assembly::{Assembly, RunnableWorkflow};
use autobiz_kernel::breaker::{BreakerPolicy, Breakers};
use autobiz_kernel::clock::{Clock, ManualClock, SystemClock};
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::engine::{Engine, RunSpec};
use autobiz_kernel::executor::Durability;
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::hitl::{ApprovalState, HitlRules};
use autobiz_kernel::idempotency::DEFAULT_WINDOW;
use autobiz_kernel::ingress::signature::{shopify_header, stripe_header};
use autobiz_kernel::ingress::{Ingress, SecretKeys};
use autobiz_kernel::llm::Endpoint;
use autobiz_kernel::providers::{
    self, PRINTFUL_SECRET, ProviderEndpoints, Providers, SENDGRID_SECRET, SHOPIFY_SECRET, STRIPE_SECRET, SandboxGuard,
    SendgridSettings,
};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::secrets::{FileSecrets, MasterKey, SecretsProvider};
use autobiz_kernel::store::{DatabaseUrl, NewRun, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext, TenantId};
use autobiz_kernel::trace::{RecordKind, TraceRecord};
use autobiz_kernel::transcript::TranscriptWriter;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::plan::{PlannedEvent, PlannedFault};
use super::traffic::{self, PLANTED_CARD, Prepared, Webhook};
use super::{ClockMode, Driver, Invariant, RunOutcome};
use crate::report::CliError;
use crate::serve::worker::{Worker, run_id_for_ids};
use crate::serve::{App, HttpCounters, router};

/// The tenants a soak serves: deliveries alternate between them, so the
/// cross-tenant monitor has something to watch.
pub const TENANTS: [&str; 2] = ["soak-east", "soak-west"];
/// The approver the shop's HITL rules name.
const APPROVER: &str = "ops-lead";

/// How many of the newest runs a check reads at most (more than a check's
/// worth of deliveries, so none is skipped).
const RECENT_RUNS: i64 = 2_000;
/// A check reads the newest runs a page at a time, from this many, growing
/// until the page reaches a run an earlier check judged: every run older
/// than that one existed then and was judged or is open (kept apart), so
/// the check sees exactly the runs it would in a read of [`RECENT_RUNS`].
const FIRST_PAGE: i64 = 100;

/// How long the fakes keep a provider object (PaymentIntent, capture,
/// refund, order, mail, completion) on the soak's clock before the driver
/// drops it: two days, longer than any delivery's run can touch it (an
/// approval expires after an hour, the ingress's idempotency window is a
/// day), so the duplicate monitor still sees both halves of any duplicate
/// a run could make, and the fakes' state is bounded by time, not by run
/// length.
pub const FAKE_RETENTION: chrono::Duration = chrono::Duration::days(2);

/// A set of the last few thousand run ids (what a check can see again).
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<String>,
    set: BTreeSet<String>,
}

impl Recent {
    const CAP: usize = 3 * RECENT_RUNS as usize;

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// How the driver is set up.
pub struct DriverOptions<'a> {
    pub config: &'a BusinessConfig,
    /// The soak's directory (store, secrets, transcripts).
    pub dir: &'a Path,
    /// Default: SQLite in `dir`.
    pub database_url: Option<DatabaseUrl>,
    pub clock: ClockMode,
    pub start: DateTime<Utc>,
    pub seed: u64,
    /// Commit this violation for real after delivery `seq` (a drill: the
    /// monitors must name it).
    pub inject: Option<(Invariant, u64)>,
}

/// Per-tenant secrets, made up for the soak (test keys only).
struct TenantSecrets {
    stripe_webhook: SecretString,
    shopify_webhook: SecretString,
    token: SecretString,
    approver: SecretString,
}

fn tenant_secrets(tenant: &str, seed: u64) -> TenantSecrets {
    let s = |what: &str| SecretString::from(format!("{what}_{tenant}_{seed:x}_soak"));
    TenantSecrets { stripe_webhook: s("whsec"), shopify_webhook: s("shpss"), token: s("tok"), approver: s("approver") }
}

/// The soak's clock: virtual (moved by the soak) or the system's.
enum SoakClock {
    Virtual(Arc<ManualClock>),
    Wall,
}

pub struct ServeDriver {
    fakes: Arc<Fakes>,
    llm: LlmFake,
    store: Store,
    clock: SoakClock,
    app: Arc<App>,
    worker: Worker,
    workflows: BTreeMap<String, RunnableWorkflow>,
    base: String,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    tenants: Vec<(TenantId, TenantSecrets)>,
    rules: HitlRules,
    seed: u64,
    inject: Option<(Invariant, u64)>,
    transcripts: PathBuf,
    /// Runs whose trace the monitors already judged (ended runs; the
    /// newest [`RECENT_RUNS`] are looked at each check, so this stays small).
    checked: Recent,
    /// Runs not ended at the last check, by tenant: looked at again.
    open_runs: BTreeMap<TenantId, BTreeSet<String>>,
    /// When the monitors last ran (the traces since are read).
    last_check: DateTime<Utc>,
    /// Every secret value the soak knows: none may appear in a trace.
    planted: Vec<String>,
}

fn infra(code: &'static str) -> impl Fn(autobiz_kernel::Error) -> CliError {
    move |e| CliError::infrastructure(code, format!("{}: {}", e.code(), e.message()))
}

fn ctx(tenant: &TenantId, principal: &str) -> TenantContext {
    TenantContext::new(tenant.clone(), Principal::new(principal), CorrelationId::random())
}

impl ServeDriver {
    /// Start the fakes, open (and migrate) the store, write the tenants'
    /// secrets, and serve the router on a loopback port.
    pub async fn start(opts: DriverOptions<'_>) -> Result<ServeDriver, CliError> {
        std::fs::create_dir_all(opts.dir)
            .map_err(|e| CliError::infrastructure("SOAK_IO", format!("cannot create {}: {e}", opts.dir.display())))?;
        let (clock, dyn_clock): (SoakClock, Arc<dyn Clock>) = match opts.clock {
            ClockMode::Virtual => {
                let c = Arc::new(ManualClock::new(opts.start));
                (SoakClock::Virtual(c.clone()), c)
            }
            ClockMode::Wall => (SoakClock::Wall, Arc::new(SystemClock)),
        };
        let url = match opts.database_url {
            Some(u) => u,
            None => format!("sqlite://{}", opts.dir.join("soak.db").display())
                .parse()
                .map_err(|e: autobiz_kernel::Error| CliError::input("DATABASE_URL_INVALID", e.message()))?,
        };
        // SQLite is created and migrated on first use; PostgreSQL must be
        // migrated (`autobiz db migrate`) and reached as the kernel role.
        let store = Store::open_with_clock(&url, dyn_clock.clone()).await?;
        let fakes = Arc::new(Fakes::start().await);
        let llm = LlmFake::start_loopback().await;
        // The providers' time is the soak's: Stripe's idempotency keys
        // expire after 24 virtual hours.
        let provider_clock = || {
            let c = dyn_clock.clone();
            move || std::time::SystemTime::from(c.now())
        };
        fakes.set_clock(provider_clock());
        llm.set_clock(provider_clock());

        // The secrets file is the soak's own, written afresh at each start.
        let secrets_path = opts.dir.join("secrets.json");
        let _ = std::fs::remove_file(&secrets_path);
        let file = FileSecrets::open_with_clock(
            &secrets_path,
            MasterKey::generate(),
            Arc::new(store.clone()),
            dyn_clock.clone(),
        )?;
        let mut tenants = Vec::new();
        let mut planted = vec![PLANTED_CARD.to_owned()];
        for name in TENANTS {
            let tenant: TenantId = name.parse()?;
            let t = tenant_secrets(name, opts.seed);
            let c = ctx(&tenant, "soak");
            for (secret, value) in [
                ("stripe_webhook_secret", &t.stripe_webhook),
                ("shopify_webhook_secret", &t.shopify_webhook),
                ("printful_webhook_token", &t.token),
                ("support_webhook_token", &t.token),
                (&format!("approver_token_{APPROVER}") as &str, &t.approver),
                (STRIPE_SECRET, &SecretString::from(format!("sk_test_{name}_{:x}", opts.seed))),
                (SHOPIFY_SECRET, &SecretString::from(format!("shpat_{name}_{:x}", opts.seed))),
                (PRINTFUL_SECRET, &SecretString::from(format!("pf_{name}_{:x}", opts.seed))),
                (SENDGRID_SECRET, &SecretString::from(format!("SG.{name}_{:x}", opts.seed))),
            ] {
                file.set(&c, secret, value.clone()).await?;
                planted.push(value.expose_secret().to_owned());
            }
            tenants.push((tenant, t));
        }
        let secrets: Arc<dyn SecretsProvider> = Arc::new(file);

        let assembly = Assembly::from_config(opts.config)?;
        let rules = HitlRules::from_model(&opts.config.model()?)?;
        let config_hash = assembly.config_hash.clone();
        let (mut exec, workflows) =
            assembly.into_executor(RedactionPolicy::default(), Arc::new(store.clone()), dyn_clock.clone());
        let endpoints = ProviderEndpoints::parse(
            &fakes.stripe.uri(),
            &fakes.shopify.uri(),
            &fakes.printful.uri(),
            &fakes.sendgrid.uri(),
        )?;
        let providers = Providers::new(
            endpoints,
            secrets.clone(),
            SandboxGuard::sandbox(),
            Arc::new(store.clone()),
            crate::golden::runner::http_settings(),
            SendgridSettings::default(),
        )?;
        providers::bind_all(&mut exec, Arc::new(providers))?;
        autobiz_kernel::closeout::bind(&mut exec, store.clone())?;
        let breakers = Breakers::new(store.clone(), BreakerPolicy::default(), dyn_clock.clone())?;
        let breaker_metrics = breakers.metrics_handle();
        let exec =
            exec.with_durability(Durability { store: store.clone(), window: DEFAULT_WINDOW }).with_breakers(breakers);
        let mut llm_clients = BTreeMap::new();
        for (id, wf) in &workflows {
            let primary = Endpoint::new(&llm.base_url(), Some(SecretString::from("sk-soak-llm".to_owned())))?;
            if let Some(client) = crate::commands::run::agent_llm(&wf.workflow, primary, None, None, &store)? {
                llm_clients.insert(id.clone(), client);
            }
        }
        planted.push("sk-soak-llm".to_owned());
        let transcripts = opts.dir.join("transcripts");
        let worker = Worker {
            id: format!("soak-{}", std::process::id()),
            exec,
            workflows: workflows.clone(),
            config_hash,
            approvals: StoreApprovals::new(store.clone(), rules.clone(), dyn_clock.clone()),
            transcripts: transcripts.clone(),
            poll: Duration::from_millis(50),
            lease: Duration::from_secs(60),
            llm: llm_clients,
        };
        let keys = SecretKeys::new(secrets.clone(), dyn_clock.clone(), chrono::Duration::seconds(30));
        let app = Arc::new(App {
            ingress: Ingress::new(store.clone(), Arc::new(keys), dyn_clock.clone()),
            store: store.clone(),
            tenants: tenants.iter().map(|(t, _)| t.clone()).collect(),
            secrets,
            stored: Arc::new(Notify::new()),
            http: HttpCounters::default(),
            breaker_metrics: Some(breaker_metrics),
            outcomes: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::infrastructure("BIND_FAILED", format!("cannot listen on loopback: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::infrastructure("BIND_FAILED", format!("cannot read the bound address: {e}")))?;
        let (stop, mut stop_rx) = watch::channel(false);
        let serving = router(app.clone(), crate::serve::DEFAULT_MAX_BODY);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, serving)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
        });
        Ok(ServeDriver {
            fakes,
            llm,
            store,
            clock,
            app,
            worker,
            workflows,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop,
            server,
            tenants,
            rules,
            seed: opts.seed,
            inject: opts.inject,
            transcripts,
            checked: Recent::default(),
            open_runs: BTreeMap::new(),
            last_check: opts.start,
            planted,
        })
    }

    /// After a restart: resume the runs the killed soak left RUNNING (no
    /// other process serves the soak's store) and the decided approvals.
    pub async fn recover(&self) -> Result<usize, CliError> {
        let mut resumed = 0;
        for (tenant, _) in &self.tenants {
            let c = ctx(tenant, "soak:recover");
            for r in self.store.run_records(&c, true, 10_000).await.map_err(infra("STORE_UNAVAILABLE"))? {
                if r.status == RunStatus::Running.as_str() && r.config_hash == self.worker.config_hash {
                    self.worker.resume(&self.app, &c, &r).await.map_err(infra("WORKER_FAILED"))?;
                    resumed += 1;
                }
            }
        }
        Ok(resumed)
    }

    /// Stop serving and close the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.store.close().await;
    }

    /// The `/metrics` text of the soak's server (for the summary).
    pub async fn metrics(&self) -> String {
        let mut out = String::new();
        crate::serve::metrics::render(&self.app, &mut out).await;
        out
    }

    fn now(&self) -> DateTime<Utc> {
        self.store.now()
    }

    /// Move the virtual clock forward to `t` (never back).
    fn advance_to(&self, t: DateTime<Utc>) {
        if let SoakClock::Virtual(c) = &self.clock {
            let now = c.now();
            if t > now {
                c.advance(t - now);
            }
        }
    }

    fn tenant_of(&self, seq: u64) -> &(TenantId, TenantSecrets) {
        &self.tenants[(seq % self.tenants.len() as u64) as usize]
    }

    async fn post(&self, tenant: &TenantId, secrets: &TenantSecrets, hook: &Webhook) -> Result<(), String> {
        let mut req = self
            .http
            .post(format!("{}/webhooks/{tenant}/{}", self.base, hook.provider))
            .header("content-type", "application/json")
            .body(hook.body.clone());
        req = match hook.provider {
            "stripe" => req.header(
                "stripe-signature",
                stripe_header(&hook.body, self.now().timestamp(), std::slice::from_ref(&secrets.stripe_webhook)),
            ),
            "shopify" => req
                .header("x-shopify-hmac-sha256", shopify_header(&hook.body, &secrets.shopify_webhook))
                .header("x-shopify-topic", &hook.topic)
                .header("x-shopify-webhook-id", &hook.delivery_id)
                .header("x-shopify-triggered-at", self.now().to_rfc3339()),
            _ => req.header("x-autobiz-webhook-token", secrets.token.expose_secret()),
        };
        let resp = req.send().await.map_err(|e| format!("POST {}: {e}", hook.provider))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(format!("{} webhook refused: HTTP {status} {body}", hook.provider))
    }

    async fn approve(&self, tenant: &TenantId, secrets: &TenantSecrets, request: &str) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("{}/hitl/{request}/approve", self.base))
            .bearer_auth(secrets.approver.expose_secret())
            .header("x-autobiz-tenant", tenant.as_str())
            .json(&json!({ "reason": "soak: approved by the scripted approver" }))
            .send()
            .await
            .map_err(|e| format!("approve {request}: {e}"))?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("approve {request}: HTTP {}", resp.status())) }
    }

    fn inject_fault(&self, target: &str, fault: PlannedFault) {
        let fault = match fault {
            PlannedFault::Provider5xx => Fault::Status500,
            PlannedFault::RateLimited => Fault::RateLimited { retry_after_s: 0 },
            // Longer than the clients' request timeout: the attempt times out and is retried.
            PlannedFault::Timeout => Fault::Delay(Duration::from_millis(400)),
        };
        match target {
            "stripe" => self.fakes.stripe.inject_times(fault, 1),
            "shopify" => self.fakes.shopify.inject_times(fault, 1),
            "printful" => self.fakes.printful.inject_times(fault, 1),
            _ => {}
        }
    }

    /// Start the day's closeout through the engine, as the scheduler does.
    async fn run_scheduled(&self, tenant: &TenantId, event: Value, seq: u64) -> Result<RunOutcome, CliError> {
        let Some(wf) = self.workflows.get("WF07") else {
            return Ok(RunOutcome { success: false, status: "no WF07 in the config".into() });
        };
        let run_id = format!("sched-{}-{seq}", self.seed);
        let c = ctx(tenant, &wf.principal);
        if let Some(r) = self.store.run_record(&c, &run_id).await.map_err(infra("STORE_UNAVAILABLE"))? {
            return Ok(outcome_of(&r.status, r.termination.as_deref(), false));
        }
        std::fs::create_dir_all(&self.transcripts)
            .map_err(|e| CliError::infrastructure("SOAK_IO", format!("{}: {e}", self.transcripts.display())))?;
        let path = self.transcripts.join(format!("{run_id}.jsonl"));
        let mut w = TranscriptWriter::create(&path)?;
        let engine = Engine::new(&self.worker.exec)
            .with_store(&self.store, Some(path.display().to_string()))
            .with_approvals(&self.worker.approvals);
        let spec = RunSpec {
            workflow: &wf.workflow,
            ctx: c,
            run_id,
            bounds: wf.bounds,
            event,
            pins: json!({}),
            config_hash: self.worker.config_hash.clone(),
        };
        let report = engine.run(&spec, &mut w).await?;
        Ok(outcome_of(report.status.as_str(), report.termination.map(|t| t.as_str()), false))
    }

    /// Drive the worker until the run started by `trigger` ends, approving
    /// or letting approvals expire as planned.
    async fn settle(
        &self,
        tenant: &TenantId,
        secrets: &TenantSecrets,
        trigger: &(String, String),
        prepared: &Prepared,
        let_expire: bool,
    ) -> Result<RunOutcome, CliError> {
        let run_id = run_id_for_ids(&trigger.0, &trigger.1);
        let c = ctx(tenant, "soak");
        let mut approved = 0;
        for _ in 0..200 {
            self.worker.pass(&self.app).await.map_err(infra("WORKER_FAILED"))?;
            let Some(r) = self.store.run_record(&c, &run_id).await.map_err(infra("STORE_UNAVAILABLE"))? else {
                // Held (out of order) or not yet claimed: let the clock move
                // on a little for a held event's predecessor to be swept.
                if let SoakClock::Wall = self.clock {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            };
            let status = RunStatus::parse(&r.status);
            match status {
                Some(s) if s.is_terminal() => {
                    return Ok(outcome_of(
                        &r.status,
                        r.termination.as_deref(),
                        let_expire && prepared.expects_approval,
                    ));
                }
                Some(RunStatus::WaitingApproval) => {
                    let Some(request) = r.waiting_for.clone() else { continue };
                    let a = self.store.hitl_get(&c, &request).await.map_err(infra("STORE_UNAVAILABLE"))?;
                    if a.status != ApprovalState::Pending {
                        continue;
                    }
                    if let_expire {
                        match self.clock {
                            SoakClock::Virtual(_) => self.advance_to(a.expires_at + chrono::Duration::seconds(1)),
                            SoakClock::Wall => {
                                let wait = (a.expires_at - Utc::now()).to_std().unwrap_or_default();
                                tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                            }
                        }
                    } else if approved < 8 {
                        self.approve(tenant, secrets, &request)
                            .await
                            .map_err(|e| CliError::infrastructure("SOAK_APPROVAL_FAILED", e))?;
                        approved += 1;
                    }
                }
                _ => {
                    if let SoakClock::Wall = self.clock {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        Ok(RunOutcome { success: false, status: format!("run {run_id} did not end") })
    }

    /// Commit the planned violation for real, bypassing the kernel's checks
    /// the way a bug or an operator would.
    async fn commit_violation(&self, invariant: Invariant, seq: u64) -> Result<(), CliError> {
        let (tenant, _) = self.tenant_of(seq);
        let c = ctx(tenant, "soak:drill");
        let http_fail = |e: reqwest::Error| CliError::infrastructure("SOAK_DRILL_FAILED", e.to_string());
        match invariant {
            Invariant::DuplicateSideEffect => {
                // Two refunds straight at Stripe for one captured payment.
                let Some(pi) = self.fakes.stripe.captures().last().map(|p| p["id"].clone()) else {
                    return Err(CliError::infrastructure("SOAK_DRILL_FAILED", "no captured payment to refund twice"));
                };
                for _ in 0..2 {
                    self.http
                        .post(format!("{}/v1/refunds", self.fakes.stripe.uri()))
                        .bearer_auth(format!("sk_test_{}_{:x}", tenant, self.seed))
                        .form(&[("payment_intent", pi.as_str().unwrap_or_default()), ("amount", "100")])
                        .send()
                        .await
                        .map_err(http_fail)?;
                }
            }
            Invariant::CrossTenantAccess => {
                let other = &self.tenant_of(seq + 1).0;
                let _ = self.store.authorize(&c, other, "run/drill", "read").await;
            }
            Invariant::UntracedRun => {
                let run = NewRun {
                    run_id: &format!("drill-untraced-{seq}"),
                    workflow: "WF01",
                    config_hash: &self.worker.config_hash,
                    event: &json!({}),
                    pins: &json!({}),
                    transcript: None,
                };
                self.store.create_run(&c, &run).await.map_err(infra("STORE_UNAVAILABLE"))?;
            }
            Invariant::SecretInTrace => {
                let mut r = TraceRecord::new(&c, &format!("drill-secret-{seq}"), 0, RecordKind::RunStart, self.now());
                r.input = Some(json!({ "note": format!("card {PLANTED_CARD}") }));
                self.store.append_trace(&c, &r).await.map_err(infra("STORE_UNAVAILABLE"))?;
            }
            Invariant::UnapprovedFinancialStep => {
                // A refund over the approval threshold, executed with the
                // gate bypassed (`approved: true`), as a bug would.
                let refunded: BTreeSet<String> = self
                    .fakes
                    .stripe
                    .refunds()
                    .iter()
                    .filter_map(|r| r["payment_intent"].as_str().map(str::to_owned))
                    .collect();
                let big = self.fakes.stripe.captures().into_iter().find(|p| {
                    p["amount_received"].as_i64().unwrap_or(0) > 5000
                        && !p["id"].as_str().is_some_and(|id| refunded.contains(id))
                });
                let Some(pi) = big else {
                    return Err(CliError::infrastructure(
                        "SOAK_DRILL_FAILED",
                        "no captured payment over $50 to refund",
                    ));
                };
                let amount = pi["amount_received"].clone();
                let pi = pi["id"].clone();
                let run_id = format!("drill-unapproved-{seq}");
                // The support agent may refund; only the approval is skipped.
                let c = ctx(tenant, "agent:support");
                let Some(bounds) = self.workflows.get("WF03").map(|w| w.bounds) else { return Ok(()) };
                let run =
                    self.worker.exec.start(&c, &run_id, bounds, json!({})).await.map_err(infra("SOAK_DRILL_FAILED"))?;
                let mut run = run;
                let opts = autobiz_kernel::executor::CallOptions { state_key: None, approved: true, idempotency: None };
                let input = json!({ "payment_intent": pi, "amount": amount, "currency": "usd", "reason": "requested_by_customer" });
                self.worker
                    .exec
                    .call_with(&mut run, "stripe.refund.create", "1", input, opts)
                    .await
                    .map_err(infra("SOAK_DRILL_FAILED"))?;
            }
        }
        Ok(())
    }
}

/// Drop the faults and scripted model replies an earlier delivery planned
/// but did not use: its run ended before reaching that provider, the
/// ingress deduplicated it, or (after a resume) its run already existed and
/// did not run again. Left armed, a fault meant for one delivery met the
/// next one's seeding (`SOAK_SETUP_FAILED`, an HTTP 500 from a fake) or run.
fn discard_leftovers(fakes: &Fakes, llm: &LlmFake) {
    fakes.stripe.clear_faults();
    fakes.shopify.clear_faults();
    fakes.printful.clear_faults();
    llm.clear_script();
}

/// How a run's end counts: completed, or the designed ending of an
/// approval the plan let time out.
fn outcome_of(status: &str, termination: Option<&str>, timeout_planned: bool) -> RunOutcome {
    let success = status == "COMPLETED" || (timeout_planned && termination == Some("hitl_timeout"));
    RunOutcome { success, status: format!("{status}/{}", termination.unwrap_or("-")) }
}

#[async_trait::async_trait]
impl Driver for ServeDriver {
    async fn deliver(&mut self, event: &PlannedEvent, now: DateTime<Utc>) -> Result<RunOutcome, CliError> {
        self.advance_to(now);
        discard_leftovers(&self.fakes, &self.llm);
        let prepared = traffic::prepare(event, self.seed, &self.fakes, &self.http)
            .await
            .map_err(|e| CliError::infrastructure("SOAK_SETUP_FAILED", e))?;
        if let Some(fault) = event.fault {
            self.inject_fault(prepared.fault_on, fault);
        }
        if let Some(reply) = &prepared.model_reply {
            self.llm.script(reply.clone());
        }
        let (tenant, secrets) = self.tenant_of(event.seq);
        let outcome = if let Some(day) = prepared.scheduled.clone() {
            self.run_scheduled(tenant, day, event.seq).await?
        } else {
            let mut refused = None;
            for hook in &prepared.webhooks {
                if let Err(e) = self.post(tenant, secrets, hook).await {
                    refused = Some(e);
                }
            }
            match (refused, &prepared.trigger) {
                (Some(e), _) => RunOutcome { success: false, status: e },
                (None, Some(trigger)) => {
                    let let_expire = event.hitl_timeout && prepared.expects_approval;
                    self.settle(tenant, secrets, trigger, &prepared, let_expire).await?
                }
                (None, None) => RunOutcome { success: false, status: "nothing to deliver".into() },
            }
        };
        if let Some((invariant, at)) = self.inject
            && at == event.seq
        {
            self.commit_violation(invariant, event.seq).await?;
        }
        Ok(outcome)
    }

    async fn check_invariants(&mut self) -> Result<Vec<(Invariant, String)>, CliError> {
        let mut found = Vec::new();
        duplicate_side_effects(&self.fakes, &mut found);
        for (tenant, _) in &self.tenants {
            let c = ctx(tenant, "soak:monitor");
            for e in self.store.security_events(&c, 1000).await.map_err(infra("STORE_UNAVAILABLE"))? {
                if e.event.kind == "cross_tenant_access" {
                    found.push((
                        Invariant::CrossTenantAccess,
                        format!(
                            "{tenant}: {} {} of {} ({})",
                            e.principal,
                            e.event.action,
                            e.event.resource,
                            e.event.target_tenant.unwrap_or_default()
                        ),
                    ));
                }
            }
            // The runs since the last check: the newest of the index (read
            // by pages until one reaches a judged run, see [`FIRST_PAGE`]),
            // the ones still open at the last check, and the run ids of
            // recent traces (a trace without a run is a drill or a bug).
            // Bounded per check, so a long soak's checks do not grow with it.
            let mut runs: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut limit = FIRST_PAGE;
            loop {
                let page = self.store.run_records(&c, false, limit).await.map_err(infra("STORE_UNAVAILABLE"))?;
                let more = page.len() as i64 == limit && limit < RECENT_RUNS;
                let reached = page.iter().any(|r| self.checked.contains(&r.run_id));
                for r in page {
                    runs.insert(r.run_id, Some(r.status));
                }
                if reached || !more {
                    break;
                }
                limit = (limit * 4).min(RECENT_RUNS);
            }
            for id in self.open_runs.remove(tenant).unwrap_or_default() {
                if let Some(r) = self.store.run_record(&c, &id).await.map_err(infra("STORE_UNAVAILABLE"))? {
                    runs.insert(r.run_id, Some(r.status));
                }
            }
            let since = self.last_check - chrono::Duration::hours(1);
            for id in self.store.trace_run_ids_since(&c, since).await.map_err(infra("STORE_UNAVAILABLE"))? {
                runs.entry(id).or_insert(None);
            }
            for (run_id, status) in runs {
                if self.checked.contains(&run_id) {
                    continue;
                }
                let trace = self.store.trace(&c, &run_id).await.map_err(infra("STORE_UNAVAILABLE"))?;
                let terminal = status.as_deref().and_then(RunStatus::parse).is_some_and(|s| s.is_terminal());
                if status.is_some() && trace.first().map(|t| t.kind) != Some(RecordKind::RunStart) {
                    found.push((Invariant::UntracedRun, format!("{tenant}: run {run_id} has no trace")));
                } else if terminal && !trace.iter().any(|t| t.kind == RecordKind::RunEnd) {
                    found.push((Invariant::UntracedRun, format!("{tenant}: run {run_id} ended without run_end")));
                }
                let text = serde_json::to_string(&trace).unwrap_or_default();
                if let Some(s) = self.planted.iter().find(|s| text.contains(s.as_str())) {
                    let what = if s == PLANTED_CARD { "a card number" } else { "a secret" };
                    found.push((Invariant::SecretInTrace, format!("{tenant}: the trace of {run_id} holds {what}")));
                }
                // The run's approved tools, read once per run (its own
                // requests, by index: not the tenant's history).
                let mut approved: Option<Vec<String>> = None;
                for call in trace.iter().filter(|t| t.kind == RecordKind::ToolCall && t.output.is_some()) {
                    let (Some(tool), Some(input)) = (call.tool.as_deref(), call.input.as_ref()) else { continue };
                    let (name, version) = tool.split_once('@').unwrap_or((tool, "1"));
                    let financial = self
                        .worker
                        .exec
                        .registry()
                        .lookup(name, version)
                        .is_ok_and(|contract| contract.side_effect == SideEffect::Financial);
                    if !financial || self.rules.required(name, version, SideEffect::Financial, input).is_none() {
                        continue;
                    }
                    if approved.is_none() {
                        let list = self.store.hitl_of_run(&c, &run_id).await.map_err(infra("STORE_UNAVAILABLE"))?;
                        approved = Some(
                            list.into_iter().filter(|a| a.status == ApprovalState::Approved).map(|a| a.tool).collect(),
                        );
                    }
                    let approvals = approved.as_deref().unwrap_or_default();
                    if !approvals.iter().any(|t| t.split('@').next() == Some(name)) {
                        found.push((
                            Invariant::UnapprovedFinancialStep,
                            format!("{tenant}: {tool} ran in {run_id} under an approval rule, without an approval"),
                        ));
                    }
                }
                if terminal || status.is_none() {
                    self.checked.insert(run_id);
                } else {
                    self.open_runs.entry(tenant.clone()).or_default().insert(run_id);
                }
            }
        }
        self.last_check = self.now();
        // The monitors read the fakes' state, never their request logs; and
        // objects older than any run that could still touch them are
        // dropped (nothing is in flight between deliveries).
        let cutoff = std::time::SystemTime::from(self.now() - FAKE_RETENTION);
        forget(&self.fakes, &self.llm, cutoff).await;
        Ok(found)
    }
}

/// Empty the fakes' request logs and drop their objects made before
/// `cutoff`.
async fn forget(fakes: &Fakes, llm: &LlmFake, cutoff: std::time::SystemTime) {
    fakes.stripe.forget_requests().await;
    fakes.shopify.forget_requests().await;
    fakes.printful.forget_requests().await;
    fakes.sendgrid.forget_requests().await;
    llm.forget_requests().await;
    fakes.stripe.forget_before(cutoff);
    fakes.shopify.forget_before(cutoff);
    fakes.printful.forget_before(cutoff);
    fakes.sendgrid.forget_before(cutoff);
    llm.forget_before(cutoff);
}

/// Side effects the fakes saw twice for one intent.
fn duplicate_side_effects(fakes: &Fakes, found: &mut Vec<(Invariant, String)>) {
    let mut count = |what: &str, keys: Vec<String>| {
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for k in keys.into_iter().filter(|k| !k.is_empty()) {
            *seen.entry(k).or_default() += 1;
        }
        for (k, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
            found.push((Invariant::DuplicateSideEffect, format!("{what} {k} happened {n} times")));
        }
    };
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    // Each fake's state is read in place, not copied: the pruned window
    // still holds two virtual days of objects at every check.
    count("capture of", fakes.stripe.with_state(|st| st.captures_iter().map(|c| s(&c["id"])).collect()));
    count("refund of", fakes.stripe.with_state(|st| st.refunds_iter().map(|r| s(&r["payment_intent"])).collect()));
    count(
        "Printful order for",
        fakes.printful.with_state(|st| st.orders_iter().map(|o| s(&o["external_id"])).collect()),
    );
    count(
        "mail",
        fakes.sendgrid.with_state(|st| {
            st.sent_iter()
                .filter(|m| m.template_id.as_deref() != Some("daily-closeout"))
                .map(|m| format!("{} to {}", m.template_id.clone().unwrap_or_default(), m.to.join(",")))
                .collect()
        }),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::golden::Setup;
    use crate::golden::runner::setup;

    /// The fakes and the LLM fake on one clock the test moves (as the soak's).
    async fn fakes_on(clock: &Arc<Mutex<SystemTime>>) -> (Fakes, LlmFake) {
        let fakes = Fakes::start().await;
        let llm = LlmFake::start_loopback().await;
        let read = |c: &Arc<Mutex<SystemTime>>| {
            let c = c.clone();
            move || *c.lock().unwrap()
        };
        fakes.set_clock(read(clock));
        llm.set_clock(read(clock));
        (fakes, llm)
    }

    fn advance(clock: &Mutex<SystemTime>, by: chrono::Duration) {
        let mut t = clock.lock().unwrap();
        *t += by.to_std().unwrap();
    }

    async fn refund(fakes: &Fakes, pi: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/refunds", fakes.stripe.uri()))
            .bearer_auth("sk_test_soak")
            .form(&[("payment_intent", pi), ("amount", "100")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    fn duplicates(fakes: &Fakes) -> Vec<String> {
        let mut found = Vec::new();
        duplicate_side_effects(fakes, &mut found);
        assert!(found.iter().all(|(i, _)| *i == Invariant::DuplicateSideEffect));
        found.into_iter().map(|(_, d)| d).collect()
    }

    #[tokio::test]
    async fn soak_a_fault_or_reply_a_delivery_left_unused_does_not_reach_the_next() {
        let clock = Arc::new(Mutex::new(SystemTime::now()));
        let (fakes, llm) = fakes_on(&clock).await;
        let seed = Setup { captured_payments: vec![4000], ..Setup::default() };
        // A delivery planned a Printful 500 and a model reply, and its run
        // used neither (say its run already existed on a resume).
        fakes.printful.inject_times(Fault::Status500, 1);
        fakes.stripe.inject_times(Fault::Status500, 1);
        llm.script("{\"intent\":\"wismo\"}");
        discard_leftovers(&fakes, &llm);
        assert_eq!(fakes.printful.pending_faults() + fakes.stripe.pending_faults() + fakes.shopify.pending_faults(), 0);
        assert_eq!(llm.pending(), 0);
        // The next delivery's seeding reaches the fakes unharmed.
        setup(&fakes, &seed).await.unwrap();
        assert_eq!(fakes.stripe.captures().len(), 1);
        // Without the discard, the leftover fault fails that seeding.
        fakes.stripe.inject_times(Fault::Status500, 1);
        assert!(setup(&fakes, &seed).await.is_err(), "a leftover fault meets the seeding");
    }

    #[tokio::test]
    async fn soak_pruning_bounds_the_fakes_state_and_a_duplicate_is_still_detected() {
        let clock = Arc::new(Mutex::new(SystemTime::from(
            DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z").unwrap().with_timezone(&Utc),
        )));
        let now = |c: &Mutex<SystemTime>| DateTime::<Utc>::from(*c.lock().unwrap());
        let (fakes, llm) = fakes_on(&clock).await;
        let captured = |amounts: Vec<i64>| Setup { captured_payments: amounts, ..Setup::default() };
        // Day 0: an old payment, refunded twice (a duplicate found then).
        setup(&fakes, &captured(vec![4000])).await.unwrap();
        let old = fakes.stripe.captures()[0]["id"].as_str().unwrap().to_owned();
        refund(&fakes, &old).await;
        refund(&fakes, &old).await;
        assert_eq!(duplicates(&fakes), vec![format!("refund of {old} happened 2 times")]);

        // Three days on, a check prunes what is older than the retention.
        advance(&clock, chrono::Duration::days(3));
        setup(&fakes, &captured(vec![5000])).await.unwrap();
        let new = fakes.stripe.captures().last().unwrap()["id"].as_str().unwrap().to_owned();
        forget(&fakes, &llm, SystemTime::from(now(&clock) - FAKE_RETENTION)).await;
        let ids = |v: Vec<Value>| v.iter().map(|p| p["id"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(fakes.stripe.captures()), vec![new.clone()], "the old capture is dropped");
        assert!(fakes.stripe.refunds().is_empty(), "the old refunds are dropped");
        assert_eq!(ids(fakes.stripe.payment_intents()), vec![new.clone()]);
        assert!(duplicates(&fakes).is_empty());

        // A duplicate whose halves straddle a check (and its pruning) is
        // still seen: the first refund is younger than the retention.
        refund(&fakes, &new).await;
        advance(&clock, chrono::Duration::hours(30));
        forget(&fakes, &llm, SystemTime::from(now(&clock) - FAKE_RETENTION)).await;
        assert!(duplicates(&fakes).is_empty(), "one refund is no duplicate");
        refund(&fakes, &new).await;
        forget(&fakes, &llm, SystemTime::from(now(&clock) - FAKE_RETENTION)).await;
        assert_eq!(duplicates(&fakes), vec![format!("refund of {new} happened 2 times")]);
        assert!(fakes.stripe.requests().is_empty(), "the request logs are emptied at each check");
    }
}
