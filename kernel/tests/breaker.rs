//! Circuit breakers (P1-TASK-26; the seed gives them no test ids, so these
//! names start with `p1_task_26`): thresholds within a window, cool-down to
//! half-open, probe limits, recovery, state shared between processes and
//! surviving restarts, audited resets. Each runs on SQLite and PostgreSQL.

use std::collections::BTreeSet;
use std::sync::Arc;

use autobiz_kernel::breaker::{BreakerEvent, BreakerPolicy, BreakerState, Breakers, TRANSITIONS};
use autobiz_kernel::clock::ManualClock;
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::{ErrorClass, ErrorCode};
use autobiz_testkit::{TestDatabase, both};
use chrono::{DateTime, Duration, Utc};

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test:svc"), CorrelationId::new("corr"))
}

fn url(s: &str) -> DatabaseUrl {
    s.parse().unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn policy(probes: u32) -> BreakerPolicy {
    BreakerPolicy {
        failure_threshold: 3,
        window: Duration::seconds(60),
        open_for: Duration::seconds(30),
        half_open_probes: probes,
    }
}

async fn migrated(db: &TestDatabase) -> Store {
    Store::open_admin(&url(db.admin_url())).await.unwrap().migrate().await.unwrap();
    Store::open(&url(db.kernel_url())).await.unwrap()
}

/// A breaker set on its own store handle (one "process").
async fn process(db: &TestDatabase, clock: &Arc<ManualClock>, probes: u32) -> Breakers {
    let store = Store::open_with_clock(&url(db.kernel_url()), clock.clone()).await.unwrap();
    Breakers::new(store, policy(probes), clock.clone()).unwrap()
}

async fn fail(b: &Breakers, name: &str) {
    b.acquire(&ctx("acme"), name).await.unwrap().failure().await.unwrap();
}

async fn state(b: &Breakers, store: &Store, name: &str) -> BreakerState {
    let _ = b;
    store.breaker(&ctx("acme"), name).await.unwrap().unwrap().state
}

async fn opens_at_the_threshold_within_the_window(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let b = process(&db, &clock, 1).await;
    // Two failures, then the window passes: they are forgotten.
    fail(&b, "stripe").await;
    fail(&b, "stripe").await;
    clock.advance(Duration::seconds(61));
    fail(&b, "stripe").await;
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Closed);
    assert_eq!(store.breaker(&ctx("acme"), "stripe").await.unwrap().unwrap().recent_failures, 1);
    // Successes in CLOSED write nothing and change nothing.
    b.acquire(&ctx("acme"), "stripe").await.unwrap().success().await.unwrap();
    clock.advance(Duration::seconds(10));
    fail(&b, "stripe").await;
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Closed);
    fail(&b, "stripe").await; // third within 60 s
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Open);
    let e = b.acquire(&ctx("acme"), "stripe").await.unwrap_err();
    assert_eq!((e.code(), e.class()), (ErrorCode::CircuitOpen, ErrorClass::Infrastructure));
    // Another dependency and another tenant are untouched.
    assert!(!b.acquire(&ctx("acme"), "printful").await.unwrap().is_probe());
    assert!(!b.acquire(&ctx("globex"), "stripe").await.unwrap().is_probe());
    assert_eq!(b.metrics().transitions()[&("stripe".to_owned(), BreakerState::Closed, BreakerState::Open)], 1);
    assert_eq!(b.metrics().states()[&("acme".to_owned(), "stripe".to_owned())], 2);
}
both!(p1_task_26_opens_at_the_threshold_within_the_window, opens_at_the_threshold_within_the_window);

async fn half_opens_after_the_cool_down_and_limits_probes(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let b = process(&db, &clock, 2).await;
    for _ in 0..3 {
        fail(&b, "stripe").await;
    }
    clock.advance(Duration::seconds(29));
    assert_eq!(b.acquire(&ctx("acme"), "stripe").await.unwrap_err().code(), ErrorCode::CircuitOpen);
    clock.advance(Duration::seconds(1));
    let p1 = b.acquire(&ctx("acme"), "stripe").await.unwrap();
    let p2 = b.acquire(&ctx("acme"), "stripe").await.unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::HalfOpen);
    // The third concurrent call exceeds the probe limit.
    let e = b.acquire(&ctx("acme"), "stripe").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::CircuitOpen);
    assert!(e.message().contains("probe"), "{}", e.message());
    // One probe succeeds: closed; the other's late failure changes nothing.
    p1.success().await.unwrap();
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Closed);
    p2.failure().await.unwrap();
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Closed);
    assert!(!b.acquire(&ctx("acme"), "stripe").await.unwrap().is_probe());
}
both!(p1_task_26_half_opens_after_the_cool_down_and_limits_probes, half_opens_after_the_cool_down_and_limits_probes);

async fn a_failed_probe_reopens_and_stale_probes_are_recovered(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let b = process(&db, &clock, 1).await;
    for _ in 0..3 {
        fail(&b, "stripe").await;
    }
    clock.advance(Duration::seconds(30));
    b.acquire(&ctx("acme"), "stripe").await.unwrap().failure().await.unwrap();
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Open);
    let reopened = store.breaker(&ctx("acme"), "stripe").await.unwrap().unwrap();
    assert_eq!(reopened.opened_at, Some(t0() + Duration::seconds(30)), "the cool-down starts again");
    assert_eq!(b.acquire(&ctx("acme"), "stripe").await.unwrap_err().code(), ErrorCode::CircuitOpen);
    // A probe that never reports (its process died) holds the slot for open_for only.
    clock.advance(Duration::seconds(30));
    let lost = b.acquire(&ctx("acme"), "stripe").await.unwrap();
    drop(lost);
    assert_eq!(b.acquire(&ctx("acme"), "stripe").await.unwrap_err().code(), ErrorCode::CircuitOpen);
    clock.advance(Duration::seconds(30));
    let again = b.acquire(&ctx("acme"), "stripe").await.unwrap();
    assert!(again.is_probe());
    again.success().await.unwrap();
    assert_eq!(state(&b, &store, "stripe").await, BreakerState::Closed);
}
both!(
    p1_task_26_a_failed_probe_reopens_and_stale_probes_are_recovered,
    a_failed_probe_reopens_and_stale_probes_are_recovered
);

async fn state_is_shared_between_processes_and_survives_restarts(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let a = process(&db, &clock, 1).await;
    let b = process(&db, &clock, 1).await;
    // Failures from two processes add up.
    fail(&a, "stripe").await;
    fail(&b, "stripe").await;
    fail(&a, "stripe").await;
    assert_eq!(b.acquire(&ctx("acme"), "stripe").await.unwrap_err().code(), ErrorCode::CircuitOpen);
    // A restart: a new store handle sees it open.
    drop(a);
    let c = process(&db, &clock, 1).await;
    assert_eq!(c.acquire(&ctx("acme"), "stripe").await.unwrap_err().code(), ErrorCode::CircuitOpen);
    // After the cool-down, two processes race for the single probe slot: one wins.
    clock.advance(Duration::seconds(30));
    let acme = ctx("acme");
    let (x, y) = tokio::join!(b.acquire(&acme, "stripe"), c.acquire(&acme, "stripe"));
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(), 1, "{x:?} / {y:?}");
    let probe = x.or(y).unwrap();
    assert!(probe.is_probe());
    probe.success().await.unwrap();
    assert_eq!(store.breaker(&ctx("acme"), "stripe").await.unwrap().unwrap().state, BreakerState::Closed);
}
both!(
    p1_task_26_state_is_shared_between_processes_and_survives_restarts,
    state_is_shared_between_processes_and_survives_restarts
);

async fn reset_is_audited(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let b = process(&db, &clock, 1).await;
    for _ in 0..3 {
        fail(&b, "stripe").await;
    }
    let e = b.reset(&ctx("acme"), "stripe", " ").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    let after = b.reset(&ctx("acme"), "stripe", "ops-lead").await.unwrap();
    assert_eq!((after.state, after.recent_failures), (BreakerState::Closed, 0));
    assert!(!b.acquire(&ctx("acme"), "stripe").await.unwrap().is_probe());
    let audit = store.audit_events(&ctx("acme"), 5).await.unwrap();
    assert!(
        audit.iter().any(|a| a.event.action == "breaker_reset"
            && a.event.resource == "breaker/stripe"
            && a.event.outcome == "reset from OPEN by ops-lead"),
        "{audit:#?}"
    );
    let e = b.reset(&ctx("acme"), "nope", "ops-lead").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BreakerNotFound);
    // Another tenant cannot reset acme's breaker: it does not exist for them.
    assert_eq!(b.reset(&ctx("globex"), "stripe", "x").await.unwrap_err().code(), ErrorCode::BreakerNotFound);
    let names: Vec<String> = store.breakers(&ctx("acme")).await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["stripe".to_owned()]);
    assert!(store.breakers(&ctx("globex")).await.unwrap().is_empty());
}
both!(p1_task_26_reset_is_audited, reset_is_audited);

/// Drive every transition and compare what the metrics counted with the table.
async fn every_transition_is_covered_and_counted(db: TestDatabase) {
    migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let b = process(&db, &clock, 1).await;
    let acme = ctx("acme");
    for _ in 0..3 {
        fail(&b, "s").await; // CLOSED -> OPEN
    }
    clock.advance(Duration::seconds(30));
    b.acquire(&acme, "s").await.unwrap().failure().await.unwrap(); // OPEN -> HALF_OPEN -> OPEN
    clock.advance(Duration::seconds(30));
    drop(b.acquire(&acme, "s").await.unwrap()); // OPEN -> HALF_OPEN
    clock.advance(Duration::seconds(30));
    b.acquire(&acme, "s").await.unwrap().success().await.unwrap(); // HALF_OPEN (stale) -> HALF_OPEN -> CLOSED
    b.reset(&acme, "s", "x").await.unwrap(); // CLOSED -> CLOSED
    for _ in 0..3 {
        fail(&b, "s").await;
    }
    b.reset(&acme, "s", "x").await.unwrap(); // OPEN -> CLOSED
    for _ in 0..3 {
        fail(&b, "s").await;
    }
    clock.advance(Duration::seconds(30));
    drop(b.acquire(&acme, "s").await.unwrap());
    b.reset(&acme, "s", "x").await.unwrap(); // HALF_OPEN -> CLOSED
    let counted: BTreeSet<(BreakerState, BreakerState)> =
        b.metrics().transitions().keys().map(|(_, f, t)| (*f, *t)).collect();
    let table: BTreeSet<(BreakerState, BreakerState)> = TRANSITIONS.iter().map(|(f, _, t)| (*f, *t)).collect();
    assert_eq!(counted, table);
    assert!(TRANSITIONS.iter().any(|(_, e, _)| *e == BreakerEvent::ProbesStale));
    assert_eq!(b.metrics().transition_total(), 12);
}
both!(p1_task_26_every_transition_is_covered_and_counted, every_transition_is_covered_and_counted);

/// A breaker's first use creates it with one statement that returns the new
/// row; two processes using it first at once both get it, and it exists once.
async fn first_use_creates_the_breaker_once_under_a_race(db: TestDatabase) {
    let store = migrated(&db).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = (process(&db, &clock, 1).await, process(&db, &clock, 1).await);
    let acme = ctx("acme");
    let (x, y) = tokio::join!(a.acquire(&acme, "printful"), b.acquire(&acme, "printful"));
    for permit in [x.unwrap(), y.unwrap()] {
        assert!(!permit.is_probe());
        permit.success().await.unwrap();
    }
    let record = store.breaker(&acme, "printful").await.unwrap().unwrap();
    assert_eq!(record.state, BreakerState::Closed);
    assert!(store.breaker(&ctx("globex"), "printful").await.unwrap().is_none(), "per tenant");
}
both!(p1_task_26_first_use_creates_the_breaker_once_under_a_race, first_use_creates_the_breaker_once_under_a_race);
