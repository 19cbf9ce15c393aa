//! Durable runs on both backends: state versioned step by step, side
//! effects exactly once across crashes and duplicate triggers, receipts in
//! the store, and transcripts that replay (INV-05, INV-06, P1-T11..T15).
//!
//! A crash is simulated in-process at every hook a run passes (a tool
//! entered, a provider effect made, a trace record written): the run's
//! future is dropped there, as a `kill -9` would stop it, and a fresh
//! executor and engine resume the run from the store. The CLI test
//! `tests/crash.rs` does the same with a real child process and SIGKILL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autobiz_kernel::bounds::{Bounds, LoopPolicy};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::engine::{ApprovalPolicy, Engine, RunSpec, Verdict};
use autobiz_kernel::executor::{CallContext, Durability, Executor, Tool, ToolOutput};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::replay::{ReplayOutcome, replay};
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{TraceRecord, TraceSink};
use autobiz_kernel::transcript::{Transcript, TranscriptWriter};
use autobiz_kernel::workflow::{Step, Workflow};
use autobiz_testkit::{TestDatabase, both};
use serde_json::{Value, json};

const CONFIG: &str = "cfg";

fn ctx() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:shop"), CorrelationId::new("corr-durable"))
}

async fn store(db: &TestDatabase) -> Store {
    let url: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&url).await.unwrap().migrate().await.unwrap();
    let store = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
    store.register_tenant(&ctx(), "Acme").await.unwrap();
    store
}

/// Where a simulated crash stops the run: the n-th hook passed blocks
/// forever, and the test drops the run there.
#[derive(Default)]
struct Crash {
    at: Mutex<Option<usize>>,
    passed: AtomicUsize,
    hit: tokio::sync::Notify,
}

impl Crash {
    async fn hook(&self) {
        let n = self.passed.fetch_add(1, Ordering::SeqCst) + 1;
        if *self.at.lock().unwrap() == Some(n) {
            self.hit.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

/// A provider that deduplicates by idempotency key, as Stripe does: the
/// same key returns the first response and makes no second effect.
#[derive(Default)]
struct Provider {
    effects: Mutex<BTreeMap<String, Value>>,
    requests: AtomicUsize,
}

struct ProviderTool {
    name: &'static str,
    provider: Arc<Provider>,
    crash: Arc<Crash>,
}

#[async_trait::async_trait]
impl Tool for ProviderTool {
    async fn call(&self, call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        self.crash.hook().await;
        self.provider.requests.fetch_add(1, Ordering::SeqCst);
        let key = call.idempotency_key.clone().expect("a durable side effect carries its key");
        let response = {
            let mut effects = self.provider.effects.lock().unwrap();
            let n = effects.len() + 1;
            effects
                .entry(key)
                .or_insert_with(|| json!({"id": format!("{}_{n}", self.name), "amount": input["amount"], "currency": "usd", "status": "succeeded"}))
                .clone()
        };
        // The effect is made; the answer has not reached the kernel yet.
        self.crash.hook().await;
        Ok(ToolOutput { value: response, tokens: 0, provider_calls: 1 })
    }
}

struct ReadTool;

#[async_trait::async_trait]
impl Tool for ReadTool {
    async fn call(&self, _call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        Ok(ToolOutput::new(json!({"id": input["order_id"], "total": 4200})))
    }
}

/// Persists to the store, passing a crash hook first.
struct HookedSink(Store, Arc<Crash>);

#[async_trait::async_trait]
impl TraceSink for HookedSink {
    async fn append(&self, ctx: &TenantContext, record: &TraceRecord) -> autobiz_kernel::Result<()> {
        self.1.hook().await;
        self.0.append_trace(ctx, record).await
    }
}

fn executor(store: &Store, provider: &Arc<Provider>, crash: &Arc<Crash>) -> Executor {
    executor_with(store, provider, crash, false)
}

/// `folded`: the store itself is the trace sink (no crash hook on trace
/// writes), so a step's record, result, receipt and state version commit
/// in one transaction, as `autobiz run` and the golden runner do.
fn executor_with(store: &Store, provider: &Arc<Provider>, crash: &Arc<Crash>, folded: bool) -> Executor {
    let mut r = ToolRegistry::new();
    let obj = |props: Value| json!({"type": "object", "properties": props});
    for (name, side, input) in [
        ("order.get", SideEffect::Read, obj(json!({"order_id": {"type": "string"}}))),
        (
            "pay.capture",
            SideEffect::Financial,
            obj(json!({"order_id": {"type": "string"}, "amount": {"type": "integer"}, "currency": {"type": "string"}})),
        ),
        ("ship.create", SideEffect::Write, obj(json!({"order_id": {"type": "string"}}))),
        ("mail.send", SideEffect::Notify, obj(json!({"order_id": {"type": "string"}}))),
        ("ship.broken", SideEffect::Write, obj(json!({"order_id": {"type": "string"}}))),
        (
            "pay.refund",
            SideEffect::Financial,
            obj(
                json!({"payment": {"type": "string"}, "order_id": {"type": "string"}, "amount": {"type": "integer"}, "currency": {"type": "string"}}),
            ),
        ),
    ] {
        let c = ToolContract::new(
            name,
            "1",
            side,
            &input,
            &json!({"type": "object"}),
            Duration::from_secs(5),
            PriceModel::from_usd(0.0001, 0.0),
        )
        .unwrap();
        r.register(c).unwrap();
    }
    let perms = PermissionEnforcer::new(vec![Scope::new(
        "agent:shop",
        &["order.get", "pay.capture", "ship.create", "mail.send", "ship.broken", "pay.refund"],
    )]);
    let sink: Arc<dyn TraceSink> =
        if folded { Arc::new(store.clone()) } else { Arc::new(HookedSink(store.clone(), crash.clone())) };
    let mut exec =
        Executor::new(r, perms, LoopPolicy::default(), RedactionPolicy::default(), sink, Arc::new(SystemClock))
            .with_durability(Durability { store: store.clone(), window: Duration::from_secs(86_400) });
    exec.bind("order.get", "1", Arc::new(ReadTool)).unwrap();
    for name in ["pay.capture", "ship.create", "mail.send", "pay.refund"] {
        let tool = ProviderTool { name, provider: provider.clone(), crash: crash.clone() };
        exec.bind(name, "1", Arc::new(tool)).unwrap();
    }
    exec.bind("ship.broken", "1", Arc::new(BrokenTool(crash.clone()))).unwrap();
    exec
}

/// A provider that always fails (after a crash hook), to make a run
/// compensate.
struct BrokenTool(Arc<Crash>);

#[async_trait::async_trait]
impl Tool for BrokenTool {
    async fn call(&self, _call: CallContext, _input: Value) -> autobiz_kernel::Result<ToolOutput> {
        self.0.hook().await;
        Err(autobiz_kernel::Error::new(autobiz_kernel::ErrorCode::ProviderUnavailable, "the warehouse is down"))
    }
}

/// No HITL rule matches: every call is approved by policy.
struct NoRules;

#[async_trait::async_trait]
impl ApprovalPolicy for NoRules {
    async fn check(
        &self,
        _ctx: &TenantContext,
        _run: &str,
        _call: &autobiz_kernel::run::StepCall,
        _contract: &ToolContract,
    ) -> autobiz_kernel::Result<Verdict> {
        Ok(Verdict::NotRequired)
    }
}

fn engine<'a>(exec: &'a Executor, store: &'a Store) -> Engine<'a> {
    Engine::new(exec).with_store(store, None).with_approvals(&NoRules)
}

fn workflow() -> Workflow {
    let step = |id: &str, tool: &str, input: Value| Step {
        id: id.into(),
        tool: tool.into(),
        version: "1".into(),
        input,
        next: None,
        on_error: None,
        agent: None,
        compensate_with: None,
        retry: None,
    };
    Workflow {
        id: "WF01".into(),
        name: "fulfil".into(),
        steps: vec![
            step("fetch", "order.get", json!({"order_id": "$.event.order_id"})),
            // The input names the order: the idempotency key is over the input,
            // so two orders of the same amount are two captures.
            step(
                "capture",
                "pay.capture",
                json!({"order_id": "$.event.order_id", "amount": "$.fetch.total", "currency": "usd"}),
            ),
            step("ship", "ship.create", json!({"order_id": "$.event.order_id"})),
            step("mail", "mail.send", json!({"order_id": "$.event.order_id"})),
        ],
    }
}

fn spec<'a>(wf: &'a Workflow, run_id: &str, order: &str) -> RunSpec<'a> {
    RunSpec {
        workflow: wf,
        ctx: ctx(),
        run_id: run_id.into(),
        bounds: Bounds { max_steps: 20, max_wall_time: Duration::from_secs(30), max_tokens: 0, max_tool_calls: 20 },
        event: json!({"order_id": order}),
        pins: json!({}),
        config_hash: CONFIG.into(),
    }
}

/// Run the workflow without a crash.
async fn durable_run_commits_every_step_and_replays(db: TestDatabase) {
    let store = store(&db).await;
    let (provider, crash) = (Arc::new(Provider::default()), Arc::new(Crash::default()));
    let exec = executor(&store, &provider, &crash);
    let wf = workflow();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    let mut w = TranscriptWriter::create(&path).unwrap();
    let report = engine(&exec, &store).run(&spec(&wf, "run-1", "1001"), &mut w).await.unwrap();
    drop(w);
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(provider.effects.lock().unwrap().len(), 3);
    let receipts = store.receipts(&ctx(), "run-1").await.unwrap();
    assert_eq!(receipts.len(), 3, "one receipt per side effect");
    let capture = receipts.iter().find(|r| r.tool == "pay.capture").unwrap();
    assert_eq!((capture.amount_minor, capture.currency.as_deref()), (Some(4200), Some("USD")));
    let entity = autobiz_kernel::tenant::EntityId::new(ctx().tenant().clone(), "run", "run-1").unwrap();
    let history = store.state_history(&ctx(), &entity).await.unwrap();
    assert_eq!(history.len(), 5, "the initial state and one version per step");
    let record = store.run_record(&ctx(), "run-1").await.unwrap().unwrap();
    assert_eq!(record.status, "COMPLETED");
    let t = Transcript::read(&path).unwrap();
    let ReplayOutcome::Identical(r) = replay(&t, &wf, exec.registry(), CONFIG).unwrap() else { panic!("diverged") };
    assert_eq!(r.state_sha256, report.state_sha256);
    assert_eq!(r.receipts, 3);
}
both!(p1_t14_durable_run_commits_every_step_and_replays, durable_run_commits_every_step_and_replays);

/// INV-05: a second run for the same order (a duplicate trigger) replays
/// every stored result and makes no new effect.
async fn duplicate_trigger_makes_no_second_effect(db: TestDatabase) {
    let store = store(&db).await;
    let (provider, crash) = (Arc::new(Provider::default()), Arc::new(Crash::default()));
    let exec = executor(&store, &provider, &crash);
    let wf = workflow();
    let engine = engine(&exec, &store);
    let first = engine.run(&spec(&wf, "run-a", "1001"), &mut TranscriptWriter::memory()).await.unwrap();
    let second = engine.run(&spec(&wf, "run-b", "1001"), &mut TranscriptWriter::memory()).await.unwrap();
    assert_eq!((first.status, second.status), (RunStatus::Completed, RunStatus::Completed), "{:?}", first.error);
    assert_eq!(provider.requests.load(Ordering::SeqCst), 3, "the duplicate run called no provider");
    assert_eq!(first.outputs, second.outputs, "the duplicate got the stored results");
    assert!(second.receipts.is_empty(), "no effect, no receipt");
    assert_eq!(store.receipts(&ctx(), "run-b").await.unwrap().len(), 0);
    // Another order is another set of effects.
    engine.run(&spec(&wf, "run-c", "1002"), &mut TranscriptWriter::memory()).await.unwrap();
    assert_eq!(provider.effects.lock().unwrap().len(), 6);
}
both!(inv05_duplicate_trigger_makes_no_second_effect, duplicate_trigger_makes_no_second_effect);

/// Run `wf` for `order` until crash point `k`, drop it there (the crash),
/// then resume it from the store to its end (`folded`: see `executor_with`).
async fn crash_then_resume(
    store: &Store,
    wf: &Workflow,
    run_id: &str,
    order: &str,
    k: usize,
    path: &std::path::Path,
    folded: bool,
) -> (Arc<Provider>, autobiz_kernel::engine::RunReport, Executor) {
    let provider = Arc::new(Provider::default());
    let crash = Arc::new(Crash::default());
    *crash.at.lock().unwrap() = Some(k);
    {
        let exec = executor_with(store, &provider, &crash, folded);
        let s = spec(wf, run_id, order);
        let mut w = TranscriptWriter::create(path).unwrap();
        let engine = engine(&exec, store);
        tokio::select! {
            r = engine.run(&s, &mut w) => panic!("crash point {k} was not reached: {r:?}"),
            () = crash.hit.notified() => {}
        }
        // Dropping the future here is the crash.
    }
    let exec = executor_with(store, &provider, &Arc::new(Crash::default()), folded);
    let s = spec(wf, run_id, order);
    let (mut w, history) = TranscriptWriter::resume(path).unwrap();
    let report = engine(&exec, store).resume(&s, &history, &mut w).await.unwrap();
    (provider, report, exec)
}

/// Crash `workflow()` at point `k`, resume, and check: the run completes,
/// the provider made each effect once, the store holds one receipt per
/// effect and the run's status, and the transcript (crash included) replays.
async fn crash_then_complete(
    store: &Store,
    wf: &Workflow,
    run_id: &str,
    order: &str,
    k: usize,
    path: &std::path::Path,
    folded: bool,
) {
    let (provider, report, exec) = crash_then_resume(store, wf, run_id, order, k, path, folded).await;
    assert_eq!(report.status, RunStatus::Completed, "crash point {k}");
    assert_eq!(provider.effects.lock().unwrap().len(), 3, "crash point {k}: an effect was duplicated or lost");
    let receipts = store.receipts(&ctx(), run_id).await.unwrap();
    assert_eq!(receipts.len(), 3, "crash point {k}: receipts {receipts:?}");
    assert_eq!(store.run_record(&ctx(), run_id).await.unwrap().unwrap().status, "COMPLETED");
    let t = Transcript::read(path).unwrap();
    match replay(&t, wf, exec.registry(), CONFIG).unwrap() {
        ReplayOutcome::Identical(r) => assert_eq!(r.state_sha256, report.state_sha256, "crash point {k}"),
        ReplayOutcome::Diverged(d) => panic!("crash point {k}: {d:?}"),
    }
}

/// Crash at every hook of the run, resume, and check: the run completes,
/// the provider made each effect once, the store holds one receipt per
/// effect, and the transcript (crash included) replays.
async fn crash_at_every_point_then_resume(db: TestDatabase) {
    crash_everywhere(db, false).await;
}
both!(p1_t12_crash_at_every_point_then_resume, crash_at_every_point_then_resume);

/// The same with the store as the trace sink: each step's record, result,
/// receipt and state version commit in one transaction (and a run's start
/// and end in one each). A crash before or after each provider effect,
/// then resume: each effect once, one receipt each, the transcript replays.
async fn crash_with_one_commit_per_step_then_resume(db: TestDatabase) {
    crash_everywhere(db, true).await;
}
both!(p1_t12_crash_with_one_commit_per_step_then_resume, crash_with_one_commit_per_step_then_resume);

/// Count the hooks of an uncrashed run, then crash at each and resume.
async fn crash_everywhere(db: TestDatabase, folded: bool) {
    let store = store(&db).await;
    let wf = workflow();
    let dir = tempfile::tempdir().unwrap();
    let hooks = {
        let (provider, crash) = (Arc::new(Provider::default()), Arc::new(Crash::default()));
        let exec = executor_with(&store, &provider, &crash, folded);
        let s = spec(&wf, "count", "count");
        let report = engine(&exec, &store).run(&s, &mut TranscriptWriter::memory()).await.unwrap();
        assert_eq!(report.status, RunStatus::Completed);
        let entity = autobiz_kernel::tenant::EntityId::new(ctx().tenant().clone(), "run", "count").unwrap();
        assert_eq!(store.state_history(&ctx(), &entity).await.unwrap().len(), 5);
        crash.passed.load(Ordering::SeqCst)
    };
    if folded {
        assert_eq!(hooks, 6, "two hooks (before and after the effect) per side effect");
    } else {
        assert!(hooks >= 12, "{hooks} crash points");
    }
    for k in 1..=hooks {
        let run_id = format!("run-{folded}-k{k}");
        let order = format!("o-{folded}-{k}");
        let path = dir.path().join(format!("{run_id}.jsonl"));
        crash_then_complete(&store, &wf, &run_id, &order, k, &path, folded).await;
    }
}

/// A shipment whose call writes a version of its own run's state first, as
/// a second process driving the same run would.
struct RacingTool {
    store: Store,
    provider: Arc<Provider>,
}

#[async_trait::async_trait]
impl Tool for RacingTool {
    async fn call(&self, call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        let entity = autobiz_kernel::tenant::EntityId::new(ctx().tenant().clone(), "run", &call.run_id).unwrap();
        let current = self.store.state(&ctx(), &entity).await.unwrap().unwrap();
        let patch: autobiz_kernel::state::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/raced", "value": true}])).unwrap();
        self.store.apply_patch(&ctx(), &entity, current.version, &patch).await.unwrap();
        let key = call.idempotency_key.clone().expect("a durable side effect carries its key");
        self.provider.effects.lock().unwrap().insert(key, json!({"id": "ship_raced", "order": input["order_id"]}));
        Ok(ToolOutput { value: json!({"id": "ship_raced", "status": "succeeded"}), tokens: 0, provider_calls: 1 })
    }
}

/// STATE_CONFLICT after a side effect: another writer moved the run's state
/// while the shipment was being made. The run stops with the conflict and
/// writes no state over the other's, and the shipment's receipt is kept
/// (the effect happened). Folded on PostgreSQL, the state version does
/// nothing in the step's one transaction and the result, receipt and
/// record commit all the same; folded on SQLite (a batched transaction),
/// the version's guard fails that commit and the engine writes the result,
/// receipt and record apart; unfolded, the receipt was committed before
/// the state write.
async fn state_conflict_after_an_effect_keeps_its_receipt(db: TestDatabase) {
    let store = store(&db).await;
    let wf = workflow();
    for folded in [true, false] {
        let (provider, crash) = (Arc::new(Provider::default()), Arc::new(Crash::default()));
        let mut exec = executor_with(&store, &provider, &crash, folded);
        let racing = RacingTool { store: store.clone(), provider: provider.clone() };
        exec.bind("ship.create", "1", Arc::new(racing)).unwrap();
        let run_id = format!("race-{folded}");
        let err = engine(&exec, &store)
            .run(&spec(&wf, &run_id, &format!("r-{folded}")), &mut TranscriptWriter::memory())
            .await
            .unwrap_err();
        assert_eq!(err.code(), autobiz_kernel::ErrorCode::StateConflict, "folded {folded}: {}", err.message());
        let receipts = store.receipts(&ctx(), &run_id).await.unwrap();
        let tools: Vec<&str> = receipts.iter().map(|r| r.tool.as_str()).collect();
        assert_eq!(tools, ["pay.capture", "ship.create"], "folded {folded}: the shipment's receipt is kept");
        let entity = autobiz_kernel::tenant::EntityId::new(ctx().tenant().clone(), "run", &run_id).unwrap();
        let last = store.state(&ctx(), &entity).await.unwrap().unwrap();
        assert_eq!(last.state["raced"], json!(true), "folded {folded}: the other writer's version stands");
        assert!(last.state["outputs"].get("ship").is_none(), "folded {folded}: nothing written over it");
        let trace = store.trace(&ctx(), &run_id).await.unwrap();
        assert!(
            trace.iter().any(|r| r.tool.as_deref() == Some("ship.create@1") && r.output.is_some()),
            "folded {folded}: the shipment's trace record is kept"
        );
    }
}
both!(p1_t13_state_conflict_after_an_effect_keeps_its_receipt, state_conflict_after_an_effect_keeps_its_receipt);

/// capture (compensated by refund) -> a shipment that always fails.
fn compensating_workflow() -> Workflow {
    let mut wf = workflow();
    wf.steps[1].compensate_with = Some("refund".into());
    wf.steps[2].tool = "ship.broken".into();
    wf.steps[3].next = Some("end".into());
    let mut refund = wf.steps[1].clone();
    refund.id = "refund".into();
    refund.tool = "pay.refund".into();
    refund.compensate_with = None;
    refund.next = Some("end".into());
    refund.input = json!({"payment": "$.capture.id", "order_id": "$.event.order_id", "amount": "$.capture.amount", "currency": "usd"});
    wf.steps.push(refund);
    wf
}

/// Crash at every point of a run that compensates, resume: the refund is
/// made exactly once with its receipt, the run ends FAILED with the
/// shipment's failure, and the transcript replays.
async fn crash_while_compensating_then_resume(db: TestDatabase) {
    let store = store(&db).await;
    let wf = compensating_workflow();
    let dir = tempfile::tempdir().unwrap();
    let hooks = {
        let (provider, crash) = (Arc::new(Provider::default()), Arc::new(Crash::default()));
        let exec = executor(&store, &provider, &crash);
        let report =
            engine(&exec, &store).run(&spec(&wf, "count", "count"), &mut TranscriptWriter::memory()).await.unwrap();
        assert_eq!((report.status, report.path.last().map(String::as_str)), (RunStatus::Failed, Some("refund")));
        crash.passed.load(Ordering::SeqCst)
    };
    for k in 1..=hooks {
        let run_id = format!("comp-k{k}");
        let order = format!("c{k}");
        let path = dir.path().join(format!("{run_id}.jsonl"));
        let (provider, report, exec) = crash_then_resume(&store, &wf, &run_id, &order, k, &path, false).await;
        assert_eq!(
            (report.status, report.termination),
            (RunStatus::Failed, Some(autobiz_kernel::bounds::Termination::ToolFailed)),
            "crash point {k}"
        );
        let effects = provider.effects.lock().unwrap().clone();
        assert_eq!(effects.len(), 2, "crash point {k}: capture and refund once each: {effects:?}");
        let receipts = store.receipts(&ctx(), &run_id).await.unwrap();
        let tools: Vec<&str> = receipts.iter().map(|r| r.tool.as_str()).collect();
        assert_eq!(tools, ["pay.capture", "pay.refund"], "crash point {k}");
        let t = Transcript::read(&path).unwrap();
        match replay(&t, &wf, exec.registry(), CONFIG).unwrap() {
            ReplayOutcome::Identical(r) => assert_eq!(r.state_sha256, report.state_sha256, "crash point {k}"),
            ReplayOutcome::Diverged(d) => panic!("crash point {k}: {d:?}"),
        }
    }
}
both!(p1_t27_crash_while_compensating_then_resume, crash_while_compensating_then_resume);
