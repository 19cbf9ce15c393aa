//! The reconciliation detector ([`autobiz_kernel::reconcile`]) against the
//! provider fakes, on SQLite and PostgreSQL.
//!
//! * P1-T-RK02c: non-financial drift (Shopify tags the workflow set but the
//!   shop does not show; a Printful status that differs from local state)
//!   is detected, repaired automatically, and each repair leaves an
//!   immutable audit record (what was wrong, what was done, who, when).
//! * P1-T-RK02d: financial drift (a refund at Stripe with no local receipt,
//!   a capture receipt whose amount Stripe does not hold) is detected and
//!   sent to HITL, never repaired automatically; the approved and the denied
//!   outcomes are recorded on the case.
//! * P1-T-RK07a: an event the ordering gate routed to reconciliation (its
//!   precondition still false after the hold) is released once the
//!   precondition holds, or escalated to a human and released on approval.
//! * P1-T-RK07b: reconciliation is idempotent (a rerun opens, repairs and
//!   asks nothing more) and tenant-scoped (tenant B's run neither sees nor
//!   changes tenant A's cases; without a tenant PostgreSQL shows no case).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autobiz_fakes::{Fakes, SEEDED_SHOPIFY_ORDER};
use autobiz_kernel::Result;
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::executor::CallContext;
use autobiz_kernel::hitl::{Decision, StatusFilter};
use autobiz_kernel::idempotency::{Begin, DEFAULT_WINDOW, IdempotencyKey, KeyParts, request_fingerprint};
use autobiz_kernel::ingress::ordering::EventStatus;
use autobiz_kernel::providers::{
    HttpSettings, PRINTFUL_SECRET, ProviderEndpoints, Providers, RetryPolicy, SENDGRID_SECRET, SHOPIFY_SECRET,
    STRIPE_SECRET, SandboxGuard, SendgridSettings,
};
use autobiz_kernel::receipts::{NewReceipt, payload_sha256};
use autobiz_kernel::reconcile::{ReconcileReport, Reconciler, status};
use autobiz_kernel::secrets::AuditSink;
use autobiz_kernel::store::{AuditEvent, NewEvent, SecurityEvent, Store};
use autobiz_kernel::tenant::{CorrelationId, EntityId, Principal, TenantContext};
use autobiz_testkit::{Backend, TestDatabase};
use serde_json::{Value, json};
use sqlx::Connection;

#[macro_use]
mod common;

// --- doubles and set-up ---------------------------------------------------------

#[path = "common/memory_secrets.rs"]
mod memory_secrets;
use memory_secrets::MemorySecrets;

#[derive(Default)]
struct NoAudit(Mutex<u64>);

#[async_trait::async_trait]
impl AuditSink for NoAudit {
    async fn audit(&self, _ctx: &TenantContext, _event: &AuditEvent) -> Result<()> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
    async fn security(&self, _ctx: &TenantContext, _event: &SecurityEvent) -> Result<()> {
        Ok(())
    }
}

fn providers(f: &Fakes) -> Arc<Providers> {
    let keys = BTreeMap::from([
        (STRIPE_SECRET.to_owned(), "sk_test_51reconcile".to_owned()),
        (SHOPIFY_SECRET.to_owned(), "shpat_0123456789reconcile".to_owned()),
        (PRINTFUL_SECRET.to_owned(), "pf-token-reconcile".to_owned()),
        (SENDGRID_SECRET.to_owned(), "SG.abc.reconcile".to_owned()),
    ]);
    let endpoints =
        ProviderEndpoints::parse(&f.stripe.uri(), &f.shopify.uri(), &f.printful.uri(), &f.sendgrid.uri()).unwrap();
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            jitter_seed: 1,
        },
    };
    Arc::new(
        Providers::new(
            endpoints,
            Arc::new(MemorySecrets(keys)),
            SandboxGuard::sandbox(),
            Arc::new(NoAudit::default()),
            settings,
            SendgridSettings::default(),
        )
        .unwrap(),
    )
}

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("job:reconcile"), CorrelationId::new("corr-rec"))
}

struct Env {
    store: Store,
    fakes: Fakes,
    providers: Arc<Providers>,
    _db: TestDatabase,
}

async fn env(db: TestDatabase) -> Env {
    let store = common::migrated(&db, Arc::new(SystemClock)).await;
    let fakes = Fakes::start().await;
    let providers = providers(&fakes);
    Env { store, fakes, providers, _db: db }
}

impl Env {
    fn reconciler(&self) -> Reconciler {
        Reconciler::new(self.store.clone(), Some(self.providers.clone()))
    }

    /// Call a provider the way a workflow step would, and write the
    /// step's receipt with the provider's answer (as the durable executor
    /// does): the local record the detector compares.
    async fn effect(&self, c: &TenantContext, step: &str, tool: &str, input: Value, money: Option<i64>) -> Value {
        let call = CallContext {
            ctx: c.clone(),
            run_id: format!("run-{step}"),
            seq: 1,
            tool: format!("{tool}@1"),
            idempotency_key: Some(external_key(&[step, tool])),
        };
        let response = self.providers.call(tool, &call, &input).await.unwrap().value;
        self.receipt(c, step, tool, &input, &response, money).await;
        response
    }

    /// Write a receipt for `response` (amount `money` for FINANCIAL).
    async fn receipt(
        &self,
        c: &TenantContext,
        step: &str,
        tool: &str,
        input: &Value,
        response: &Value,
        money: Option<i64>,
    ) {
        let key = IdempotencyKey::derive(&KeyParts {
            tenant: c.tenant(),
            workflow: "wf-test",
            step,
            tool,
            tool_version: "1",
            input,
        })
        .unwrap();
        let exec = format!("exec-{step}");
        let Begin::Execute(claim) = self
            .store
            .idempotency_begin(c, &key, &request_fingerprint(input).unwrap(), &exec, DEFAULT_WINDOW)
            .await
            .unwrap()
        else {
            panic!("expected to execute {step}")
        };
        let now = self.store.now();
        let receipt = NewReceipt {
            execution_id: exec,
            run_id: format!("run-{step}"),
            tool: tool.to_owned(),
            tool_version: "1".to_owned(),
            side_effect: if money.is_some() { SideEffect::Financial } else { SideEffect::Write },
            request_sha256: payload_sha256(input).unwrap(),
            response_sha256: Some(payload_sha256(response).unwrap()),
            status: "succeeded".to_owned(),
            started_at: now,
            completed_at: now,
            amount_minor: money,
            currency: money.map(|_| "usd".to_owned()),
        };
        self.store.idempotency_complete(c, &claim, response, &receipt).await.unwrap();
    }

    /// Authorize and capture `amount` at Stripe; the capture receipt says
    /// `receipted`.
    async fn captured(&self, c: &TenantContext, step: &str, amount: i64, receipted: i64) -> String {
        let call = |tool: &str| CallContext {
            ctx: c.clone(),
            run_id: format!("run-{step}"),
            seq: 0,
            tool: format!("{tool}@1"),
            idempotency_key: Some(external_key(&[c.tenant().as_str(), step, tool])),
        };
        let authorize = "stripe.payment_intent.authorize";
        let input = json!({"amount": amount, "currency": "usd", "order_id": step});
        let pi = self.providers.call(authorize, &call(authorize), &input).await.unwrap().value;
        let id = pi["id"].as_str().unwrap().to_owned();
        let input = json!({"payment_intent": id, "amount": amount});
        let capture = "stripe.payment_intent.capture";
        let captured = self.providers.call(capture, &call(capture), &input).await.unwrap().value;
        assert_eq!(captured["status"], "succeeded");
        self.receipt(c, step, "stripe.payment_intent.capture", &input, &captured, Some(receipted)).await;
        id
    }

    async fn case_status(&self, c: &TenantContext, case_id: &str) -> Option<String> {
        self.store.reconciliation_cases(c).await.unwrap().into_iter().find(|x| x.case_id == case_id).map(|x| x.status)
    }
}

/// An external idempotency key (`autobiz:` + 32 hex) unique to `parts`.
fn external_key(parts: &[&str]) -> String {
    format!("autobiz:{}", &payload_sha256(&json!(parts)).unwrap()[..32])
}

fn finding<'a>(r: &'a ReconcileReport, case_id: &str) -> &'a autobiz_kernel::reconcile::Finding {
    r.findings.iter().find(|f| f.case_id == case_id).unwrap_or_else(|| panic!("no finding {case_id} in {r:#?}"))
}

/// Shopify order 1001 tagged by a workflow, then the tag lost at the shop;
/// a Printful order created (pending) and shipped since.
async fn non_financial_drift(e: &Env, c: &TenantContext) -> String {
    let order = SEEDED_SHOPIFY_ORDER.to_string();
    let tagged =
        e.effect(c, "tag", "shopify.order.update", json!({"order_id": order, "tags": ["paid", "wf01"]}), None).await;
    assert_eq!(tagged["tags"], "paid, wf01");
    e.fakes.shopify.with_state(|s| {
        let mut o = s.order(SEEDED_SHOPIFY_ORDER).unwrap();
        o["tags"] = json!("paid");
        s.seed_order(o);
    });
    let created = e
        .effect(
            c,
            "print",
            "printful.order.create",
            json!({"external_id": "ord-7", "confirm": true, "recipient": {"name": "A", "address1": "1 St", "city": "X",
                   "country_code": "US", "zip": "10001"}, "items": [{"variant_id": 1, "quantity": 1}]}),
            None,
        )
        .await;
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["status"], "pending", "{created}");
    assert!(e.fakes.printful.with_state(|s| s.ship(id, "USPS", "9400")));
    order
}

// --- P1-T-RK02c -----------------------------------------------------------------

async fn non_financial_repaired(db: TestDatabase) {
    let backend = db.backend();
    let kernel_url = db.kernel_url().to_owned();
    let e = env(db).await;
    let c = ctx("acme");
    let order = non_financial_drift(&e, &c).await;

    let r = e.reconciler().run(&c).await.unwrap();
    let tags = finding(&r, &format!("shopify-tags-{order}"));
    assert_eq!((tags.action.as_str(), tags.status.as_str(), tags.financial), ("repaired", status::REPAIRED, false));
    assert_eq!(tags.detail["missing"], json!(["wf01"]));
    let printful = finding(&r, "printful-status-ord-7");
    assert_eq!((printful.action.as_str(), printful.status.as_str()), ("repaired", status::REPAIRED));
    assert_eq!((r.opened, r.repaired, r.escalated, r.awaiting_human), (2, 2, 0, 0), "{r:#?}");

    // Repaired at the provider and in local state.
    let shop = e.fakes.shopify.with_state(|s| s.order(SEEDED_SHOPIFY_ORDER).unwrap());
    assert_eq!(shop["tags"], "paid, wf01");
    let state =
        e.store.state(&c, &EntityId::new(c.tenant().clone(), "printful_order", "ord-7").unwrap()).await.unwrap();
    assert_eq!(state.unwrap().state["status"], "fulfilled");
    // Nobody was asked.
    assert!(e.store.hitl_list(&c, StatusFilter::All).await.unwrap().is_empty());

    // The audit record: what was wrong, what was done, by whom, when.
    let actions = e.store.reconciliation_actions(&c, Some(&format!("shopify-tags-{order}"))).await.unwrap();
    assert_eq!(actions.len(), 1);
    let a = &actions[0];
    assert_eq!((a.action.as_str(), a.from_status.as_str(), a.to_status.as_str()), ("repaired", "OPEN", "REPAIRED"));
    assert_eq!(a.principal, "job:reconcile");
    assert_eq!(a.wrong["missing"], json!(["wf01"]));
    assert_eq!(a.done["provider_call"], "shopify.order.update");
    assert!(chrono::Utc::now() - a.created_at < chrono::Duration::minutes(5));
    let pa = e.store.reconciliation_actions(&c, Some("printful-status-ord-7")).await.unwrap();
    assert_eq!(
        (pa[0].wrong["local_status"].as_str(), pa[0].done["status"].as_str()),
        (Some("pending"), Some("fulfilled"))
    );

    // The record is immutable: neither changed nor deleted, whoever asks.
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&kernel_url).await.unwrap();
            let upd = sqlx::query("UPDATE reconciliation_actions SET principal = 'someone'").execute(&mut conn).await;
            assert!(upd.unwrap_err().to_string().contains("immutable"));
            let del = sqlx::query("DELETE FROM reconciliation_actions").execute(&mut conn).await;
            assert!(del.unwrap_err().to_string().contains("immutable"));
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&kernel_url).await.unwrap();
            sqlx::query("SELECT set_config('app.tenant_id', 'acme', false)").execute(&mut conn).await.unwrap();
            assert!(sqlx::query("UPDATE reconciliation_actions SET principal = 'x'").execute(&mut conn).await.is_err());
            assert!(sqlx::query("DELETE FROM reconciliation_actions").execute(&mut conn).await.is_err());
        }
    }
    assert_eq!(e.store.reconciliation_actions(&c, None).await.unwrap().len(), 2);

    // Drift that comes back after the repair reopens the case and is repaired again.
    e.fakes.shopify.with_state(|s| {
        let mut o = s.order(SEEDED_SHOPIFY_ORDER).unwrap();
        o["tags"] = json!("");
        s.seed_order(o);
    });
    let again = e.reconciler().run(&c).await.unwrap();
    assert_eq!((again.opened, again.repaired), (0, 1), "{again:#?}");
    let trail: Vec<String> = e
        .store
        .reconciliation_actions(&c, Some(&format!("shopify-tags-{order}")))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(trail, ["repaired", "recurred", "repaired"]);
    assert_eq!(e.fakes.shopify.with_state(|s| s.order(SEEDED_SHOPIFY_ORDER).unwrap())["tags"], "paid, wf01");
}
both!(p1_t_rk02c_non_financial_drift_is_repaired_with_an_immutable_audit_record, non_financial_repaired);

// --- P1-T-RK02d -----------------------------------------------------------------

async fn financial_to_hitl(db: TestDatabase) {
    let e = env(db).await;
    let c = ctx("acme");
    let clean = e.captured(&c, "clean", 1500, 1500).await;
    // A refund made at Stripe outside the kernel: no local receipt.
    let refunded = e.captured(&c, "refunded", 2500, 2500).await;
    let call = CallContext {
        ctx: c.clone(),
        run_id: "outside".into(),
        seq: 1,
        tool: "stripe.refund.create@1".into(),
        idempotency_key: Some("autobiz:000000000000000000000000000000ff".into()),
    };
    e.providers
        .call("stripe.refund.create", &call, &json!({"payment_intent": refunded, "amount": 500, "currency": "usd"}))
        .await
        .unwrap();
    // A capture whose receipt says 2000 where Stripe captured 2400.
    let mismatch = e.captured(&c, "mismatch", 2400, 2000).await;
    let stripe_posts = || e.fakes.stripe.requests().iter().filter(|r| r.method == "POST").count();
    let posts_before = stripe_posts();

    let r = e.reconciler().run(&c).await.unwrap();
    let refund_case = format!("stripe-refund-{refunded}");
    let capture_case = format!("stripe-amount_mismatch-{mismatch}");
    for id in [&refund_case, &capture_case] {
        let f = finding(&r, id);
        assert_eq!((f.action.as_str(), f.status.as_str(), f.financial), ("sent_to_hitl", status::AWAITING_HUMAN, true));
        assert!(f.hitl_request.is_some());
    }
    assert_eq!(finding(&r, &refund_case).kind, "stripe_refund_missing_receipt");
    assert!(r.findings.iter().all(|f| !f.case_id.contains(&clean)), "the clean capture is no drift: {r:#?}");
    assert_eq!((r.opened, r.repaired, r.escalated, r.awaiting_human), (2, 0, 2, 2), "{r:#?}");
    // Never repaired automatically: nothing was sent to Stripe.
    assert_eq!(stripe_posts(), posts_before);
    let pending = e.store.hitl_list(&c, StatusFilter::Pending).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|a| a.side_effect == SideEffect::Financial && a.tool == "reconcile.drift@1"));

    // Until decided the case stays open, and a rerun asks nothing new.
    let r2 = e.reconciler().run(&c).await.unwrap();
    assert_eq!((r2.opened, r2.escalated, r2.decided, r2.awaiting_human), (0, 0, 0, 2), "{r2:#?}");
    assert_eq!(finding(&r2, &refund_case).action, "awaiting_human");
    assert_eq!(e.store.hitl_list(&c, StatusFilter::All).await.unwrap().len(), 2);

    // One approved, one denied: each outcome is recorded on its case.
    let req = |id: &str| finding(&r, id).hitl_request.clone().unwrap();
    let now = e.store.now();
    e.store.hitl_decide(&c, &req(&refund_case), Decision::Approve, "ops@example.com", None, now).await.unwrap();
    e.store
        .hitl_decide(&c, &req(&capture_case), Decision::Deny, "ops@example.com", Some("receipt is right"), now)
        .await
        .unwrap();
    let r3 = e.reconciler().run(&c).await.unwrap();
    assert_eq!(
        (finding(&r3, &refund_case).action.as_str(), finding(&r3, &capture_case).action.as_str()),
        ("approved", "denied")
    );
    assert_eq!((r3.decided, r3.awaiting_human, r3.repaired), (2, 0, 0), "{r3:#?}");
    assert_eq!(e.case_status(&c, &refund_case).await.as_deref(), Some(status::RESOLVED));
    assert_eq!(e.case_status(&c, &capture_case).await.as_deref(), Some(status::DISMISSED));
    let denied = e.store.reconciliation_actions(&c, Some(&capture_case)).await.unwrap();
    let last = denied.last().unwrap();
    assert_eq!((last.action.as_str(), last.to_status.as_str()), ("denied", status::DISMISSED));
    assert_eq!(
        (last.done["approver"].as_str(), last.done["reason"].as_str()),
        (Some("ops@example.com"), Some("receipt is right"))
    );
    // Still nothing sent to Stripe; a decided case is not asked again.
    assert_eq!(stripe_posts(), posts_before);
    let r4 = e.reconciler().run(&c).await.unwrap();
    assert_eq!((r4.opened, r4.escalated, r4.decided), (0, 0, 0), "{r4:#?}");
}
both!(p1_t_rk02d_financial_drift_goes_to_hitl_and_is_never_repaired_automatically, financial_to_hitl);

// --- P1-T-RK07a -----------------------------------------------------------------

/// Store `event_type` for `entity` held for `waiting_for`, let the hold run
/// out and route it to reconciliation as the ordering gate does.
async fn routed(store: &Store, c: &TenantContext, id: &str, event_type: &str, entity: &str, waiting_for: &str) -> i64 {
    let hold_until = store.now() - chrono::Duration::seconds(1);
    insert_event(store, c, id, event_type, entity, Some(waiting_for), hold_until).await;
    let due = store.event_held_due(c, store.now(), 10).await.unwrap();
    let event = due.into_iter().find(|e| e.provider_event_id == id).expect("held and due");
    assert!(store.event_route_to_reconciliation(c, &event).await.unwrap());
    event.id
}

async fn predecessor(store: &Store, c: &TenantContext, id: &str, event_type: &str, entity: &str) {
    insert_event(store, c, id, event_type, entity, None, store.now()).await;
}

/// Store a Shopify event `{"id": id}` of `event_type` for `entity`.
async fn insert_event(
    store: &Store,
    c: &TenantContext,
    id: &str,
    event_type: &str,
    entity: &str,
    waiting_for: Option<&str>,
    hold_until: chrono::DateTime<chrono::Utc>,
) {
    let payload = json!({"id": id});
    let sha = payload_sha256(&payload).unwrap();
    let new = NewEvent {
        source: "shopify",
        event_type,
        provider_event_id: id,
        entity_id: Some(entity),
        occurred_at: None,
        payload: &payload,
        payload_sha256: &sha,
        waiting_for,
        hold_until,
    };
    store.event_insert(c, &new).await.unwrap();
}

async fn routed_events(db: TestDatabase) {
    let store = common::migrated(&db, Arc::new(SystemClock)).await;
    let c = ctx("acme");
    let late = routed(&store, &c, "wh-1", "orders/paid", "order:1", "orders/create").await;
    let orphan = routed(&store, &c, "wh-2", "orders/paid", "order:2", "orders/create").await;
    // The predecessor of the first arrives after it went to reconciliation.
    predecessor(&store, &c, "wh-3", "orders/create", "order:1").await;
    assert_eq!(store.event(&c, late).await.unwrap().unwrap().status, EventStatus::Reconcile);

    // Without provider clients only the event cases are checked; the rest
    // is reported as skipped, not passed.
    let rec = Reconciler::new(store.clone(), None);
    let r = rec.run(&c).await.unwrap();
    assert_eq!(r.skipped, ["stripe", "shopify", "printful"]);
    let resolved = finding(&r, &format!("event-{late}"));
    assert_eq!((resolved.action.as_str(), resolved.status.as_str()), ("repaired", status::REPAIRED));
    let released = store.event(&c, late).await.unwrap().unwrap();
    assert_eq!(released.status, EventStatus::Ready, "released for the worker");
    assert!(released.timeout_released);
    let actions = store.reconciliation_actions(&c, Some(&format!("event-{late}"))).await.unwrap();
    assert_eq!(actions[0].done["released_to"], "READY");

    // The orphan's precondition still fails: a human is asked, the event stays.
    let escalated = finding(&r, &format!("event-{orphan}"));
    assert_eq!((escalated.action.as_str(), escalated.status.as_str()), ("sent_to_hitl", status::AWAITING_HUMAN));
    assert_eq!(store.event(&c, orphan).await.unwrap().unwrap().status, EventStatus::Reconcile);
    let request = store.hitl_get(&c, escalated.hitl_request.as_deref().unwrap()).await.unwrap();
    assert_eq!(request.side_effect, SideEffect::Write);
    assert_eq!(r.awaiting_human, 1);

    // Approved: the next run releases it and closes the case.
    store.hitl_decide(&c, &request.request_id, Decision::Approve, "ops@example.com", None, store.now()).await.unwrap();
    let r2 = rec.run(&c).await.unwrap();
    let f = finding(&r2, &format!("event-{orphan}"));
    assert_eq!((f.action.as_str(), f.status.as_str()), ("approved", status::RESOLVED));
    assert_eq!(store.event(&c, orphan).await.unwrap().unwrap().status, EventStatus::Ready);
    assert_eq!((r2.awaiting_human, r2.repaired), (0, 0));
    // A released event is claimable by the worker like any READY one.
    let claimed = store.event_claim(&c, "w1", store.now() + chrono::Duration::seconds(30), 10).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    assert!(ids.contains(&late) && ids.contains(&orphan), "{ids:?}");
}
both!(p1_t_rk07a_events_routed_to_reconciliation_are_released_or_escalated, routed_events);

// --- P1-T-RK07b -----------------------------------------------------------------

async fn idempotent_and_scoped(db: TestDatabase) {
    let backend = db.backend();
    let kernel_url = db.kernel_url().to_owned();
    let e = env(db).await;
    let a = ctx("acme");
    non_financial_drift(&e, &a).await;
    let mismatch = e.captured(&a, "mismatch", 2400, 2000).await;
    routed(&e.store, &a, "wh-9", "orders/paid", "order:9", "orders/create").await;

    let puts = || e.fakes.shopify.requests().iter().filter(|r| r.method == "PUT").count();
    let puts_before = puts();

    let first = e.reconciler().run(&a).await.unwrap();
    // Opened: the Shopify, Printful and Stripe cases (the gate opened the event's).
    assert_eq!((first.opened, first.repaired, first.escalated), (3, 2, 2), "{first:#?}");
    assert_eq!(puts(), puts_before + 1, "the first run set the tags again");
    let cases = e.store.reconciliation_cases(&a).await.unwrap();
    let actions = e.store.reconciliation_actions(&a, None).await.unwrap();
    let hitl = e.store.hitl_list(&a, StatusFilter::All).await.unwrap();
    let requests = e.fakes.shopify.requests().len() + e.fakes.printful.requests().len();

    // A rerun opens no duplicate case, repairs and asks nothing more.
    let second = e.reconciler().run(&a).await.unwrap();
    assert_eq!((second.opened, second.repaired, second.escalated, second.decided), (0, 0, 0, 0), "{second:#?}");
    assert_eq!(e.store.reconciliation_cases(&a).await.unwrap(), cases);
    assert_eq!(e.store.reconciliation_actions(&a, None).await.unwrap(), actions);
    assert_eq!(e.store.hitl_list(&a, StatusFilter::All).await.unwrap(), hitl);
    assert_eq!(puts(), puts_before + 1, "the rerun repaired nothing");
    assert!(e.fakes.shopify.requests().len() + e.fakes.printful.requests().len() > requests, "the rerun did compare");

    // Two concurrent runs agree: still one case per drift.
    let (r1, r2) = (e.reconciler(), e.reconciler());
    let (x, y) = tokio::join!(r1.run(&a), r2.run(&a));
    assert_eq!(x.unwrap().opened + y.unwrap().opened, 0);
    assert_eq!(e.store.reconciliation_cases(&a).await.unwrap().len(), cases.len());

    // Tenant B (its own provider accounts, clean) neither sees nor changes A's cases.
    let b = ctx("globex");
    let b_fakes = Fakes::start().await;
    let rb = Reconciler::new(e.store.clone(), Some(providers(&b_fakes))).run(&b).await.unwrap();
    assert!(rb.findings.is_empty(), "{rb:#?}");
    assert_eq!((rb.opened, rb.awaiting_human), (0, 0));
    assert!(e.store.reconciliation_cases(&b).await.unwrap().is_empty());
    assert!(e.store.reconciliation_actions(&b, None).await.unwrap().is_empty());
    assert!(e.store.hitl_list(&b, StatusFilter::All).await.unwrap().is_empty());
    assert_eq!(e.store.reconciliation_cases(&a).await.unwrap(), cases);
    // B's run against A's providers still cannot reach A's cases: B has no
    // receipts, so whatever A's Stripe account holds is B's own (missing
    // receipt) drift, opened under B only.
    let rb2 = Reconciler::new(e.store.clone(), Some(e.providers.clone())).run(&b).await.unwrap();
    assert!(rb2.findings.iter().all(|f| f.kind == "stripe_capture_missing_receipt"), "{rb2:#?}");
    assert!(rb2.findings.iter().all(|f| f.case_id != format!("stripe-amount_mismatch-{mismatch}")));
    assert_eq!(e.store.reconciliation_cases(&a).await.unwrap(), cases);
    assert_eq!(e.store.reconciliation_actions(&a, None).await.unwrap(), actions);

    // Without a tenant, PostgreSQL shows no case and no action (RLS fails closed).
    if backend == Backend::Postgres {
        let mut conn = sqlx::PgConnection::connect(&kernel_url).await.unwrap();
        for table in ["reconciliation", "reconciliation_actions"] {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(n, 0, "{table} without a tenant");
        }
        let insert = sqlx::query(
            "INSERT INTO reconciliation_actions (tenant_id, case_id, action, from_status, to_status, wrong, done, principal)
             VALUES ('acme', 'x', 'a', 'OPEN', 'OPEN', '{}', '{}', 'p')",
        )
        .execute(&mut conn)
        .await;
        assert!(insert.is_err(), "no write without a tenant");
    }
}
both!(p1_t_rk07b_reconciliation_is_idempotent_and_tenant_scoped, idempotent_and_scoped);
