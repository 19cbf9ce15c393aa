//! An agent step declared in `autobiz.toml`, run by the store-less workflow
//! runner against the LLM fake: proposals go through the executor (a tool
//! outside the step's list is refused and fed back, the corrected proposal
//! runs), the next declared step consumes the agent's answer, the prompt's
//! pin is in the trace; without a client, or under another pin, the step
//! fails with a typed error. Durable runs of agent steps: `agent_durable.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autobiz_fakes::LlmFake;
use autobiz_kernel::Result;
use autobiz_kernel::assembly::{Assembly, RunnableWorkflow};
use autobiz_kernel::bounds::{Bounds, Termination};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::executor::{CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::llm::{Endpoint, LlmClient, LlmConfig, LlmSettings, PriceTable, PromptTemplate};
use autobiz_kernel::providers::SandboxGuard;
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::secrets::AuditSink;
use autobiz_kernel::store::{AuditEvent, SecurityEvent};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{MemoryTraceSink, RecordKind};
use autobiz_kernel::workflow::Outcome;
use secrecy::SecretString;
use serde_json::{Value, json};

const PROMPT: &str = "You help customers. Tools: {{tools}}. Customer message: {{message}}. Reply with one JSON object.";

/// WF01: `classify` is an agent step allowed `order.lookup` only;
/// `reply` mails what the agent found.
fn config_text(max_turns: u64) -> String {
    format!(
        r#"[business]
name = "agent test"

[bounds]
max_steps = 10
max_wall_time_ms = 30000
max_tokens = 100000
max_tool_calls = 10

[[tools]]
name = "order.lookup"
version = "1"
side_effect = "READ"
timeout_ms = 1000
input_schema = {{ type = "object", required = ["order_id"], properties = {{ order_id = {{ type = "integer" }} }} }}
output_schema = {{ type = "object" }}

[[tools]]
name = "refund.issue"
version = "1"
side_effect = "READ"
timeout_ms = 1000
input_schema = {{ type = "object", required = ["order_id"], properties = {{ order_id = {{ type = "integer" }} }} }}
output_schema = {{ type = "object" }}

[[tools]]
name = "mail.send"
version = "1"
side_effect = "NOTIFY"
timeout_ms = 1000
input_schema = {{ type = "object", required = ["intent", "status"], properties = {{ intent = {{ type = "string" }}, status = {{ type = "string" }} }} }}
output_schema = {{ type = "object" }}

[[scopes]]
principal = "agent:support"
tools = ["order.lookup", "refund.issue", "mail.send"]

[[workflows]]
id = "WF01"
name = "Answer a customer"
principal = "agent:support"
steps = [
  {{ id = "classify", agent = {{ model = "gpt-4o-mini", prompt = "{PROMPT}", tools = ["order.lookup"], max_turns = {max_turns} }}, input = {{ message = "$.event.message" }}, next = "reply" }},
  {{ id = "reply", tool = "mail.send", input = {{ intent = "$.classify.final.intent", status = "$.classify.calls.0.output.status" }} }},
]
"#
    )
}

/// `order.lookup` answers "shipped"; every tool records its input.
struct Recording(&'static str, Arc<Mutex<Vec<(String, Value)>>>);

#[async_trait::async_trait]
impl Tool for Recording {
    async fn call(&self, _call: CallContext, input: Value) -> Result<ToolOutput> {
        self.1.lock().unwrap().push((self.0.to_owned(), input.clone()));
        Ok(ToolOutput {
            value: json!({"order_id": input["order_id"], "status": "shipped"}),
            tokens: 0,
            provider_calls: 1,
        })
    }
}

struct NoAudit;

#[async_trait::async_trait]
impl AuditSink for NoAudit {
    async fn audit(&self, _ctx: &TenantContext, _event: &AuditEvent) -> Result<()> {
        Ok(())
    }
    async fn security(&self, _ctx: &TenantContext, _event: &SecurityEvent) -> Result<()> {
        Ok(())
    }
}

struct Fixture {
    exec: Executor,
    workflow: RunnableWorkflow,
    sink: Arc<MemoryTraceSink>,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

fn fixture(max_turns: u64) -> Fixture {
    let config = BusinessConfig::parse(Path::new("agent.toml"), config_text(max_turns)).unwrap();
    let report = config.check();
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    let sink = Arc::new(MemoryTraceSink::new());
    let (mut exec, mut workflows) = Assembly::from_config(&config).unwrap().into_executor(
        RedactionPolicy::default(),
        sink.clone(),
        Arc::new(SystemClock),
    );
    let calls = Arc::new(Mutex::new(Vec::new()));
    for name in ["order.lookup", "refund.issue", "mail.send"] {
        exec.bind(name, "1", Arc::new(Recording(name, calls.clone()))).unwrap();
    }
    Fixture { exec, workflow: workflows.remove("WF01").unwrap(), sink, calls }
}

fn ctx() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:support"), CorrelationId::new("corr-agent"))
}

fn llm(fake: &LlmFake, template: PromptTemplate) -> LlmClient {
    let config = LlmConfig {
        model: "gpt-4o-mini".to_owned(),
        template,
        primary: Endpoint::new(&fake.base_url(), Some(SecretString::from("sk-test-agent-workflow"))).unwrap(),
        fallback: None,
        prices: PriceTable::new(),
        settings: LlmSettings { request_timeout: Duration::from_secs(5), ..LlmSettings::default() },
        cassette: None,
    };
    LlmClient::new(config, SandboxGuard::sandbox(), Arc::new(NoAudit)).unwrap()
}

fn bounds(f: &Fixture) -> Bounds {
    f.workflow.bounds
}

async fn run(f: &Fixture, client: Option<&LlmClient>, run_id: &str) -> Outcome {
    let pins = client.map(|c| c.pin().as_pins()).unwrap_or(json!({}));
    let event = json!({"message": "Where is my order 1001?"});
    f.workflow.workflow.run_with_llm(&f.exec, client, &ctx(), run_id, bounds(f), event, pins).await.unwrap()
}

fn last_user_message(request_body: &str) -> Value {
    let body: Value = serde_json::from_str(request_body).unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    serde_json::from_str(last["content"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_toml_agent_step_runs_its_proposals_through_the_executor_and_feeds_the_next_step() {
    let f = fixture(4);
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1001}}"#); // not in the step's list
    fake.script(r#"{"tool": "order.lookup", "input": {"order_id": 1001}}"#); // corrected
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let client = llm(&fake, PromptTemplate::new(PROMPT));
    let out = run(&f, Some(&client), "run-agent").await;
    assert_eq!(out.termination, Termination::Completed, "{:?}", out.error);
    assert_eq!(out.path, ["classify", "reply"]);
    let classify = &out.outputs["classify"];
    assert_eq!(classify["final"], json!({"intent": "wismo"}));
    assert_eq!(classify["turns"], 3);
    assert_eq!(
        classify["calls"],
        json!([{"tool": "order.lookup", "version": "1", "input": {"order_id": 1001},
                "output": {"order_id": 1001, "status": "shipped"}}])
    );
    // The refused tool never ran; the allowed one did, then the next step
    // consumed the agent's answer and the call it made.
    let calls = f.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            ("order.lookup".to_owned(), json!({"order_id": 1001})),
            ("mail.send".to_owned(), json!({"intent": "wismo", "status": "shipped"})),
        ]
    );
    // The step's input filled the prompt; the refusal was fed back.
    let requests = fake.requests();
    let first: Value = serde_json::from_str(&requests[0].body).unwrap();
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("Customer message: Where is my order 1001?"), "{system}");
    assert!(system.contains("\"tool\":\"order.lookup\"") && !system.contains("refund.issue"), "{system}");
    let fed = last_user_message(&requests[1].body);
    assert_eq!(fed["error"]["code"], "AGENT_TOOL_NOT_ALLOWED");
    assert_eq!(last_user_message(&requests[2].body)["result"]["status"], "shipped");
    // Every proposal and call is in the trace.
    let records = f.sink.records("run-agent");
    let rejections: Vec<String> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Rejection)
        .map(|r| r.error.as_ref().unwrap().code.clone())
        .collect();
    assert_eq!(rejections, ["AGENT_TOOL_NOT_ALLOWED"]);
    let tools: Vec<&str> =
        records.iter().filter(|r| r.kind == RecordKind::ToolCall).filter_map(|r| r.tool.as_deref()).collect();
    assert_eq!(tools, ["order.lookup@1", "mail.send@1"]);
}

#[tokio::test]
async fn p1_t_rk01c_an_agent_step_of_a_workflow_records_its_prompt_pin_in_the_trace() {
    let f = fixture(4);
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "order.lookup", "input": {"order_id": 7}}"#);
    fake.script(r#"{"final": {"intent": "other"}}"#);
    let template = f.workflow.workflow.steps[0].agent.as_ref().unwrap().prompt.clone();
    assert_eq!(template, PromptTemplate::new(PROMPT), "the step's prompt is the template, byte for byte");
    let client = llm(&fake, template.clone());
    let out = run(&f, Some(&client), "run-pin").await;
    assert_eq!(out.termination, Termination::Completed, "{:?}", out.error);
    let records = f.sink.records("run-pin");
    assert_eq!(records[0].detail.as_ref().unwrap()["pins"]["llm"]["prompt_template_sha256"], template.sha256());
    let model_calls: Vec<_> = records.iter().filter(|r| r.kind == RecordKind::ModelCall).collect();
    assert_eq!(model_calls.len(), 2, "one record per turn");
    for call in model_calls {
        let pin = &call.detail.as_ref().unwrap()["llm"]["pin"];
        assert_eq!(pin["model"], "gpt-4o-mini");
        assert_eq!(pin["prompt_template_sha256"], template.sha256());
    }
}

#[tokio::test]
async fn an_agent_step_without_an_llm_client_fails_with_agent_llm_missing() {
    let f = fixture(4);
    let event = json!({"message": "Where is my order 1001?"});
    let out = f.workflow.workflow.run(&f.exec, &ctx(), "run-nollm", bounds(&f), event, json!({})).await.unwrap();
    assert_eq!(out.termination, Termination::ToolFailed);
    let error = out.error.unwrap();
    assert!(error.starts_with("AGENT_LLM_MISSING"), "{error}");
    assert_eq!(out.path, ["classify"], "the next step never ran");
    assert!(f.calls.lock().unwrap().is_empty());
    let records = f.sink.records("run-nollm");
    assert!(records.iter().any(|r| r.kind == RecordKind::Rejection
        && r.error.as_ref().is_some_and(|e| e.code == "AGENT_LLM_MISSING")));
}

#[tokio::test]
async fn an_agent_step_under_a_client_pinned_to_another_prompt_fails_with_agent_pin_mismatch() {
    let f = fixture(4);
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let client = llm(&fake, PromptTemplate::new("Another prompt. {{tools}}"));
    let out = run(&f, Some(&client), "run-mismatch").await;
    assert_eq!(out.termination, Termination::ToolFailed);
    assert!(out.error.as_deref().unwrap().starts_with("AGENT_PIN_MISMATCH"), "{:?}", out.error);
    assert!(fake.requests().is_empty(), "nothing was sent under the wrong pin");
}

#[tokio::test]
async fn an_agent_step_without_a_final_answer_within_max_turns_fails_the_step() {
    let f = fixture(2);
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1001}}"#);
    fake.script(r#"{"tool": "refund.issue", "input": {"order_id": 1002}}"#);
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let client = llm(&fake, PromptTemplate::new(PROMPT));
    let out = run(&f, Some(&client), "run-turns").await;
    assert_eq!(out.termination, Termination::ToolFailed);
    let error = out.error.unwrap();
    assert!(error.starts_with("BOUND_EXCEEDED") && error.contains("max_turns = 2"), "{error}");
    assert_eq!(fake.requests().len(), 2, "no third turn");
}
