//! Replay throughput (INV-06): a 10,000-step transcript re-executed against
//! its workflow, beside the floor measured in the same run: reading and
//! checking the same transcript (parse every line, verify the hash chain)
//! without re-executing anything.
//!
//! `cargo bench -p autobiz-kernel --bench replay`; the last lines print the
//! figure, the floor and the target (>= 100,000 steps/s, i.e. < 100 ms).
//! It runs under mimalloc, the `autobiz` binary's allocator (what
//! `autobiz replay` runs under); `--features system-allocator` for glibc's.
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

/// The allocator of the `autobiz` binary, which `autobiz replay` runs
/// under; `--features system-allocator` measures the system's instead.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str =
    if cfg!(feature = "system-allocator") { "system (glibc)" } else { "mimalloc, as the autobiz binary" };

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
    // Per phase, the wall time of each round and the CPU time summed over
    // the rounds: on a shared machine the wall clock also counts the time
    // other processes held the cores; the CPU time does not. The CPU time
    // is the whole process's (replay hashes on a second thread), beside
    // this thread's.
    let mut phases: [Phase; 3] = Default::default();
    let [floor, figure, only] = &mut phases;
    for _ in 0..rounds {
        // The floor: read and check the transcript (parse every line,
        // check version, sequence and chain), replaying nothing.
        let transcript = floor.time(|| Transcript::parse(&text).unwrap());
        // The figure, as `autobiz replay` does it: read, then replay; and
        // within it, for information, the replay alone.
        let out = figure.time(|| {
            let transcript = Transcript::parse(&text).unwrap();
            only.time(|| replay(&transcript, &wf, exec.registry(), "bench").unwrap())
        });
        assert!(matches!(out, ReplayOutcome::Identical(_)), "{out:?}");
        std::hint::black_box(transcript);
    }
    let [floor, figure, only] = phases.map(|p| p.summary(rounds));
    let rate = STEPS as f64 / figure.wall.as_secs_f64();
    println!(
        "replay of a {STEPS}-step transcript ({lines} lines, {} KiB), medians of {rounds} rounds, allocator {ALLOCATOR}, load {}:",
        text.len() / 1024,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?")
    );
    println!("  wall time (median); CPU time (mean, 10 ms ticks) of the process and of the bench thread");
    println!(
        "  read + replay    : {:>7.1} ms wall, CPU {:>6.1} ms process, {:>6.1} ms thread  ({rate:.0} steps/s)   target >= 100,000 steps/s (< 100 ms wall): {}",
        ms(figure.wall),
        ms(figure.process),
        ms(figure.thread),
        if rate >= 100_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  floor, read only : {:>7.1} ms wall, CPU {:>6.1} ms process, {:>6.1} ms thread  (parse, check the chain; read + replay costs {:.2}x the read)",
        ms(floor.wall),
        ms(floor.process),
        ms(floor.thread),
        figure.wall.as_secs_f64() / floor.wall.as_secs_f64()
    );
    println!(
        "  replay only      : {:>7.1} ms wall, CPU {:>6.1} ms process, {:>6.1} ms thread  (of read + replay: the transcript already read; information, not the target)",
        ms(only.wall),
        ms(only.process),
        ms(only.thread)
    );
}

/// One phase: the wall time of each round, the CPU time of all rounds.
#[derive(Default)]
struct Phase {
    walls: Vec<Duration>,
    process: Duration,
    thread: Duration,
}

/// Median wall time, mean CPU times.
struct Summary {
    wall: Duration,
    process: Duration,
    thread: Duration,
}

impl Phase {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (t, p, c) = (Instant::now(), cpu("/proc/self/stat"), cpu("/proc/thread-self/stat"));
        let out = f();
        self.walls.push(t.elapsed());
        self.process += cpu("/proc/self/stat").saturating_sub(p);
        self.thread += cpu("/proc/thread-self/stat").saturating_sub(c);
        out
    }

    fn summary(mut self, rounds: usize) -> Summary {
        self.walls.sort();
        Summary {
            wall: self.walls[rounds / 2],
            process: self.process / rounds as u32,
            thread: self.thread / rounds as u32,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user + system) of the process or thread whose `stat` file
/// (`/proc/self/stat`, `/proc/thread-self/stat`) is `stat`, in clock ticks
/// (USER_HZ, 100 on Linux); zero where that file does not exist.
fn cpu(stat: &str) -> Duration {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(stat).ok()?;
        // Fields after the command name, which is in parentheses: state is
        // field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    Duration::from_millis(ticks().unwrap_or(0) * 10)
}
