//! Event ingress against real SQLite and PostgreSQL: verification before
//! storage, dedup (also concurrent), the ordering gate, timeouts, restart,
//! and shared claims.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::clock::{Clock, ManualClock};
use autobiz_kernel::ingress::signature::{shopify_header, stripe_header};
use autobiz_kernel::ingress::{
    Delivery, EventStatus, Headers, Ingress, Precondition, Provider, Received, StaticKeys, StorePrecondition,
    StoredEvent,
};
use autobiz_kernel::store::{EventFinish, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

const STRIPE_SECRET: &str = "whsec_test_ingress";
const SHOPIFY_SECRET: &str = "shpss_test_ingress";

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("webhook"), CorrelationId::random())
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().with_timezone(&Utc)
}

fn keys() -> Arc<StaticKeys> {
    let mut k = BTreeMap::new();
    k.insert(Provider::Stripe, Arc::new(vec![SecretString::from(STRIPE_SECRET)]));
    k.insert(Provider::Shopify, Arc::new(vec![SecretString::from(SHOPIFY_SECRET)]));
    k.insert(Provider::Printful, Arc::new(vec![SecretString::from("pf-token")]));
    Arc::new(StaticKeys(k))
}

async fn setup(db: &TestDatabase) -> (Store, Arc<ManualClock>, Ingress) {
    let clock = Arc::new(ManualClock::new(start()));
    let store = common::migrated(db, clock.clone()).await;
    let ingress = Ingress::new(store.clone(), keys(), clock.clone());
    (store, clock, ingress)
}

fn shopify(topic: &str, webhook_id: &str, order: u64) -> (Headers, Vec<u8>) {
    let body = format!(r#"{{"id":{order},"email":"buyer@example.test"}}"#).into_bytes();
    let sig = shopify_header(&body, &SecretString::from(SHOPIFY_SECRET));
    let h = Headers::new([
        ("X-Shopify-Hmac-Sha256".to_owned(), sig),
        ("X-Shopify-Topic".to_owned(), topic.to_owned()),
        ("X-Shopify-Webhook-Id".to_owned(), webhook_id.to_owned()),
    ]);
    (h, body)
}

async fn send_shopify(ingress: &Ingress, c: &TenantContext, topic: &str, id: &str, order: u64) -> Received {
    let (h, body) = shopify(topic, id, order);
    ingress
        .receive(c, Delivery { provider: Provider::Shopify, headers: &h, body: &body, url_token: None })
        .await
        .unwrap()
}

fn status_of(events: &[StoredEvent], provider_event_id: &str) -> EventStatus {
    events.iter().find(|e| e.provider_event_id == provider_event_id).unwrap().status
}

// Invalid, missing, expired signatures: refused before storage and counted;
// a valid one is stored with signature_valid and payload_sha256.
async fn verifies_before_storing(db: TestDatabase) {
    let (store, clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    let body = br#"{"id":"evt_1","type":"payment_intent.created","created":1,"data":{"object":{"id":"pi_1","object":"payment_intent"}}}"#;
    let now = clock.now().timestamp();
    let forged = stripe_header(body, now, &[SecretString::from("whsec_wrong")]);
    let expired = stripe_header(body, now - 301, &[SecretString::from(STRIPE_SECRET)]);
    for (header, code) in [
        (Some(forged), ErrorCode::SignatureInvalid),
        (Some(expired), ErrorCode::SignatureExpired),
        (None, ErrorCode::SignatureMissing),
    ] {
        let h = Headers::new(header.map(|v| ("Stripe-Signature".to_owned(), v)));
        let e = ingress
            .receive(&c, Delivery { provider: Provider::Stripe, headers: &h, body, url_token: None })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code);
    }
    assert_eq!(store.event_count(&c).await.unwrap(), 0, "nothing stored before verification");
    assert_eq!(ingress.counters().rejected_total(), 3);
    // Malformed JSON with a valid signature: refused after verification, not stored.
    let bad = b"{\"id\":";
    let h =
        Headers::new([("Stripe-Signature".to_owned(), stripe_header(bad, now, &[SecretString::from(STRIPE_SECRET)]))]);
    let e = ingress
        .receive(&c, Delivery { provider: Provider::Stripe, headers: &h, body: bad, url_token: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::EventMalformed);
    assert_eq!(store.event_count(&c).await.unwrap(), 0);

    let h =
        Headers::new([("Stripe-Signature".to_owned(), stripe_header(body, now, &[SecretString::from(STRIPE_SECRET)]))]);
    let got =
        ingress.receive(&c, Delivery { provider: Provider::Stripe, headers: &h, body, url_token: None }).await.unwrap();
    assert!(matches!(got, Received::Stored { status: EventStatus::Ready, .. }));
    let events = store.events(&c, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert!(e.signature_valid);
    assert_eq!(e.payload_sha256, {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    });
    assert_eq!((e.source.as_str(), e.event_type.as_str()), ("stripe", "payment_intent.created"));
    assert_eq!(e.entity_id.as_deref(), Some("payment_intent:pi_1"));
    // Another tenant sees none of it.
    assert_eq!(store.event_count(&ctx("other")).await.unwrap(), 0);
}
both!(p1_t36_signature_verified_before_anything_is_stored, verifies_before_storing);

// Duplicate deliveries, sequential and concurrent, store one event.
async fn dedups(db: TestDatabase) {
    let (store, _clock, ingress) = setup(&db).await;
    let ingress = Arc::new(ingress);
    let c = ctx("acme");
    assert!(matches!(send_shopify(&ingress, &c, "orders/create", "wh-1", 7).await, Received::Stored { .. }));
    assert_eq!(send_shopify(&ingress, &c, "orders/create", "wh-1", 7).await, Received::Duplicate);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (ingress, c) = (ingress.clone(), c.clone());
        tasks.push(tokio::spawn(async move { send_shopify(&ingress, &c, "orders/paid", "wh-2", 7).await }));
    }
    let mut stored = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Received::Stored { .. }) {
            stored += 1;
        }
    }
    assert_eq!(stored, 1, "exactly one of the concurrent deliveries is stored");
    assert_eq!(store.event_count(&c).await.unwrap(), 2);
    // The same provider event id for another tenant is that tenant's own event.
    assert!(matches!(send_shopify(&ingress, &ctx("beta"), "orders/create", "wh-1", 7).await, Received::Stored { .. }));
}
both!(p1_t36_duplicate_deliveries_also_concurrent_are_stored_once, dedups);

// Paid before created is held; created releases it; fulfilled before paid likewise.
async fn holds_out_of_order(db: TestDatabase) {
    let (store, _clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    let Received::Stored { status, .. } = send_shopify(&ingress, &c, "orders/paid", "wh-paid", 42).await else {
        panic!()
    };
    assert_eq!(status, EventStatus::Held);
    let Received::Stored { status, .. } = send_shopify(&ingress, &c, "orders/fulfilled", "wh-ful", 42).await else {
        panic!()
    };
    assert_eq!(status, EventStatus::Held);
    // Another order's creation releases nothing of this one.
    send_shopify(&ingress, &c, "orders/create", "wh-other", 43).await;
    assert_eq!(status_of(&store.events(&c, 10).await.unwrap(), "wh-paid"), EventStatus::Held);
    // A held event is never claimed.
    assert!(
        store
            .event_claim(&c, "w1", start() + chrono::Duration::minutes(5), 10)
            .await
            .unwrap()
            .iter()
            .all(|e| e.entity_id.as_deref() != Some("order:42"))
    );
    let Received::Stored { released, .. } = send_shopify(&ingress, &c, "orders/create", "wh-create", 42).await else {
        panic!()
    };
    assert_eq!(released, 2, "created releases paid, and paid releases fulfilled");
    let events = store.events(&c, 10).await.unwrap();
    assert_eq!(status_of(&events, "wh-paid"), EventStatus::Ready);
    assert_eq!(status_of(&events, "wh-ful"), EventStatus::Ready);
    assert!(events.iter().all(|e| !e.timeout_released));
    assert_eq!(ingress.sweep(&c, &StorePrecondition(store.clone())).await.unwrap(), Default::default());
    assert_eq!(ingress.counters().event_held_total.load(std::sync::atomic::Ordering::Relaxed), 2);
}
both!(p1_t37_out_of_order_events_are_held_until_their_predecessor_arrives, holds_out_of_order);

struct Always(bool);
#[async_trait::async_trait]
impl Precondition for Always {
    async fn holds(&self, _ctx: &TenantContext, _event: &StoredEvent) -> autobiz_kernel::Result<bool> {
        Ok(self.0)
    }
}

// After the hold: precondition true -> released with the flag; false -> reconciliation.
async fn timeout_release(db: TestDatabase) {
    let (store, clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    send_shopify(&ingress, &c, "orders/paid", "wh-a", 1).await;
    // Before the timeout nothing moves.
    clock.advance(chrono::Duration::seconds(59));
    assert_eq!(ingress.sweep(&c, &Always(true)).await.unwrap().timeout_released, 0);
    clock.advance(chrono::Duration::seconds(1));
    let s = ingress.sweep(&c, &Always(true)).await.unwrap();
    assert_eq!((s.timeout_released, s.reconcile), (1, 0));
    let e = store.events(&c, 10).await.unwrap().remove(0);
    assert_eq!(e.status, EventStatus::Ready);
    assert!(e.timeout_released, "released by the timeout, flagged for audit");
    assert_eq!(ingress.counters().event_timeout_released_total.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(store.reconciliation_cases(&c).await.unwrap().is_empty());
}
both!(p1_t38_hold_timeout_releases_with_a_flag_after_the_precondition_check, timeout_release);

async fn timeout_reconcile(db: TestDatabase) {
    let (store, clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    send_shopify(&ingress, &c, "orders/paid", "wh-b", 2).await;
    clock.advance(chrono::Duration::seconds(61));
    // The store's own re-check: no orders/create and no state for order 2.
    let s = ingress.sweep(&c, &StorePrecondition(store.clone())).await.unwrap();
    assert_eq!((s.timeout_released, s.reconcile), (0, 1));
    let e = store.events(&c, 10).await.unwrap().remove(0);
    assert_eq!(e.status, EventStatus::Reconcile);
    assert!(e.error.as_deref().unwrap().starts_with("EVENT_PRECONDITION_FAILED"));
    let cases = store.reconciliation_cases(&c).await.unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].kind, "event_precondition_failed");
    assert_eq!(cases[0].entity_id.as_deref(), Some("order:2"));
    // Never claimed for processing.
    assert!(store.event_claim(&c, "w", clock.now() + chrono::Duration::minutes(1), 10).await.unwrap().is_empty());
    // A second sweep changes nothing.
    assert_eq!(ingress.sweep(&c, &StorePrecondition(store.clone())).await.unwrap(), Default::default());
}
both!(p1_t39_a_precondition_that_still_fails_routes_the_event_to_reconciliation, timeout_reconcile);

// Held events are rows: a new process (a new Store on the same database) releases them.
async fn survives_restart(db: TestDatabase) {
    let (store, clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    send_shopify(&ingress, &c, "orders/paid", "wh-r", 9).await;
    drop(ingress);
    store.close().await;
    let store = common::migrated(&db, clock.clone()).await;
    let ingress = Ingress::new(store.clone(), keys(), clock.clone());
    assert_eq!(store.events(&c, 10).await.unwrap()[0].status, EventStatus::Held);
    send_shopify(&ingress, &c, "orders/create", "wh-c", 9).await;
    assert_eq!(status_of(&store.events(&c, 10).await.unwrap(), "wh-r"), EventStatus::Ready);
}
both!(p1_t37_held_events_survive_a_restart, survives_restart);

// Two workers claiming concurrently never take the same event; a lost
// lease is reclaimed; finishing needs the claim.
async fn shared_claims(db: TestDatabase) {
    let (store, clock, ingress) = setup(&db).await;
    let c = ctx("acme");
    for i in 0..40 {
        send_shopify(&ingress, &c, "orders/create", &format!("wh-{i}"), i).await;
    }
    let lease = clock.now() + chrono::Duration::seconds(30);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (store, c) = (store.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.event_claim(&c, &format!("w{w}"), lease, 3).await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|e| e.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (40, 40), "every event claimed exactly once");
    let first = *unique.first().unwrap();
    // Worker w9 does not hold the claim.
    assert!(!store.event_finish(&c, first, "w9", EventFinish::Skipped).await.unwrap());
    // The lease runs out: another worker reclaims.
    clock.advance(chrono::Duration::seconds(31));
    let again = store.event_claim(&c, "w5", clock.now() + chrono::Duration::seconds(30), 100).await.unwrap();
    assert_eq!(again.len(), 40);
    assert!(again.iter().all(|e| e.attempts == 2));
    assert!(store.event_finish(&c, first, "w5", EventFinish::Started { workflow: "wf", run_id: "r" }).await.unwrap());
    assert!(!store.event_finish(&c, first, "w5", EventFinish::Skipped).await.unwrap(), "DONE is final");
}
both!(p1_t_rk02a_concurrent_workers_claim_each_event_once, shared_claims);
