//! Human approvals (INV-07, P1-T16, P1-T17, P1-T07-NEG): which calls need a
//! human, the persisted request and its lifecycle, the database's own
//! refusal to change a decision, and the Slack adapter against a local fake.
//! Tests named by `both!` run on SQLite and on a fresh PostgreSQL database.

use std::collections::BTreeSet;
use std::sync::Arc;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::clock::ManualClock;
use autobiz_kernel::config::model::{HitlPolicy, HitlRule, Model, OnTimeout};
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::hitl::slack::SlackNotifier;
use autobiz_kernel::hitl::{
    self, Approval, ApprovalEvent, ApprovalState, Decision, HitlRules, NewApproval, RuleMatch, StatusFilter,
    TRANSITIONS,
};
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_testkit::{TestDatabase, both};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(
        tenant.parse().unwrap(),
        Principal::new("test:ops"),
        CorrelationId::new(format!("corr-{tenant}")),
    )
}

fn url(s: &str) -> DatabaseUrl {
    s.parse().unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// Migrate as the owner, then open as the kernel role on a manual clock.
async fn migrated(db: &TestDatabase) -> (Store, Arc<ManualClock>) {
    Store::open_admin(&url(db.admin_url())).await.unwrap().migrate().await.unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    (Store::open_with_clock(&url(db.kernel_url()), clock.clone()).await.unwrap(), clock)
}

fn rule(approvers: &[&str], on_timeout: OnTimeout) -> RuleMatch {
    RuleMatch {
        rule_index: Some(0),
        approvers: approvers.iter().map(|s| s.to_string()).collect(),
        timeout_s: 3600,
        on_timeout,
    }
}

fn refund(run: &str, approvers: &[&str]) -> NewApproval {
    NewApproval {
        run_id: run.to_owned(),
        step: "refund".to_owned(),
        tool: "stripe.refund.create@1".to_owned(),
        side_effect: SideEffect::Financial,
        summary: json!({"amount": 9000, "currency": "usd", "payment_intent": "[FILTERED]"}),
        rule: rule(approvers, OnTimeout::Fail),
        expires_at: t0() + Duration::hours(1),
    }
}

// --- Which calls need a human -----------------------------------------------------

fn model(hitl: Vec<HitlRule>) -> Model {
    let mut m: Model = serde_json::from_value(json!({
        "business": {"name": "t"},
        "bounds": {"max_steps": 1, "max_wall_time_ms": 1, "max_tokens": 1, "max_tool_calls": 1},
        "tools": []
    }))
    .unwrap();
    m.hitl = hitl;
    m
}

fn hitl_rule(tool: &str, when: Option<&str>, policy: HitlPolicy, on_timeout: OnTimeout) -> HitlRule {
    HitlRule {
        tool: tool.into(),
        when: when.map(str::to_owned),
        timeout_s: 60,
        on_timeout,
        approvers: vec!["ops-lead".into()],
        policy,
    }
}

#[test]
fn inv07_financial_calls_need_a_human_and_conditions_fail_closed() {
    let rules = HitlRules::from_model(&model(vec![
        hitl_rule("stripe.refund.create", Some("amount > 5000"), HitlPolicy::RequireApproval, OnTimeout::Escalate),
        hitl_rule("shopify.order.cancel", Some("reason == \"fraud\""), HitlPolicy::RequireApproval, OnTimeout::Proceed),
        hitl_rule("sendgrid.mail.send", None, HitlPolicy::AutoApprove, OnTimeout::Fail),
    ]))
    .unwrap();
    let fin = SideEffect::Financial;
    // Over the threshold: approval, and a FINANCIAL timeout is FAIL whatever the rule says.
    let m = rules.required("stripe.refund.create", "1", fin, &json!({"amount": 9000})).unwrap();
    assert_eq!((m.rule_index, m.on_timeout, m.approvers.clone()), (Some(0), OnTimeout::Fail, vec!["ops-lead".into()]));
    // Under it: the business's threshold lets it through.
    assert_eq!(rules.required("stripe.refund.create", "1", fin, &json!({"amount": 100})), None);
    // Cannot be evaluated: approval (fail closed).
    assert!(rules.required("stripe.refund.create", "1", fin, &json!({})).is_some());
    assert!(rules.required("stripe.refund.create", "1", fin, &json!({"amount": "9000"})).is_some());
    // A FINANCIAL tool no rule names still needs a human (built-in rule, FAIL on timeout).
    let m = rules.required("stripe.payout.create", "1", fin, &json!({})).unwrap();
    assert_eq!((m.rule_index, m.on_timeout), (None, OnTimeout::Fail));
    // Non-financial: the rule's condition and policy decide.
    let w = SideEffect::Write;
    assert_eq!(rules.required("shopify.order.cancel", "1", w, &json!({"reason": "customer"})), None);
    let m = rules.required("shopify.order.cancel", "1", w, &json!({"reason": "fraud"})).unwrap();
    assert_eq!(m.on_timeout, OnTimeout::Proceed);
    assert_eq!(rules.required("sendgrid.mail.send", "1", SideEffect::Notify, &json!({})), None);
    assert_eq!(rules.required("shopify.order.get", "1", SideEffect::Read, &json!({})), None);
    // AUTO_APPROVE never lets a FINANCIAL call through, even on a model that skipped CC-04.
    let lax = HitlRules::from_model(&model(vec![hitl_rule(
        "stripe.refund.create",
        None,
        HitlPolicy::AutoApprove,
        OnTimeout::Proceed,
    )]))
    .unwrap();
    let m = lax.required("stripe.refund.create", "1", fin, &json!({"amount": 1})).unwrap();
    assert_eq!(m.on_timeout, OnTimeout::Fail);
    // A condition that does not parse refuses the rule set.
    let bad = HitlRules::from_model(&model(vec![hitl_rule(
        "x",
        Some("amount >"),
        HitlPolicy::RequireApproval,
        OnTimeout::Fail,
    )]))
    .unwrap_err();
    assert_eq!(bad.code(), ErrorCode::HitlConditionInvalid);
    assert!(bad.message().contains("rule 0") && bad.message().contains("column 9"), "{}", bad.message());
}

// --- Requests and their lifecycle -----------------------------------------------------

async fn a_matching_step_persists_one_request_and_approve_records_the_approver(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let acme = ctx("acme");
    let before = counter("hitl_request_created_total");
    let created = store.hitl_create(&acme, &refund("run-1", &["ops-lead"])).await.unwrap();
    assert_eq!(created.status, ApprovalState::Pending);
    assert_eq!(created.request_id, hitl::request_id("run-1", "refund"));
    assert_eq!((created.tenant_id.as_str(), created.side_effect), ("acme", SideEffect::Financial));
    assert_eq!(created.summary["amount"], 9000);
    assert!(counter("hitl_request_created_total") > before);
    // Creating again (a resumed run) returns the same request, not a second one.
    let again = store.hitl_create(&acme, &refund("run-1", &["ops-lead"])).await.unwrap();
    assert_eq!(again, created);
    assert_eq!(store.hitl_list(&acme, StatusFilter::Pending).await.unwrap(), vec![created.clone()]);
    assert_eq!(store.hitl_find(&acme, "run-1", "refund").await.unwrap(), Some(created.clone()));
    assert_eq!(store.hitl_find(&acme, "run-1", "charge").await.unwrap(), None);

    let now = t0() + Duration::minutes(5);
    let approved = store
        .hitl_decide(&acme, &created.request_id, Decision::Approve, "ops-lead", Some("checked the order"), now)
        .await
        .unwrap();
    assert_eq!(approved.status, ApprovalState::Approved);
    assert_eq!(approved.approver.as_deref(), Some("ops-lead"));
    assert_eq!(approved.reason.as_deref(), Some("checked the order"));
    assert_eq!(approved.decided_at, Some(now));
    assert!(store.hitl_list(&acme, StatusFilter::Pending).await.unwrap().is_empty());
    assert_eq!(store.hitl_list(&acme, StatusFilter::All).await.unwrap(), vec![approved.clone()]);
    // The run, resumed, finds its request approved.
    assert_eq!(store.hitl_find(&acme, "run-1", "refund").await.unwrap().unwrap().status, ApprovalState::Approved);
    let audit = store.audit_events(&acme, 10).await.unwrap();
    assert!(
        audit.iter().any(|a| a.event.action == "hitl_approve"
            && a.event.resource == format!("hitl/{}", created.request_id)
            && a.event.outcome == "approved by ops-lead"),
        "{audit:#?}"
    );
}
both!(
    p1_t16_a_matching_step_persists_one_request_and_approve_records_the_approver,
    a_matching_step_persists_one_request_and_approve_records_the_approver
);

async fn one_runs_requests_are_read_without_another_runs_or_tenants(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let (acme, globex) = (ctx("acme"), ctx("globex"));
    let first = store.hitl_create(&acme, &refund("run-a", &[])).await.unwrap();
    store.hitl_create(&acme, &refund("run-b", &[])).await.unwrap();
    // The same run id in another tenant: never returned to acme.
    let theirs = store.hitl_create(&globex, &refund("run-a", &[])).await.unwrap();
    let mut capture = refund("run-a", &[]);
    capture.step = "capture".to_owned();
    let second = store.hitl_create(&acme, &capture).await.unwrap();
    let second = store.hitl_decide(&acme, &second.request_id, Decision::Approve, "ops", None, t0()).await.unwrap();

    // Every state, oldest first; run-b's request and globex's are not there.
    assert_eq!(store.hitl_of_run(&acme, "run-a").await.unwrap(), vec![first, second]);
    assert_eq!(store.hitl_of_run(&globex, "run-a").await.unwrap(), vec![theirs]);
    let b = store.hitl_of_run(&acme, "run-b").await.unwrap();
    assert_eq!(b.iter().map(|a| a.run_id.as_str()).collect::<Vec<_>>(), vec!["run-b"]);
    assert!(store.hitl_of_run(&globex, "run-b").await.unwrap().is_empty(), "acme's run-b is not globex's");
    assert!(store.hitl_of_run(&acme, "run-none").await.unwrap().is_empty());
    // The lookup is served by the (tenant_id, run_id) index of migration 0008.
    db.assert_sqlite_plan_uses(
        "SELECT * FROM hitl_requests WHERE tenant_id = 'acme' AND run_id = 'run-a' ORDER BY id",
        "idx_hitl_tenant_run",
    )
    .await;
}
both!(
    p1_t16_one_runs_requests_are_read_without_another_runs_or_tenants,
    one_runs_requests_are_read_without_another_runs_or_tenants
);

fn counter(name: &str) -> u64 {
    hitl::counters().snapshot().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap()
}

async fn a_pending_request_survives_a_restart(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let created = store.hitl_create(&ctx("acme"), &refund("run-2", &[])).await.unwrap();
    store.close().await;
    drop(store);
    // A new process on the same database.
    let reopened = Store::open(&url(db.kernel_url())).await.unwrap();
    let found = reopened.hitl_find(&ctx("acme"), "run-2", "refund").await.unwrap().unwrap();
    assert_eq!(found, created);
    assert_eq!(found.status, ApprovalState::Pending);
    // Anyone may decide a request whose rule lists no approvers.
    let d =
        reopened.hitl_decide(&ctx("acme"), &found.request_id, Decision::Approve, "someone", None, t0()).await.unwrap();
    assert_eq!(d.approver.as_deref(), Some("someone"));
}
both!(p1_t16_a_pending_request_survives_a_restart, a_pending_request_survives_a_restart);

async fn deny_needs_a_reason_and_decisions_are_final(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let acme = ctx("acme");
    let id = store.hitl_create(&acme, &refund("run-3", &["ops-lead", "cfo"])).await.unwrap().request_id;
    let now = t0();
    let e = store.hitl_decide(&acme, &id, Decision::Deny, "cfo", None, now).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    let e = store.hitl_decide(&acme, &id, Decision::Approve, "  ", None, now).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    // Someone not on the rule's list: refused, audited, nothing decided.
    let e = store.hitl_decide(&acme, &id, Decision::Approve, "intern", None, now).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::HitlApproverNotAllowed);
    assert_eq!(e.class(), autobiz_kernel::ErrorClass::Refused);
    assert!(store.audit_events(&acme, 10).await.unwrap().iter().any(|a| a.event.outcome.contains("intern")));
    assert_eq!(store.hitl_get(&acme, &id).await.unwrap().status, ApprovalState::Pending);

    let denied =
        store.hitl_decide(&acme, &id, Decision::Deny, "cfo", Some("customer is a known fraudster"), now).await.unwrap();
    assert_eq!(denied.status, ApprovalState::Denied);
    assert_eq!(
        (denied.approver.as_deref(), denied.reason.as_deref()),
        (Some("cfo"), Some("customer is a known fraudster"))
    );
    for decision in [Decision::Approve, Decision::Deny] {
        let e = store.hitl_decide(&acme, &id, decision, "ops-lead", Some("changed my mind"), now).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::HitlAlreadyDecided);
        assert!(e.message().contains("DENIED by cfo"), "{}", e.message());
    }
    assert_eq!(store.hitl_get(&acme, &id).await.unwrap(), denied, "the decision did not change");
    let e = store.hitl_decide(&acme, "hitl_nope", Decision::Approve, "cfo", None, now).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::HitlNotFound);
    // Another tenant neither sees nor decides it.
    let globex = ctx("globex");
    assert_eq!(store.hitl_get(&globex, &id).await.unwrap_err().code(), ErrorCode::HitlNotFound);
    assert!(store.hitl_list(&globex, StatusFilter::All).await.unwrap().is_empty());
}
both!(p1_t17_deny_needs_a_reason_and_decisions_are_final, deny_needs_a_reason_and_decisions_are_final);

async fn two_concurrent_decisions_one_wins(db: TestDatabase) {
    let (a, _) = migrated(&db).await;
    let b = Store::open(&url(db.kernel_url())).await.unwrap();
    let acme = ctx("acme");
    for round in 0..5 {
        let id = a.hitl_create(&acme, &refund(&format!("run-c{round}"), &[])).await.unwrap().request_id;
        let (x, y) = tokio::join!(
            a.hitl_decide(&acme, &id, Decision::Approve, "alice", None, t0()),
            b.hitl_decide(&acme, &id, Decision::Deny, "bob", Some("no"), t0()),
        );
        let loser = match (x, y) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            (x, y) => panic!("round {round}: exactly one decision must win: {x:?} / {y:?}"),
        };
        assert_eq!(loser.code(), ErrorCode::HitlAlreadyDecided, "{loser:?}");
        let stored = a.hitl_get(&acme, &id).await.unwrap();
        assert!(matches!(stored.status, ApprovalState::Approved | ApprovalState::Denied));
    }
}
both!(p1_t17_two_concurrent_decisions_one_wins, two_concurrent_decisions_one_wins);

async fn the_database_refuses_to_change_a_decision(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let acme = ctx("acme");
    let pending = store.hitl_create(&acme, &refund("run-p", &[])).await.unwrap().request_id;
    let id = store.hitl_create(&acme, &refund("run-d", &[])).await.unwrap().request_id;
    store.hitl_decide(&acme, &id, Decision::Deny, "cfo", Some("no"), t0()).await.unwrap();
    let tamper =
        format!("UPDATE hitl_requests SET status = 'APPROVED', approver = 'mallory' WHERE request_id = '{id}'");
    let delete = format!("DELETE FROM hitl_requests WHERE request_id = '{pending}'");
    let reopen = format!("UPDATE hitl_requests SET reason = 'edited' WHERE request_id = '{id}'");
    let born_decided = "INSERT INTO hitl_requests (tenant_id, request_id, run_id, step, tool, payload, status, expires_at, created_at, updated_at)
         VALUES ('acme', 'x', 'r', 's', 't', '{}', 'APPROVED', '2030-01-01T00:00:00Z', '2030-01-01T00:00:00Z', '2030-01-01T00:00:00Z')";
    let results: Vec<bool> = match db.backend() {
        autobiz_testkit::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(db.admin_url()).await.unwrap();
            let mut out = Vec::new();
            for sql in [tamper.as_str(), delete.as_str(), reopen.as_str(), born_decided] {
                out.push(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await.is_err());
            }
            out
        }
        autobiz_testkit::Backend::Postgres => {
            // The owner (a superuser here, so RLS does not hide the rows): the
            // triggers hold for every role.
            let pool = sqlx::PgPool::connect(db.admin_url()).await.unwrap();
            let mut out = Vec::new();
            for sql in [tamper.as_str(), delete.as_str(), reopen.as_str(), born_decided] {
                out.push(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await.is_err());
            }
            out
        }
    };
    assert_eq!(results, vec![true, true, true, true], "tamper, delete, edit, insert-decided must all fail");
    let d = store.hitl_get(&acme, &id).await.unwrap();
    assert_eq!(
        (d.status, d.approver.as_deref(), d.reason.as_deref()),
        (ApprovalState::Denied, Some("cfo"), Some("no"))
    );
    assert_eq!(store.hitl_get(&acme, &pending).await.unwrap().status, ApprovalState::Pending);
}
both!(p1_t17_the_database_refuses_to_change_a_decision, the_database_refuses_to_change_a_decision);

async fn timeouts_fail_financial_steps_and_follow_the_rule_otherwise(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let acme = ctx("acme");
    // A FINANCIAL request whose rule says ESCALATE (a model that skipped CC-04 could even say PROCEED).
    let mut fin = refund("run-t", &[]);
    fin.rule.on_timeout = OnTimeout::Proceed;
    let fin = store.hitl_create(&acme, &fin).await.unwrap();
    assert_eq!(fin.on_timeout, OnTimeout::Fail, "stored as FAIL for FINANCIAL");
    let write = NewApproval {
        run_id: "run-t".into(),
        step: "cancel".into(),
        tool: "shopify.order.cancel@1".into(),
        side_effect: SideEffect::Write,
        summary: json!({"reason": "fraud"}),
        rule: rule(&[], OnTimeout::Proceed),
        expires_at: t0() + Duration::hours(2),
    };
    let write = store.hitl_create(&acme, &write).await.unwrap();
    let before = counter("hitl_expired_total");
    // Nothing is due before its expiry.
    assert!(store.hitl_expire_due(&acme, t0() + Duration::minutes(59)).await.unwrap().is_empty());
    // Deciding a request past its expiry expires it instead.
    let late = t0() + Duration::minutes(61);
    let e = store.hitl_decide(&acme, &fin.request_id, Decision::Approve, "ops", None, late).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::HitlExpired);
    let expired = store.hitl_get(&acme, &fin.request_id).await.unwrap();
    assert_eq!((expired.status, expired.timeout_policy()), (ApprovalState::Expired, OnTimeout::Fail));
    assert!(expired.approver.is_none());
    // The sweep expires the other one and hands back its policy.
    let swept: Vec<Approval> = store.hitl_expire_due(&acme, t0() + Duration::hours(3)).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].request_id.as_str(), swept[0].timeout_policy()),
        (write.request_id.as_str(), OnTimeout::Proceed)
    );
    assert!(counter("hitl_expired_total") >= before + 2);
    // Expired is final.
    let e = store.hitl_decide(&acme, &write.request_id, Decision::Approve, "ops", None, t0()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::HitlAlreadyDecided);
    assert!(store.hitl_expire_due(&acme, t0() + Duration::days(1)).await.unwrap().is_empty());
}
both!(
    p1_t07_neg_timeouts_fail_financial_steps_and_follow_the_rule_otherwise,
    timeouts_fail_financial_steps_and_follow_the_rule_otherwise
);

/// Drive every transition of the table through the store and check that the
/// set observed is exactly the table (the coverage report of the lifecycle).
async fn every_transition_of_the_table_is_reachable_and_nothing_else(db: TestDatabase) {
    let (store, _) = migrated(&db).await;
    let acme = ctx("acme");
    let mut seen: BTreeSet<(ApprovalState, ApprovalEvent, ApprovalState)> = BTreeSet::new();
    for (step, event) in [("a", ApprovalEvent::Approve), ("d", ApprovalEvent::Deny), ("e", ApprovalEvent::Expire)] {
        let mut new = refund("run-m", &[]);
        new.step = step.into();
        let req = store.hitl_create(&acme, &new).await.unwrap();
        let after = match event {
            ApprovalEvent::Approve => {
                store.hitl_decide(&acme, &req.request_id, Decision::Approve, "x", None, t0()).await.unwrap()
            }
            ApprovalEvent::Deny => {
                store.hitl_decide(&acme, &req.request_id, Decision::Deny, "x", Some("no"), t0()).await.unwrap()
            }
            ApprovalEvent::Expire => store.hitl_expire_due(&acme, t0() + Duration::hours(2)).await.unwrap().remove(0),
        };
        seen.insert((req.status, event, after.status));
        // From the decided state, every event is refused.
        for again in [Decision::Approve, Decision::Deny] {
            let e = store.hitl_decide(&acme, &req.request_id, again, "x", Some("r"), t0()).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::HitlAlreadyDecided);
        }
    }
    assert_eq!(seen, TRANSITIONS.iter().copied().collect::<BTreeSet<_>>());
}
both!(
    inv07_every_approval_transition_is_covered_and_nothing_else,
    every_transition_of_the_table_is_reachable_and_nothing_else
);

// --- Slack -----------------------------------------------------------------------------

fn sample() -> Approval {
    Approval {
        request_id: hitl::request_id("run-9", "refund"),
        tenant_id: "acme".into(),
        run_id: "run-9".into(),
        step: "refund".into(),
        tool: "stripe.refund.create@1".into(),
        side_effect: SideEffect::Financial,
        summary: json!({"amount": 9000, "currency": "usd"}),
        status: ApprovalState::Pending,
        rule_index: Some(0),
        approvers: vec!["ops-lead".into()],
        on_timeout: OnTimeout::Fail,
        approver: None,
        reason: None,
        decided_at: None,
        expires_at: t0() + Duration::hours(1),
        created_at: t0(),
    }
}

#[tokio::test]
async fn p1_t16_slack_posts_a_block_kit_message_to_the_webhook() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T000/B000/secret-token"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    let notifier = SlackNotifier::new(&format!("{}/services/T000/B000/secret-token", server.uri())).unwrap();
    let a = sample();
    notifier.notify(&a).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(&a.request_id) && text.contains("stripe.refund.create@1") && text.contains("run-9"),
        "{text}"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let all = serde_json::to_string(blocks).unwrap();
    for needle in [
        format!("hitl approve {} --approver ops-lead", a.request_id),
        format!("hitl deny {}", a.request_id),
        "2026-03-01T13:00:00+00:00".to_owned(),
        "9000".to_owned(),
        "FINANCIAL".to_owned(),
    ] {
        assert!(all.contains(&needle), "blocks lack {needle}: {all}");
    }
    assert!(blocks.iter().all(|b| b["type"].is_string()));
}

#[tokio::test]
async fn p1_t16_slack_errors_are_notify_failed_and_never_show_the_webhook_token() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).mount(&server).await;
    let notifier = SlackNotifier::new(&format!("{}/services/T000/B000/secret-token", server.uri())).unwrap();
    let e = notifier.notify(&sample()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotifyFailed);
    assert_eq!(e.class(), autobiz_kernel::ErrorClass::Infrastructure);
    assert!(e.message().contains("HTTP 500") && !e.message().contains("secret-token"), "{}", e.message());
    assert!(!format!("{notifier:?}").contains("secret-token"));
    // Nothing listening.
    let port = { std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() };
    let down = SlackNotifier::new(&format!("http://127.0.0.1:{port}/services/secret-token")).unwrap();
    let e = down.notify(&sample()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotifyFailed);
    assert!(!e.message().contains("secret-token"), "{}", e.message());
    // Not a URL, or not http(s): refused without echoing it.
    for bad in ["not a url secret-token", "ftp://host/secret-token"] {
        let e = SlackNotifier::new(bad).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert!(!e.message().contains("secret-token"), "{}", e.message());
    }
}
