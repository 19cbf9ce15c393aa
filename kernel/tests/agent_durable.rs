//! Agent steps in durable runs, on both backends, against the LLM fake:
//! every model turn is in the transcript and the trace, each proposal goes
//! through the executor with its own idempotency key and receipt, a
//! proposal that needs a human pauses the run, a resumed run (after a crash
//! or an approval) reuses the recorded turns instead of asking the model
//! again and duplicates no side effect, and replay re-executes the step from
//! the recorded replies with no model at all (INV-05, INV-06, INV-07,
//! P1-T12, P1-T15).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autobiz_fakes::LlmFake;
use autobiz_kernel::assembly::{Assembly, RunnableWorkflow};
use autobiz_kernel::bounds::Termination;
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::engine::{Engine, RunSpec};
use autobiz_kernel::executor::{CallContext, Durability, Executor, Tool, ToolOutput};
use autobiz_kernel::hitl::gate::StoreApprovals;
use autobiz_kernel::hitl::{Decision, HitlRules};
use autobiz_kernel::llm::{Endpoint, LlmClient, LlmConfig, LlmSettings, PriceTable, PromptTemplate};
use autobiz_kernel::providers::SandboxGuard;
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::replay::{ReplayOutcome, replay};
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::RecordKind;
use autobiz_kernel::transcript::{Entry, Transcript, TranscriptWriter};
use autobiz_testkit::{TestDatabase, both};
use secrecy::SecretString;
use serde_json::{Value, json};

const PROMPT: &str = "You triage orders. Tools: {{tools}}. Message: {{message}}. Reply with one JSON object.";

/// WF01: `triage` is an agent step allowed `order.lookup` (READ) and
/// `order.tag` (WRITE; a human approves tags named "vip"); `reply` mails
/// the agent's answer.
fn config_text() -> String {
    format!(
        r#"[business]
name = "durable agent test"

[bounds]
max_steps = 12
max_wall_time_ms = 30000
max_tokens = 100000
max_tool_calls = 10

[[tools]]
name = "order.lookup"
version = "1"
side_effect = "READ"
timeout_ms = 5000
input_schema = {{ type = "object", required = ["order_id"], properties = {{ order_id = {{ type = "integer" }} }} }}
output_schema = {{ type = "object" }}

[[tools]]
name = "order.tag"
version = "1"
side_effect = "WRITE"
timeout_ms = 5000
input_schema = {{ type = "object", required = ["order_id", "tag"], properties = {{ order_id = {{ type = "integer" }}, tag = {{ type = "string" }} }} }}
output_schema = {{ type = "object" }}

[[tools]]
name = "refund.issue"
version = "1"
side_effect = "READ"
timeout_ms = 5000
input_schema = {{ type = "object", required = ["order_id"], properties = {{ order_id = {{ type = "integer" }} }} }}
output_schema = {{ type = "object" }}

[[tools]]
name = "mail.send"
version = "1"
side_effect = "NOTIFY"
timeout_ms = 5000
input_schema = {{ type = "object", required = ["intent"], properties = {{ intent = {{ type = "string" }} }} }}
output_schema = {{ type = "object" }}

[[scopes]]
principal = "agent:support"
tools = ["order.lookup", "order.tag", "refund.issue", "mail.send"]

[[hitl]]
tool = "order.tag"
when = "tag == \"vip\""
timeout_s = 3600
on_timeout = "FAIL"
approvers = ["ops-lead"]

[[workflows]]
id = "WF01"
name = "Triage an order"
principal = "agent:support"
steps = [
  {{ id = "triage", agent = {{ model = "gpt-4o-mini", prompt = "{PROMPT}", tools = ["order.lookup", "order.tag"], max_turns = 5 }}, input = {{ message = "$.event.message" }}, next = "reply" }},
  {{ id = "reply", tool = "mail.send", input = {{ intent = "$.triage.final.intent" }} }},
]
"#
    )
}

fn ctx() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:support"), CorrelationId::new("corr-agent"))
}

async fn store(db: &TestDatabase) -> Store {
    let url: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&url).await.unwrap().migrate().await.unwrap();
    let store = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
    store.register_tenant(&ctx(), "Acme").await.unwrap();
    store
}

/// The provider side: effects by idempotency key (a repeated key makes no
/// second effect, as Stripe's does), and where a simulated crash stops.
#[derive(Default)]
struct Provider {
    effects: Mutex<Vec<(String, Value)>>,
    /// Stop forever after the n-th effect is made (the test drops the run).
    crash_after: Mutex<Option<usize>>,
    made: AtomicUsize,
    hit: tokio::sync::Notify,
}

struct ProviderTool(&'static str, Arc<Provider>);

#[async_trait::async_trait]
impl Tool for ProviderTool {
    async fn call(&self, call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        let p = &self.1;
        if self.0 == "order.lookup" {
            return Ok(ToolOutput::new(json!({"order_id": input["order_id"], "status": "shipped"})));
        }
        let key = call.idempotency_key.clone().expect("a side effect carries its key");
        {
            let mut effects = p.effects.lock().unwrap();
            if !effects.iter().any(|(k, _)| *k == key) {
                effects.push((key, json!({"tool": self.0, "input": input})));
            }
        }
        let n = p.made.fetch_add(1, Ordering::SeqCst) + 1;
        if *p.crash_after.lock().unwrap() == Some(n) {
            // The effect is made; the answer never reaches the kernel.
            p.hit.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(ToolOutput::new(json!({"ok": true, "tool": self.0})))
    }
}

struct Fixture {
    config: BusinessConfig,
    workflow: RunnableWorkflow,
}

fn fixture() -> Fixture {
    let config = BusinessConfig::parse(Path::new("agent.toml"), config_text()).unwrap();
    let report = config.check();
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    let workflow = Assembly::from_config(&config).unwrap().workflows.remove("WF01").unwrap();
    Fixture { config, workflow }
}

fn executor(f: &Fixture, store: &Store, provider: &Arc<Provider>) -> Executor {
    let (mut exec, _) = Assembly::from_config(&f.config).unwrap().into_executor(
        RedactionPolicy::default(),
        Arc::new(store.clone()),
        Arc::new(SystemClock),
    );
    for name in ["order.lookup", "order.tag", "refund.issue", "mail.send"] {
        exec.bind(name, "1", Arc::new(ProviderTool(name, provider.clone()))).unwrap();
    }
    exec.with_durability(Durability { store: store.clone(), window: Duration::from_secs(86_400) })
}

fn approvals(f: &Fixture, store: &Store) -> StoreApprovals {
    StoreApprovals::new(
        store.clone(),
        HitlRules::from_model(&f.config.model().unwrap()).unwrap(),
        Arc::new(SystemClock),
    )
}

fn llm(fake: &LlmFake) -> LlmClient {
    let config = LlmConfig {
        model: "gpt-4o-mini".to_owned(),
        template: PromptTemplate::new(PROMPT),
        primary: Endpoint::new(&fake.base_url(), Some(SecretString::from("sk-test-agent-durable"))).unwrap(),
        fallback: None,
        prices: PriceTable::new(),
        settings: LlmSettings { request_timeout: Duration::from_secs(5), ..LlmSettings::default() },
        cassette: None,
    };
    LlmClient::new(config, SandboxGuard::sandbox(), Arc::new(NoAudit)).unwrap()
}

struct NoAudit;

#[async_trait::async_trait]
impl autobiz_kernel::secrets::AuditSink for NoAudit {
    async fn audit(&self, _: &TenantContext, _: &autobiz_kernel::store::AuditEvent) -> autobiz_kernel::Result<()> {
        Ok(())
    }
    async fn security(
        &self,
        _: &TenantContext,
        _: &autobiz_kernel::store::SecurityEvent,
    ) -> autobiz_kernel::Result<()> {
        Ok(())
    }
}

fn spec<'a>(f: &'a Fixture, run_id: &str, client: &LlmClient) -> RunSpec<'a> {
    RunSpec {
        workflow: &f.workflow.workflow,
        ctx: ctx(),
        run_id: run_id.into(),
        bounds: f.workflow.bounds,
        event: json!({"message": "Where is my order 1001?"}),
        pins: client.pin().as_pins(),
        config_hash: "cfg".into(),
    }
}

fn kinds(path: &Path, kind: &str) -> usize {
    Transcript::read(path).unwrap().entries().filter(|e| e.kind() == kind).count()
}

fn replays(f: &Fixture, exec: &Executor, path: &Path, state_sha256: &str) {
    let t = Transcript::read(path).unwrap();
    match replay(&t, &f.workflow.workflow, exec.registry(), "cfg").unwrap() {
        ReplayOutcome::Identical(r) => assert_eq!(r.state_sha256, state_sha256),
        ReplayOutcome::Diverged(d) => panic!("diverged: {d:?}"),
    }
}

/// A completed run: three turns (a side effect, a refused tool fed back, the
/// answer), each in the transcript and the trace; the proposal's effect has
/// its receipt; replay reproduces the state hash without a model, and a
/// workflow whose prompt differs diverges at the first turn.
async fn durable_agent_step_records_its_turns_and_replays(db: TestDatabase) {
    let f = fixture();
    let store = store(&db).await;
    let provider = Arc::new(Provider::default());
    let exec = executor(&f, &store, &provider);
    let policy = approvals(&f, &store);
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "order.tag", "input": {"order_id": 1001, "tag": "wismo"}}"#);
    fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1001}}"#); // not this step's
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let client = llm(&fake);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
    let mut w = TranscriptWriter::create(&path).unwrap();
    let report = engine.run(&spec(&f, "run-1", &client), &mut w).await.unwrap();
    drop(w);
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(report.path, ["triage", "reply"]);
    assert_eq!(report.outputs["triage"]["final"], json!({"intent": "wismo"}));
    assert_eq!(report.outputs["triage"]["turns"], 3);
    assert_eq!(fake.requests().len(), 3);
    let fed: Value = serde_json::from_str(
        serde_json::from_str::<Value>(&fake.requests()[2].body).unwrap()["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fed["error"]["code"], "AGENT_TOOL_NOT_ALLOWED", "the refusal was fed back");
    assert_eq!((kinds(&path, "model_turn"), kinds(&path, "agent_call"), kinds(&path, "agent_result")), (3, 1, 1));
    // The proposal's effect and the mail: two receipts, the first under the
    // proposal's own step key.
    let steps: Vec<&str> = report.receipts.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps, ["triage.turn1", "reply"]);
    assert_eq!(store.receipts(&ctx(), "run-1").await.unwrap().len(), 2);
    let traced = store.trace(&ctx(), "run-1").await.unwrap();
    assert_eq!(traced.iter().filter(|r| r.kind == RecordKind::ModelCall).count(), 3, "every turn is traced");
    replays(&f, &exec, &path, &report.state_sha256);

    // Replay asks no model: the recorded replies are checked against the
    // messages this workflow would send, so another prompt diverges.
    let mut changed = f.workflow.workflow.clone();
    changed.steps[0].agent.as_mut().unwrap().prompt = PromptTemplate::new("Another prompt {{tools}}");
    let t = Transcript::read(&path).unwrap();
    let ReplayOutcome::Diverged(d) = replay(&t, &changed, exec.registry(), "cfg").unwrap() else {
        panic!("a changed prompt must diverge")
    };
    assert_eq!((d.what.as_str(), d.step.as_deref()), ("model_turn 1 request", Some("triage")), "{d:?}");
    assert_eq!(fake.requests().len(), 3, "replay sent nothing");
}
both!(p1_t15_a_durable_agent_step_records_its_turns_and_replays, durable_agent_step_records_its_turns_and_replays);

/// A crash after the proposal's effect was made but before its answer was
/// recorded: the resumed run takes turn 1 from the transcript (the model is
/// not asked again), sends the same idempotency key (no second effect),
/// asks the model only for the turns not yet recorded, and replays.
async fn crashed_agent_step_resumes_from_its_recorded_turns(db: TestDatabase) {
    let f = fixture();
    let store = store(&db).await;
    let provider = Arc::new(Provider::default());
    *provider.crash_after.lock().unwrap() = Some(1);
    let policy = approvals(&f, &store);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    let first = LlmFake::start_loopback().await;
    first.script(r#"{"tool": "order.tag", "input": {"order_id": 1001, "tag": "wismo"}}"#);
    {
        let exec = executor(&f, &store, &provider);
        let client = llm(&first);
        let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
        let mut w = TranscriptWriter::create(&path).unwrap();
        let s = spec(&f, "run-crash", &client);
        tokio::select! {
            r = engine.run(&s, &mut w) => panic!("the crash point was not reached: {r:?}"),
            () = provider.hit.notified() => {}
        }
        // Dropping the run here is the crash.
    }
    assert_eq!(first.requests().len(), 1);
    assert_eq!(provider.effects.lock().unwrap().len(), 1, "the effect was made before the crash");
    // The second process's model knows only the rest of the conversation:
    // asked for turn 1 again it would not answer in the protocol.
    let second = LlmFake::start_loopback().await;
    second.script(r#"{"final": {"intent": "wismo"}}"#);
    let exec = executor(&f, &store, &provider);
    let client = llm(&second);
    let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
    let (mut w, history) = TranscriptWriter::resume(&path).unwrap();
    let report = engine.resume(&spec(&f, "run-crash", &client), &history, &mut w).await.unwrap();
    drop(w);
    assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
    assert_eq!(second.requests().len(), 1, "only the unrecorded turn was asked for");
    let tags = provider.effects.lock().unwrap().iter().filter(|(_, e)| e["tool"] == "order.tag").count();
    assert_eq!(tags, 1, "no side effect twice");
    assert_eq!(kinds(&path, "model_turn"), 2, "turn 1 once, before the crash; turn 2 after");
    let receipts = store.receipts(&ctx(), "run-crash").await.unwrap();
    assert_eq!(receipts.len(), 2, "the tag and the mail, once each: {receipts:?}");
    replays(&f, &exec, &path, &report.state_sha256);
}
both!(p1_t12_a_crashed_agent_step_resumes_from_its_recorded_turns, crashed_agent_step_resumes_from_its_recorded_turns);

/// A proposal a HITL rule matches pauses the run (WAITING_APPROVAL) before
/// it runs; once approved, the resumed run reuses the recorded turn, runs
/// the proposal, and asks the model only for the next turn. A denial
/// aborts the run and the proposal never runs.
async fn agent_proposal_needing_approval_pauses_the_run(db: TestDatabase) {
    let f = fixture();
    let store = store(&db).await;
    let provider = Arc::new(Provider::default());
    let exec = executor(&f, &store, &provider);
    let policy = approvals(&f, &store);
    let dir = tempfile::tempdir().unwrap();
    for (run_id, decision) in [("run-approved", Decision::Approve), ("run-denied", Decision::Deny)] {
        let path = dir.path().join(format!("{run_id}.jsonl"));
        let first = LlmFake::start_loopback().await;
        first.script(r#"{"tool": "order.tag", "input": {"order_id": 1001, "tag": "vip"}}"#);
        let client = llm(&first);
        let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
        let mut w = TranscriptWriter::create(&path).unwrap();
        let paused = engine.run(&spec(&f, run_id, &client), &mut w).await.unwrap();
        drop(w);
        assert_eq!(paused.status, RunStatus::WaitingApproval, "{run_id}: {:?}", paused.error);
        let request = paused.waiting_for.clone().unwrap();
        assert_eq!(vip(&provider), usize::from(run_id == "run-denied"), "{run_id}: nothing before a human decides");
        let reason = (decision == Decision::Deny).then_some("not a VIP");
        store.hitl_decide(&ctx(), &request, decision, "ops-lead", reason, chrono::Utc::now()).await.unwrap();

        let second = LlmFake::start_loopback().await;
        second.script(r#"{"final": {"intent": "vip"}}"#);
        let client = llm(&second);
        let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
        let (mut w, history) = TranscriptWriter::resume(&path).unwrap();
        let report = engine.resume(&spec(&f, run_id, &client), &history, &mut w).await.unwrap();
        drop(w);
        let tagged = vip(&provider);
        match decision {
            Decision::Approve => {
                assert_eq!(report.status, RunStatus::Completed, "{:?}", report.error);
                assert_eq!(tagged, 1);
                assert_eq!(second.requests().len(), 1, "turn 1 was not asked again");
            }
            Decision::Deny => {
                assert_eq!((report.status, report.termination), (RunStatus::Aborted, Some(Termination::HitlDenied)));
                assert_eq!(tagged, 1, "the denied run's proposal never ran");
                assert!(second.requests().is_empty());
            }
        }
        let t = Transcript::read(&path).unwrap();
        assert!(t.entries().any(|e| matches!(e, Entry::HitlDecision { step, .. } if step == "triage.turn1")));
        replays(&f, &exec, &path, &report.state_sha256);
    }
}
fn vip(provider: &Provider) -> usize {
    provider.effects.lock().unwrap().iter().filter(|(_, e)| e["input"]["tag"] == "vip").count()
}
both!(inv07_an_agent_proposal_needing_approval_pauses_the_run, agent_proposal_needing_approval_pauses_the_run);

/// Bad model output in a durable run: a reply that is not JSON ends the run
/// with `agent_reply_invalid`; without a client the step fails with
/// `AGENT_LLM_MISSING` and nothing is asked. Both replay.
async fn bad_agent_replies_end_the_durable_run(db: TestDatabase) {
    let f = fixture();
    let store = store(&db).await;
    let provider = Arc::new(Provider::default());
    let exec = executor(&f, &store, &provider);
    let policy = approvals(&f, &store);
    let dir = tempfile::tempdir().unwrap();
    let fake = LlmFake::start_loopback().await;
    fake.script("Sure! Let me look that up for you.");
    let client = llm(&fake);
    let path = dir.path().join("invalid.jsonl");
    let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy).with_llm(Some(&client));
    let mut w = TranscriptWriter::create(&path).unwrap();
    let report = engine.run(&spec(&f, "run-invalid", &client), &mut w).await.unwrap();
    drop(w);
    assert_eq!((report.status, report.termination), (RunStatus::Failed, Some(Termination::AgentReplyInvalid)));
    assert!(report.error.as_deref().unwrap().starts_with("AGENT_REPLY_INVALID"), "{:?}", report.error);
    assert!(provider.effects.lock().unwrap().is_empty());
    replays(&f, &exec, &path, &report.state_sha256);

    let path = dir.path().join("nollm.jsonl");
    let engine = Engine::new(&exec).with_store(&store, None).with_approvals(&policy);
    let mut w = TranscriptWriter::create(&path).unwrap();
    let report = engine.run(&spec(&f, "run-nollm", &client), &mut w).await.unwrap();
    drop(w);
    assert_eq!(report.status, RunStatus::Failed);
    assert!(report.error.as_deref().unwrap().starts_with("AGENT_LLM_MISSING"), "{:?}", report.error);
    assert_eq!(report.path, ["triage"], "the next step never ran");
    assert_eq!(fake.requests().len(), 1, "nothing more was asked");
    replays(&f, &exec, &path, &report.state_sha256);
}
both!(p1_t15_bad_agent_replies_end_the_durable_run, bad_agent_replies_end_the_durable_run);
