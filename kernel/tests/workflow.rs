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
    Step {
        id: id.into(),
        tool: tool.into(),
        version: "1".into(),
        input,
        next: None,
        on_error: None,
        agent: None,
        compensate_with: None,
        retry: None,
    }
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

// --- Transcripts and replay (INV-06, P1-T15) ---------------------------------

mod replay {
    use autobiz_kernel::engine::{ApprovalPolicy, Engine, RunSpec, Verdict};
    use autobiz_kernel::replay::{ReplayOutcome, replay};
    use autobiz_kernel::run::{RunStatus, StepCall};
    use autobiz_kernel::transcript::{Transcript, TranscriptWriter};

    use super::*;

    const CONFIG: &str = "cfg-hash-1";

    async fn record(s: &Shop, wf: &Workflow, event: Value) -> (autobiz_kernel::engine::RunReport, String) {
        let spec = RunSpec {
            workflow: wf,
            ctx: ctx(),
            run_id: "run-r".into(),
            bounds: bounds(),
            event,
            pins: json!({"model": "none"}),
            config_hash: CONFIG.into(),
        };
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).run(&spec, &mut w).await.unwrap();
        (report, w.lines().join("\n"))
    }

    fn replayed(s: &Shop, wf: &Workflow, text: &str) -> ReplayOutcome {
        replay(&Transcript::parse(text).unwrap(), wf, s.exec.registry(), CONFIG).unwrap()
    }

    /// Re-chain a transcript after editing it, as a forger would, so that
    /// only replay can tell.
    fn rechain(text: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut prev = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["prev"] = json!(prev);
            let raw = serde_json::to_string(&v).unwrap();
            prev = hex::encode(Sha256::digest(raw.as_bytes()));
            out.push(raw);
        }
        out.join("\n")
    }

    #[tokio::test]
    async fn p1_t15_replay_reproduces_state_hash_and_receipts() {
        for capture_fails in [false, true] {
            let s = shop(capture_fails);
            let (report, text) = record(&s, &fulfil(), json!({"order_id": "1001"})).await;
            let ReplayOutcome::Identical(r) = replayed(&s, &fulfil(), &text) else {
                panic!("diverged: {:?}", replayed(&s, &fulfil(), &text))
            };
            assert_eq!(r.state_sha256, report.state_sha256);
            assert_eq!(r.receipts, report.receipts.len());
            // Capture and e-mail, or only the void: side effects have
            // receipts, reads and failed calls do not.
            assert_eq!(report.receipts.len(), if capture_fails { 1 } else { 2 });
            assert!(
                report.receipts.iter().all(|d| d.external_key.starts_with("autobiz:") && d.external_key.len() == 40)
            );
        }
    }

    #[tokio::test]
    async fn p1_t15_a_tampered_response_is_the_first_divergence() {
        let s = shop(false);
        let (_, text) = record(&s, &fulfil(), json!({"order_id": "1001"})).await;
        // The fetched total changes: the capture request no longer matches.
        let forged = rechain(&text.replace("\"total\":4200", "\"total\":1"));
        let ReplayOutcome::Diverged(d) = replayed(&s, &fulfil(), &forged) else { panic!("not detected") };
        assert_eq!((d.what.as_str(), d.step.as_deref()), ("request", Some("capture")), "{d:?}");
        assert_eq!(
            (d.expected["input"]["amount"].clone(), d.actual["input"]["amount"].clone()),
            (json!(4200), json!(1))
        );
        // Without re-chaining, the reader refuses the file before replay.
        let edited = text.replace("\"total\":4200", "\"total\":1");
        assert_eq!(Transcript::parse(&edited).unwrap_err().code(), ErrorCode::TranscriptCorrupt);
    }

    /// `n` notification steps, each a side effect with its own key and receipt.
    fn mailing(n: usize) -> Workflow {
        let steps = (0..n)
            .map(|i| step(&format!("m{i}"), "mail.send", json!({"to": "$.event.to", "template": format!("t{i}")})));
        Workflow { id: "WF01".into(), name: "Mailing".into(), steps: steps.collect() }
    }

    #[tokio::test]
    async fn p1_t15_a_long_replay_checks_every_key_and_receipt_hashed_ahead() {
        // Long enough for replay to hash on a second thread.
        let (s, wf) = (shop_with(false, None), mailing(200));
        let spec = RunSpec {
            workflow: &wf,
            ctx: ctx(),
            run_id: "run-long".into(),
            bounds: Bounds { max_steps: 1_000, max_tool_calls: 1_000, ..bounds() },
            event: json!({"to": "ann@example.com"}),
            pins: json!({}),
            config_hash: CONFIG.into(),
        };
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).run(&spec, &mut w).await.unwrap();
        let text = w.lines().join("\n");
        assert!(text.lines().count() > 400);
        let ReplayOutcome::Identical(r) = replayed(&s, &wf, &text) else { panic!("diverged") };
        assert_eq!((r.state_sha256, r.receipts), (report.state_sha256.clone(), 200));
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() as u64 + 1;
        // A late request's key, a late response's output, a receipt: each
        // forged (and re-chained) is found.
        let key = &report.receipts[150].external_key;
        let forged =
            rechain(&text.replacen(&format!("\"idempotency_key\":\"{key}\""), "\"idempotency_key\":\"autobiz:0\"", 1));
        let ReplayOutcome::Diverged(d) = replayed(&s, &wf, &forged) else { panic!("a forged key replayed") };
        assert_eq!((d.what.as_str(), d.step.as_deref(), d.line), ("idempotency_key", Some("m150"), line_of(key)));
        let last = text.lines().rev().nth(1).unwrap();
        let forged_last = last.replace("\"queued\"", "\"sent\"");
        let forged = rechain(&text.replace(last, &forged_last));
        let ReplayOutcome::Diverged(d) = replayed(&s, &wf, &forged) else { panic!("a forged output replayed") };
        assert_eq!(d.what, "state_hash", "{d:?}");
        let hash = &report.receipts[199].response_sha256;
        let forged = rechain(&text.replace(hash.as_str(), &"0".repeat(64)));
        let ReplayOutcome::Diverged(d) = replayed(&s, &wf, &forged) else { panic!("a forged receipt replayed") };
        assert_eq!(d.what, "receipts", "{d:?}");
    }

    #[tokio::test]
    async fn p1_t15_a_changed_workflow_diverges_at_the_step_that_differs() {
        let s = shop(false);
        let (_, text) = record(&s, &fulfil(), json!({"order_id": "1001"})).await;
        let mut changed = fulfil();
        changed.steps[2].input = json!({"to": "$.fetch.email", "template": "other"});
        let ReplayOutcome::Diverged(d) = replayed(&s, &changed, &text) else { panic!("not detected") };
        assert_eq!((d.what.as_str(), d.step.as_deref()), ("request", Some("email")));
        assert_eq!(d.expected["input"]["template"], "order-confirmed");
        assert_eq!(d.actual["input"]["template"], "other");
    }

    #[tokio::test]
    async fn p1_t15_another_config_or_a_cut_transcript_is_an_input_error() {
        let s = shop(false);
        let (_, text) = record(&s, &fulfil(), json!({"order_id": "1001"})).await;
        let t = Transcript::parse(&text).unwrap();
        let e = replay(&t, &fulfil(), s.exec.registry(), "another").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ReplayConfigMismatch);
        let cut: Vec<&str> = text.lines().collect();
        let cut = cut[..cut.len() - 1].join("\n");
        let e = replay(&Transcript::parse(&cut).unwrap(), &fulfil(), s.exec.registry(), CONFIG).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TranscriptTruncated);
    }

    /// Requires a human for pay.capture and answers from a script.
    struct Policy(std::sync::Mutex<Verdict>);

    #[async_trait::async_trait]
    impl ApprovalPolicy for Policy {
        async fn check(
            &self,
            _ctx: &TenantContext,
            _run: &str,
            call: &StepCall,
            _c: &Contract,
        ) -> autobiz_kernel::Result<Verdict> {
            Ok(if call.tool == "pay.capture" { self.0.lock().unwrap().clone() } else { Verdict::NotRequired })
        }
    }

    #[tokio::test]
    async fn inv07_a_pending_approval_pauses_and_a_denial_aborts_both_replayable() {
        let s = shop_with(false, None);
        let wf = fulfil();
        let spec = RunSpec {
            workflow: &wf,
            ctx: ctx(),
            run_id: "run-h".into(),
            bounds: bounds(),
            event: json!({"order_id": "1"}),
            pins: json!({}),
            config_hash: CONFIG.into(),
        };
        let pending = Policy(std::sync::Mutex::new(Verdict::Pending { request_id: "h1".into() }));
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).with_approvals(&pending).run(&spec, &mut w).await.unwrap();
        assert_eq!((report.status, report.waiting_for.as_deref()), (RunStatus::WaitingApproval, Some("h1")));
        assert_eq!(report.path, vec!["fetch"], "the capture did not run");

        let denied = Policy(std::sync::Mutex::new(Verdict::Denied { request_id: "h1".into(), approver: "ops".into() }));
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).with_approvals(&denied).run(&spec, &mut w).await.unwrap();
        assert_eq!((report.status, report.termination), (RunStatus::Aborted, Some(Termination::HitlDenied)));
        assert!(matches!(replayed(&s, &wf, &w.lines().join("\n")), ReplayOutcome::Identical(_)));

        // Approved (by policy, with no gate on the executor): money moves.
        let ok = Policy(std::sync::Mutex::new(Verdict::Approved { request_id: "h1".into(), approver: "ops".into() }));
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).with_approvals(&ok).run(&spec, &mut w).await.unwrap();
        assert_eq!(report.status, RunStatus::Completed);
        assert!(matches!(replayed(&s, &wf, &w.lines().join("\n")), ReplayOutcome::Identical(_)));

        // FINANCIAL timeout fails the run.
        let expired = Policy(std::sync::Mutex::new(Verdict::Expired { request_id: "h1".into(), proceed: false }));
        let mut w = TranscriptWriter::memory();
        let report = Engine::new(&s.exec).with_approvals(&expired).run(&spec, &mut w).await.unwrap();
        assert_eq!((report.status, report.termination), (RunStatus::Failed, Some(Termination::HitlTimeout)));
        assert!(matches!(replayed(&s, &wf, &w.lines().join("\n")), ReplayOutcome::Identical(_)));
    }
}
