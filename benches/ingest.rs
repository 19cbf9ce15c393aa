//! Verified webhook ingest in events per second: `autobiz serve`'s router
//! on a loopback port, a load generator of 16 concurrent connections
//! posting distinct Stripe events, each signature-checked, deduplicated and
//! inserted (with the ordering gate's decision). Beside it, the floor: the
//! raw single-row insert of the same payload through sqlx into a plain
//! table of the same database, from 16 concurrent tasks, measured in the
//! same run. SQLite (WAL, synchronous=FULL) and PostgreSQL (testkit server).
//!
//! `cargo bench --bench ingest`; the last lines print each figure beside
//! its floor. Record results in docs/benchmarks.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autobiz::serve::{App, HttpCounters, router};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::ingress::signature::stripe_header;
use autobiz_kernel::ingress::{Ingress, Provider, StaticKeys};
use autobiz_kernel::secrets::{FileSecrets, MasterKey};
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_testkit::{Backend, TestDatabase};
use criterion::{Criterion, Throughput};
use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::runtime::Runtime;

const SECRET: &str = "whsec_bench";
const CONCURRENCY: usize = 16;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// (figure, backend) -> (events, elapsed).
static TOTALS: Mutex<BTreeMap<(String, String), (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(figure: &str, backend: &str, events: u64, elapsed: Duration) {
    let mut t = TOTALS.lock().unwrap();
    let e = t.entry((figure.to_owned(), backend.to_owned())).or_default();
    e.0 += events;
    e.1 += elapsed;
}

fn body(n: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"evt_bench_{n}","object":"event","type":"payment_intent.created","created":1700000000,"livemode":false,"data":{{"object":{{"id":"pi_bench_{n}","object":"payment_intent","amount":1999,"currency":"usd","status":"requires_payment_method","metadata":{{"order_id":"{n}"}}}}}}}}"#
    )
    .into_bytes()
}

struct Target {
    base: String,
    db: TestDatabase,
    _dir: tempfile::TempDir,
}

async fn start(db: TestDatabase) -> Target {
    let admin: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
    let store = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets =
        FileSecrets::open(dir.path().join("secrets.json"), MasterKey::generate(), Arc::new(store.clone())).unwrap();
    let mut keys = BTreeMap::new();
    keys.insert(Provider::Stripe, Arc::new(vec![SecretString::from(SECRET)]));
    let clock = Arc::new(SystemClock);
    let app = Arc::new(App {
        ingress: Ingress::new(store.clone(), Arc::new(StaticKeys(keys)), clock),
        store,
        tenants: BTreeSet::from(["bench".parse().unwrap()]),
        secrets: Arc::new(secrets),
        stored: Arc::default(),
        http: HttpCounters::default(),
        breaker_metrics: None,
        outcomes: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(app, 256 * 1024)).await.unwrap() });
    Target { base, db, _dir: dir }
}

async fn ingest(http: &reqwest::Client, base: &str, n: u64) -> Duration {
    let started = Instant::now();
    let url = format!("{base}/webhooks/bench/stripe");
    futures_util::stream::iter(0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let b = body(NEXT.fetch_add(1, Ordering::Relaxed));
                let sig = stripe_header(&b, chrono::Utc::now().timestamp(), &[SecretString::from(SECRET)]);
                let resp = http.post(url).header("Stripe-Signature", sig).body(b).send().await.unwrap();
                assert_eq!(resp.status().as_u16(), 200);
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

macro_rules! floor {
    ($pool:expr, $n:expr) => {{
        let pool = $pool;
        let started = Instant::now();
        futures_util::stream::iter(0..$n)
            .map(|_| {
                let pool = pool.clone();
                async move {
                    let n = NEXT.fetch_add(1, Ordering::Relaxed);
                    sqlx::query("INSERT INTO floor_events (id, tenant_id, payload) VALUES ($1, $2, $3)")
                        .bind(n as i64)
                        .bind("bench")
                        .bind(String::from_utf8(body(n)).unwrap())
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        started.elapsed()
    }};
}

fn bench_backend(c: &mut Criterion, rt: &Runtime, backend: Backend) {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let target = rt.block_on(async {
        let db = match backend {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres().await,
        };
        start(db).await
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();
    let create = "CREATE TABLE floor_events (id BIGINT PRIMARY KEY, tenant_id TEXT NOT NULL, payload TEXT NOT NULL)";
    let mut g = c.benchmark_group(format!("ingest_{name}"));
    g.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("verified_webhook", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(ingest(&http, &target.base, iters));
            record("verified webhook ingest", name, iters, elapsed);
            elapsed
        })
    });
    match backend {
        Backend::Sqlite => {
            let pool = rt.block_on(async {
                let p = sqlx::SqlitePool::connect(target.db.admin_url()).await.unwrap();
                sqlx::query(create).execute(&p).await.unwrap();
                p
            });
            g.bench_function("floor_raw_insert", |b| {
                b.iter_custom(|iters| {
                    let elapsed = rt.block_on(async { floor!(pool.clone(), iters) });
                    record("raw insert floor", name, iters, elapsed);
                    elapsed
                })
            });
        }
        Backend::Postgres => {
            let pool = rt.block_on(async {
                let p = sqlx::PgPool::connect(target.db.admin_url()).await.unwrap();
                sqlx::query(create).execute(&p).await.unwrap();
                p
            });
            g.bench_function("floor_raw_insert", |b| {
                b.iter_custom(|iters| {
                    let elapsed = rt.block_on(async { floor!(pool.clone(), iters) });
                    record("raw insert floor", name, iters, elapsed);
                    elapsed
                })
            });
        }
    }
    g.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut c = Criterion::default().configure_from_args();
    bench_backend(&mut c, &rt, Backend::Sqlite);
    bench_backend(&mut c, &rt, Backend::Postgres);
    c.final_summary();
    let totals = TOTALS.lock().unwrap();
    let rate = |figure: &str, backend: &str| {
        totals.get(&(figure.to_owned(), backend.to_owned())).map(|(n, d)| *n as f64 / d.as_secs_f64())
    };
    println!("\nfigure vs floor, this run (events/s over every measured iteration, {CONCURRENCY} concurrent):");
    for backend in ["sqlite", "postgres"] {
        match (rate("verified webhook ingest", backend), rate("raw insert floor", backend)) {
            (Some(ingest), Some(floor)) => println!(
                "  {backend:<8}: verified webhook ingest {ingest:>8.0} ev/s   floor: raw insert {floor:>8.0} ev/s  ({:.0} % of floor; target >= 50 %)",
                100.0 * ingest / floor
            ),
            _ => println!("  {backend}: not measured in this run (filter?)"),
        }
    }
}
