//! Soak throughput and memory (issue 9).
//!
//! 1. Seven virtual days at 300 deliveries a day through the real ingress
//!    (`ServeDriver`: the serve router on loopback, its worker, the fakes)
//!    on SQLite, as `autobiz soak --days 7` runs it: wall time against the
//!    5-minute target, deliveries per second, and the process's resident
//!    memory every 300 deliveries.
//! 2. One virtual day on PostgreSQL (the local server): deliveries per
//!    second.
//! 3. The floor, in the same run: the same number of raw single-row
//!    inserts, one transaction each, on a fresh SQLite file with the
//!    store's settings (WAL, synchronous=FULL), and on PostgreSQL.
//!
//! `cargo bench -p autobiz --bench soak` (`SOAK_BENCH_DAYS=N` for a longer
//! SQLite soak). Not criterion: one sample is minutes. Record the figures
//! in docs/benchmarks.md.

use std::path::Path;
use std::time::{Duration, Instant};

use autobiz::soak::checkpoint::Checkpoint;
use autobiz::soak::driver::{DriverOptions, ServeDriver};
use autobiz::soak::plan::Mix;
use autobiz::soak::{ClockMode, GateNow, Progress, SoakConfig, Violation};
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_testkit::TestDatabase;
use chrono::{DateTime, Utc};
use sqlx::ConnectOptions;

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

struct Sampler(std::sync::Mutex<Vec<(u64, u64)>>);

impl Progress for Sampler {
    fn started(&self, _planned: u64, _done: u64) {}
    fn delivered(&self, done: u64, _gate: GateNow, _violations: &[Violation]) {
        if done.is_multiple_of(300) {
            self.0.lock().unwrap().push((done, rss_kib()));
        }
    }
}

fn config(days: u32, start: DateTime<Utc>) -> SoakConfig {
    SoakConfig {
        days,
        events_per_day: 300,
        seed: 7,
        clock: ClockMode::Virtual,
        mix: Mix::shop(),
        start,
        window: 300,
        warmup: 100,
        confidence: 0.95,
        threshold: 0.95,
        check_every: 25,
    }
}

/// One soak; (wall time, deliveries, verdict, RSS samples).
async fn soak(
    cfg: &BusinessConfig,
    dir: &Path,
    url: Option<DatabaseUrl>,
    days: u32,
) -> (Duration, u64, String, Vec<(u64, u64)>) {
    let start = DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z").unwrap().with_timezone(&Utc);
    let soak = config(days, start);
    let mut checkpoint = Checkpoint::open(dir, &soak).expect("checkpoint");
    let opts = DriverOptions {
        config: cfg,
        dir,
        database_url: url,
        clock: ClockMode::Virtual,
        start,
        seed: soak.seed,
        inject: None,
    };
    let mut driver = ServeDriver::start(opts).await.unwrap_or_else(|e| panic!("driver: {e:?}"));
    let sampler = Sampler(std::sync::Mutex::new(vec![(0, rss_kib())]));
    let t = Instant::now();
    let outcome = autobiz::soak::run(&soak, &mut driver, &mut checkpoint, &sampler).await.expect("soak");
    let took = t.elapsed();
    driver.shutdown().await;
    let samples = sampler.0.into_inner().unwrap();
    (took, outcome.events, outcome.verdict.to_owned(), samples)
}

/// `n` single-row inserts, one transaction each, on a fresh store-like SQLite file.
async fn sqlite_floor(dir: &Path, n: u64) -> Duration {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("floor.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut c = opts.connect().await.expect("floor db");
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)").execute(&mut c).await.unwrap();
    let t = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t (body) VALUES ($1)").bind(format!("{{\"seq\":{i}}}")).execute(&mut c).await.unwrap();
    }
    t.elapsed()
}

async fn postgres_floor(url: &str, n: u64) -> Duration {
    let mut c = url.parse::<sqlx::postgres::PgConnectOptions>().unwrap().connect().await.expect("floor pg");
    sqlx::query("CREATE TEMP TABLE t (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)").execute(&mut c).await.unwrap();
    let t = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t (body) VALUES ($1)").bind(format!("{{\"seq\":{i}}}")).execute(&mut c).await.unwrap();
    }
    t.elapsed()
}

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probes
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = BusinessConfig::load(&root.join("examples/shop/autobiz.toml")).expect("the example config loads");
    let days: u32 = std::env::var("SOAK_BENCH_DAYS").ok().and_then(|d| d.parse().ok()).unwrap_or(7);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (took, events, verdict, samples) = soak(&cfg, &dir.path().join("sqlite"), None, days).await;
        let floor = sqlite_floor(dir.path(), events).await;
        println!("soak, SQLite, {days} virtual days x 300: {events} deliveries in {:.1} s ({:.1} deliveries/s), verdict {verdict}; target < 300 s: {}",
            took.as_secs_f64(), per_s(events, took), if took < Duration::from_secs(300) { "met" } else { "NOT met" });
        println!("  floor, same run: {events} raw SQLite inserts (WAL, synchronous=FULL, one transaction each) in {:.2} s ({:.0}/s); soak / floor = {:.0}x per delivery",
            floor.as_secs_f64(), per_s(events, floor), took.as_secs_f64() / floor.as_secs_f64().max(1e-9));
        let first = samples.iter().find(|(n, _)| *n >= 300).map_or(samples[0].1, |s| s.1);
        let last = samples.last().map_or(0, |s| s.1);
        let rss: Vec<String> = samples.iter().map(|(n, kib)| format!("{n}:{:.1}MiB", *kib as f64 / 1024.0)).collect();
        println!("  resident memory by deliveries: {}", rss.join(" "));
        println!("  growth from 300 to {events} deliveries: {:+.1} % (target: within 20 % from 10,000 to 1,000,000)",
            (last as f64 - first as f64) * 100.0 / first.max(1) as f64);

        let db = TestDatabase::postgres().await;
        let admin: DatabaseUrl = db.admin_url().parse().unwrap();
        Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
        let url: DatabaseUrl = db.kernel_url().parse().unwrap();
        let (took, events, verdict, _) = soak(&cfg, &dir.path().join("pg"), Some(url), 1).await;
        let floor = postgres_floor(db.admin_url(), events).await;
        println!("soak, PostgreSQL, 1 virtual day x 300: {events} deliveries in {:.1} s ({:.1} deliveries/s), verdict {verdict}",
            took.as_secs_f64(), per_s(events, took));
        println!("  floor, same run: {events} raw PostgreSQL inserts (one transaction each) in {:.2} s ({:.0}/s); soak / floor = {:.0}x per delivery",
            floor.as_secs_f64(), per_s(events, floor), took.as_secs_f64() / floor.as_secs_f64().max(1e-9));
    });
}
