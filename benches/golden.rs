//! Golden scenarios per second on SQLite, and what the kernel costs over the
//! providers' own round-trips (issue 6).
//!
//! Every scenario of `golden/scenarios/` runs three times in-process on a
//! fresh SQLite store and fresh fakes, as the golden suite runs it; the
//! figure is the wall time of the three rounds against the 30 s target.
//! Then, per scenario and in the same run: the time of its runs (engine,
//! executor, store, approvals, transcript; not the migration or the fakes'
//! start) against the same HTTP requests sent with plain reqwest to fresh
//! fakes in the same state (the floor: what any client of these providers
//! pays), with the 3x target.
//!
//! `cargo bench -p autobiz --bench golden`. Not criterion: one sample is a
//! whole suite. Record results in docs/benchmarks.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use autobiz::golden::{self, runner};
use autobiz_fakes::Fakes;
use autobiz_kernel::config::BusinessConfig;

const ROUNDS: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probes
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = golden::load_dir(&root.join("golden/scenarios")).expect("scenarios load");
    let config = BusinessConfig::load(&root.join("examples/shop/autobiz.toml")).expect("the example config loads");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    // Rounds: the whole suite, as the golden stage runs it (one backend).
    let mut per_scenario: Vec<(String, Vec<Duration>, usize)> =
        files.iter().map(|f| (f.name.clone(), Vec::new(), 0)).collect();
    let mut observed_last = Vec::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        for (i, file) in files.iter().enumerate() {
            let observed = rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("autobiz.db").display());
                let env = runner::Env { config: &config, admin_url: &url, kernel_url: &url, work_dir: dir.path() };
                golden::run(&file.scenario, &env).await.expect("the scenario runs")
            });
            let failed = golden::check(&file.scenario.expect, &observed);
            assert!(failed.is_empty(), "{}", golden::render(&file.name, &failed));
            per_scenario[i].1.push(observed.run_time);
            per_scenario[i].2 = observed.requests.len();
            if round == ROUNDS - 1 {
                observed_last.push(observed);
            }
        }
    }
    let total = started.elapsed();
    let runs = files.len() * ROUNDS;
    println!(
        "golden suite x{ROUNDS} on SQLite: {runs} scenario runs in {:.2} s = {:.1} scenarios/s (target: {ROUNDS} rounds < 30 s: {})",
        total.as_secs_f64(),
        runs as f64 / total.as_secs_f64(),
        if total < Duration::from_secs(30) { "met" } else { "NOT met" }
    );

    // Floors: the same requests, plain reqwest, fresh fakes in the same state.
    let http = reqwest::Client::new();
    let mut kernel_sum = Duration::ZERO;
    let mut raw_sum = Duration::ZERO;
    let mut over = 0;
    println!("{:<52} {:>9} {:>9} {:>9} {:>6}", "scenario", "requests", "kernel", "raw", "ratio");
    for ((file, (name, times, requests)), observed) in files.iter().zip(&per_scenario).zip(&observed_last) {
        let raw = rt.block_on(async {
            let fakes = Fakes::start().await;
            runner::setup(&fakes, &file.scenario.setup).await.expect("setup");
            let started = Instant::now();
            for (provider, r) in &observed.requests {
                let base = match *provider {
                    "stripe" => fakes.stripe.uri(),
                    "shopify" => fakes.shopify.uri(),
                    "printful" => fakes.printful.uri(),
                    _ => fakes.sendgrid.uri(),
                };
                let query = r.query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
                let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
                let mut req = http.request(method, format!("{base}{}{query}", r.path)).body(r.body.clone());
                for (k, v) in &r.headers {
                    if !matches!(k.as_str(), "host" | "content-length") {
                        req = req.header(k, v);
                    }
                }
                let _ = req.send().await.expect("request").bytes().await;
            }
            started.elapsed()
        });
        let mut sorted = times.clone();
        sorted.sort();
        let kernel = sorted[sorted.len() / 2];
        kernel_sum += kernel;
        raw_sum += raw;
        let ratio = kernel.as_secs_f64() / raw.as_secs_f64().max(1e-9);
        if ratio > 3.0 {
            over += 1;
        }
        println!(
            "{name:<52} {requests:>9} {:>7.1}ms {:>7.2}ms {:>5.1}x",
            kernel.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3,
            ratio
        );
    }
    let ratio = kernel_sum.as_secs_f64() / raw_sum.as_secs_f64().max(1e-9);
    println!(
        "all scenarios: kernel {:.1} ms, raw round-trips {:.1} ms, ratio {ratio:.1}x (target <= 3x per scenario: {} of {} over)",
        kernel_sum.as_secs_f64() * 1e3,
        raw_sum.as_secs_f64() * 1e3,
        over,
        files.len()
    );
}
