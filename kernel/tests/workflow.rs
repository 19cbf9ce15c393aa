//! Workflows through the executor: chained inputs, branches, failures and
//! the termination reasons they end with.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use autobiz_kernel::bounds::{Bounds, LoopPolicy, Termination};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::ToolContract as Contract;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::executor::{ApprovalGate, CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{MemoryTraceSink, RecordKind};
use autobiz_kernel::workflow::{Step, Workflow};
use autobiz_kernel::{Error, ErrorCode};
use serde_json::{Value, json};

/// Answers from a closure over the input; counts calls.
struct FnTool<F>(F, AtomicUsize);

#[async_trait::async_trait]
impl<F> Tool for FnTool<F>
where
    F: Fn(&Value) -> autobiz_kernel::Result<Value> + Send + Sync,
{
    async fn call(&self, _call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(ToolOutput { value: (self.0)(&input)?, tokens: 0, provider_calls: 1 })
    }
}

fn tool<F>(f: F) -> Arc<FnTool<F>>
where
    F: Fn(&Value) -> autobiz_kernel::Result<Value> + Send + Sync,
{
    Arc::new(FnTool(f, AtomicUsize::new(0)))
}

fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

/// Approves everything and remembers what it approved.
#[derive(Default)]
struct Approver(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl ApprovalGate for Approver {
    async fn approve(&self, call: &CallContext, _contract: &Contract, _input: &Value) -> autobiz_kernel::Result<()> {
        self.0.lock().unwrap().push(call.tool.clone());
        Ok(())
    }
}

type VoidTool = FnTool<fn(&Value) -> autobiz_kernel::Result<Value>>;

struct Shop {
    exec: Executor,
    sink: Arc<MemoryTraceSink>,
    voids: Arc<VoidTool>,
}

fn shop(capture_fails: bool) -> Shop {
    shop_with(capture_fails, Some(Arc::new(Approver::default())))
}

fn shop_with(capture_fails: bool, approvals: Option<Arc<Approver>>) -> Shop {
    let mut r = ToolRegistry::new();
    let c = |name: &str, side, input: Value| {
        ToolContract::new(
            name,
            "1",
            side,
            &input,
            &json!({"type": "object"}),
            Duration::from_secs(1),
            PriceModel::from_usd(0.0001, 0.0),
        )
        .unwrap()
    };
    r.register(c("order.get", SideEffect::Read, obj(json!({"order_id": {"type": "string"}}), &["order_id"]))).unwrap();
    r.register(c(
        "pay.capture",
        SideEffect::Financial,
        obj(json!({"amount": {"type": "integer"}, "order_id": {"type": "string"}}), &["amount"]),
    ))
    .unwrap();
    r.register(c("pay.void", SideEffect::Financial, obj(json!({"order_id": {"type": "string"}}), &["order_id"])))
        .unwrap();
    r.register(c(
        "mail.send",
        SideEffect::Notify,
        obj(json!({"to": {"type": "string"}, "template": {"type": "string"}}), &["to", "template"]),
    ))
    .unwrap();
    let perms =
        PermissionEnforcer::new(vec![Scope::new("agent:shop", &["order.get", "pay.capture", "pay.void", "mail.send"])]);
    let sink = Arc::new(MemoryTraceSink::new());
    let mut exec =
        Executor::new(r, perms, LoopPolicy::default(), RedactionPolicy::default(), sink.clone(), Arc::new(SystemClock));
    if let Some(gate) = approvals {
        exec = exec.with_approvals(gate);
    }
    exec.bind(
        "order.get",
        "1",
        tool(|i: &Value| Ok(json!({"id": i["order_id"], "total": 4200, "email": "ann@example.com"}))),
    )
    .unwrap();
    if capture_fails {
        exec.bind("pay.capture", "1", tool(|_: &Value| Err(Error::new(ErrorCode::ToolFailed, "card_declined"))))
            .unwrap();
    } else {
        exec.bind("pay.capture", "1", tool(|i: &Value| Ok(json!({"id": "pi_1", "amount": i["amount"]})))).unwrap();
    }
    let voids: Arc<VoidTool> = Arc::new(FnTool(|_| Ok(json!({"status": "canceled"})), AtomicUsize::new(0)));
    exec.bind("pay.void", "1", voids.clone()).unwrap();
    exec.bind("mail.send", "1", tool(|_: &Value| Ok(json!({"status": "queued"})))).unwrap();
    Shop { exec, sink, voids }
}

fn step(id: &str, tool: &str, input: Value) -> Step {
    Step { id: id.into(), tool: tool.into(), version: "1".into(), input, next: None, on_error: None }
}

fn fulfil() -> Workflow {
    let mut capture =
        step("capture", "pay.capture", json!({"amount": "$.fetch.total", "order_id": "$.event.order_id"}));
    capture.on_error = Some("void".into());
    let mut email = step("email", "mail.send", json!({"to": "$.fetch.email", "template": "order-confirmed"}));
    email.next = Some("end".into());
    Workflow {
        id: "WF01".into(),
        name: "OrderFulfillWorkflow".into(),
        steps: vec![
            step("fetch", "order.get", json!({"order_id": "$.event.order_id"})),
            capture,
            email,
            step("void", "pay.void", json!({"order_id": "$.event.order_id"})),
        ],
    }
}

fn ctx() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:shop"), CorrelationId::new("corr-wf"))
}

fn bounds() -> Bounds {
    Bounds { max_steps: 10, max_wall_time: Duration::from_secs(10), max_tokens: 0, max_tool_calls: 10 }
}

#[tokio::test]
async fn happy_path_chains_outputs_and_completes() {
    let s = shop(false);
    let out = fulfil().run(&s.exec, &ctx(), "run-1", bounds(), json!({"order_id": "1001"}), json!({})).await.unwrap();
    assert_eq!(out.termination, Termination::Completed);
    assert_eq!(out.path, vec!["fetch", "capture", "email"]);
    assert_eq!(out.outputs["capture"], json!({"id": "pi_1", "amount": 4200}));
    assert_eq!(s.voids.1.load(Ordering::SeqCst), 0, "no compensation on success");
    assert!(out.cost.micro_usd > 0);
    let records = s.sink.records("run-1");
    assert_eq!(records.last().unwrap().termination, Some(Termination::Completed));
    // Each step's trace record carries the state diff it made, redacted:
    // `amount` is allowlisted, `id` too; the e-mail of `fetch` is filtered.
    let capture = records.iter().find(|r| r.tool.as_deref() == Some("pay.capture@1")).unwrap();
    assert_eq!(
        capture.state_diff,
        Some(json!([{"op": "add", "path": "/capture", "value": {"id": "pi_1", "amount": 4200}}]))
    );
    let fetch = records.iter().find(|r| r.tool.as_deref() == Some("order.get@1")).unwrap();
    assert_eq!(fetch.state_diff.as_ref().unwrap()[0]["value"]["email"], "[FILTERED]");
}

#[tokio::test]
async fn a_failed_step_takes_its_on_error_branch() {
    let s = shop(true);
    let out = fulfil().run(&s.exec, &ctx(), "run-1", bounds(), json!({"order_id": "1001"}), json!({})).await.unwrap();
    assert_eq!(out.path, vec!["fetch", "capture", "void"]);
    assert_eq!(out.termination, Termination::Completed);
    assert!(out.error.unwrap().contains("card_declined"));
    assert_eq!(s.voids.1.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn p1_t01_neg_an_unresolvable_reference_ends_the_run_before_the_tool_runs() {
    let s = shop(false);
    let out = fulfil().run(&s.exec, &ctx(), "run-1", bounds(), json!({"no_order": true}), json!({})).await.unwrap();
    assert_eq!(out.termination, Termination::SchemaInvalid);
    assert_eq!(out.path, vec!["fetch"]);
    assert!(out.error.unwrap().contains("$.event.order_id"));
}

#[tokio::test]
async fn p1_t05_a_cycle_is_stopped_by_the_bounds() {
    let s = shop(false);
    let mut again = step("fetch", "order.get", json!({"order_id": "$.event.order_id"}));
    again.next = Some("fetch".into());
    let wf = Workflow { id: "WF06".into(), name: "spin".into(), steps: vec![again] };
    let out = wf.run(&s.exec, &ctx(), "run-1", bounds(), json!({"order_id": "1"}), json!({})).await.unwrap();
    // The same call four times is a loop before ten steps are used.
    assert_eq!(out.termination, Termination::LoopDetected);
    let mut b = bounds();
    b.max_steps = 2;
    let out = wf.run(&s.exec, &ctx(), "run-2", b, json!({"order_id": "1"}), json!({})).await.unwrap();
    assert_eq!(out.termination, Termination::MaxSteps);
    let end = s.sink.records("run-2").pop().unwrap();
    assert_eq!((end.kind, end.termination), (RecordKind::RunEnd, Some(Termination::MaxSteps)));
}

#[tokio::test]
async fn p1_t04_a_step_outside_the_principals_scope_ends_the_run_permission_denied() {
    let s = shop(false);
    let other = TenantContext::new("acme".parse().unwrap(), Principal::new("agent:intruder"), CorrelationId::new("c"));
    let out = fulfil().run(&s.exec, &other, "run-1", bounds(), json!({"order_id": "1"}), json!({})).await.unwrap();
    assert_eq!(out.termination, Termination::PermissionDenied);
    assert!(out.outputs.is_empty());
}

#[tokio::test]
async fn inv07_financial_steps_without_an_approval_gate_never_run() {
    let s = shop_with(false, None);
    let out = fulfil().run(&s.exec, &ctx(), "run-1", bounds(), json!({"order_id": "1001"}), json!({})).await.unwrap();
    // capture is refused; its on_error branch (void) is FINANCIAL too and is refused as well.
    assert_eq!(out.path, vec!["fetch", "capture", "void"]);
    assert_eq!(out.termination, Termination::ApprovalRequired);
    assert!(!out.outputs.contains_key("capture") && !out.outputs.contains_key("void"));
    assert_eq!(s.voids.1.load(Ordering::SeqCst), 0);
    let refusals = s
        .sink
        .records("run-1")
        .into_iter()
        .filter(|r| r.error.as_ref().is_some_and(|e| e.code == "APPROVAL_REQUIRED"))
        .count();
    assert_eq!(refusals, 2);
    assert_eq!(s.exec.counters().snapshot()["approval_refused_total"], 2);
}
