//! Versioned state (P1-T14) on both backends: every change is an RFC 6902
//! patch, each patch adds a version, and a stale or racing writer gets
//! `STATE_CONFLICT` and changes nothing.

use autobiz_kernel::ErrorCode;
use autobiz_kernel::state::Patch;
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, EntityId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use serde_json::{Value, json};

#[macro_use]
mod common;

fn ctx(tenant: &str, corr: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test:runner"), CorrelationId::new(corr))
}

fn patch(ops: Value) -> Patch {
    serde_json::from_value(ops).unwrap()
}

async fn migrated(db: &TestDatabase) -> Store {
    common::migrated(db, std::sync::Arc::new(autobiz_kernel::clock::SystemClock)).await
}

async fn patch_increments_version_and_keeps_patch_and_correlation(db: TestDatabase) {
    let store = migrated(&db).await;
    let order: EntityId = "acme/order/1001".parse().unwrap();
    assert!(store.state(&ctx("acme", "c0"), &order).await.unwrap().is_none());

    let create = patch(
        json!([{"op": "add", "path": "/status", "value": "pending"}, {"op": "add", "path": "/items", "value": []}]),
    );
    let v1 = store.apply_patch(&ctx("acme", "corr-1"), &order, 0, &create).await.unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.state, json!({"status": "pending", "items": []}));

    let pay = patch(json!([
        {"op": "test", "path": "/status", "value": "pending"},
        {"op": "replace", "path": "/status", "value": "paid"},
        {"op": "add", "path": "/items/-", "value": {"sku": "TSHIRT"}}
    ]));
    let v2 = store.apply_patch(&ctx("acme", "corr-2"), &order, 1, &pay).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.state, json!({"status": "paid", "items": [{"sku": "TSHIRT"}]}));

    let latest = store.state(&ctx("acme", "c"), &order).await.unwrap().unwrap();
    assert_eq!(latest, v2);
    let history = store.state_history(&ctx("acme", "c"), &order).await.unwrap();
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(history[0].correlation_id, "corr-1");
    assert_eq!(history[1].correlation_id, "corr-2");
    // Each version stores the patch that produced it, and the patches replay
    // to the stored state.
    assert_eq!(history[1].patch, serde_json::to_value(&pay).unwrap());
    let mut replayed = json!({});
    for v in &history {
        json_patch_apply(&mut replayed, &v.patch);
        assert_eq!(replayed, v.state);
    }
}
both!(
    p1_t14_patch_increments_version_and_keeps_patch_and_correlation,
    patch_increments_version_and_keeps_patch_and_correlation
);

fn json_patch_apply(doc: &mut Value, ops: &Value) {
    *doc = autobiz_kernel::state::apply(doc, &autobiz_kernel::state::parse_patch(ops).unwrap()).unwrap();
}

async fn stale_write_is_state_conflict_and_changes_nothing(db: TestDatabase) {
    let store = migrated(&db).await;
    let e: EntityId = "acme/payment/p1".parse().unwrap();
    let set = |v: i64| patch(json!([{"op": "add", "path": "/n", "value": v}]));
    store.apply_patch(&ctx("acme", "c"), &e, 0, &set(1)).await.unwrap();
    store.apply_patch(&ctx("acme", "c"), &e, 1, &set(2)).await.unwrap();
    for stale in [0, 1, 3, 9] {
        let err = store.apply_patch(&ctx("acme", "c"), &e, stale, &set(100 + stale)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::StateConflict, "expected version {stale}: {}", err.message());
    }
    let history = store.state_history(&ctx("acme", "c"), &e).await.unwrap();
    assert_eq!(history.len(), 2, "a refused write adds no version");
    assert_eq!(history[1].state, json!({"n": 2}));
    assert_eq!(
        store.apply_patch(&ctx("acme", "c"), &e, -1, &set(0)).await.unwrap_err().code(),
        ErrorCode::InvalidInput
    );
}
both!(p1_t14_stale_write_is_state_conflict_and_changes_nothing, stale_write_is_state_conflict_and_changes_nothing);

async fn patch_that_does_not_apply_is_refused_and_changes_nothing(db: TestDatabase) {
    let store = migrated(&db).await;
    let e: EntityId = "acme/order/9".parse().unwrap();
    store
        .apply_patch(&ctx("acme", "c"), &e, 0, &patch(json!([{"op": "add", "path": "/status", "value": "paid"}])))
        .await
        .unwrap();
    for bad in [
        json!([{"op": "test", "path": "/status", "value": "pending"}, {"op": "replace", "path": "/status", "value": "refunded"}]),
        json!([{"op": "replace", "path": "/missing/deep", "value": 1}]),
        json!([{"op": "remove", "path": "/nothing"}]),
    ] {
        let err = store.apply_patch(&ctx("acme", "c"), &e, 1, &patch(bad.clone())).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::StatePatchInvalid, "{bad}");
    }
    let latest = store.state(&ctx("acme", "c"), &e).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.state), (1, json!({"status": "paid"})));
    // A state write needs a correlation id.
    let err = store.apply_patch(&ctx("acme", ""), &e, 1, &patch(json!([]))).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidInput);
}
both!(
    p1_t14_patch_that_does_not_apply_is_refused_and_changes_nothing,
    patch_that_does_not_apply_is_refused_and_changes_nothing
);

async fn concurrent_writers_on_one_version_exactly_one_wins(db: TestDatabase) {
    let store = migrated(&db).await;
    let e: EntityId = "acme/run/r1".parse().unwrap();
    store
        .apply_patch(&ctx("acme", "c"), &e, 0, &patch(json!([{"op": "add", "path": "/writer", "value": -1}])))
        .await
        .unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, e, barrier) = (store.clone(), e.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let p = patch(json!([{"op": "replace", "path": "/writer", "value": i}]));
            store.apply_patch(&ctx("acme", &format!("w{i}")), &e, 1, &p).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => winners.push(v),
            Err(err) => assert_eq!(err.code(), ErrorCode::StateConflict, "{}", err.message()),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer of version 2 wins");
    let history = store.state_history(&ctx("acme", "c"), &e).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1], winners[0], "the stored version is the winner's, untouched by the losers");
}
both!(p1_t14_concurrent_writers_on_one_version_exactly_one_wins, concurrent_writers_on_one_version_exactly_one_wins);

async fn cross_tenant_patch_is_refused(db: TestDatabase) {
    let store = migrated(&db).await;
    let e: EntityId = "acme/order/1".parse().unwrap();
    store
        .apply_patch(&ctx("acme", "c"), &e, 0, &patch(json!([{"op": "add", "path": "/s", "value": 1}])))
        .await
        .unwrap();
    let err = store
        .apply_patch(&ctx("globex", "c"), &e, 1, &patch(json!([{"op": "add", "path": "/s", "value": 2}])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TenantForbidden);
    assert_eq!(store.state_history(&ctx("globex", "c"), &e).await.unwrap_err().code(), ErrorCode::TenantForbidden);
    assert_eq!(store.state_history(&ctx("acme", "c"), &e).await.unwrap().len(), 1);
}
both!(p1_t33_cross_tenant_patch_is_refused, cross_tenant_patch_is_refused);
