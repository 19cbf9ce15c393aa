//! Idempotency (INV-05, P1-T11, P1-T12, P1-H07, P1-H08, P1-T05-NEG-*) on both
//! backends: a duplicate within the window replays the stored result and
//! does not execute, after it the call executes again, a key reused with
//! other parameters is refused, and concurrent duplicates execute once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::clock::ManualClock;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::idempotency::{Begin, DEFAULT_WINDOW, IdempotencyKey, KeyParts, canonical, request_fingerprint};
use autobiz_kernel::receipts::{NewReceipt, payload_sha256};
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext, TenantId};
use autobiz_testkit::TestDatabase;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

#[macro_use]
mod common;

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test:runner"), CorrelationId::new("corr"))
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// Migrated database, kernel-role store on a manual clock.
async fn migrated(db: &TestDatabase) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start()));
    (common::migrated(db, clock.clone()).await, clock)
}

fn charge_input(amount: i64) -> Value {
    json!({"amount": amount, "currency": "usd", "customer": "cus_123"})
}

fn key(tenant: &str, input: &Value) -> IdempotencyKey {
    let tenant: TenantId = tenant.parse().unwrap();
    IdempotencyKey::derive(&KeyParts {
        tenant: &tenant,
        workflow: "wf01",
        step: "charge",
        tool: "stripe.charge.create",
        tool_version: "1",
        input,
    })
    .unwrap()
}

fn receipt(execution_id: &str, input: &Value, response: &Value, at: DateTime<Utc>) -> NewReceipt {
    NewReceipt {
        execution_id: execution_id.to_owned(),
        run_id: "run-1".to_owned(),
        tool: "stripe.charge.create".to_owned(),
        tool_version: "1".to_owned(),
        side_effect: SideEffect::Financial,
        request_sha256: payload_sha256(input).unwrap(),
        response_sha256: Some(payload_sha256(response).unwrap()),
        status: "succeeded".to_owned(),
        started_at: at,
        completed_at: at,
        amount_minor: input["amount"].as_i64(),
        currency: Some("usd".to_owned()),
    }
}

/// What the executor does around a side effect: begin (waiting for another
/// execution's claim), run the effect once when told to, complete with the
/// receipt. `effects` counts real executions.
async fn call(store: &Store, tenant: &str, input: &Value, execution_id: &str, effects: &AtomicU64) -> Value {
    let key = key(tenant, input);
    let fp = request_fingerprint(input).unwrap();
    let begin = store
        .idempotency_wait(&ctx(tenant), &key, &fp, execution_id, DEFAULT_WINDOW, Duration::from_secs(60))
        .await
        .unwrap();
    match begin {
        Begin::Execute(claim) => {
            let n = effects.fetch_add(1, Ordering::SeqCst) + 1;
            let response = json!({"id": format!("ch_{n}"), "status": "succeeded"});
            let now = Utc::now();
            store
                .idempotency_complete(&ctx(tenant), &claim, &response, &receipt(execution_id, input, &response, now))
                .await
                .unwrap();
            response
        }
        Begin::Replay(stored) => stored.response,
        Begin::InProgress => panic!("idempotency_wait never returns InProgress"),
    }
}

async fn duplicate_within_window_returns_stored_result(db: TestDatabase) {
    let (store, clock) = migrated(&db).await;
    let effects = AtomicU64::new(0);
    let input = charge_input(1000);
    let first = call(&store, "acme", &input, "exec-1", &effects).await;
    clock.advance(chrono::Duration::hours(23) + chrono::Duration::minutes(59));
    // Same request, new execution, key order and number spelling changed.
    let same: Value = serde_json::from_str(r#"{"customer":"cus_123","currency":"usd","amount":1.0e3}"#).unwrap();
    let second = call(&store, "acme", &same, "exec-2", &effects).await;
    assert_eq!(effects.load(Ordering::SeqCst), 1, "the duplicate must not execute");
    assert_eq!(second, first, "the duplicate returns the stored result");
    let k = key("acme", &input);
    match store
        .idempotency_begin(&ctx("acme"), &k, &request_fingerprint(&input).unwrap(), "exec-3", DEFAULT_WINDOW)
        .await
        .unwrap()
    {
        Begin::Replay(r) => {
            assert_eq!(r.first_seen_at, start(), "first_seen_at is stored");
            assert_eq!(r.execution_id, "exec-1");
            assert_eq!(r.external_key, k.external());
            assert!(r.receipt_id.is_some());
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    let stats = store.idempotency_stats().snapshot();
    assert_eq!((stats.hits, stats.misses), (2, 1));
    assert_eq!(store.receipts(&ctx("acme"), "run-1").await.unwrap().len(), 1);
}
both!(
    p1_t11_duplicate_within_window_returns_stored_result_without_executing,
    duplicate_within_window_returns_stored_result
);

async fn after_window_executes_again(db: TestDatabase) {
    let (store, clock) = migrated(&db).await;
    let effects = AtomicU64::new(0);
    let input = charge_input(2500);
    let first = call(&store, "acme", &input, "exec-1", &effects).await;
    clock.advance(chrono::Duration::hours(24));
    let again = call(&store, "acme", &input, "exec-2", &effects).await;
    assert_eq!(effects.load(Ordering::SeqCst), 2, "after the window the call executes again");
    assert_ne!(again, first);
    // The new execution opened a new window, and it replays within it.
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(call(&store, "acme", &input, "exec-3", &effects).await, again);
    assert_eq!(effects.load(Ordering::SeqCst), 2);
    // The window is configurable: with one minute, an hour later executes.
    let k = key("acme", &input);
    let fp = request_fingerprint(&input).unwrap();
    let short = Duration::from_secs(60);
    assert!(matches!(
        store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-4", short).await.unwrap(),
        Begin::Execute(c) if !c.resumed && c.first_seen_at == start() + chrono::Duration::hours(25)
    ));
    assert_eq!(store.receipts(&ctx("acme"), "run-1").await.unwrap().len(), 2);
}
both!(p1_t12_after_window_executes_again, after_window_executes_again);

async fn key_reused_with_different_parameters_is_refused(db: TestDatabase) {
    let (store, _clock) = migrated(&db).await;
    let tenant: TenantId = "acme".parse().unwrap();
    // A caller-supplied key (an Idempotency-Key header) used for two requests.
    let k = IdempotencyKey::supplied(&tenant, "POST /refunds", "req-42").unwrap();
    let a = request_fingerprint(&json!({"charge": "ch_1", "amount": 500})).unwrap();
    let b = request_fingerprint(&json!({"charge": "ch_1", "amount": 5000})).unwrap();
    let Begin::Execute(claim) = store.idempotency_begin(&ctx("acme"), &k, &a, "exec-1", DEFAULT_WINDOW).await.unwrap()
    else {
        panic!("first use executes")
    };
    let err = store.idempotency_begin(&ctx("acme"), &k, &b, "exec-2", DEFAULT_WINDOW).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IdempotencyKeyReused);
    assert!(!err.message().contains("5000"), "no request values in messages: {}", err.message());
    let response = json!({"id": "re_1"});
    let input = json!({"charge": "ch_1", "amount": 500});
    store
        .idempotency_complete(&ctx("acme"), &claim, &response, &receipt("exec-1", &input, &response, start()))
        .await
        .unwrap();
    // Still refused once completed, and the original replays.
    let err = store.idempotency_begin(&ctx("acme"), &k, &b, "exec-3", DEFAULT_WINDOW).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::IdempotencyKeyReused);
    assert!(
        matches!(store.idempotency_begin(&ctx("acme"), &k, &a, "exec-4", DEFAULT_WINDOW).await.unwrap(), Begin::Replay(r) if r.response == response)
    );
    assert_eq!(store.idempotency_stats().snapshot().reused, 2);
}
both!(p1_t05_neg_key_reused_with_different_parameters_is_refused, key_reused_with_different_parameters_is_refused);

async fn thousand_concurrent_duplicates_execute_once(db: TestDatabase) {
    let (store, _clock) = migrated(&db).await;
    let effects = Arc::new(AtomicU64::new(0));
    let input = charge_input(4200);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (store, effects, input, barrier) = (store.clone(), effects.clone(), input.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            call(&store, "acme", &input, &format!("exec-{i}"), &effects).await
        }));
    }
    let mut responses = Vec::new();
    for t in tasks {
        responses.push(t.await.unwrap());
    }
    assert_eq!(effects.load(Ordering::SeqCst), 1, "1,000 duplicates, exactly one execution");
    assert!(responses.iter().all(|r| r == &responses[0]), "every duplicate got the one result");
    let receipts = store.receipts(&ctx("acme"), "run-1").await.unwrap();
    assert_eq!(receipts.len(), 1, "exactly one receipt");
    assert_eq!(receipts[0].external_key, key("acme", &input).external());
    let stats = store.idempotency_stats().snapshot();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 999);
}
both!(inv05_thousand_concurrent_duplicates_execute_once_with_one_receipt, thousand_concurrent_duplicates_execute_once);

async fn in_progress_claim_is_never_executed_twice(db: TestDatabase) {
    let (store, clock) = migrated(&db).await;
    let input = charge_input(700);
    let k = key("acme", &input);
    let fp = request_fingerprint(&input).unwrap();
    let Begin::Execute(claim) = store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-1", DEFAULT_WINDOW).await.unwrap()
    else {
        panic!("first call executes")
    };
    // Another execution meets the claim: not executed, told it is in progress.
    assert_eq!(
        store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-2", DEFAULT_WINDOW).await.unwrap(),
        Begin::InProgress
    );
    let err = store
        .idempotency_wait(&ctx("acme"), &k, &fp, "exec-2", DEFAULT_WINDOW, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InProgress);
    assert_eq!(err.class(), autobiz_kernel::ErrorClass::Refused);
    // An unfinished claim does not expire with the window.
    clock.advance(chrono::Duration::hours(48));
    assert_eq!(
        store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-3", DEFAULT_WINDOW).await.unwrap(),
        Begin::InProgress
    );
    // Crash resume: the same execution gets its claim back, same external key.
    match store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-1", DEFAULT_WINDOW).await.unwrap() {
        Begin::Execute(resumed) => {
            assert!(resumed.resumed);
            assert_eq!(resumed.key.external(), claim.key.external());
            assert_eq!(resumed.first_seen_at, claim.first_seen_at);
        }
        other => panic!("expected the claim back, got {other:?}"),
    }
    assert_eq!(store.idempotency_stats().snapshot().resumed, 1);
    // Only the holder may complete it.
    let response = json!({"id": "ch_1"});
    let mut stolen = claim.clone();
    stolen.execution_id = "exec-2".to_owned();
    let err = store
        .idempotency_complete(
            &ctx("acme"),
            &stolen,
            &response,
            &receipt("exec-2", &input, &response, clock_now(&clock)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::IdempotencyClaimLost);
    assert!(store.receipts(&ctx("acme"), "run-1").await.unwrap().is_empty(), "no receipt without the claim");
}
both!(
    p1_t05_neg_in_progress_claim_is_never_executed_twice_and_resumes_with_the_same_key,
    in_progress_claim_is_never_executed_twice
);

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use autobiz_kernel::clock::Clock;
    clock.now()
}

async fn released_claim_may_be_retried(db: TestDatabase) {
    let (store, _clock) = migrated(&db).await;
    let effects = AtomicU64::new(0);
    let input = charge_input(900);
    let k = key("acme", &input);
    let fp = request_fingerprint(&input).unwrap();
    let Begin::Execute(claim) = store.idempotency_begin(&ctx("acme"), &k, &fp, "exec-1", DEFAULT_WINDOW).await.unwrap()
    else {
        panic!("first call executes")
    };
    let failure = autobiz_kernel::Error::new(ErrorCode::ToolTimeout, "provider did not answer before sending");
    let mut other = claim.clone();
    other.execution_id = "exec-9".to_owned();
    assert!(!store.idempotency_release(&ctx("acme"), &other, &failure).await.unwrap(), "only the holder releases");
    assert!(store.idempotency_release(&ctx("acme"), &claim, &failure).await.unwrap());
    let audit = store.audit_events(&ctx("acme"), 10).await.unwrap();
    assert_eq!(audit[0].event.action, "idempotency_release");
    assert_eq!(audit[0].event.outcome, "TOOL_TIMEOUT");
    call(&store, "acme", &input, "exec-2", &effects).await;
    assert_eq!(effects.load(Ordering::SeqCst), 1, "the retry executes");
}
both!(p1_t05_neg_released_claim_may_be_retried, released_claim_may_be_retried);

async fn keys_are_per_tenant(db: TestDatabase) {
    let (store, _clock) = migrated(&db).await;
    let effects = AtomicU64::new(0);
    let input = charge_input(100);
    assert_ne!(key("acme", &input), key("globex", &input), "the tenant is part of the key");
    call(&store, "acme", &input, "exec-1", &effects).await;
    call(&store, "globex", &input, "exec-1", &effects).await;
    assert_eq!(effects.load(Ordering::SeqCst), 2, "one tenant's key never replays for another");
    // Using another tenant's key is refused before any query.
    let err = store
        .idempotency_begin(&ctx("globex"), &key("acme", &input), "fp", "exec-2", DEFAULT_WINDOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TenantForbidden);
}
both!(p1_t33_idempotency_keys_are_per_tenant, keys_are_per_tenant);

// --- Keys and RFC 8785 (no database) ----------------------------------------------

#[test]
fn p1_h07_key_is_deterministic_sha256_over_jcs() {
    let input = json!({"b": [1, 2.5, "x"], "a": {"z": null, "y": true}});
    let k = key("acme", &input);
    assert_eq!(k, key("acme", &serde_json::from_str(r#"{"a":{"y":true,"z":null},"b":[1,2.50,"x"]}"#).unwrap()));
    // The documented construction, computed independently here.
    let doc = json!({"tenant": "acme", "workflow": "wf01", "step": "charge", "tool": "stripe.charge.create", "tool_version": "1", "input": input});
    let expected = hex_sha256(canonical(&doc).unwrap().as_bytes());
    assert_eq!(k.internal(), expected);
    assert_eq!(k.internal().len(), 64);
    // Every part matters.
    let tenant: TenantId = "acme".parse().unwrap();
    let base = KeyParts {
        tenant: &tenant,
        workflow: "wf01",
        step: "charge",
        tool: "stripe.charge.create",
        tool_version: "1",
        input: &input,
    };
    let variants = [
        KeyParts { workflow: "wf02", ..base },
        KeyParts { step: "refund", ..base },
        KeyParts { tool: "stripe.refund.create", ..base },
        KeyParts { tool_version: "2", ..base },
    ];
    for v in variants {
        assert_ne!(IdempotencyKey::derive(&v).unwrap(), k);
    }
}

#[test]
fn p1_h08_external_key_is_autobiz_prefix_and_32_hex_of_sha256_of_internal() {
    let k = key("acme", &charge_input(1000));
    assert_eq!(k.external(), format!("autobiz:{}", &hex_sha256(k.internal().as_bytes())[..32]));
    assert_eq!(k.external().len(), 40);
    assert!(k.external()["autobiz:".len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(!k.external().contains(k.internal()), "the external key does not reveal the internal one");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// RFC 8785 Appendix B: IEEE-754 values and their canonical text.
#[test]
fn p1_h07_jcs_numbers_match_rfc8785_appendix_b() {
    let table: &[(u64, &str)] = &[
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];
    for (bits, expected) in table {
        let value = Value::from(f64::from_bits(*bits));
        assert_eq!(canonical(&value).unwrap(), *expected, "IEEE-754 0x{bits:016x}");
    }
    // The same numbers written as JSON text.
    for (text, expected) in [
        ("1e+21", "1e+21"),
        ("1E30", "1e+30"),
        ("333333333.33333329", "333333333.3333333"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("4.50", "4.5"),
        ("2e-3", "0.002"),
        ("0.000001", "0.000001"),
        ("1e-7", "1e-7"),
        ("0.000000000000000000000000001", "1e-27"),
        ("100", "100"),
    ] {
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(canonical(&value).unwrap(), expected, "JSON text {text}");
    }
}

/// RFC 8785 section 3.2.2 (the sample input) and 3.2.3 (property sorting by
/// UTF-16 code units).
#[test]
fn p1_h07_jcs_matches_rfc8785_examples() {
    let input = r#"{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"#;
    let value: Value = serde_json::from_str(input).unwrap();
    assert_eq!(
        canonical(&value).unwrap(),
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
    let sorting = r#"{
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\ud83d\ude00": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    let value: Value = serde_json::from_str(sorting).unwrap();
    assert_eq!(
        canonical(&value).unwrap(),
        "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
}
