//! One no-op tool call through the whole executor path (validation of a ~1 KB
//! input, permission, bounds, loop check, redaction, trace record), beside the
//! floors measured in the same run: the bare `jsonschema` validation of the
//! same input, and a raw single-row SQLite insert through sqlx.
//!
//! `cargo bench -p autobiz-kernel --bench executor`; the last lines print each
//! figure next to its floor and target. Record results in docs/benchmarks.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autobiz_kernel::bounds::{Bounds, LoopPolicy};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::executor::{CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::store::Store;
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{TraceRecord, TraceSink};
use criterion::{Criterion, criterion_group};
use serde_json::{Value, json};

/// Builds the persisted form of each record (its JSON) and drops it: the
/// trace's CPU cost without storage, and no memory growing with iterations.
struct SerializeOnly;

#[async_trait::async_trait]
impl TraceSink for SerializeOnly {
    async fn append(&self, _ctx: &TenantContext, record: &TraceRecord) -> autobiz_kernel::Result<()> {
        std::hint::black_box(serde_json::to_vec(record).expect("records serialize"));
        Ok(())
    }
}

struct Noop;

#[async_trait::async_trait]
impl Tool for Noop {
    async fn call(&self, _call: CallContext, _input: Value) -> autobiz_kernel::Result<ToolOutput> {
        Ok(ToolOutput::new(json!({"ok": true})))
    }
}

/// An order-shaped object of about 1 KB with 11 properties.
fn input() -> Value {
    json!({
        "order_id": "gid://shopify/Order/5467891234567",
        "customer_id": "cus_Q1w2E3r4T5y6U7",
        "amount": 12999,
        "currency": "usd",
        "status": "paid",
        "quantity": 3,
        "sku": "TSHIRT-BLK-XL",
        "note": "Please gift wrap the package and include a card that says happy birthday to my friend.",
        "tags": ["gift", "priority", "returning-customer", "newsletter"],
        "items": [
            {"sku": "TSHIRT-BLK-XL", "quantity": 1, "price": 4333},
            {"sku": "MUG-WHT-11OZ", "quantity": 1, "price": 4333},
            {"sku": "POSTER-A2", "quantity": 1, "price": 4333}
        ],
        "shipping": {"carrier": "usps", "service": "priority", "tracking_number": "9400111899223197428490", "country": "US", "postal_code": "94107"}
    })
}

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "amount", "currency"],
        "properties": {
            "order_id": {"type": "string"}, "customer_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 1},
            "currency": {"type": "string", "pattern": "^[a-z]{3}$"}, "status": {"enum": ["paid", "pending", "refunded"]},
            "quantity": {"type": "integer"}, "sku": {"type": "string"}, "note": {"type": "string", "maxLength": 500},
            "tags": {"type": "array", "items": {"type": "string"}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}, "price": {"type": "integer"}}}},
            "shipping": {"type": "object", "properties": {"carrier": {"type": "string"}, "service": {"type": "string"}, "tracking_number": {"type": "string"}, "country": {"type": "string"}, "postal_code": {"type": "string"}}}
        }
    })
}

fn executor(sink: Arc<dyn TraceSink>) -> Executor {
    let mut registry = ToolRegistry::new();
    registry
        .register(
            ToolContract::new(
                "noop",
                "1",
                SideEffect::Read,
                &schema(),
                &json!({"type": "object"}),
                Duration::from_secs(5),
                PriceModel::default(),
            )
            .unwrap(),
        )
        .unwrap();
    let mut policy = LoopPolicy::default();
    policy.retry_allowlist.insert("noop".into());
    let mut exec = Executor::new(
        registry,
        PermissionEnforcer::new(vec![Scope::new("agent:bench", &["noop"])]),
        policy,
        RedactionPolicy::default(),
        sink,
        Arc::new(SystemClock),
    );
    exec.bind("noop", "1", Arc::new(Noop)).unwrap();
    exec
}

fn ctx() -> TenantContext {
    TenantContext::new("bench".parse().unwrap(), Principal::new("agent:bench"), CorrelationId::new("corr-bench"))
}

fn bounds() -> Bounds {
    Bounds {
        max_steps: u32::MAX,
        max_wall_time: Duration::from_secs(3600),
        max_tokens: u64::MAX,
        max_tool_calls: u32::MAX,
    }
}

/// Time `iters` calls, starting a fresh run every 1,000 calls so that loop
/// history stays the size of a real run.
async fn calls(exec: Arc<Executor>, iters: u64, run_prefix: &'static str) -> Duration {
    let input = input();
    let mut total = Duration::ZERO;
    let mut done = 0;
    let mut n = 0;
    while done < iters {
        n += 1;
        let mut run =
            exec.start(&ctx(), &format!("{run_prefix}-{n}-{}", rand_suffix()), bounds(), json!({})).await.unwrap();
        let batch = (iters - done).min(1000);
        let start = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(exec.call(&mut run, "noop", "1", input.clone()).await.unwrap());
        }
        total += start.elapsed();
        done += batch;
    }
    total
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let value = input();
    assert!(validator.is_valid(&value));
    c.bench_function("floor_jsonschema_validate_1kb", |b| b.iter(|| std::hint::black_box(validator.is_valid(&value))));

    let policy = RedactionPolicy::default();
    c.bench_function("part_redact_1kb", |b| b.iter(|| std::hint::black_box(policy.redact(&value))));
    c.bench_function("part_args_hash_1kb", |b| {
        b.iter(|| std::hint::black_box(autobiz_kernel::executor::args_hash(&value)))
    });

    // The loop runs on a runtime worker, as runs do in production, so the
    // tool task is spawned onto the same worker rather than handed across
    // threads from outside the runtime.
    let memory = Arc::new(executor(Arc::new(SerializeOnly)));
    c.bench_function("executor_call_no_persistence", |b| {
        b.iter_custom(|iters| rt.block_on(rt.spawn(calls(memory.clone(), iters, "mem"))).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(Store::open(&url.parse().unwrap())).unwrap();
    let pool = rt.block_on(sqlx::SqlitePool::connect(&url)).unwrap();
    rt.block_on(
        sqlx::query("CREATE TABLE floor (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, record TEXT NOT NULL)")
            .execute(&pool),
    )
    .unwrap();
    let payload = serde_json::to_string(&value).unwrap();
    c.bench_function("floor_sqlite_single_insert", |b| {
        b.iter(|| {
            rt.block_on(
                sqlx::query("INSERT INTO floor (tenant_id, record) VALUES ($1, $2)")
                    .bind("bench")
                    .bind(&payload)
                    .execute(&pool),
            )
            .unwrap()
        })
    });
    let persisted = Arc::new(executor(Arc::new(store)));
    c.bench_function("executor_call_sqlite_trace", |b| {
        b.iter_custom(|iters| rt.block_on(rt.spawn(calls(persisted.clone(), iters, "sql"))).unwrap())
    });
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

/// The median of a finished benchmark, in nanoseconds, from criterion's output.
fn median_ns(name: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let path = Path::new(&target).join("criterion").join(name).join("new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    for part in ["part_redact_1kb", "part_args_hash_1kb"] {
        if let Some(ns) = median_ns(part) {
            println!("  {part}: {:.2} µs", ns / 1e3);
        }
    }
    let (Some(validate), Some(mem), Some(insert), Some(sql)) = (
        median_ns("floor_jsonschema_validate_1kb"),
        median_ns("executor_call_no_persistence"),
        median_ns("floor_sqlite_single_insert"),
        median_ns("executor_call_sqlite_trace"),
    ) else {
        eprintln!("(comparison skipped: run without a filter to measure all four)");
        return;
    };
    println!("\nfigure vs floor, medians of this run:");
    println!(
        "  executor call, no persistence : {:>9.2} µs   floor: jsonschema validate {:.2} µs  ({:.0}x)   target <= 25 µs: {}",
        mem / 1e3,
        validate / 1e3,
        mem / validate,
        if mem <= 25_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  executor call, SQLite trace   : {:>9.2} µs   floor: raw SQLite insert   {:.2} µs  ({:.2}x)   target <= 2x: {}",
        sql / 1e3,
        insert / 1e3,
        sql / insert,
        if sql <= 2.0 * insert { "met" } else { "NOT met" }
    );
}
