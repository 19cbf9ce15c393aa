//! `autobiz suite unit` against `cargo nextest run` with the same filter and
//! profile, alternated in the same run (after one warm-up of each, so the
//! test binaries are built): the wall-clock overhead of the harness (its
//! `nextest list`, the JUnit parse, the table) must stay <= 5 %. Also shown:
//! the same with the harness's cached test list removed, as on the first
//! run after the test binaries changed.
//!
//! `cargo bench -p autobiz --bench suite_overhead` from the repository root;
//! `SUITE_BENCH_RUNS` (default 7) pairs. Not criterion: one sample is
//! seconds long, so medians of alternated pairs are measured directly.
//! Record results in docs/benchmarks.md.

use std::process::{Command, Stdio};
use std::time::Instant;

fn time(cmd: &mut Command) -> f64 {
    let started = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("command starts");
    assert!(status.success(), "{cmd:?} failed: {status}");
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probes
    }
    let runs: usize = std::env::var("SUITE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let autobiz = env!("CARGO_BIN_EXE_autobiz");
    let nextest = || {
        let mut c = Command::new("cargo");
        c.args(["nextest", "run", "--workspace", "--no-fail-fast", "--profile", "gate", "-E", "kind(lib)"]);
        c
    };
    let suite = || {
        let mut c = Command::new(autobiz);
        c.args(["-q", "suite", "unit"]);
        c
    };
    // The list `suite` keeps between runs (see src/nextest.rs, ListCache):
    // removed before a "cold" run, as after a rebuild of the test binaries.
    let cache = std::path::Path::new(".autobiz/suite/unit.list.json");
    time(&mut nextest());
    time(&mut suite());
    let (mut bare, mut harness, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        bare.push(time(&mut nextest()));
        harness.push(time(&mut suite()));
        let _ = std::fs::remove_file(cache);
        cold.push(time(&mut suite()));
    }
    let (b, h, c) = (median(bare), median(harness), median(cold));
    let pct = |x: f64| (x - b) / b * 100.0;
    println!("suite unit vs cargo nextest run -E kind(lib), medians of {runs} alternated rounds:");
    println!(
        "  autobiz suite unit: {h:.2} s   floor: cargo nextest run {b:.2} s   overhead {:+.1} %   target <= 5 %: {}",
        pct(h),
        if pct(h) <= 5.0 { "met" } else { "NOT met" }
    );
    println!(
        "  same, test list not cached (first run after the binaries changed; listed beside the run): {c:.2} s   overhead {:+.1} %",
        pct(c)
    );
}
