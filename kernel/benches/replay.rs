//! Replay throughput (INV-06): a 10,000-step transcript re-executed against
//! its workflow, beside the floor measured in the same run: reading and
//! checking the same transcript (parse every line, verify the hash chain)
//! without re-executing anything.
//!
//! `cargo bench -p autobiz-kernel --bench replay`; the last lines print the
//! figure, the floor and the target (>= 100,000 steps/s, i.e. < 100 ms).
//! `REPLAY_BENCH_ROUNDS` (default 7) sets the rounds, e.g. 1 under a profiler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autobiz_kernel::bounds::{Bounds, LoopPolicy};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::contract::{PriceModel, SideEffect, ToolContract, ToolRegistry};
use autobiz_kernel::engine::{Engine, RunSpec};
use autobiz_kernel::executor::{CallContext, Executor, Tool, ToolOutput};
use autobiz_kernel::permission::{PermissionEnforcer, Scope};
use autobiz_kernel::redaction::RedactionPolicy;
use autobiz_kernel::replay::{ReplayOutcome, replay};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_kernel::trace::{TraceRecord, TraceSink};
use autobiz_kernel::transcript::{Transcript, TranscriptWriter};
use autobiz_kernel::workflow::{Step, Workflow};
use serde_json::{Value, json};

const STEPS: usize = 10_000;

/// With `--features mimalloc`, the allocator of the `autobiz` binary.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str = if cfg!(feature = "mimalloc") { "mimalloc" } else { "system (glibc)" };

struct Drop;

#[async_trait::async_trait]
impl TraceSink for Drop {
    async fn append(&self, _ctx: &TenantContext, _record: &TraceRecord) -> autobiz_kernel::Result<()> {
        Ok(())
    }
}

struct Echo;

#[async_trait::async_trait]
impl Tool for Echo {
    async fn call(&self, _call: CallContext, input: Value) -> autobiz_kernel::Result<ToolOutput> {
        Ok(ToolOutput::new(json!({"ok": true, "n": input["n"], "sku": input["sku"]})))
    }
}

fn setup() -> (Workflow, Executor) {
    let mut r = ToolRegistry::new();
    let input =
        json!({"type": "object", "properties": {"n": {"type": "integer"}, "sku": {"type": "string"}, "prev": {}}});
    let c = ToolContract::new(
        "step.do",
        "1",
        SideEffect::Write,
        &input,
        &json!({"type": "object"}),
        Duration::from_secs(5),
        PriceModel::from_usd(0.0, 0.0),
    )
    .unwrap();
    r.register(c).unwrap();
    let perms = PermissionEnforcer::new(vec![Scope::new("agent:bench", &["step.do"])]);
    let loops = LoopPolicy::default();
    let mut exec = Executor::new(r, perms, loops, RedactionPolicy::default(), Arc::new(Drop), Arc::new(SystemClock));
    exec.bind("step.do", "1", Arc::new(Echo)).unwrap();
    let steps = (0..STEPS)
        .map(|i| Step {
            id: format!("s{i}"),
            tool: "step.do".into(),
            version: "1".into(),
            input: if i == 0 {
                json!({"n": 0, "sku": "$.event.sku"})
            } else {
                json!({"n": i, "sku": "$.event.sku", "prev": format!("$.s{}.n", i - 1)})
            },
            next: None,
            on_error: None,
            agent: None,
            compensate_with: None,
            retry: None,
        })
        .collect();
    (Workflow { id: "WF99".into(), name: "bench".into(), steps }, exec)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (wf, exec) = setup();
    let ctx = TenantContext::new("acme".parse().unwrap(), Principal::new("agent:bench"), CorrelationId::new("bench"));
    let spec = RunSpec {
        workflow: &wf,
        ctx,
        run_id: "bench".into(),
        bounds: Bounds {
            max_steps: u32::MAX,
            max_wall_time: Duration::from_secs(600),
            max_tokens: 0,
            max_tool_calls: u32::MAX,
        },
        event: json!({"sku": "A-1"}),
        pins: json!({}),
        config_hash: "bench".into(),
    };
    let mut w = TranscriptWriter::memory();
    let report = rt.block_on(Engine::new(&exec).run(&spec, &mut w)).unwrap();
    assert_eq!(report.path.len(), STEPS);
    let text = w.lines().join("\n");
    let lines = w.lines().len();

    // `REPLAY_BENCH_ROUNDS=1` for a profiler run (callgrind, perf).
    let rounds = std::env::var("REPLAY_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(7);
    let mut floor = Vec::new();
    let mut figure = Vec::new();
    // CPU time of this thread per phase, summed over the rounds: on a shared
    // machine the wall clock also counts the time other processes held the
    // cores; the CPU time does not.
    let (mut cpu_floor, mut cpu_figure) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let (t, c) = (Instant::now(), thread_cpu());
        let transcript = Transcript::parse(&text).unwrap();
        floor.push(t.elapsed());
        let (t, c2) = (Instant::now(), thread_cpu());
        cpu_floor += c2.saturating_sub(c);
        let transcript2 = Transcript::parse(&text).unwrap();
        let out = replay(&transcript2, &wf, exec.registry(), "bench").unwrap();
        figure.push(t.elapsed());
        cpu_figure += thread_cpu().saturating_sub(c2);
        assert!(matches!(out, ReplayOutcome::Identical(_)), "{out:?}");
        std::hint::black_box(transcript);
    }
    floor.sort();
    figure.sort();
    let (floor, figure) = (floor[rounds / 2], figure[rounds / 2]);
    let rate = STEPS as f64 / figure.as_secs_f64();
    println!(
        "replay of a {STEPS}-step transcript ({lines} lines, {} KiB), medians of {rounds} rounds, allocator {ALLOCATOR}:",
        text.len() / 1024
    );
    println!(
        "  read + replay     : {:>8.1} ms  ({:.0} steps/s)   target >= 100,000 steps/s (< 100 ms): {}",
        figure.as_secs_f64() * 1e3,
        rate,
        if rate >= 100_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  floor, read only  : {:>8.1} ms  (parse every line, check the chain; replay costs {:.2}x the read)",
        floor.as_secs_f64() * 1e3,
        figure.as_secs_f64() / floor.as_secs_f64()
    );
    let (cpu_floor, cpu_figure) = (cpu_floor / rounds as u32, cpu_figure / rounds as u32);
    println!(
        "  CPU time, mean    : {:>8.1} ms read + replay, {:.1} ms read only (this thread, 10 ms ticks; load {})",
        cpu_figure.as_secs_f64() * 1e3,
        cpu_floor.as_secs_f64() * 1e3,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?")
    );
}

/// CPU time (user + system) this thread has used, from
/// `/proc/thread-self/stat` in clock ticks (USER_HZ, 100 on Linux); zero
/// where that file does not exist.
fn thread_cpu() -> Duration {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Fields after the command name, which is in parentheses: state is
        // field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    Duration::from_millis(ticks().unwrap_or(0) * 10)
}
