//! The gate's arithmetic over 100,002 test outcomes (33,334 tests x 3 runs,
//! 1 % failures) and the verification of a realistic signed evidence file,
//! each beside a floor measured in the same run: for the gate, one pass that
//! only tallies the same outcomes per test id in a map; for verification,
//! the bare Ed25519 `verify_strict` of the same PAE bytes.
//!
//! `cargo bench -p autobiz --bench gate`; targets: evaluation < 1 s,
//! verification < 50 ms. Record results in docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use autobiz::evidence::{self, Envelope, Statement};
use autobiz::gate::{GateConfig, Outcome, Priority, Trial, evaluate};
use criterion::{Criterion, criterion_group};
use ed25519_dalek::Verifier;
use serde_json::{Value, json};

const TESTS: usize = 33_334;
const RUNS: u32 = 3;

fn trials() -> (Vec<Trial>, BTreeMap<String, Priority>) {
    let expected: BTreeMap<String, Priority> = (0..TESTS)
        .map(|i| {
            (
                format!("autobiz-kernel::bench tests::p1_t{:02}_case_{i:06}", i % 41),
                if i.is_multiple_of(10) { Priority::P0 } else { Priority::P1 },
            )
        })
        .collect();
    let trials = (1..=RUNS)
        .flat_map(|run| {
            expected.iter().enumerate().map(move |(i, (id, &priority))| Trial {
                test_id: id.clone(),
                priority,
                run,
                outcome: if (i + run as usize).is_multiple_of(100) { Outcome::Failed } else { Outcome::Passed },
            })
        })
        .collect();
    (trials, expected)
}

/// An envelope shaped like the project's own evidence: 250 tests x 3 runs.
fn envelope(key: &ed25519_dalek::SigningKey) -> Envelope {
    let tests: Vec<Value> = (0..250)
        .map(|i| json!({"id": format!("autobiz-kernel::executor p1_t{:02}_case_{i}", i % 41), "priority": "P1", "outcome": "passed"}))
        .collect();
    let runs: Vec<Value> =
        (1..=3).map(|run| json!({"run": run, "status": "completed", "exit_code": 0, "tests": tests})).collect();
    let predicate = json!({"schema_version": 1, "verdict": "pass", "finished_at": "2026-11-22T06:00:00Z", "result": {"stages": [{"stage": "unit", "runs": runs}]}});
    let statement = Statement::new(&"a".repeat(40), &"b".repeat(64), &"c".repeat(64), predicate);
    evidence::sign(&statement, key)
}

fn benches(c: &mut Criterion) {
    let (trials, expected) = trials();
    assert_eq!(trials.len(), 100_002);
    let config = GateConfig::default();
    c.bench_function("floor_tally_100k_outcomes", |b| {
        b.iter(|| {
            let mut tally: HashMap<&str, [u32; 2]> = HashMap::with_capacity(TESTS);
            for t in &trials {
                tally.entry(t.test_id.as_str()).or_default()[usize::from(t.outcome == Outcome::Passed)] += 1;
            }
            std::hint::black_box(tally.len())
        })
    });
    c.bench_function("gate_evaluate_100k_outcomes", |b| {
        b.iter(|| std::hint::black_box(evaluate(&trials, &expected, RUNS, &config)))
    });

    let key = evidence::generate_key();
    let public = key.verifying_key();
    let envelope = envelope(&key);
    let bytes = envelope.to_json().into_bytes();
    println!("evidence envelope: {} bytes", bytes.len());
    let body = base64_decode(&envelope.payload);
    let pae = evidence::pae(&envelope.payload_type, &body);
    let sig = ed25519_dalek::Signature::from_slice(&base64_decode(&envelope.signatures[0].sig)).unwrap();
    c.bench_function("floor_ed25519_verify_strict", |b| {
        b.iter(|| std::hint::black_box(public.verify_strict(&pae, &sig).is_ok() && public.verify(&pae, &sig).is_ok()))
    });
    c.bench_function("evidence_parse_and_verify", |b| {
        b.iter(|| {
            let envelope = Envelope::from_json(&bytes).unwrap();
            std::hint::black_box(evidence::verify(&envelope, &public).unwrap())
        })
    });
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

fn median_ns(name: &str) -> Option<f64> {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
    let path = Path::new(&target).join("criterion").join(name).join("new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    let (Some(tally), Some(eval), Some(sig), Some(verify)) = (
        median_ns("floor_tally_100k_outcomes"),
        median_ns("gate_evaluate_100k_outcomes"),
        median_ns("floor_ed25519_verify_strict"),
        median_ns("evidence_parse_and_verify"),
    ) else {
        eprintln!("(comparison skipped: run without a filter to measure all four)");
        return;
    };
    println!("\nfigure vs floor, medians of this run:");
    println!(
        "  gate evaluation, 100k outcomes : {:>9.2} ms   floor: tally per test {:.2} ms ({:.1}x)   target < 1 s: {}",
        eval / 1e6,
        tally / 1e6,
        eval / tally,
        if eval < 1e9 { "met" } else { "NOT met" }
    );
    println!(
        "  evidence parse + verify        : {:>9.3} ms   floor: 2x ed25519 verify {:.3} ms ({:.1}x)   target < 50 ms: {}",
        verify / 1e6,
        sig / 1e6,
        verify / sig,
        if verify < 50e6 { "met" } else { "NOT met" }
    );
}
