//! `autobiz hitl` and `autobiz breaker` as a user meets them, against a
//! temporary SQLite store seeded through the kernel: tables, JSON, exit
//! codes, the tenant boundary.

mod common;

use std::path::Path;
use std::sync::Arc;

use autobiz_kernel::breaker::{BreakerPolicy, Breakers};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::config::model::OnTimeout;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::hitl::{self, NewApproval, RuleMatch};
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use common::{autobiz, json_of};
use predicates::prelude::*;

fn acme() -> TenantContext {
    TenantContext::new("acme".parse().unwrap(), Principal::new("agent:a"), CorrelationId::new("corr-1"))
}

async fn store(dir: &Path) -> Store {
    let url = format!("sqlite://{}", dir.join(".autobiz/autobiz.db").display());
    Store::open(&url.parse().unwrap()).await.unwrap()
}

/// Two pending requests for tenant acme: a FINANCIAL refund (approvers
/// ops-lead) and a cancel (anyone). Returns their ids.
async fn seed_requests(dir: &Path) -> (String, String) {
    let store = store(dir).await;
    let mut ids = Vec::new();
    for (step, tool, side_effect, approvers) in [
        ("refund", "stripe.refund.create@1", SideEffect::Financial, vec!["ops-lead".to_owned()]),
        ("cancel", "shopify.order.cancel@1", SideEffect::Write, vec![]),
    ] {
        let new = NewApproval {
            run_id: "run-42".into(),
            step: step.into(),
            tool: tool.into(),
            side_effect,
            summary: serde_json::json!({"amount": 9000}),
            rule: RuleMatch { rule_index: Some(0), approvers, timeout_s: 3600, on_timeout: OnTimeout::Fail },
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        ids.push(store.hitl_create(&acme(), &new).await.unwrap().request_id);
    }
    store.close().await;
    (ids[0].clone(), ids[1].clone())
}

#[tokio::test]
async fn p1_t16_hitl_list_and_approve() {
    let dir = tempfile::tempdir().unwrap();
    let (refund, cancel) = seed_requests(dir.path()).await;
    assert_eq!(refund, hitl::request_id("run-42", "refund"));
    autobiz(dir.path()).args(["--tenant", "acme", "hitl", "list"]).assert().success().stdout(
        predicate::str::contains(refund.as_str())
            .and(predicate::str::contains(cancel.as_str()))
            .and(predicate::str::contains("stripe.refund.create@1 (FINANCIAL)"))
            .and(predicate::str::contains("PENDING"))
            .and(predicate::str::contains("ops-lead")),
    );
    let out = autobiz(dir.path())
        .args([
            "--tenant",
            "acme",
            "--format",
            "json",
            "hitl",
            "approve",
            &refund,
            "--approver",
            "ops-lead",
            "--reason",
            "ok",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let decided = json_of(&out);
    assert_eq!((decided["status"].as_str(), decided["approver"].as_str()), (Some("APPROVED"), Some("ops-lead")));
    // Pending now lists only the other one; --status all shows the decision.
    let out = autobiz(dir.path()).args(["--tenant", "acme", "--format", "json", "hitl", "list"]).assert().success();
    let pending = json_of(&out.get_output().stdout);
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["request_id"], cancel.as_str());
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "list", "--status", "all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("APPROVED").and(predicate::str::contains("ok")));
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "approve", &cancel, "--approver", "anyone-at-all"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("approved {cancel}")));
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no pending approval requests"));
}

#[tokio::test]
async fn p1_t17_hitl_deny_and_the_exit_codes_of_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (refund, _) = seed_requests(dir.path()).await;
    // Not an approver of this rule: exit 1, nothing decided.
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "approve", &refund, "--approver", "intern"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[HITL_APPROVER_NOT_ALLOWED]"));
    // Deny needs --reason (usage error, exit 2).
    autobiz(dir.path()).args(["--tenant", "acme", "hitl", "deny", &refund, "--approver", "ops-lead"]).assert().code(2);
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "deny", &refund, "--approver", "ops-lead", "--reason", "fraud suspected"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("denied {refund}")).and(predicate::str::contains("fraud suspected")));
    // Deciding a decided request: exit 1, HITL_ALREADY_DECIDED, in both formats.
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "approve", &refund, "--approver", "ops-lead"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("error[HITL_ALREADY_DECIDED]").and(predicate::str::contains("DENIED by ops-lead")),
        );
    let out = autobiz(dir.path())
        .args([
            "--tenant",
            "acme",
            "--format",
            "json",
            "hitl",
            "deny",
            &refund,
            "--approver",
            "ops-lead",
            "--reason",
            "x",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&out)["error"]["code"], "HITL_ALREADY_DECIDED");
    // Unknown id: exit 2; another tenant's id is unknown to it.
    autobiz(dir.path())
        .args(["--tenant", "acme", "hitl", "approve", "hitl_nope", "--approver", "ops-lead"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[HITL_NOT_FOUND]"));
    autobiz(dir.path())
        .args(["--tenant", "globex", "hitl", "approve", &refund, "--approver", "ops-lead"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[HITL_NOT_FOUND]"));
    autobiz(dir.path())
        .args(["--tenant", "globex", "hitl", "list", "--status", "all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no approval requests"));
    // No tenant: exit 2.
    autobiz(dir.path()).args(["hitl", "list"]).assert().code(2).stderr(predicate::str::contains("TENANT_REQUIRED"));
}

#[tokio::test]
async fn p1_task_26_breaker_list_and_audited_reset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store(dir.path()).await;
        let b = Breakers::new(store.clone(), BreakerPolicy::default(), Arc::new(SystemClock)).unwrap();
        for _ in 0..5 {
            b.acquire(&acme(), "stripe").await.unwrap().failure().await.unwrap();
        }
        b.acquire(&acme(), "printful").await.unwrap().success().await.unwrap();
        store.close().await;
    }
    autobiz(dir.path()).args(["--tenant", "acme", "breaker", "list"]).assert().success().stdout(
        predicate::str::contains("stripe")
            .and(predicate::str::contains("OPEN"))
            .and(predicate::str::contains("printful")),
    );
    autobiz(dir.path()).args(["--tenant", "acme", "breaker", "reset", "stripe"]).assert().code(2);
    autobiz(dir.path())
        .args(["--tenant", "acme", "breaker", "reset", "stripe", "--by", "ops-lead"])
        .assert()
        .success()
        .stdout(predicate::str::contains("breaker stripe reset to CLOSED by ops-lead"));
    let out = autobiz(dir.path()).args(["--tenant", "acme", "--format", "json", "breaker", "list"]).assert().success();
    let list = json_of(&out.get_output().stdout);
    let states: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|b| (b["name"].as_str().unwrap(), b["state"].as_str().unwrap())).collect();
    assert_eq!(states, vec![("printful", "CLOSED"), ("stripe", "CLOSED")]);
    // The reset is in the audit log.
    let store = store(dir.path()).await;
    let audit = store.audit_events(&acme(), 5).await.unwrap();
    assert!(
        audit.iter().any(|a| a.event.action == "breaker_reset" && a.event.outcome == "reset from OPEN by ops-lead")
    );
    store.close().await;
    autobiz(dir.path())
        .args(["--tenant", "acme", "breaker", "reset", "nope", "--by", "ops-lead"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[BREAKER_NOT_FOUND]"));
    autobiz(dir.path())
        .args(["--tenant", "globex", "breaker", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no circuit breakers"));
    autobiz(dir.path()).args(["breaker", "list"]).assert().code(2).stderr(predicate::str::contains("TENANT_REQUIRED"));
}
