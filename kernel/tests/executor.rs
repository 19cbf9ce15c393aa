//! The executor path end to end: validation, permission, bounds, loops,
//! timeouts, tracing, cost and redaction, with in-memory and SQLite traces.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::bounds::{Bounds, LoopPolicy, Termination};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::executor::{CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{MemoryTraceSink, RecordKind, TraceRecord, TraceSink};
use serde_json::{Value, json};

/// A tool that counts its calls and answers with a fixed behaviour.
struct Fake {
    calls: AtomicUsize,
    finished: AtomicUsize,
    behaviour: Behaviour,
}

#[derive(Clone)]
enum Behaviour {
    Echo,
    Sleep(Duration),
    Panic,
    Output(Value),
    Tokens(u64),
}

impl Fake {
    fn new(behaviour: Behaviour) -> Arc<Fake> {
        Arc::new(Fake { calls: AtomicUsize::new(0), finished: AtomicUsize::new(0), behaviour })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Tool for Fake {
    async fn call(&self, _call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let out = match &self.behaviour {
            Behaviour::Echo => ToolOutput { value: json!({"echo": input}), tokens: 0, provider_calls: 1 },
            Behaviour::Sleep(d) => {
                tokio::time::sleep(*d).await;
                ToolOutput::new(json!({"slept": true}))
            }
            Behaviour::Panic => panic!("tool bug"),
            Behaviour::Output(v) => ToolOutput::new(v.clone()),
            Behaviour::Tokens(n) => ToolOutput { value: json!({"intent": "wismo"}), tokens: *n, provider_calls: 1 },
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }
}

struct Fixture {
    exec: Executor,
    sink: Arc<MemoryTraceSink>,
    echo: Arc<Fake>,
    charge: Arc<Fake>,
    slow: Arc<Fake>,
}

fn contract(
    name: &str,
    side: SideEffect,
    input: Value,
    output: Value,
    timeout_ms: u64,
    price: PriceModel,
) -> ToolContract {
    ToolContract::new(name, "1", side, &input, &output, Duration::from_millis(timeout_ms), price).unwrap()
}

fn fixture_with(sink: Arc<dyn TraceSink>, memory: Arc<MemoryTraceSink>, policy: LoopPolicy) -> Fixture {
    let obj = |props: Value| json!({"type": "object", "properties": props});
    let mut registry = ToolRegistry::new();
    let free = PriceModel::default();
    registry
        .register(contract(
            "echo",
            SideEffect::Read,
            obj(json!({"msg": {"type": "string"}, "note": {"type": "string"}})),
            json!({"type": "object"}),
            1000,
            PriceModel::from_usd(0.001, 0.0),
        ))
        .unwrap();
    registry
        .register(contract(
            "charge",
            SideEffect::Financial,
            obj(json!({"amount": {"type": "integer"}})),
            json!({"type": "object"}),
            1000,
            free,
        ))
        .unwrap();
    registry
        .register(contract("slow", SideEffect::Write, json!({"type": "object"}), json!({"type": "object"}), 50, free))
        .unwrap();
    registry
        .register(contract("boom", SideEffect::Write, json!({"type": "object"}), json!({"type": "object"}), 1000, free))
        .unwrap();
    registry
        .register(contract(
            "liar",
            SideEffect::Read,
            json!({"type": "object"}),
            json!({"type": "object", "required": ["id"]}),
            1000,
            free,
        ))
        .unwrap();
    registry
        .register(contract(
            "llm",
            SideEffect::Read,
            json!({"type": "object"}),
            json!({"type": "object"}),
            1000,
            PriceModel::from_usd(0.0, 0.002),
        ))
        .unwrap();
    registry
        .register(contract(
            "unbound",
            SideEffect::Read,
            json!({"type": "object"}),
            json!({"type": "object"}),
            1000,
            free,
        ))
        .unwrap();
    let permissions =
        PermissionEnforcer::new(vec![Scope::new("agent:a", &["echo", "slow", "boom", "liar", "llm", "unbound"])]);
    let mut exec =
        Executor::new(registry, permissions, policy, RedactionPolicy::default(), sink, Arc::new(SystemClock));
    let echo = Fake::new(Behaviour::Echo);
    let charge = Fake::new(Behaviour::Echo);
    let slow = Fake::new(Behaviour::Sleep(Duration::from_secs(5)));
    exec.bind("echo", "1", echo.clone()).unwrap();
    exec.bind("charge", "1", charge.clone()).unwrap();
    exec.bind("slow", "1", slow.clone()).unwrap();
    exec.bind("boom", "1", Fake::new(Behaviour::Panic)).unwrap();
    exec.bind("liar", "1", Fake::new(Behaviour::Output(json!({"no_id": 1})))).unwrap();
    exec.bind("llm", "1", Fake::new(Behaviour::Tokens(1500))).unwrap();
    Fixture { exec, sink: memory, echo, charge, slow }
}

fn fixture() -> Fixture {
    let sink = Arc::new(MemoryTraceSink::new());
    fixture_with(sink.clone(), sink, LoopPolicy::default())
}

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("agent:a"), CorrelationId::new("corr-42"))
}

fn bounds() -> Bounds {
    Bounds { max_steps: 10, max_wall_time: Duration::from_secs(30), max_tokens: 2000, max_tool_calls: 10 }
}

fn kinds(records: &[TraceRecord]) -> Vec<RecordKind> {
    records.iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn p1_t01_valid_call_executes_and_is_traced_with_decision_and_cost() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({"model": "none"})).await.unwrap();
    let out = f.exec.call(&mut run, "echo", "1", json!({"msg": "hi"})).await.unwrap();
    assert_eq!(out, json!({"echo": {"msg": "hi"}}));
    assert_eq!(f.echo.calls(), 1);
    f.exec.finish(&mut run, Termination::Completed).await.unwrap();
    let records = f.sink.records("run-1");
    assert_eq!(kinds(&records), vec![RecordKind::RunStart, RecordKind::ToolCall, RecordKind::RunEnd]);
    let call = &records[1];
    assert_eq!(call.tool.as_deref(), Some("echo@1"));
    let decision = call.decision.as_ref().unwrap();
    assert!(decision.allowed);
    assert_eq!(
        (decision.principal.as_str(), decision.tenant.as_str(), decision.tool.as_str()),
        ("agent:a", "acme", "echo")
    );
    assert_eq!(call.cost.micro_usd, 1000);
    assert_eq!(call.cost.provider_calls, 1);
    assert_eq!(records[2].termination, Some(Termination::Completed));
    assert_eq!(records[2].cost.micro_usd, 1000);
}

#[tokio::test]
async fn p1_t01_neg_invalid_input_is_rejected_before_execution_with_a_path() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "echo", "1", json!({"msg": 42})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::SchemaInvalid);
    assert!(err.message().contains("/msg"), "{}", err.message());
    assert_eq!(f.echo.calls(), 0, "nothing ran");
    let records = f.sink.records("run-1");
    assert_eq!(records[1].kind, RecordKind::Rejection);
    assert_eq!(records[1].error.as_ref().unwrap().code, "SCHEMA_INVALID");
    assert_eq!(f.exec.counters().snapshot()["schema_reject_total"], 1);
    // The run goes on: a valid call still works.
    f.exec.call(&mut run, "echo", "1", json!({"msg": "ok"})).await.unwrap();
}

#[tokio::test]
async fn p1_t35_schema_errors_name_path_and_rule_but_never_the_value() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f
        .exec
        .call(&mut run, "echo", "1", json!({"msg": ["ada@example.com", "sk_live_abcdefghijklmnop"]}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SchemaInvalid);
    assert!(err.message().contains("/msg") && err.message().contains("type"), "{}", err.message());
    let all = format!("{} {}", err.message(), serde_json::to_string(&f.sink.all()).unwrap());
    assert!(!all.contains("ada@example.com") && !all.contains("sk_live_abcdefghijklmnop"), "{all}");
}

#[tokio::test]
async fn p1_t01_neg_unknown_field_is_rejected_before_execution() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "echo", "1", json!({"msg": "x", "override_limits": true})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::SchemaInvalid);
    assert!(err.message().contains("override_limits"), "{}", err.message());
    assert_eq!(f.echo.calls(), 0);
}

#[tokio::test]
async fn p1_t02_unknown_tool_or_version_is_refused_and_traced() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    assert_eq!(f.exec.call(&mut run, "rm_rf", "1", json!({})).await.unwrap_err().code(), ErrorCode::ToolUnknown);
    assert_eq!(f.exec.call(&mut run, "echo", "9", json!({})).await.unwrap_err().code(), ErrorCode::ToolUnknown);
    let records = f.sink.records("run-1");
    assert_eq!(records.iter().filter(|r| r.kind == RecordKind::Rejection).count(), 2);
    // A declared tool without an implementation is refused the same way.
    assert_eq!(f.exec.call(&mut run, "unbound", "1", json!({})).await.unwrap_err().code(), ErrorCode::ToolUnknown);
}

#[tokio::test]
async fn p1_t04_forbidden_call_is_denied_not_executed_and_traced() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "charge", "1", json!({"amount": 100})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert_eq!(f.charge.calls(), 0);
    let rec = &f.sink.records("run-1")[1];
    let d = rec.decision.as_ref().unwrap();
    assert!(!d.allowed);
    assert_eq!(
        (d.principal.as_str(), d.tenant.as_str(), d.tool.as_str(), d.action.as_str()),
        ("agent:a", "acme", "charge", "execute")
    );
    assert_eq!(f.exec.counters().snapshot()["permission_check_deny_total"], 1);
}

#[tokio::test]
async fn p1_t05_max_tool_calls_ends_the_run_with_that_reason() {
    let f = fixture();
    let mut b = bounds();
    b.max_tool_calls = 2;
    let mut run = f.exec.start(&ctx("acme"), "run-1", b, json!({})).await.unwrap();
    f.exec.call(&mut run, "echo", "1", json!({"msg": "1"})).await.unwrap();
    f.exec.call(&mut run, "echo", "1", json!({"msg": "2"})).await.unwrap();
    let err = f.exec.call(&mut run, "echo", "1", json!({"msg": "3"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BoundExceeded);
    assert_eq!(run.termination(), Some(Termination::MaxToolCalls));
    assert_eq!(f.echo.calls(), 2);
    let last = f.sink.records("run-1").pop().unwrap();
    assert_eq!((last.kind, last.termination), (RecordKind::RunEnd, Some(Termination::MaxToolCalls)));
    // A terminated run refuses everything.
    assert_eq!(f.exec.call(&mut run, "echo", "1", json!({})).await.unwrap_err().code(), ErrorCode::RunTerminated);
}

#[tokio::test]
async fn p1_t05_neg_max_steps_ends_the_run() {
    let f = fixture();
    let mut b = bounds();
    b.max_steps = 1;
    let mut run = f.exec.start(&ctx("acme"), "run-1", b, json!({})).await.unwrap();
    f.exec.begin_step(&mut run).await.unwrap();
    assert_eq!(f.exec.begin_step(&mut run).await.unwrap_err().code(), ErrorCode::BoundExceeded);
    assert_eq!(run.termination(), Some(Termination::MaxSteps));
}

#[tokio::test]
async fn p1_t06_max_tokens_ends_the_run_and_cost_counts_tokens() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    f.exec.call(&mut run, "llm", "1", json!({})).await.unwrap();
    assert_eq!(run.cost().tokens, 1500);
    assert_eq!(run.cost().micro_usd, 3000, "1.5k tokens at $0.002 per 1k");
    let err = f.exec.call(&mut run, "llm", "1", json!({"n": 2})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BoundExceeded);
    assert_eq!(run.termination(), Some(Termination::MaxTokens));
}

#[tokio::test(start_paused = true)]
async fn p1_t07_per_tool_timeout_really_cancels_the_call() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "slow", "1", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolTimeout);
    assert_eq!(f.slow.calls(), 1);
    // Long after the tool would have finished, it still has not: it was aborted.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(f.slow.finished.load(Ordering::SeqCst), 0);
    let rec = &f.sink.records("run-1")[1];
    assert_eq!(rec.error.as_ref().unwrap().code, "TOOL_TIMEOUT");
    assert_eq!(run.termination(), None, "a tool timeout fails the call, not the run");
}

#[tokio::test(start_paused = true)]
async fn p1_t07_neg_max_wall_time_ends_the_run() {
    let f = fixture();
    let mut b = bounds();
    b.max_wall_time = Duration::from_millis(20);
    let mut run = f.exec.start(&ctx("acme"), "run-1", b, json!({})).await.unwrap();
    // The 50 ms tool timeout is cut to the 20 ms the run has left.
    let err = f.exec.call(&mut run, "slow", "1", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BoundExceeded);
    assert_eq!(run.termination(), Some(Termination::MaxWallTime));
}

#[tokio::test]
async fn p1_t08_repeated_identical_calls_end_the_run_with_loop_detected() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    for _ in 0..3 {
        f.exec.call(&mut run, "echo", "1", json!({"msg": "same", "note": "x"})).await.unwrap();
    }
    // Key order does not hide a repetition: arguments are compared canonically.
    let err = f.exec.call(&mut run, "echo", "1", json!({"note": "x", "msg": "same"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::LoopDetected);
    assert_eq!(run.termination(), Some(Termination::LoopDetected));
    assert_eq!(f.echo.calls(), 3);
    let records = f.sink.records("run-1");
    assert!(records.iter().any(|r| r.kind == RecordKind::LoopDetected));
    assert_eq!(f.exec.counters().snapshot()["loop_detection_total"], 1);
}

#[tokio::test]
async fn p1_t09_every_record_carries_run_and_correlation_id() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-9", bounds(), json!({})).await.unwrap();
    f.exec.call(&mut run, "echo", "1", json!({"msg": "a"})).await.unwrap();
    let _ = f.exec.call(&mut run, "charge", "1", json!({"amount": 1})).await;
    f.exec.finish(&mut run, Termination::Completed).await.unwrap();
    let records = f.sink.records("run-9");
    assert_eq!(records.len(), 4);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.correlation_id, "corr-42");
        assert_eq!(r.seq, i as u64 + 1, "gapless sequence");
    }
}

#[tokio::test]
async fn p1_t10_cost_is_positive_for_runs_with_provider_or_model_calls() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    f.exec.call(&mut run, "llm", "1", json!({})).await.unwrap();
    f.exec.finish(&mut run, Termination::Completed).await.unwrap();
    let end = f.sink.records("run-1").pop().unwrap();
    assert!(end.cost.micro_usd > 0 && end.cost.tokens > 0 && end.cost.provider_calls > 0);
}

#[tokio::test]
async fn p1_t09_neg_a_run_whose_trace_cannot_be_written_fails_closed() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    f.sink.fail_after(1);
    let err = f.exec.call(&mut run, "echo", "1", json!({"msg": "x"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TraceWriteFailed, "the output is withheld");
    assert_eq!(run.termination(), Some(Termination::TraceWriteFailed));
    assert_eq!(
        f.exec.call(&mut run, "echo", "1", json!({"msg": "y"})).await.unwrap_err().code(),
        ErrorCode::RunTerminated
    );
    assert_eq!(f.echo.calls(), 1);
    // With no trace at all there is no run.
    let f = fixture();
    f.sink.fail_after(0);
    assert_eq!(
        f.exec.start(&ctx("acme"), "run-2", bounds(), json!({})).await.unwrap_err().code(),
        ErrorCode::TraceWriteFailed
    );
}

#[tokio::test]
async fn panicking_tool_is_tool_failed_and_traced() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "boom", "1", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert!(err.message().contains("panicked"));
    assert_eq!(f.sink.records("run-1")[1].error.as_ref().unwrap().code, "TOOL_FAILED");
}

#[tokio::test]
async fn p1_t01_neg_output_breaking_its_schema_is_rejected_and_traced() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let err = f.exec.call(&mut run, "liar", "1", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::OutputSchemaInvalid);
    assert_eq!(f.sink.records("run-1")[1].error.as_ref().unwrap().code, "OUTPUT_SCHEMA_INVALID");
}

#[tokio::test]
async fn p1_t35_secrets_in_inputs_and_outputs_never_reach_the_trace() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    let secret = "sk_live_51HqLyjWDarjtT1zdp7dcXYZabc";
    f.exec
        .call(
            &mut run,
            "echo",
            "1",
            json!({"msg": format!("key {secret} card 4242 4242 4242 4242"), "note": "mail bob@example.com"}),
        )
        .await
        .unwrap();
    let all = serde_json::to_string(&f.sink.all()).unwrap();
    for leaked in [secret, "4242 4242 4242 4242", "bob@example.com"] {
        assert!(!all.contains(leaked), "{leaked} reached the trace: {all}");
    }
}

#[tokio::test]
async fn p1_t09_traces_persist_in_the_store_per_tenant() {
    let db = autobiz_testkit::TestDatabase::sqlite();
    let store = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
    let memory = Arc::new(MemoryTraceSink::new());
    let f = fixture_with(Arc::new(store.clone()), memory, LoopPolicy::default());
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    f.exec.call(&mut run, "echo", "1", json!({"msg": "hi"})).await.unwrap();
    f.exec.finish(&mut run, Termination::Completed).await.unwrap();
    let trace = store.trace(&ctx("acme"), "run-1").await.unwrap();
    assert_eq!(kinds(&trace), vec![RecordKind::RunStart, RecordKind::ToolCall, RecordKind::RunEnd]);
    assert!(store.trace(&ctx("globex"), "run-1").await.unwrap().is_empty(), "another tenant sees no trace");
}

#[tokio::test]
async fn p1_t_rk08b_a_scanner_hit_in_an_allowlisted_field_is_masked_counted_and_alerted() {
    let f = fixture();
    let mut run = f.exec.start(&ctx("acme"), "run-1", bounds(), json!({})).await.unwrap();
    // `order_id` is allowlisted, so the scanners are the last line of defence.
    f.exec.call(&mut run, "llm", "1", json!({"order_id": "call bob@example.com"})).await.unwrap();
    let records = f.sink.records("run-1");
    assert_eq!(kinds(&records), vec![RecordKind::RunStart, RecordKind::ToolCall, RecordKind::RedactionAlert]);
    assert_eq!(records[1].input.as_ref().unwrap()["order_id"], "call [REDACTED:email]");
    let alert = records[2].detail.as_ref().unwrap();
    assert_eq!(alert["record_seq"], 2);
    assert_eq!(alert["redaction_alerts"][0]["kind"], "email");
    assert!(!serde_json::to_string(&f.sink.all()).unwrap().contains("bob@example.com"));
    assert_eq!(f.exec.counters().snapshot()["redaction_alert_total"], 1);
    assert_eq!(f.exec.redaction_stats().count(autobiz_kernel::redaction::DetectionKind::Email), 1);
}

mod generated {
    use proptest::prelude::*;

    use super::*;

    /// A secret or a piece of PII, as it could appear inside free text.
    fn planted() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9]{16,28}".prop_map(|s| format!("sk_live_{s}")),
            "[A-Za-z0-9]{12,20}".prop_map(|s| format!("rk_test_{s}")),
            "[A-Z0-9]{16}".prop_map(|s| format!("AKIA{s}")),
            "[A-Za-z0-9]{20,32}".prop_map(|s| format!("whsec_{s}")),
            ("[a-z]{2,8}", "[a-z]{2,8}").prop_map(|(u, d)| format!("{u}.x@{d}.example.com")),
            (
                prop::sample::select(vec![
                    "4242424242424242",
                    "5555555555554444",
                    "4000056655665556",
                    "378282246310005"
                ]),
                prop::sample::select(vec!["", " ", "-"])
            )
                .prop_map(|(card, sep)| card
                    .as_bytes()
                    .chunks(4)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join(sep)),
            "[2-9][0-9]{2}".prop_map(|area| format!("+1{area}5550123")),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "order_id",
            "status",
            "note",
            "msg",
            "amount",
            "sku",
            "tracking_number",
            "reason",
            "customer",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever the field, allowlisted or not, and wherever in the text,
        /// no planted secret reaches any persisted record.
        #[test]
        fn p1_t35_generated_secrets_never_reach_the_persisted_trace(
            plants in prop::collection::vec((field(), "[a-z ]{0,10}", planted(), "[a-z ]{0,10}"), 1..5)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let f = fixture();
            let mut input = serde_json::Map::new();
            for (i, (key, before, secret, after)) in plants.iter().enumerate() {
                input.insert(format!("{key}{}", if i == 0 { String::new() } else { format!("_{i}") }), json!(format!("{before}{secret}{after}")));
                input.insert(format!("nested_{i}"), json!({ key.as_str(): format!("{before} {secret} {after}") }));
            }
            rt.block_on(async {
                let mut run = f.exec.start(&ctx("acme"), "run-p", bounds(), json!({})).await.unwrap();
                f.exec.call(&mut run, "llm", "1", Value::Object(input)).await.unwrap();
            });
            let persisted = serde_json::to_string(&f.sink.all()).unwrap();
            for (_, _, secret, _) in &plants {
                prop_assert!(!persisted.contains(secret.as_str()), "{} reached the trace: {}", secret, persisted);
            }
        }
    }
}
