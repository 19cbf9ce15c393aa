//! The LLM client against the OpenAI-compatible fake (autobiz-fakes): the
//! fallback endpoint (P1-T-RK01a), both endpoints down (P1-T-RK01b), the
//! model and prompt pin in the trace (P1-T-RK01c), tokens and cost, final
//! answers, the sandbox guard, cassettes (replay with no network, a miss
//! naming the cassette, record mode without secrets), and the agent step
//! whose proposals go through the executor.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autobiz_fakes::{Fault, LlmFake};
use autobiz_kernel::bounds::{Bounds, LoopPolicy, Termination};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::executor::{CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::llm::{
    AgentStep, AllowedTool, CASSETTE_MODE_ENV, Cassette, CassetteMode, Endpoint, LLM_API_KEY_ENV, LLM_URL_ENV,
    LlmClient, LlmConfig, LlmSettings, Message, ModelPin, ModelPrice, PriceTable, PromptTemplate,
};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::providers::{RetryPolicy, SandboxGuard};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::secrets::AuditSink;
use autobiz_kernel::store::{AuditEvent, SecurityEvent};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{MemoryTraceSink, RecordKind};
use autobiz_kernel::{ErrorClass, ErrorCode, Result};
use secrecy::SecretString;
use serde_json::{Value, json};

// --- test doubles and set-up ---------------------------------------------------

#[derive(Default)]
struct MemoryAudit(Mutex<Vec<AuditEvent>>);

impl MemoryAudit {
    fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl AuditSink for MemoryAudit {
    async fn audit(&self, _ctx: &TenantContext, event: &AuditEvent) -> Result<()> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
    async fn security(&self, _ctx: &TenantContext, _event: &SecurityEvent) -> Result<()> {
        Ok(())
    }
}

const MODEL: &str = "gpt-4o-mini";
const KEY: &str = "sk-test-0123456789SECRETKEY";

fn ctx() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:support"), CorrelationId::new("corr-llm"))
}

fn key(k: &str) -> Option<SecretString> {
    Some(SecretString::from(k.to_owned()))
}

fn prices() -> PriceTable {
    PriceTable::new().with(MODEL, ModelPrice { prompt_per_1k_micro_usd: 150, completion_per_1k_micro_usd: 600 })
}

fn fast_settings() -> LlmSettings {
    LlmSettings {
        request_timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            jitter_seed: 1,
        },
        ..LlmSettings::default()
    }
}

fn template() -> PromptTemplate {
    PromptTemplate::new("You classify customer messages for {{shop}}. Answer with one word: wismo or other.")
}

fn config(primary: &str, fallback: Option<&str>) -> LlmConfig {
    LlmConfig {
        model: MODEL.to_owned(),
        template: template(),
        primary: Endpoint::new(primary, key(KEY)).unwrap(),
        fallback: fallback.map(|f| Endpoint::new(f, key(KEY)).unwrap()),
        prices: prices(),
        settings: fast_settings(),
        cassette: None,
    }
}

fn client(config: LlmConfig) -> (LlmClient, Arc<MemoryAudit>) {
    let audit = Arc::new(MemoryAudit::default());
    (LlmClient::new(config, SandboxGuard::sandbox(), audit.clone()).unwrap(), audit)
}

fn classify(text: &str) -> Vec<Message> {
    vec![Message::system(template().render(&json!({"shop": "Acme"}))), Message::user(text)]
}

/// A loopback port nothing listens on.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

const COMPLETIONS: &str = "/v1/chat/completions";

// --- P1-T-RK01: fallback, both down, pins ---------------------------------------

#[tokio::test]
async fn p1_t_rk01a_primary_timeout_falls_back_to_the_fallback_endpoint() {
    let primary = LlmFake::start_loopback().await;
    let fallback = LlmFake::start_loopback().await;
    // The primary would answer, but after 2 s: past the 300 ms timeout.
    primary.inject(Fault::Delay(Duration::from_secs(2)));
    let (llm, audit) = client(config(&primary.base_url(), Some(&fallback.base_url())));
    let started = std::time::Instant::now();
    let c = llm.complete(&ctx(), &classify("Where is my order #1001?")).await.unwrap();
    assert_eq!(c.endpoint, "fallback");
    assert_eq!(c.content, "wismo");
    assert_eq!(c.attempts, 2, "one primary attempt, then the fallback at once");
    assert!(started.elapsed() < Duration::from_secs(2), "the slow primary is not waited for");
    assert_eq!(primary.requests_for(COMPLETIONS).len(), 1);
    assert_eq!(fallback.requests_for(COMPLETIONS).len(), 1);
    assert_eq!((llm.counters().requests(), llm.counters().fallbacks()), (2, 1));
    let actions: Vec<String> = audit.events().iter().map(|e| format!("{} {}", e.action, e.outcome)).collect();
    assert_eq!(actions, ["provider.llm.primary.request sent", "provider.llm.fallback.request sent"]);
    // The fallback was sent the same request, key included.
    let sent = &fallback.requests_for(COMPLETIONS)[0];
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(serde_json::from_str::<Value>(&sent.body).unwrap()["model"], MODEL);
}

#[tokio::test]
async fn p1_t_rk01a_a_primary_500_falls_back_and_a_healthy_primary_is_used_alone() {
    let primary = LlmFake::start_loopback().await;
    let fallback = LlmFake::start_loopback().await;
    let (llm, _) = client(config(&primary.base_url(), Some(&fallback.base_url())));
    let c = llm.complete(&ctx(), &classify("Has it shipped yet?")).await.unwrap();
    assert_eq!((c.endpoint, c.attempts), ("primary", 1));
    assert_eq!(fallback.requests().len(), 0);
    primary.inject(Fault::Status500);
    let c = llm.complete(&ctx(), &classify("Has it shipped yet?")).await.unwrap();
    assert_eq!((c.endpoint, c.attempts), ("fallback", 2));
    assert_eq!(llm.counters().fallbacks(), 1);
}

#[tokio::test]
async fn p1_t_rk01b_both_endpoints_down_is_a_clear_llm_unavailable_failure() {
    let down = closed_port_url();
    let fallback = LlmFake::start_loopback().await;
    fallback.inject_times(Fault::Status500, 10);
    let (llm, audit) = client(config(&down, Some(&fallback.base_url())));
    let e = llm.complete(&ctx(), &classify("Where is my order?")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::LlmUnavailable);
    assert_eq!(e.class(), ErrorClass::Infrastructure);
    let m = e.message();
    assert!(m.starts_with("both LLM endpoints are down"), "{m}");
    let down_host = down.trim_start_matches("http://").trim_end_matches("/v1");
    assert!(m.contains(&format!("primary ({down_host}): connection failed")), "{m}");
    assert!(m.contains("fallback (127.0.0.1:") && m.contains("HTTP 500"), "{m}");
    assert!(m.contains("after 4 attempts in 2 rounds"), "{m}");
    assert!(!m.contains("SECRETKEY"), "the key is never in a message: {m}");
    // Two rounds (max_attempts = 2), each primary then fallback.
    assert_eq!(fallback.requests_for(COMPLETIONS).len(), 2);
    assert_eq!(audit.events().len(), 4);
}

#[tokio::test]
async fn p1_t_rk01c_model_and_prompt_pin_are_recorded_in_the_trace() {
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let (llm, _) = client(config(&fake.base_url(), None));
    let f = agent_fixture();
    let pin = llm.pin().clone();
    assert_eq!(pin, ModelPin::new(MODEL, &template()));
    assert_eq!(pin.prompt_template_sha256, sha256_hex(template().text()));
    let mut run = f.exec.start(&ctx(), "run-pin", bounds(5), pin.as_pins()).await.unwrap();
    let step = AgentStep::new("classify", vec![AllowedTool::new("order.lookup", "1")]);
    let out = step.run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": "where is my order?"})).await.unwrap();
    assert_eq!(out.output, json!({"intent": "wismo"}));
    f.exec.finish(&mut run, Termination::Completed).await.unwrap();
    let records = f.sink.records("run-pin");
    // The run's pins (what the transcript's run_start carries through RunSpec::pins).
    let start = &records[0];
    assert_eq!(start.kind, RecordKind::RunStart);
    assert_eq!(start.detail.as_ref().unwrap()["pins"]["llm"], serde_json::to_value(&pin).unwrap());
    // And the pin of the call itself.
    let call = records.iter().find(|r| r.kind == RecordKind::ModelCall).expect("a model_call record");
    assert_eq!(call.tool.as_deref(), Some("llm:gpt-4o-mini"));
    let detail = &call.detail.as_ref().unwrap()["llm"];
    assert_eq!(detail["pin"]["model"], MODEL);
    assert_eq!(detail["pin"]["prompt_template_sha256"], pin.prompt_template_sha256.as_str());
    assert_eq!(detail["endpoint"], "primary");
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("SECRETKEY"), "no key in the trace");
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

// --- tokens, cost, final answers, the guard --------------------------------------

#[tokio::test]
async fn llm_tokens_and_cost_are_attributed_per_call() {
    let fake = LlmFake::start_loopback().await;
    let (llm, _) = client(config(&fake.base_url(), None));
    let short = llm.complete(&ctx(), &classify("Tracking?")).await.unwrap();
    let long = llm.complete(&ctx(), &classify(&"Where is my order? ".repeat(200))).await.unwrap();
    let served = fake.served();
    for (c, s) in [(&short, &served[0]), (&long, &served[1])] {
        assert_eq!(c.usage.prompt_tokens, s["usage"]["prompt_tokens"].as_u64().unwrap());
        assert_eq!(c.usage.completion_tokens, s["usage"]["completion_tokens"].as_u64().unwrap());
        let expected = (150 * c.usage.prompt_tokens).div_ceil(1000) + (600 * c.usage.completion_tokens).div_ceil(1000);
        assert_eq!(c.cost_micro_usd, expected);
        assert!(c.cost_micro_usd > 0 && c.priced);
        assert_eq!(c.response_id.as_deref(), s["id"].as_str());
    }
    assert!(long.cost_micro_usd > short.cost_micro_usd, "each call is priced on its own tokens");
    // Through the executor, the run's cost is the sum of its calls.
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-cost", bounds(5), llm.pin().as_pins()).await.unwrap();
    f.exec.record_model_call(&mut run, &short).await.unwrap();
    f.exec.record_model_call(&mut run, &long).await.unwrap();
    assert_eq!(run.cost().micro_usd, short.cost_micro_usd + long.cost_micro_usd);
    assert_eq!(run.cost().tokens, short.usage.total() + long.usage.total());
    assert_eq!(run.usage().tokens, short.usage.total() + long.usage.total());
    let calls: Vec<u64> = f
        .sink
        .records("run-cost")
        .iter()
        .filter(|r| r.kind == RecordKind::ModelCall)
        .map(|r| r.cost.micro_usd)
        .collect();
    assert_eq!(calls, vec![short.cost_micro_usd, long.cost_micro_usd]);
}

#[tokio::test]
async fn llm_a_4xx_is_final_and_not_retried_nor_sent_to_the_fallback() {
    let primary = LlmFake::start_loopback().await;
    let fallback = LlmFake::start_loopback().await;
    let mut cfg = config(&primary.base_url(), Some(&fallback.base_url()));
    cfg.primary.api_key = key("not-an-openai-key");
    let (llm, _) = client(cfg);
    let e = llm.complete(&ctx(), &classify("Where is my order?")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::LlmRejected);
    assert!(e.message().contains("HTTP 401 (invalid_api_key)"), "{}", e.message());
    assert!(!e.message().contains("not-an-openai-key"));
    assert_eq!(primary.requests_for(COMPLETIONS).len(), 1, "not retried");
    assert_eq!(fallback.requests().len(), 0, "not sent to the fallback");
}

#[tokio::test]
async fn llm_a_malformed_reply_is_llm_bad_response() {
    let fake = LlmFake::start_loopback().await;
    for fault in [Fault::Malformed, Fault::Truncated, Fault::ErrorIn200, Fault::Html] {
        fake.inject(fault.clone());
        let (llm, _) = client(config(&fake.base_url(), None));
        let before = fake.requests().len();
        let e = llm.complete(&ctx(), &classify("Where is my order?")).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::LlmBadResponse, "{fault:?}");
        assert_eq!(fake.requests().len(), before + 1, "{fault:?}: not retried");
    }
}

#[tokio::test]
async fn llm_a_host_off_the_sandbox_allowlist_is_refused_before_any_request() {
    let (llm, audit) = client(config("https://api.openai.com/v1", None));
    let e = llm.complete(&ctx(), &classify("hi")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::SandboxHostRefused);
    assert_eq!(llm.counters().requests(), 0);
    let events = audit.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].outcome.as_str(), events[0].resource.as_str()),
        ("refused", "POST api.openai.com/v1/chat/completions")
    );
}

// --- cassettes -----------------------------------------------------------------

fn committed_cassette() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("cassettes/wismo-classify.json")
}

const WISMO: &str = "Hi, where is my order #1001? It has not arrived.";

/// Replays `cassettes/wismo-classify.json`; with AUTOBIZ_CASSETTE_MODE=record
/// it refreshes it, against AUTOBIZ_LLM_URL (key AUTOBIZ_LLM_API_KEY) or,
/// when unset, against the in-process fake.
#[tokio::test]
async fn cassette_replay_answers_from_the_cassette_with_no_network() {
    let mode = CassetteMode::from_env().unwrap();
    let _fake;
    let (base, api_key) = match mode {
        // Nothing listens here: an answer can only come from the cassette.
        CassetteMode::Replay => (closed_port_url(), "sk-replay-another-key-entirely".to_owned()),
        CassetteMode::Record => match std::env::var(LLM_URL_ENV) {
            Ok(url) => (url, std::env::var(LLM_API_KEY_ENV).unwrap_or_default()),
            Err(_) => {
                _fake = LlmFake::start_loopback().await;
                (_fake.base_url(), KEY.to_owned())
            }
        },
    };
    let mut cfg = config(&base, None);
    cfg.primary.api_key = key(&api_key);
    cfg.cassette = Some(Cassette::new(committed_cassette(), mode));
    let (llm, audit) = client(cfg);
    let c = llm.complete(&ctx(), &classify(WISMO)).await.unwrap();
    assert_eq!(c.content, "wismo");
    assert_eq!(c.endpoint, "primary");
    assert!(c.usage.total() > 0 && c.cost_micro_usd > 0);
    assert!(c.response_id.is_some());
    // Replayed requests are audited like real ones.
    assert_eq!(audit.events().len(), 1);
    drop(llm); // record mode writes the cassette here
    let text = std::fs::read_to_string(committed_cassette()).unwrap();
    assert!(api_key.is_empty() || !text.contains(&api_key), "no key in the cassette");
    assert!(!text.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test]
async fn cassette_a_request_missing_from_the_cassette_fails_naming_the_cassette() {
    if CassetteMode::from_env().unwrap() == CassetteMode::Record {
        return; // only the replay test records
    }
    let mut cfg = config(&closed_port_url(), Some(&closed_port_url()));
    cfg.cassette = Some(Cassette::new(committed_cassette(), CassetteMode::Replay));
    let (llm, _) = client(cfg);
    let e = llm.complete(&ctx(), &classify("A message nobody recorded")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::LlmCassetteMiss);
    assert!(e.message().contains("wismo-classify.json"), "{}", e.message());
    assert!(e.message().contains(CASSETTE_MODE_ENV), "says how to re-record: {}", e.message());
    assert_eq!(llm.counters().fallbacks(), 0, "a miss is not an outage: no fallback");
    // A cassette that does not exist is refused when the client is built.
    let mut cfg = config(&closed_port_url(), None);
    cfg.cassette = Some(Cassette::new("/nonexistent/never-recorded.json", CassetteMode::Replay));
    let err = LlmClient::new(cfg, SandboxGuard::sandbox(), Arc::new(MemoryAudit::default())).err().unwrap();
    assert_eq!(err.code(), ErrorCode::LlmCassetteMiss);
    assert!(err.message().contains("never-recorded.json"));
}

#[tokio::test]
async fn cassette_record_mode_strips_the_authorization_header_and_replays_with_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recorded.json");
    let fake = LlmFake::start_loopback().await;
    let mut cfg = config(&fake.base_url(), None);
    cfg.cassette = Some(Cassette::new(&path, CassetteMode::Record));
    let (llm, _) = client(cfg);
    let recorded = llm.complete(&ctx(), &classify(WISMO)).await.unwrap();
    // The fake did get the key: stripping is for the file only.
    assert_eq!(fake.requests()[0].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    drop(llm);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("SECRETKEY"), "the key is not in the cassette:\n{text}");
    assert!(!text.to_ascii_lowercase().contains("authorization"), "{text}");
    assert!(!text.contains("127.0.0.1"), "the fake's port is normalized away:\n{text}");
    let cassette: Value = serde_json::from_str(&text).unwrap();
    let interaction = &cassette["http_interactions"][0];
    assert_eq!(interaction["request"]["uri"], "http://primary.llm.invalid/v1/chat/completions");
    assert!(interaction["response"]["body"]["string"].as_str().unwrap().contains("\"chat.completion\""));
    // Replays with a different key, no server.
    let mut cfg = config(&closed_port_url(), None);
    cfg.primary.api_key = key("sk-some-other-key-123");
    cfg.cassette = Some(Cassette::new(&path, CassetteMode::Replay));
    let (llm, _) = client(cfg);
    let replayed = llm.complete(&ctx(), &classify(WISMO)).await.unwrap();
    assert_eq!(replayed.content, recorded.content);
    assert_eq!(replayed.usage, recorded.usage);
    assert_eq!(fake.requests().len(), 1, "the replay sent nothing");
}

// --- the agent step ----------------------------------------------------------------

/// `order.lookup` (READ) finds an order by integer id; `refund.issue` is
/// registered but no scope allows it.
struct Lookup;

#[async_trait::async_trait]
impl Tool for Lookup {
    async fn call(&self, _call: CallContext, input: Value) -> Result<ToolOutput> {
        Ok(ToolOutput {
            value: json!({"order_id": input["order_id"], "status": "shipped"}),
            tokens: 0,
            provider_calls: 1,
        })
    }
}

struct AgentFixture {
    exec: Executor,
    sink: Arc<MemoryTraceSink>,
}

fn agent_fixture() -> AgentFixture {
    let mut registry = ToolRegistry::new();
    let schema = json!({"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "integer"}}});
    for name in ["order.lookup", "refund.issue"] {
        registry
            .register(
                ToolContract::new(
                    name,
                    "1",
                    SideEffect::Read,
                    &schema,
                    &json!({"type": "object"}),
                    Duration::from_secs(1),
                    PriceModel::default(),
                )
                .unwrap(),
            )
            .unwrap();
    }
    let permissions = PermissionEnforcer::new(vec![Scope::new("agent:support", &["order.lookup"])]);
    let sink = Arc::new(MemoryTraceSink::new());
    let mut exec = Executor::new(
        registry,
        permissions,
        LoopPolicy::default(),
        RedactionPolicy::default(),
        sink.clone(),
        Arc::new(SystemClock),
    );
    exec.bind("order.lookup", "1", Arc::new(Lookup)).unwrap();
    exec.bind("refund.issue", "1", Arc::new(Lookup)).unwrap();
    AgentFixture { exec, sink }
}

fn bounds(max_steps: u32) -> Bounds {
    Bounds { max_steps, max_wall_time: Duration::from_secs(30), max_tokens: 100_000, max_tool_calls: 20 }
}

fn agent_template() -> PromptTemplate {
    PromptTemplate::new("You help customers. Tools: {{tools}}. Reply with one JSON object.")
}

fn agent_llm(fake: &LlmFake) -> LlmClient {
    let mut cfg = config(&fake.base_url(), None);
    cfg.template = agent_template();
    client(cfg).0
}

fn step() -> AgentStep {
    AgentStep::new("wismo", vec![AllowedTool::new("order.lookup", "1")])
}

fn last_user_message(request_body: &str) -> Value {
    let body: Value = serde_json::from_str(request_body).unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    serde_json::from_str(last["content"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn agent_a_valid_proposal_executes_through_the_executor() {
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "order.lookup", "input": {"order_id": 1001}}"#);
    fake.script(r#"{"final": {"reply": "Your order has shipped."}}"#);
    let llm = agent_llm(&fake);
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-ok", bounds(5), llm.pin().as_pins()).await.unwrap();
    let out = step().run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": WISMO})).await.unwrap();
    assert_eq!(out.output, json!({"reply": "Your order has shipped."}));
    assert_eq!(out.turns, 2);
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.calls[0].output, json!({"order_id": 1001, "status": "shipped"}));
    assert!(out.rejected.is_empty());
    // The system prompt showed the allowed tool with its (closed) schema.
    let first: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("\"tool\":\"order.lookup\"") && system.contains("additionalProperties"), "{system}");
    // The tool's result was fed back to the model.
    assert_eq!(last_user_message(&fake.requests()[1].body)["result"]["status"], "shipped");
    let records = f.sink.records("run-ok");
    let kinds: Vec<RecordKind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::RunStart, RecordKind::ModelCall, RecordKind::ToolCall, RecordKind::ModelCall]);
    assert!(records[2].decision.as_ref().unwrap().allowed, "the executor's permission check ran");
    assert_eq!(run.usage().tool_calls, 1);
    assert_eq!(run.usage().steps, 2);
}

#[tokio::test]
async fn agent_rejected_proposals_are_fed_back_and_the_corrected_proposal_runs() {
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1001}}"#); // not in the step's list
    fake.script(r#"{"tool": "order.lookup", "input": {"order_id": "1001"}}"#); // schema invalid
    fake.script(r#"{"tool": "order.lookup", "input": {"order_id": 1001}}"#); // corrected
    fake.script(r#"{"final": "shipped"}"#);
    let llm = agent_llm(&fake);
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-fix", bounds(10), llm.pin().as_pins()).await.unwrap();
    let out = step().run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": WISMO})).await.unwrap();
    assert_eq!(out.output, json!("shipped"));
    assert_eq!(out.rejected, [ErrorCode::AgentToolNotAllowed, ErrorCode::SchemaInvalid]);
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.calls[0].input, json!({"order_id": 1001}));
    let requests = fake.requests();
    let fed1 = last_user_message(&requests[1].body);
    assert_eq!(fed1["error"]["code"], "AGENT_TOOL_NOT_ALLOWED");
    assert!(fed1["error"]["message"].as_str().unwrap().contains("order.lookup@1"), "{fed1}");
    let fed2 = last_user_message(&requests[2].body);
    assert_eq!(fed2["error"]["code"], "SCHEMA_INVALID");
    // Both refusals are in the trace; the refused tool never ran.
    let rejections: Vec<String> = f
        .sink
        .records("run-fix")
        .iter()
        .filter(|r| r.kind == RecordKind::Rejection)
        .map(|r| r.error.as_ref().unwrap().code.clone())
        .collect();
    assert_eq!(rejections, ["AGENT_TOOL_NOT_ALLOWED", "SCHEMA_INVALID"]);
    assert_eq!(run.termination(), None, "the run goes on");
}

#[tokio::test]
async fn agent_a_model_that_keeps_proposing_bad_calls_stops_at_max_steps() {
    let fake = LlmFake::start_loopback().await;
    for _ in 0..10 {
        fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1001}}"#);
    }
    let llm = agent_llm(&fake);
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-stuck", bounds(3), llm.pin().as_pins()).await.unwrap();
    let e = step().run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": WISMO})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BoundExceeded);
    assert_eq!(run.termination(), Some(Termination::MaxSteps));
    assert_eq!(fake.requests().len(), 3, "one model call per allowed step");
    let end = f.sink.records("run-stuck").into_iter().last().unwrap();
    assert_eq!((end.kind, end.termination), (RecordKind::RunEnd, Some(Termination::MaxSteps)));
}

#[tokio::test]
async fn agent_a_reply_that_is_not_json_ends_the_run_with_agent_reply_invalid() {
    let fake = LlmFake::start_loopback().await;
    fake.script("Sure! Let me look that order up for you.");
    let llm = agent_llm(&fake);
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-prose", bounds(5), llm.pin().as_pins()).await.unwrap();
    let e = step().run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": WISMO})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AgentReplyInvalid);
    assert_eq!(run.termination(), Some(Termination::AgentReplyInvalid));
    assert_eq!(fake.requests().len(), 1, "not retried");
    let records = f.sink.records("run-prose");
    assert!(records.iter().any(|r| r.error.as_ref().is_some_and(|e| e.code == "AGENT_REPLY_INVALID")));
    assert_eq!(records.last().unwrap().termination, Some(Termination::AgentReplyInvalid));
}

#[tokio::test]
async fn agent_an_llm_outage_ends_the_run_with_llm_unavailable() {
    let down = closed_port_url();
    let mut cfg = config(&down, None);
    cfg.template = agent_template();
    let (llm, _) = client(cfg);
    let f = agent_fixture();
    let mut run = f.exec.start(&ctx(), "run-down", bounds(5), llm.pin().as_pins()).await.unwrap();
    let e = step().run(&f.exec, &mut run, &llm, &json!({}), &json!({"message": WISMO})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::LlmUnavailable);
    assert_eq!(run.termination(), Some(Termination::LlmUnavailable));
}
