//! Receipts (P1-T13) on both backends: every completed side effect has one,
//! with payload hashes, timestamps, execution id and both keys; FINANCIAL
//! receipts carry amount and currency; the database refuses to change or
//! delete a receipt; a side effect whose receipt cannot be written leaves no
//! result behind and its tool can be blocked until reconciled.

use std::sync::Arc;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::clock::ManualClock;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::idempotency::{Begin, DEFAULT_WINDOW, IdempotencyKey, KeyParts, request_fingerprint};
use autobiz_kernel::receipts::{NewReceipt, payload_sha256};
use autobiz_kernel::store::{Store, driver_error};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext, TenantId};
use autobiz_testkit::TestDatabase;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Connection;

#[macro_use]
mod common;

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("agent:wf01"), CorrelationId::new("corr"))
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

async fn migrated(db: &TestDatabase) -> Store {
    common::migrated(db, Arc::new(ManualClock::new(start()))).await
}

fn key(input: &Value) -> IdempotencyKey {
    let tenant: TenantId = "acme".parse().unwrap();
    IdempotencyKey::derive(&KeyParts {
        tenant: &tenant,
        workflow: "wf02",
        step: "refund",
        tool: "stripe.refund.create",
        tool_version: "2",
        input,
    })
    .unwrap()
}

fn new_receipt(execution_id: &str, side_effect: SideEffect, request: &Value, response: &Value) -> NewReceipt {
    NewReceipt {
        execution_id: execution_id.to_owned(),
        run_id: "run-7".to_owned(),
        tool: "stripe.refund.create".to_owned(),
        tool_version: "2".to_owned(),
        side_effect,
        request_sha256: payload_sha256(request).unwrap(),
        response_sha256: Some(payload_sha256(response).unwrap()),
        status: "succeeded".to_owned(),
        started_at: start(),
        completed_at: start() + chrono::Duration::milliseconds(350),
        amount_minor: Some(1999),
        currency: Some("eur".to_owned()),
    }
}

/// Claim `input`'s key for `execution_id` and complete it with a receipt.
async fn effect(
    store: &Store,
    input: &Value,
    execution_id: &str,
) -> autobiz_kernel::Result<autobiz_kernel::receipts::Receipt> {
    let k = key(input);
    let Begin::Execute(claim) =
        store.idempotency_begin(&ctx("acme"), &k, &request_fingerprint(input)?, execution_id, DEFAULT_WINDOW).await?
    else {
        panic!("expected to execute")
    };
    let response = json!({"id": "re_1", "status": "succeeded"});
    store
        .idempotency_complete(
            &ctx("acme"),
            &claim,
            &response,
            &new_receipt(execution_id, SideEffect::Financial, input, &response),
        )
        .await
}

async fn completed_effect_writes_a_linked_receipt(db: TestDatabase) {
    let store = migrated(&db).await;
    let input = json!({"charge": "ch_1", "amount": 1999});
    let receipt = effect(&store, &input, "exec-1").await.unwrap();
    let k = key(&input);
    assert_eq!(receipt.internal_key, k.internal());
    assert_eq!(receipt.external_key, k.external());
    assert_eq!(receipt.execution_id, "exec-1");
    assert_eq!(receipt.request_sha256, payload_sha256(&input).unwrap());
    assert_eq!(
        receipt.response_sha256.as_deref(),
        Some(payload_sha256(&json!({"status": "succeeded", "id": "re_1"})).unwrap().as_str())
    );
    assert_eq!(receipt.started_at, start());
    assert_eq!(receipt.completed_at, start() + chrono::Duration::milliseconds(350));
    let financial = receipt.financial().expect("a FINANCIAL receipt");
    assert_eq!((financial.amount_minor, financial.currency), (1999, "EUR"));
    // Stored as returned, readable by run and by tool.
    assert_eq!(store.receipts(&ctx("acme"), "run-7").await.unwrap(), vec![receipt.clone()]);
    assert_eq!(store.receipts_for_tool(&ctx("acme"), "stripe.refund.create").await.unwrap(), vec![receipt.clone()]);
    assert!(store.receipts(&ctx("globex"), "run-7").await.unwrap().is_empty(), "receipts are per tenant");
    // The stored result points at the receipt.
    match store
        .idempotency_begin(&ctx("acme"), &k, &request_fingerprint(&input).unwrap(), "exec-2", DEFAULT_WINDOW)
        .await
        .unwrap()
    {
        Begin::Replay(r) => assert_eq!(r.receipt_id.as_deref(), Some(receipt.receipt_id.as_str())),
        other => panic!("expected a replay, got {other:?}"),
    }
}
both!(p1_t13_completed_effect_writes_a_linked_receipt, completed_effect_writes_a_linked_receipt);

async fn financial_receipt_requires_amount_and_currency(db: TestDatabase) {
    let store = migrated(&db).await;
    let input = json!({"charge": "ch_2", "amount": 10});
    let k = key(&input);
    let Begin::Execute(claim) = store
        .idempotency_begin(&ctx("acme"), &k, &request_fingerprint(&input).unwrap(), "exec-1", DEFAULT_WINDOW)
        .await
        .unwrap()
    else {
        panic!("expected to execute")
    };
    let response = json!({"id": "re_2"});
    let good = new_receipt("exec-1", SideEffect::Financial, &input, &response);
    for bad in [
        NewReceipt { amount_minor: None, ..good.clone() },
        NewReceipt { currency: None, ..good.clone() },
        NewReceipt { currency: Some("euro".to_owned()), ..good.clone() },
        NewReceipt { amount_minor: Some(-5), ..good.clone() },
        NewReceipt { request_sha256: "not-a-hash".to_owned(), ..good.clone() },
        NewReceipt { completed_at: start() - chrono::Duration::seconds(1), ..good.clone() },
        NewReceipt { execution_id: "exec-other".to_owned(), ..good.clone() },
    ] {
        let err = store.idempotency_complete(&ctx("acme"), &claim, &response, &bad).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ReceiptInvalid, "{bad:?}");
    }
    assert!(store.receipts(&ctx("acme"), "run-7").await.unwrap().is_empty(), "nothing written");
    // A non-financial receipt needs no amount.
    let write = NewReceipt {
        amount_minor: None,
        currency: None,
        ..new_receipt("exec-1", SideEffect::Write, &input, &response)
    };
    assert!(store.idempotency_complete(&ctx("acme"), &claim, &response, &write).await.unwrap().financial().is_none());
}
both!(p1_t13_financial_receipt_requires_amount_and_currency, financial_receipt_requires_amount_and_currency);

/// UPDATE and DELETE through raw SQL, as the kernel role and as the owner.
async fn receipts_are_immutable_in_the_database(db: TestDatabase) {
    let store = migrated(&db).await;
    effect(&store, &json!({"charge": "ch_3", "amount": 1}), "exec-1").await.unwrap();
    let attempts = [
        "UPDATE receipts SET status = 'refunded' WHERE tenant_id = 'acme'",
        "UPDATE receipts SET amount_minor = 1 WHERE tenant_id = 'acme'",
        "DELETE FROM receipts WHERE tenant_id = 'acme'",
    ];
    match db.backend() {
        autobiz_testkit::Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db.admin_url()).await.unwrap();
            for sql in attempts {
                let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
                assert!(err.to_string().contains("receipts are immutable"), "{sql}: {err}");
                assert_eq!(driver_error(err, "change a receipt").code(), ErrorCode::ReceiptImmutable, "{sql}");
            }
        }
        autobiz_testkit::Backend::Postgres => {
            for url in [db.kernel_url(), db.admin_url()] {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                for sql in attempts.iter().chain(&["TRUNCATE receipts"]) {
                    let mut tx = conn.begin().await.unwrap();
                    sqlx::query("SELECT set_config('app.tenant_id', 'acme', true)").execute(&mut *tx).await.unwrap();
                    let err = sqlx::query(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await.unwrap_err();
                    assert_eq!(
                        driver_error(err, "change a receipt").code(),
                        ErrorCode::ReceiptImmutable,
                        "{sql} as {url}"
                    );
                }
            }
        }
    }
    let receipts = store.receipts(&ctx("acme"), "run-7").await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].status, "succeeded");
    assert_eq!(receipts[0].amount_minor, Some(1999));
}
both!(p1_t13_receipts_are_immutable_in_the_database, receipts_are_immutable_in_the_database);

async fn unreceipted_effect_is_not_completed_and_the_tool_is_blocked(db: TestDatabase) {
    let store = migrated(&db).await;
    let input = json!({"charge": "ch_4", "amount": 5});
    let k = key(&input);
    let fp = request_fingerprint(&input).unwrap();
    let Begin::Execute(claim) = store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-1", DEFAULT_WINDOW).await.unwrap()
    else {
        panic!("expected to execute")
    };
    let response = json!({"id": "re_4"});
    let r = new_receipt("exec-1", SideEffect::Financial, &input, &response);
    // Something already holds this receipt's id: the receipt write fails.
    store.record_receipt(&ctx("acme"), &k, &r).await.unwrap();
    let err = store.idempotency_complete(&ctx("acme"), &claim, &response, &r).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StateConflict, "{}", err.message());
    // The result was not stored either: a duplicate does not replay an
    // unreceipted result, it meets the unfinished claim.
    assert_eq!(
        store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-2", DEFAULT_WINDOW).await.unwrap(),
        Begin::InProgress
    );
    // The executor blocks the tool until reconciled.
    assert!(store.block_tool(&ctx("acme"), "stripe.refund.create", "receipt write failed for exec-1").await.unwrap());
    assert!(!store.block_tool(&ctx("acme"), "stripe.refund.create", "again").await.unwrap());
    let block = store.tool_blocked(&ctx("acme"), "stripe.refund.create").await.unwrap().unwrap();
    assert_eq!(block.reason, "receipt write failed for exec-1");
    assert_eq!(block.blocked_by, "agent:wf01");
    let err = store.ensure_tool_unblocked(&ctx("acme"), "stripe.refund.create").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolBlocked);
    assert_eq!(err.class(), autobiz_kernel::ErrorClass::Refused);
    // Other tenants and other tools are not blocked.
    store.ensure_tool_unblocked(&ctx("globex"), "stripe.refund.create").await.unwrap();
    store.ensure_tool_unblocked(&ctx("acme"), "stripe.charge.create").await.unwrap();
    // Cleared after reconciliation, audited both ways.
    assert!(store.clear_tool_block(&ctx("acme"), "stripe.refund.create", "cli:alice").await.unwrap());
    assert!(!store.clear_tool_block(&ctx("acme"), "stripe.refund.create", "cli:alice").await.unwrap());
    store.ensure_tool_unblocked(&ctx("acme"), "stripe.refund.create").await.unwrap();
    let audit: Vec<(String, String)> = store
        .audit_events(&ctx("acme"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.event.action, a.event.outcome))
        .collect();
    for expected in [("tool_block", "blocked"), ("tool_block", "already_blocked"), ("tool_unblock", "cleared")] {
        assert!(audit.contains(&(expected.0.to_owned(), expected.1.to_owned())), "{expected:?} in {audit:?}");
    }
    // It can be blocked again later.
    assert!(store.block_tool(&ctx("acme"), "stripe.refund.create", "second incident").await.unwrap());
}
both!(
    p1_t13_unreceipted_effect_is_not_completed_and_the_tool_is_blocked,
    unreceipted_effect_is_not_completed_and_the_tool_is_blocked
);

/// The daily closeout's read: one tool's receipts written since a time, each
/// with its stored result, in one query; older receipts and other tenants'
/// are not read.
async fn receipt_results_since_reads_the_window_with_results(db: TestDatabase) {
    let clock = Arc::new(ManualClock::new(start()));
    let store = common::migrated(&db, clock.clone()).await;
    let old = effect(&store, &json!({"charge": "ch_1", "amount": 1999}), "exec-1").await.unwrap();
    clock.advance(chrono::Duration::days(8));
    let new = effect(&store, &json!({"charge": "ch_2", "amount": 1999}), "exec-2").await.unwrap();
    let tool = "stripe.refund.create";
    let since = start() + chrono::Duration::days(1);
    let window = store.receipt_results_since(&ctx("acme"), tool, since).await.unwrap();
    assert_eq!(window, vec![(new.clone(), Some(json!({"id": "re_1", "status": "succeeded"})))]);
    let all = store.receipt_results_since(&ctx("acme"), tool, start()).await.unwrap();
    assert_eq!(all.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), vec![old, new]);
    assert!(
        store.receipt_results_since(&ctx("acme"), "stripe.payment_intent.capture", start()).await.unwrap().is_empty()
    );
    assert!(store.receipt_results_since(&ctx("globex"), tool, start()).await.unwrap().is_empty(), "per tenant");
}
both!(p1_t26_receipt_results_since_reads_the_window_with_results, receipt_results_since_reads_the_window_with_results);
