//! The cost of an idempotency hit (a replay: `idempotency_begin` on a
//! completed key) and a miss (`idempotency_begin` on a new key, then
//! `idempotency_complete` with its receipt), on SQLite and on PostgreSQL,
//! each beside the raw storage floor measured in the same run: one
//! single-row insert through sqlx on the same backend.
//!
//! `cargo bench -p autobiz-kernel --bench idempotency`; the last lines print
//! each figure next to its floor. PostgreSQL comes from the testkit server
//! (`AUTOBIZ_TEST_DATABASE_URL`, default the local one). Record results in
//! docs/benchmarks.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::idempotency::{Begin, DEFAULT_WINDOW, IdempotencyKey, KeyParts, request_fingerprint};
use autobiz_kernel::receipts::{NewReceipt, payload_sha256};
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext, TenantId};
use autobiz_testkit::TestDatabase;
use chrono::Utc;
use criterion::{Criterion, criterion_group};
use serde_json::{Value, json};

fn ctx() -> TenantContext {
    TenantContext::new("bench".parse().unwrap(), Principal::new("agent:bench"), CorrelationId::new("corr-bench"))
}

fn input(n: u64) -> Value {
    json!({"amount": 1999, "currency": "usd", "customer": "cus_Q1w2E3r4T5y6U7", "order": format!("gid://shopify/Order/{n}")})
}

fn key(tenant: &TenantId, input: &Value) -> IdempotencyKey {
    IdempotencyKey::derive(&KeyParts {
        tenant,
        workflow: "wf01",
        step: "charge",
        tool: "stripe.charge.create",
        tool_version: "1",
        input,
    })
    .unwrap()
}

fn receipt(execution_id: &str, input: &Value, response: &Value) -> NewReceipt {
    let now = Utc::now();
    NewReceipt {
        execution_id: execution_id.to_owned(),
        run_id: "run-bench".to_owned(),
        tool: "stripe.charge.create".to_owned(),
        tool_version: "1".to_owned(),
        side_effect: SideEffect::Financial,
        request_sha256: payload_sha256(input).unwrap(),
        response_sha256: Some(payload_sha256(response).unwrap()),
        status: "succeeded".to_owned(),
        started_at: now,
        completed_at: now,
        amount_minor: Some(1999),
        currency: Some("usd".to_owned()),
    }
}

/// A miss: a new key claimed, executed (no-op) and completed with its receipt.
async fn miss(store: &Store, tenant: &TenantId, n: u64) {
    let input = input(n);
    let k = key(tenant, &input);
    let exec = format!("exec-{n}");
    let Begin::Execute(claim) = store
        .idempotency_begin(&ctx(), &k, &request_fingerprint(&input).unwrap(), &exec, DEFAULT_WINDOW)
        .await
        .unwrap()
    else {
        panic!("a new key executes")
    };
    let response = json!({"id": format!("ch_{n}"), "status": "succeeded"});
    store.idempotency_complete(&ctx(), &claim, &response, &receipt(&exec, &input, &response)).await.unwrap();
}

/// A hit: the completed key 0 asked again.
async fn hit(store: &Store, tenant: &TenantId) {
    let input = input(0);
    let k = key(tenant, &input);
    let fp = request_fingerprint(&input).unwrap();
    let b = store.idempotency_begin(&ctx(), &k, &fp, "exec-again", DEFAULT_WINDOW).await.unwrap();
    assert!(matches!(b, Begin::Replay(_)));
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, db: &TestDatabase) {
    rt.block_on(async {
        Store::open_admin(&db.admin_url().parse().unwrap()).await.unwrap().migrate().await.unwrap();
    });
    let store = rt.block_on(Store::open(&db.kernel_url().parse().unwrap())).unwrap();
    let tenant: TenantId = "bench".parse().unwrap();
    rt.block_on(miss(&store, &tenant, 0));
    let payload = serde_json::to_string(&input(0)).unwrap();

    // The floor: one row into a plain table, through sqlx, same database.
    let create = "CREATE TABLE floor (id BIGINT PRIMARY KEY, tenant_id TEXT NOT NULL, record TEXT NOT NULL)";
    let next = Arc::new(AtomicU64::new(1));
    // The same statements on either pool type.
    macro_rules! floor {
        ($pool:expr) => {{
            let pool = rt.block_on($pool).unwrap();
            rt.block_on(sqlx::query(create).execute(&pool)).unwrap();
            c.bench_function(&format!("floor_{name}_single_insert"), |b| {
                b.iter(|| {
                    let id = next.fetch_add(1, Ordering::Relaxed) as i64;
                    rt.block_on(
                        sqlx::query("INSERT INTO floor (id, tenant_id, record) VALUES ($1, $2, $3)")
                            .bind(id)
                            .bind("bench")
                            .bind(&payload)
                            .execute(&pool),
                    )
                    .unwrap()
                })
            });
        }};
    }
    match db.backend() {
        autobiz_testkit::Backend::Sqlite => floor!(sqlx::SqlitePool::connect(db.admin_url())),
        autobiz_testkit::Backend::Postgres => floor!(sqlx::PgPool::connect(db.admin_url())),
    }

    c.bench_function(&format!("idempotency_hit_{name}"), |b| b.iter(|| rt.block_on(hit(&store, &tenant))));
    let n = AtomicU64::new(1);
    c.bench_function(&format!("idempotency_miss_{name}"), |b| {
        b.iter(|| rt.block_on(miss(&store, &tenant, n.fetch_add(1, Ordering::Relaxed))))
    });
    rt.block_on(store.close());
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sqlite = TestDatabase::sqlite();
    bench_backend(c, &rt, "sqlite", &sqlite);
    let postgres = rt.block_on(TestDatabase::postgres());
    bench_backend(c, &rt, "postgres", &postgres);
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

/// The median of a benchmark finished since `since` (this run: an older
/// result left by an earlier run is not reported as this run's), in
/// nanoseconds, from criterion's output.
fn median_ns(name: &str, since: std::time::SystemTime) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let path = Path::new(&target).join("criterion").join(name).join("new/estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < since {
        return None;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let since = std::time::SystemTime::now();
    group();
    Criterion::default().configure_from_args().final_summary();
    println!("\nfigure vs floor, medians of this run:");
    for backend in ["sqlite", "postgres"] {
        let Some(floor) = median_ns(&format!("floor_{backend}_single_insert"), since) else {
            println!("  {backend}: floor not measured in this run (filter?)");
            continue;
        };
        for kind in ["hit", "miss"] {
            let Some(ns) = median_ns(&format!("idempotency_{kind}_{backend}"), since) else {
                println!("  idempotency {kind:<4} {backend:<8}: not measured in this run (filter?)");
                continue;
            };
            println!(
                "  idempotency {kind:<4} {backend:<8}: {:>9.1} µs   floor: raw {backend} single-row insert {:.1} µs  ({:.2}x)",
                ns / 1e3,
                floor / 1e3,
                ns / floor
            );
        }
    }
}
