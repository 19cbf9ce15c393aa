//! The event worker of `autobiz serve`: per served tenant, the ordering
//! gate's sweep, then claims of READY events, each starting the workflow
//! whose `trigger` is `SOURCE:TYPE` (or none: SKIPPED) as a durable run
//! through the kernel's `Engine`, the way `autobiz run` does.
//!
//! Exactly once per event: the run id is derived from the event
//! (`evt-` + SHA-256 of source and provider event id), the run index refuses
//! a second registration, and the transcript file is created with
//! `create_new`; a worker that finds either taken records the event as
//! started by the run that exists. Claims are leases: a worker that dies
//! leaves its event PROCESSING until the lease runs out, then another
//! worker (or process) claims it again and finds the run, or starts it.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use autobiz_kernel::assembly::RunnableWorkflow;
use autobiz_kernel::engine::{Engine, RunSpec};
use autobiz_kernel::executor::Executor;
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::ingress::fields::business_fields;
use autobiz_kernel::ingress::{StorePrecondition, StoredEvent};
use autobiz_kernel::llm::LlmClient;
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::store::{EventFinish, RunRecord};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::transcript::TranscriptWriter;
use autobiz_kernel::{ErrorCode, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::App;

/// How a worker runs workflows.
pub struct Worker {
    pub id: String,
    pub exec: Executor,
    pub workflows: BTreeMap<String, RunnableWorkflow>,
    pub config_hash: String,
    pub approvals: StoreApprovals,
    pub transcripts: PathBuf,
    pub poll: Duration,
    pub lease: Duration,
    /// The model client of each workflow with agent steps (none: those
    /// steps fail with `AGENT_LLM_MISSING`).
    pub llm: BTreeMap<String, LlmClient>,
}

/// The run id of the run an event starts.
pub fn run_id_for(event: &StoredEvent) -> String {
    run_id_for_ids(&event.source, &event.provider_event_id)
}

/// The run id of the run the event `(source, provider event id)` starts.
pub fn run_id_for_ids(source: &str, provider_event_id: &str) -> String {
    let digest = Sha256::digest(format!("{source}\0{provider_event_id}").as_bytes());
    format!("evt-{}", &hex::encode(digest)[..24])
}

/// What a workflow sees as `$.event`: the normalized fields, the payload,
/// and `KIND_id` of the entity (`order_id`, `payment_intent_id`).
pub fn workflow_event(event: &StoredEvent) -> Value {
    let mut v = json!({
        "source": event.source,
        "type": event.event_type,
        "event_id": event.provider_event_id,
        "entity_id": event.entity_id,
        "timeout_released": event.timeout_released,
        "payload": event.payload,
    });
    if let Some((kind, id)) = event.entity_id.as_deref().and_then(|e| e.split_once(':')) {
        v[format!("{kind}_id")] = Value::String(id.to_owned());
    }
    // The provider's business fields (the shop's order id, the amount in
    // minor units, ...) win over the entity's id, never over the event's own.
    for (k, field) in business_fields(&event.source, &event.event_type, &event.payload) {
        if !matches!(k.as_str(), "source" | "type" | "event_id" | "entity_id" | "timeout_released" | "payload") {
            v[k] = field;
        }
    }
    v
}

impl Worker {
    /// Work until `stop` turns true: after each pass, wait for a stored
    /// event or the poll interval. The event in hand is finished first.
    pub async fn run(self, app: Arc<App>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let busy = match self.pass(&app).await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(code = e.code().as_str(), "event worker: {e}");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = app.stored.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One pass over the served tenants: sweep held events, then claim and
    /// process up to a batch. Returns how many events it processed.
    pub async fn pass(&self, app: &App) -> Result<usize> {
        let mut done = 0;
        for tenant in &app.tenants {
            let ctx = TenantContext::new(tenant.clone(), Principal::new("worker"), CorrelationId::random());
            app.ingress.sweep(&ctx, &StorePrecondition(app.store.clone())).await?;
            let lease_until = app.store.now()
                + chrono::Duration::from_std(self.lease).unwrap_or_else(|_| chrono::Duration::seconds(60));
            for event in app.store.event_claim(&ctx, &self.id, lease_until, 8).await? {
                self.process(app, &ctx, &event).await?;
                done += 1;
            }
            done += self.resume_decided(app, &ctx).await?;
        }
        Ok(done)
    }

    /// Resume the runs of `ctx`'s tenant that wait for an approval that is
    /// decided by now (approve, deny) or past its deadline (the engine's
    /// gate applies the timeout policy). A run is resumed by the one worker
    /// whose claim moves it from WAITING_APPROVAL to RUNNING.
    pub async fn resume_decided(&self, app: &App, ctx: &TenantContext) -> Result<usize> {
        let now = app.store.now();
        let mut resumed = 0;
        for record in app.store.run_records(ctx, true, 200).await? {
            if record.status != RunStatus::WaitingApproval.as_str() {
                continue;
            }
            let Some(request) = record.waiting_for.as_deref() else { continue };
            let approval = match app.store.hitl_get(ctx, request).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(code = e.code().as_str(), run_id = %record.run_id, "event worker: the run's approval: {e}");
                    continue;
                }
            };
            if approval.status == autobiz_kernel::hitl::ApprovalState::Pending && approval.expires_at > now {
                continue;
            }
            if !self.workflows.contains_key(&record.workflow) || record.config_hash != self.config_hash {
                continue;
            }
            if !app.store.run_claim_resume(ctx, &record.run_id).await? {
                continue;
            }
            // Claimed: a failure to resume leaves it RUNNING, for `autobiz run --resume`.
            if let Err(e) = self.resume(app, ctx, &record).await {
                tracing::warn!(code = e.code().as_str(), run_id = %record.run_id, "event worker: cannot resume: {e}");
            }
            resumed += 1;
        }
        Ok(resumed)
    }

    /// The durable engine of `workflow`'s runs, writing to `transcript`.
    fn engine<'w>(&'w self, app: &'w App, workflow: &str, transcript: &std::path::Path) -> Engine<'w> {
        Engine::new(&self.exec)
            .with_store(&app.store, Some(transcript.display().to_string()))
            .with_approvals(&self.approvals)
            .with_llm(self.llm.get(workflow))
    }

    /// What the engine needs to run `wf` as `run_id` for `ctx`'s tenant.
    fn spec<'w>(
        &self,
        ctx: &TenantContext,
        wf: &'w RunnableWorkflow,
        run_id: &str,
        event: Value,
        pins: Value,
    ) -> RunSpec<'w> {
        RunSpec {
            workflow: &wf.workflow,
            ctx: TenantContext::new(ctx.tenant().clone(), Principal::new(&wf.principal), CorrelationId::random()),
            run_id: run_id.to_owned(),
            bounds: wf.bounds,
            event,
            pins,
            config_hash: self.config_hash.clone(),
        }
    }

    /// Resume the stored run `record` from its last committed step (a run
    /// error is logged: the run's own record says how it ended). The caller
    /// makes sure no other worker runs it: a claim, or a single process
    /// after its restart.
    pub async fn resume(&self, app: &App, ctx: &TenantContext, record: &RunRecord) -> Result<()> {
        let Some(wf) = self.workflows.get(&record.workflow) else {
            return Err(autobiz_kernel::Error::new(
                ErrorCode::InvalidInput,
                format!("run {}: the config has no workflow {}", record.run_id, record.workflow),
            ));
        };
        let Some(path) = record.transcript.as_deref().map(PathBuf::from) else {
            return Err(autobiz_kernel::Error::new(
                ErrorCode::TranscriptIo,
                format!("run {} has no transcript to resume from", record.run_id),
            ));
        };
        let (mut writer, history) = TranscriptWriter::resume(&path)?;
        let engine = self.engine(app, &record.workflow, &path);
        let spec = self.spec(ctx, wf, &record.run_id, record.event.clone(), record.pins.clone());
        tracing::info!(workflow = %record.workflow, run_id = %record.run_id, "event worker: resuming a run");
        match engine.resume(&spec, &history, &mut writer).await {
            Ok(report) => {
                app.outcomes.run_finished(ctx.tenant().as_str(), &record.workflow, report.status, report.cost)
            }
            Err(e) => {
                tracing::warn!(code = e.code().as_str(), run_id = %record.run_id, "event worker: resume failed: {e}");
                self.count_ended(app, ctx, &record.run_id, &record.workflow).await;
            }
        }
        Ok(())
    }

    async fn process(&self, app: &App, ctx: &TenantContext, event: &StoredEvent) -> Result<()> {
        let trigger = format!("{}:{}", event.source, event.event_type);
        let Some((id, wf)) = self.workflows.iter().find(|(_, w)| w.trigger.as_deref() == Some(trigger.as_str())) else {
            app.store.event_finish(ctx, event.id, &self.id, EventFinish::Skipped).await?;
            app.ingress.counters().event_processed_total.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let run_id = run_id_for(event);
        let finish = match self.start(app, ctx, id, wf, &run_id, event).await {
            Ok(true) => {
                app.ingress.counters().workflow_started_total.fetch_add(1, Ordering::Relaxed);
                EventFinish::Started { workflow: id, run_id: &run_id }
            }
            Ok(false) => EventFinish::Started { workflow: id, run_id: &run_id },
            Err(e) => {
                tracing::warn!(code = e.code().as_str(), run_id = %run_id, "event worker: the run did not start: {e}");
                let error = format!("{}: {}", e.code(), e.message());
                app.store.event_finish(ctx, event.id, &self.id, EventFinish::Failed { error: &error }).await?;
                app.ingress.counters().event_processed_total.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        app.store.event_finish(ctx, event.id, &self.id, finish).await?;
        app.ingress.counters().event_processed_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Start the run; `Ok(false)` when it had already been started.
    async fn start(
        &self,
        app: &App,
        ctx: &TenantContext,
        workflow_id: &str,
        wf: &RunnableWorkflow,
        run_id: &str,
        event: &StoredEvent,
    ) -> Result<bool> {
        if app.store.run_record(ctx, run_id).await?.is_some() {
            return Ok(false);
        }
        let path = self.transcripts.join(format!("{run_id}.jsonl"));
        std::fs::create_dir_all(&self.transcripts).map_err(|e| {
            autobiz_kernel::Error::new(
                ErrorCode::TranscriptIo,
                format!("cannot create {}: {e}", self.transcripts.display()),
            )
        })?;
        let file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(autobiz_kernel::Error::new(
                    ErrorCode::TranscriptIo,
                    format!("cannot create {}: {e}", path.display()),
                ));
            }
        };
        let mut writer = TranscriptWriter::to(Box::new(std::io::BufWriter::new(file)));
        let engine = self.engine(app, workflow_id, &path);
        let pins = self.llm.get(workflow_id).map_or_else(|| json!({}), |l| l.pin().as_pins());
        let spec = self.spec(ctx, wf, run_id, workflow_event(event), pins);
        tracing::info!(workflow = workflow_id, run_id, "event worker: starting a run");
        match engine.run(&spec, &mut writer).await {
            Ok(report) => {
                app.outcomes.run_finished(ctx.tenant().as_str(), workflow_id, report.status, report.cost);
                Ok(true)
            }
            Err(e) => match app.store.run_record(ctx, run_id).await? {
                // Registered by another worker between our check and its insert.
                Some(_) if e.code() == ErrorCode::StateConflict => Ok(false),
                // The run is registered and ended in error: it started.
                Some(record) => {
                    tracing::warn!(code = e.code().as_str(), run_id, "event worker: the run ended with an error: {e}");
                    if let Some(status) = RunStatus::parse(&record.status) {
                        app.outcomes.run_ended(ctx.tenant().as_str(), workflow_id, status);
                    }
                    Ok(true)
                }
                None => Err(e),
            },
        }
    }

    /// Count a run the engine returned an error for, by the status its
    /// record holds (terminal ones only; its cost is not known here).
    async fn count_ended(&self, app: &App, ctx: &TenantContext, run_id: &str, workflow: &str) {
        if let Ok(Some(record)) = app.store.run_record(ctx, run_id).await
            && let Some(status) = RunStatus::parse(&record.status)
        {
            app.outcomes.run_ended(ctx.tenant().as_str(), workflow, status);
        }
    }
}
