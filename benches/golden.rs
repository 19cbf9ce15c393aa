//! Golden scenarios per second on SQLite, and what the kernel costs over the
//! providers' own round-trips (issue 6).
//!
//! Every scenario of `golden/scenarios/` runs three times in-process on a
//! fresh SQLite store and fresh fakes, as the golden suite runs it, four at
//! a time (`AUTOBIZ_GOLDEN_JOBS`; nextest runs the golden tests in parallel
//! too); the figure is the wall time of the three rounds against the 30 s
//! target. Then, per scenario, one at a time: the time of its runs (engine,
//! executor, store, approvals, transcript; not the migration or the fakes'
//! start; median of three) against the same HTTP requests sent with plain
//! reqwest to fresh fakes in the same state, each answered as it was (the
//! fault it met injected again, the LLM fake's requests included) under the
//! clients' request timeout (the floor: what any client of these providers
//! pays), with the 3x target.
//!
//! The golden runner's store is a throwaway SQLite file whose commits need
//! survive only the process (`SqliteDurability::ProcessCrash`,
//! `synchronous=NORMAL`); the same per-scenario pass with production's
//! `synchronous=FULL` (an fsync per commit) is printed beside it.
//!
//! `cargo bench -p autobiz --bench golden`; `AUTOBIZ_GOLDEN_FILTER=WF01/`
//! runs only the scenarios whose name holds it. Not criterion: one sample is
//! a whole suite. Record results in docs/benchmarks.md.
//!
//! It runs under mimalloc, the allocator of the `autobiz` binary and of the
//! golden test binary that `autobiz suite golden` runs; `--features
//! system-allocator` measures glibc's instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use autobiz::golden::{self, runner};
use autobiz_fakes::{Fakes, Fault};
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::store::SqliteDurability;

/// The allocator of the `autobiz` binary (`autobiz suite golden`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str =
    if cfg!(feature = "system-allocator") { "system (glibc)" } else { "mimalloc, as the autobiz binary" };

const ROUNDS: usize = 3;
/// Scenarios at a time in the rounds (`AUTOBIZ_GOLDEN_JOBS`): each is mostly
/// waiting (store commits, the fakes, the clients' backoffs and timeouts).
const JOBS: usize = 4;
/// The golden runner's store: thrown away with its scenario, so its commits
/// need survive only the process (see `SqliteDurability`).
const GOLDEN: SqliteDurability = SqliteDurability::ProcessCrash;

/// One scenario on a fresh SQLite store in a temporary directory, its
/// commits as durable as `durability` says.
fn run_one(
    rt: &tokio::runtime::Runtime,
    file: &golden::ScenarioFile,
    config: &BusinessConfig,
    cassettes: &std::path::Path,
    durability: SqliteDurability,
) -> golden::Observed {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("autobiz.db").display());
        let env = runner::Env {
            config,
            admin_url: &url,
            kernel_url: &url,
            work_dir: dir.path(),
            cassette_dir: cassettes,
            sqlite_durability: durability,
        };
        golden::run(&file.scenario, &env).await.expect("the scenario runs")
    })
}

/// The median run time of three runs of `file`, and the last run.
fn median_of_three(
    rt: &tokio::runtime::Runtime,
    file: &golden::ScenarioFile,
    config: &BusinessConfig,
    cassettes: &std::path::Path,
    durability: SqliteDurability,
) -> (Duration, golden::Observed) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..ROUNDS {
        let observed = run_one(rt, file, config, cassettes, durability);
        times.push(observed.run_time);
        last = Some(observed);
    }
    times.sort();
    (times[times.len() / 2], last.expect("three runs"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probes
    }
    // `AUTOBIZ_LOG=sqlx::query=debug` logs each statement with its time, as
    // the CLI does (quiet otherwise).
    autobiz::report::init_logging(0, true);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = golden::load_dir(&root.join("golden/scenarios")).expect("scenarios load");
    // `AUTOBIZ_GOLDEN_FILTER=WF01/happy`: only the scenarios whose name holds it.
    if let Ok(filter) = std::env::var("AUTOBIZ_GOLDEN_FILTER") {
        files.retain(|f| f.name.contains(&filter));
    }
    let config = BusinessConfig::load(&root.join("examples/shop/autobiz.toml")).expect("the example config loads");
    let cassettes = root.join("cassettes");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let jobs = std::env::var("AUTOBIZ_GOLDEN_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(JOBS).max(1);

    // Rounds: the whole suite, as the golden stage runs it (one backend),
    // `jobs` scenarios at a time, each on its own thread and runtime (as
    // nextest runs each scenario in its own process).
    let work: Vec<&golden::ScenarioFile> = (0..ROUNDS).flat_map(|_| files.iter()).collect();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = work.get(i) else { break };
                    let observed = run_one(&rt, file, &config, &cassettes, GOLDEN);
                    let failed = golden::check(&file.scenario.expect, &observed);
                    assert!(failed.is_empty(), "{}", golden::render(&file.name, &failed));
                }
            });
        }
    });
    let total = started.elapsed();
    let runs = files.len() * ROUNDS;
    println!(
        "golden suite x{ROUNDS} on SQLite, {jobs} at a time, allocator {ALLOCATOR}: {runs} scenario runs in {:.2} s = {:.1} scenarios/s (target: {ROUNDS} rounds < 30 s: {})",
        total.as_secs_f64(),
        runs as f64 / total.as_secs_f64(),
        if total < Duration::from_secs(30) { "met" } else { "NOT met" }
    );

    // Per scenario, one at a time (nothing else of the bench running): the
    // kernel's run time, median of three runs.
    // Beside it the same with production's SQLite setting (an fsync per
    // commit), for the record.
    let mut per_scenario: Vec<(String, Duration, Duration, usize)> = Vec::new();
    let mut observed_last = Vec::new();
    for file in &files {
        let (kernel, observed) = median_of_three(&rt, file, &config, &cassettes, GOLDEN);
        let (full, _) = median_of_three(&rt, file, &config, &cassettes, SqliteDurability::PowerLoss);
        per_scenario.push((file.name.clone(), kernel, full, observed.requests.len()));
        observed_last.push(observed);
    }

    // Floors: the same requests, plain reqwest, fresh fakes in the same state,
    // each answered as it was (the fault it met injected again) and sent with
    // the kernel clients' request timeout: a timeout or a 500 costs any
    // client of these providers the same.
    let http = reqwest::Client::builder().timeout(runner::http_settings().request_timeout).build().expect("client");
    let mut kernel_sum = Duration::ZERO;
    let mut full_sum = Duration::ZERO;
    let mut raw_sum = Duration::ZERO;
    let (mut over, mut over_full) = (0, 0);
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6}",
        "scenario", "requests", "kernel", "raw", "ratio", "kernel/FULL", "ratio"
    );
    for ((file, (name, kernel, full, requests)), observed) in files.iter().zip(&per_scenario).zip(&observed_last) {
        let raw = rt.block_on(async {
            let fakes = Fakes::start().await;
            runner::setup(&fakes, &file.scenario.setup).await.expect("setup");
            let llm = match &file.scenario.llm {
                Some(spec) if observed.requests.iter().any(|(p, _)| p.starts_with("llm")) => {
                    Some(runner::llm_fakes(spec, false).await.expect("LLM fakes"))
                }
                _ => None,
            };
            let started = Instant::now();
            for (provider, r) in &observed.requests {
                let llm_fake = match (*provider, &llm) {
                    ("llm", Some((primary, _))) => Some(primary),
                    ("llm_fallback", Some((_, Some(fallback)))) => Some(fallback),
                    _ => None,
                };
                let base = match (*provider, llm_fake) {
                    (_, Some(fake)) => fake.uri(),
                    ("stripe", _) => fakes.stripe.uri(),
                    ("shopify", _) => fakes.shopify.uri(),
                    ("printful", _) => fakes.printful.uri(),
                    _ => fakes.sendgrid.uri(),
                };
                match (&r.fault, llm_fake) {
                    (Some(fault), Some(fake)) => fake.inject(fault.clone()),
                    (Some(fault), None) => runner::inject(&fakes, provider, fault.clone(), 1),
                    (None, _) => {}
                }
                let query = r.query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
                let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
                let mut req = http.request(method, format!("{base}{}{query}", r.path)).body(r.body.clone());
                for (k, v) in &r.headers {
                    if !matches!(k.as_str(), "host" | "content-length") {
                        req = req.header(k, v);
                    }
                }
                // A timed-out request is an answer too (the fault's).
                if let Ok(response) = req.send().await {
                    let _ = response.bytes().await;
                }
            }
            started.elapsed()
        });
        let (kernel, full) = (*kernel, *full);
        kernel_sum += kernel;
        full_sum += full;
        raw_sum += raw;
        let ratio = kernel.as_secs_f64() / raw.as_secs_f64().max(1e-9);
        let ratio_full = full.as_secs_f64() / raw.as_secs_f64().max(1e-9);
        over += usize::from(ratio > 3.0);
        over_full += usize::from(ratio_full > 3.0);
        // A request timed out by design (a `delay` fault): both sides wait it.
        let timeout = observed.requests.iter().any(|(_, r)| matches!(r.fault, Some(Fault::Delay(_))));
        println!(
            "{name:<52} {requests:>9} {:>7.1}ms {:>7.2}ms {:>5.1}x {:>9.1}ms {:>5.1}x{}",
            kernel.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3,
            ratio,
            full.as_secs_f64() * 1e3,
            ratio_full,
            if timeout { "  (timeout fault)" } else { "" }
        );
    }
    let ratio = kernel_sum.as_secs_f64() / raw_sum.as_secs_f64().max(1e-9);
    let ratio_full = full_sum.as_secs_f64() / raw_sum.as_secs_f64().max(1e-9);
    println!(
        "all scenarios: kernel {:.1} ms, raw round-trips {:.1} ms, ratio {ratio:.1}x (target <= 3x per scenario: {} of {} within)",
        kernel_sum.as_secs_f64() * 1e3,
        raw_sum.as_secs_f64() * 1e3,
        files.len() - over,
        files.len()
    );
    println!(
        "  with synchronous=FULL (production's SQLite setting): kernel {:.1} ms, ratio {ratio_full:.1}x ({} of {} within 3x)",
        full_sum.as_secs_f64() * 1e3,
        files.len() - over_full,
        files.len()
    );
}
