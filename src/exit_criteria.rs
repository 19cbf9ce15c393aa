//! The phase entry and exit criteria (P1-TASK-31, P1-TASK-32): P1-ENTRY-01..04
//! and P1-EXIT-01..14, each judged from the newest gate evidence, the newest
//! soak evidence, the test catalogue and the repository, with the evidence
//! for each verdict in one line.
//!
//! Judging is pure (no I/O but reading files of the repository under
//! `root`), so every criterion is tested with made-up evidence. A criterion
//! is met only when the evidence shows it; missing evidence is never "met".
//!
//! What the seed's one-line criteria are taken to mean (it names no
//! acceptance detail beyond them):
//! - a test *passed* when every run of the gate recorded it as passed;
//! - EXIT-03 "all invariants tested": each of INV-01..08 has an active
//!   catalogue entry with a test that passed;
//! - EXIT-06 "negative tests >= 12": distinct passing tests whose name
//!   carries `neg` (the seed's `*-NEG` ids, `..._neg_...`);
//! - EXIT-08 "risk register tests >= 4": distinct P1-T-RK* entries with a
//!   passing test;
//! - EXIT-11 "workflow traceability 100%": every workflow of the business
//!   config has a passing golden-stage test naming it (`wf01`, ...);
//! - EXIT-04 "soak passed": soak evidence with a `pass` verdict over at least
//!   7 days and 300 events, every workflow exercised, no violation, the
//!   lowest rolling lower bound at or above the threshold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::catalog::{Catalog, ListedTest, Stage, Status, binds};
use crate::evidence::{Statement, Trust};

/// Days and events a soak must cover (P1-TASK-32: a 7-day soak, >= 300 events).
pub const SOAK_MIN_DAYS: f64 = 7.0;
pub const SOAK_MIN_EVENTS: u64 = 300;
pub const MIN_NEGATIVE_TESTS: usize = 12;
pub const MIN_RISK_TESTS: usize = 4;

/// Evidence read from a file, with how far it is trusted.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: String,
    pub trust: Trust,
    pub statement: Statement,
}

/// Everything the criteria are judged from.
pub struct Inputs<'a> {
    pub gate: Option<&'a Loaded>,
    pub soak: Option<&'a Loaded>,
    pub catalog: &'a Catalog,
    /// The repository root (documents, directories, CI scripts).
    pub root: &'a Path,
    /// Workflow ids of the business config (`WF01`, ...).
    pub workflows: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    NotMet,
}

/// One criterion's verdict and the evidence for it.
#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    pub id: &'static str,
    pub title: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
}

type Judged = (bool, String);

/// Judge every criterion, in id order.
pub fn evaluate(inputs: &Inputs<'_>) -> Vec<Criterion> {
    let results = inputs.gate.map(|g| GateResults::from(&g.statement.predicate)).unwrap_or_default();
    let ctx = Ctx { inputs, results: &results };
    table()
        .into_iter()
        .map(|(id, title, check)| {
            let (met, evidence) = check(&ctx);
            Criterion { id, title, verdict: if met { Verdict::Met } else { Verdict::NotMet }, evidence }
        })
        .collect()
}

type Check<'c> = fn(&Ctx<'c>) -> Judged;

/// The criteria in id order, each with its judge.
fn table<'c>() -> [(&'static str, &'static str, Check<'c>); 18] {
    [
        ("P1-ENTRY-01", "Test-mode credentials configured", Ctx::entry_01),
        ("P1-ENTRY-02", "Design review completed", Ctx::entry_02),
        ("P1-ENTRY-03", "Repo structure initialized", Ctx::entry_03),
        ("P1-ENTRY-04", "CI pipeline skeleton deployed", Ctx::entry_04),
        ("P1-EXIT-01", "P0 tests 100%", Ctx::exit_01),
        ("P1-EXIT-02", "P1 tests >= 95% LCB", Ctx::exit_02),
        ("P1-EXIT-03", "All invariants tested", Ctx::exit_03),
        ("P1-EXIT-04", "Soak passed", Ctx::exit_04),
        ("P1-EXIT-05", "External APIs mocked 100%", Ctx::exit_05),
        ("P1-EXIT-06", "Negative tests >= 12", Ctx::exit_06),
        ("P1-EXIT-07", "Oracle strategy documented", Ctx::exit_07),
        ("P1-EXIT-08", "Risk register tests >= 4", Ctx::exit_08),
        ("P1-EXIT-09", "LCB gate implemented", Ctx::exit_09),
        ("P1-EXIT-10", "Flake policy enforced", Ctx::exit_10),
        ("P1-EXIT-11", "Workflow traceability 100%", Ctx::exit_11),
        ("P1-EXIT-12", "Success rate measured", Ctx::exit_12),
        ("P1-EXIT-13", "Ops dashboards live", Ctx::exit_13),
        ("P1-EXIT-14", "Runbooks documented", Ctx::exit_14),
    ]
}

/// Per test (`BINARY NAME`): its stage and its outcome in each run.
#[derive(Debug, Default)]
struct GateResults {
    tests: BTreeMap<String, (String, Vec<String>)>,
}

impl GateResults {
    fn from(predicate: &Value) -> Self {
        let mut tests: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for stage in predicate["result"]["stages"].as_array().into_iter().flatten() {
            let name = stage["stage"].as_str().unwrap_or_default().to_owned();
            for run in stage["runs"].as_array().into_iter().flatten() {
                for test in run["tests"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(outcome)) = (test["id"].as_str(), test["outcome"].as_str()) {
                        let entry = tests.entry(id.to_owned()).or_insert_with(|| (name.clone(), Vec::new()));
                        entry.1.push(outcome.to_owned());
                    }
                }
            }
        }
        GateResults { tests }
    }

    /// Tests that passed in every run they were recorded in.
    fn passed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tests
            .iter()
            .filter(|(_, (_, outcomes))| !outcomes.is_empty() && outcomes.iter().all(|o| o == "passed"))
            .map(|(id, (stage, _))| (id.as_str(), stage.as_str()))
    }

    /// Passing tests bound by an active catalogue entry `id`.
    fn passed_for_entry(&self, catalog: &Catalog, id: &str) -> Vec<String> {
        let Some(entry) = catalog.entries.iter().find(|e| e.id == id && e.status == Status::Active) else {
            return vec![];
        };
        self.passed()
            .filter(|(test, _)| {
                let listed = listed(test);
                entry.tests.iter().any(|pattern| binds(pattern, &listed))
            })
            .map(|(test, _)| test.to_owned())
            .collect()
    }
}

fn listed(full_id: &str) -> ListedTest {
    let (binary, name) = full_id.split_once(' ').unwrap_or(("", full_id));
    ListedTest { binary_id: binary.to_owned(), kind: String::new(), name: name.to_owned() }
}

struct Ctx<'a> {
    inputs: &'a Inputs<'a>,
    results: &'a GateResults,
}

const NO_GATE: &str = "no gate evidence: run `autobiz gate`";
const NO_SOAK: &str = "no soak evidence: run `autobiz soak --days 7`";

impl Ctx<'_> {
    fn gate(&self) -> Option<&Value> {
        self.inputs.gate.map(|g| &g.statement.predicate)
    }

    fn soak(&self) -> Option<&Value> {
        self.inputs.soak.map(|s| &s.statement.predicate)
    }

    fn file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.inputs.root.join(rel)).ok()
    }

    /// Every test of each entry passed, and each entry has at least one.
    fn entries_passed(&self, ids: &[&str]) -> Judged {
        if self.gate().is_none() {
            return (false, NO_GATE.to_owned());
        }
        let mut missing = Vec::new();
        let mut counts = Vec::new();
        for id in ids {
            let passed = self.results.passed_for_entry(self.inputs.catalog, id);
            if passed.is_empty() {
                missing.push(*id);
            }
            counts.push(format!("{id} {}", passed.len()));
        }
        if missing.is_empty() {
            (true, format!("passing tests: {}", counts.join(", ")))
        } else {
            (false, format!("no passing test for {}", missing.join(", ")))
        }
    }

    fn entry_01(&self) -> Judged {
        // The sandbox guard refuses live keys and hosts (P1-H01..H03); the
        // hygiene scan finds none committed.
        self.entries_passed(&["P1-H01", "P1-H02", "P1-H03"])
    }

    fn entry_02(&self) -> Judged {
        let Some(text) = self.file("ARCHITECTURE.md") else {
            return (false, "ARCHITECTURE.md is missing".to_owned());
        };
        let sections = ["## Code map", "## The flow of one tool call", "nvariants"];
        let absent: Vec<&str> = sections.iter().filter(|s| !text.contains(**s)).copied().collect();
        if absent.is_empty() {
            (
                true,
                format!(
                    "ARCHITECTURE.md ({} lines): code map, the flow of one tool call, invariants",
                    text.lines().count()
                ),
            )
        } else {
            (false, format!("ARCHITECTURE.md lacks {}", absent.join(", ")))
        }
    }

    fn entry_03(&self) -> Judged {
        let dirs = ["src", "kernel", "suites", "golden", "cassettes", "oracles", "migrations", "ci"];
        let absent: Vec<&str> = dirs.iter().filter(|d| !self.inputs.root.join(d).is_dir()).copied().collect();
        if absent.is_empty() {
            (true, format!("{} present", dirs.join("/, ") + "/"))
        } else {
            (false, format!("missing: {}", absent.join(", ")))
        }
    }

    fn entry_04(&self) -> Judged {
        let Some(run) = self.file(".ci/run") else {
            return (false, ".ci/run is missing".to_owned());
        };
        let steps = ["ci/test", "ci/gate"];
        if let Some(absent) = steps.iter().find(|s| !run.contains(**s)) {
            return (false, format!(".ci/run does not call {absent}"));
        }
        match self.inputs.gate {
            Some(g) => (true, format!(".ci/run calls ci/test and ci/gate; the gate wrote {}", g.path)),
            None => (false, format!(".ci/run exists, but {NO_GATE}")),
        }
    }

    fn class(&self, class: &str) -> Option<&Value> {
        self.gate().map(|p| &p["result"]["computation"][class]).filter(|c| c.is_object())
    }

    fn exit_01(&self) -> Judged {
        let Some(p0) = self.class("p0") else { return (false, NO_GATE.to_owned()) };
        let (successes, trials) = (p0["successes"].as_u64().unwrap_or(0), p0["trials"].as_u64().unwrap_or(0));
        let met = trials > 0 && successes == trials && p0["verdict"] == "pass";
        (met, format!("P0 {successes}/{trials} trials passed"))
    }

    fn exit_02(&self) -> Judged {
        let Some(p1) = self.class("p1") else { return (false, NO_GATE.to_owned()) };
        let threshold = p1["threshold"].as_f64().unwrap_or(0.95).max(0.95);
        match p1["lower_bound"].as_f64() {
            Some(lcb) => {
                let (s, t) = (p1["successes"].as_u64().unwrap_or(0), p1["trials"].as_u64().unwrap_or(0));
                (lcb >= threshold, format!("P1 {s}/{t}, Wilson lower bound {lcb:.4} (threshold {threshold})"))
            }
            None => (false, "the evidence has no P1 lower bound (no P1 trials)".to_owned()),
        }
    }

    fn exit_03(&self) -> Judged {
        if self.gate().is_none() {
            return (false, NO_GATE.to_owned());
        }
        let catalog = self.inputs.catalog;
        let mut untested = Vec::new();
        for n in 1..=8 {
            let inv = format!("INV-0{n}");
            let entries: Vec<&str> = catalog
                .entries
                .iter()
                .filter(|e| e.status == Status::Active && e.requirements.iter().any(|r| r == &inv || r == "INV-*"))
                .map(|e| e.id.as_str())
                .collect();
            if !entries.iter().any(|id| !self.results.passed_for_entry(catalog, id).is_empty()) {
                untested.push(inv);
            }
        }
        if untested.is_empty() {
            (true, "INV-01..INV-08 each have a passing test in an active catalogue entry".to_owned())
        } else {
            (false, format!("no passing test for {}", untested.join(", ")))
        }
    }

    fn exit_04(&self) -> Judged {
        let Some(soak) = self.soak() else { return (false, NO_SOAK.to_owned()) };
        let days = soak["days"].as_f64().unwrap_or(0.0);
        let events = soak["events"].as_u64().unwrap_or(0);
        let threshold = soak["threshold"].as_f64().unwrap_or(0.95).max(0.95);
        let min_lcb = soak["min_lower_bound"].as_f64();
        let violations = soak["violations"].as_array().map_or(usize::MAX, Vec::len);
        let exercised: BTreeSet<&str> = soak["workflows"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, w)| w["runs"].as_u64().unwrap_or(0) > 0)
            .map(|(id, _)| id.as_str())
            .collect();
        let unexercised: Vec<&str> =
            self.inputs.workflows.iter().map(String::as_str).filter(|w| !exercised.contains(w)).collect();
        let mut problems = Vec::new();
        if soak["verdict"] != "pass" {
            problems.push("verdict is not pass".to_owned());
        }
        if days < SOAK_MIN_DAYS {
            problems.push(format!("{days} days < {SOAK_MIN_DAYS}"));
        }
        if events < SOAK_MIN_EVENTS {
            problems.push(format!("{events} events < {SOAK_MIN_EVENTS}"));
        }
        if violations != 0 {
            problems.push(if violations == usize::MAX {
                "no violations list".to_owned()
            } else {
                format!("{violations} invariant violations")
            });
        }
        match min_lcb {
            Some(l) if l >= threshold => {}
            Some(l) => problems.push(format!("lowest rolling lower bound {l:.4} < {threshold}")),
            None => problems.push("no rolling lower bound".to_owned()),
        }
        if !unexercised.is_empty() {
            problems.push(format!("not exercised: {}", unexercised.join(", ")));
        }
        let clock = soak["clock"].as_str().unwrap_or("?");
        let summary = format!("{days} days ({clock} clock), {events} events, {} workflows", exercised.len());
        if problems.is_empty() {
            (true, format!("{summary}, no violations, lowest LCB {:.4}", min_lcb.unwrap_or_default()))
        } else {
            (false, format!("{summary}: {}", problems.join("; ")))
        }
    }

    fn exit_05(&self) -> Judged {
        // Every provider and the model endpoint behind a local fake: no live
        // host reachable (P1-H02), the fakes answer (P1-H04), every cassette
        // replays (P1-H05).
        self.entries_passed(&["P1-H02", "P1-H04", "P1-H05"])
    }

    fn exit_06(&self) -> Judged {
        if self.gate().is_none() {
            return (false, NO_GATE.to_owned());
        }
        let negative = self
            .results
            .passed()
            .filter(|(id, _)| {
                id.rsplit(' ').next().unwrap_or(id).split("::").any(|seg| seg.split('_').any(|w| w == "neg"))
            })
            .count();
        (negative >= MIN_NEGATIVE_TESTS, format!("{negative} passing negative tests (need {MIN_NEGATIVE_TESTS})"))
    }

    fn exit_07(&self) -> Judged {
        let Some(doc) = self.file("oracles/README.md") else {
            return (false, "oracles/README.md is missing".to_owned());
        };
        let used: BTreeSet<&str> = self
            .inputs
            .catalog
            .entries
            .iter()
            .filter(|e| e.status == Status::Active)
            .flat_map(|e| e.oracles.iter().map(String::as_str))
            .filter(|o| *o != "All")
            .collect();
        let lower = doc.to_ascii_lowercase();
        let undocumented: Vec<&str> =
            used.iter().filter(|o| !lower.contains(&o.to_ascii_lowercase())).copied().collect();
        if undocumented.is_empty() {
            (true, format!("oracles/README.md documents the {} oracle types the catalogue uses", used.len()))
        } else {
            (false, format!("oracles/README.md does not document {}", undocumented.join(", ")))
        }
    }

    fn exit_08(&self) -> Judged {
        if self.gate().is_none() {
            return (false, NO_GATE.to_owned());
        }
        let rk: Vec<&str> = self
            .inputs
            .catalog
            .entries
            .iter()
            .filter(|e| e.id.starts_with("P1-T-RK"))
            .filter(|e| !self.results.passed_for_entry(self.inputs.catalog, &e.id).is_empty())
            .map(|e| e.id.as_str())
            .collect();
        (rk.len() >= MIN_RISK_TESTS, format!("{} risk tests pass: {}", rk.len(), rk.join(" ")))
    }

    fn exit_09(&self) -> Judged {
        let Some(p1) = self.class("p1") else { return (false, NO_GATE.to_owned()) };
        let runs = self.gate().and_then(|g| g["result"]["runs"].as_u64()).unwrap_or(0);
        let has = |k: &str| p1.get(k).is_some_and(|v| !v.is_null());
        let met = runs >= 3 && has("z") && has("lower_bound") && has("confidence");
        (met, format!("{runs} runs per stage; P1 gated on the Wilson lower bound (z = {})", p1["z"]))
    }

    fn exit_10(&self) -> Judged {
        let Some(gate) = self.gate() else { return (false, NO_GATE.to_owned()) };
        let result = &gate["result"];
        let (Some(flakes), Some(quarantine)) = (result["flakes"].as_array(), result["quarantine"].as_array()) else {
            return (false, "the evidence has no flake report or quarantine".to_owned());
        };
        let finished = gate["finished_at"].as_str().and_then(|t| t.get(..10)).unwrap_or("");
        let mut problems = Vec::new();
        for q in quarantine {
            let id = q["id"].as_str().unwrap_or("?");
            if q["owner"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{id} has no owner"));
            }
            if q["expires"].as_str().is_some_and(|e| e < finished) {
                problems.push(format!("{id} expired"));
            }
            let p0 = self.results.tests.contains_key(id) && self.is_p0(gate, id);
            if p0 {
                problems.push(format!("{id} is P0"));
            }
        }
        // A flake that is not quarantined must have failed the gate.
        let open = flakes.iter().filter(|f| f["quarantined"] != true).count();
        if open > 0 && gate["verdict"] == "pass" {
            problems.push(format!("{open} unquarantined flakes in a passing gate"));
        }
        if problems.is_empty() {
            (
                true,
                format!(
                    "{} flakes reported, {} quarantined entries, each with owner and expiry",
                    flakes.len(),
                    quarantine.len()
                ),
            )
        } else {
            (false, problems.join("; "))
        }
    }

    fn is_p0(&self, gate: &Value, id: &str) -> bool {
        gate["result"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["runs"].as_array().into_iter().flatten())
            .any(|r| r["tests"].as_array().into_iter().flatten().any(|t| t["id"] == id && t["priority"] == "P0"))
    }

    fn exit_11(&self) -> Judged {
        if self.gate().is_none() {
            return (false, NO_GATE.to_owned());
        }
        let golden = Stage::Golden.as_str();
        let mut untraced = Vec::new();
        let mut counts = Vec::new();
        for wf in &self.inputs.workflows {
            let tag = wf.to_ascii_lowercase();
            let n = self
                .results
                .passed()
                .filter(|(id, stage)| {
                    *stage == golden && id.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == tag)
                })
                .count();
            if n == 0 {
                untraced.push(wf.as_str());
            }
            counts.push(format!("{wf} {n}"));
        }
        if self.inputs.workflows.is_empty() {
            return (false, "the business config declares no workflow".to_owned());
        }
        if untraced.is_empty() {
            (true, format!("passing golden scenarios: {}", counts.join(", ")))
        } else {
            (false, format!("no passing golden scenario for {}", untraced.join(", ")))
        }
    }

    fn exit_12(&self) -> Judged {
        let Some(soak) = self.soak() else { return (false, NO_SOAK.to_owned()) };
        let rates: Vec<String> = self
            .inputs
            .workflows
            .iter()
            .filter_map(|w| {
                soak["workflows"][w.as_str()]["success_rate"].as_f64().map(|r| format!("{w} {:.1}%", r * 100.0))
            })
            .collect();
        let met = !self.inputs.workflows.is_empty() && rates.len() == self.inputs.workflows.len();
        if met {
            (true, format!("success rate per workflow: {}", rates.join(", ")))
        } else {
            (false, format!("success rates for {} of {} workflows", rates.len(), self.inputs.workflows.len()))
        }
    }

    fn exit_13(&self) -> Judged {
        if self.file("ops/grafana/autobiz-overview.json").is_none() || self.file("ops/prometheus/alerts.yml").is_none()
        {
            return (false, "ops/grafana/autobiz-overview.json or ops/prometheus/alerts.yml is missing".to_owned());
        }
        self.entries_passed(&["P1-OR01", "P1-OR02", "P1-OR03", "P1-OR04", "P1-OR05", "P1-OR06"])
    }

    fn exit_14(&self) -> Judged {
        let missing: Vec<String> = (1..=5)
            .map(|n| format!("RB-0{n}"))
            .filter(|id| {
                let dir = self.inputs.root.join("docs/runbooks");
                !std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{id}-")))
            })
            .collect();
        if !missing.is_empty() {
            return (false, format!("docs/runbooks lacks {}", missing.join(", ")));
        }
        // P1-OR01's test checks that every alert links a runbook that names it back.
        let (linked, evidence) = self.entries_passed(&["P1-OR01"]);
        (linked, format!("RB-01..RB-05 in docs/runbooks/; {evidence}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENTRIES: &str = r#"
[[test]]
id = "P1-H01"
title = "t"
priority = "P0"
stage = "hygiene"
requirements = ["P1-RH01"]
oracles = ["Security"]
tests = ["p1_h01_*"]

[[test]]
id = "P1-T11"
title = "t"
priority = "P1"
stage = "unit"
requirements = ["INV-05"]
oracles = ["Idempotency"]
tests = ["p1_t11_*"]

[[test]]
id = "P1-T-RK01a"
title = "t"
priority = "P0"
stage = "unit"
requirements = ["P1-R05"]
tests = ["p1_t_rk01a_*"]

[[test]]
id = "P1-T19"
title = "t"
priority = "P0"
stage = "golden"
requirements = ["P1-R11"]
tests = ["p1_t19_*"]
"#;

    fn catalog() -> Catalog {
        let text = format!("{}{ENTRIES}", crate::catalog::tests::STAGES);
        Catalog::parse(&text).expect("the test catalogue parses")
    }

    fn gate(tests: &[(&str, &str, &str, &[&str])], p1_lcb: f64) -> Loaded {
        let mut stages: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (stage, id, priority, outcomes) in tests {
            for (run, outcome) in outcomes.iter().enumerate() {
                let runs = stages.entry(stage).or_default();
                while runs.len() <= run {
                    runs.push(json!({"run": runs.len() + 1, "tests": []}));
                }
                runs[run]["tests"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": id, "priority": priority, "outcome": outcome}));
            }
        }
        let stages: Vec<Value> = stages.into_iter().map(|(s, runs)| json!({"stage": s, "runs": runs})).collect();
        let predicate = json!({
            "schema_version": 1, "verdict": "pass", "finished_at": "2026-12-01T10:00:00Z",
            "result": {
                "runs": 3, "stages": stages, "flakes": [], "quarantine": [],
                "computation": {
                    "p0": {"successes": 9, "trials": 9, "verdict": "pass"},
                    "p1": {"successes": 300, "trials": 300, "lower_bound": p1_lcb, "z": 1.96, "confidence": 0.95, "threshold": 0.95}
                }
            }
        });
        Loaded {
            path: "gate.json".into(),
            trust: Trust::Unverified { reason: "test".into() },
            statement: Statement::new("ab", "cd", "ef", predicate),
        }
    }

    fn judge(gate: Option<&Loaded>, soak: Option<&Loaded>) -> BTreeMap<&'static str, Criterion> {
        let catalog = catalog();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let inputs = Inputs { gate, soak, catalog: &catalog, root, workflows: vec!["WF01".into(), "WF02".into()] };
        evaluate(&inputs).into_iter().map(|c| (c.id, c)).collect()
    }

    const ALL: &[&str] = &["passed", "passed", "passed"];

    #[test]
    fn without_evidence_nothing_that_needs_it_is_met() {
        let got = judge(None, None);
        assert_eq!(got.len(), 18);
        for id in ["P1-EXIT-01", "P1-EXIT-02", "P1-EXIT-03", "P1-EXIT-04", "P1-EXIT-06", "P1-EXIT-11", "P1-EXIT-12"] {
            assert_eq!(got[id].verdict, Verdict::NotMet, "{id}: {}", got[id].evidence);
        }
        assert!(got["P1-EXIT-01"].evidence.contains("autobiz gate"));
        assert!(got["P1-EXIT-04"].evidence.contains("autobiz soak"));
        // The repository itself answers ENTRY-02 and ENTRY-03.
        assert_eq!(got["P1-ENTRY-02"].verdict, Verdict::Met, "{}", got["P1-ENTRY-02"].evidence);
        assert_eq!(got["P1-ENTRY-03"].verdict, Verdict::Met, "{}", got["P1-ENTRY-03"].evidence);
    }

    #[test]
    fn gate_classes_decide_exit_01_02_and_09() {
        let g = gate(&[("unit", "k p1_t11_a", "P1", ALL)], 0.97);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-01"].verdict, Verdict::Met);
        assert_eq!(got["P1-EXIT-02"].verdict, Verdict::Met, "{}", got["P1-EXIT-02"].evidence);
        assert!(got["P1-EXIT-02"].evidence.contains("0.9700"));
        assert_eq!(got["P1-EXIT-09"].verdict, Verdict::Met);

        let low = gate(&[("unit", "k p1_t11_a", "P1", ALL)], 0.94);
        assert_eq!(judge(Some(&low), None)["P1-EXIT-02"].verdict, Verdict::NotMet);
    }

    #[test]
    fn a_test_counts_only_when_it_passed_in_every_run() {
        let flaky: &[&str] = &["passed", "failed", "passed"];
        let g = gate(&[("unit", "k p1_t11_a", "P1", flaky)], 0.97);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-03"].verdict, Verdict::NotMet);
        assert!(got["P1-EXIT-03"].evidence.contains("INV-05"), "{}", got["P1-EXIT-03"].evidence);
    }

    #[test]
    fn negative_and_risk_tests_are_counted_against_their_minimums() {
        let names: Vec<String> = (0..12).map(|i| format!("k p1_t01_neg_case_{i}")).collect();
        let mut tests: Vec<(&str, &str, &str, &[&str])> =
            names.iter().map(|n| ("unit", n.as_str(), "P0", ALL)).collect();
        let g = gate(&tests, 0.97);
        assert_eq!(judge(Some(&g), None)["P1-EXIT-06"].verdict, Verdict::Met);
        tests.pop();
        let g = gate(&tests, 0.97);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-06"].verdict, Verdict::NotMet);
        assert!(got["P1-EXIT-06"].evidence.starts_with("11 passing"), "{}", got["P1-EXIT-06"].evidence);
        // one RK entry passes: fewer than 4
        let g = gate(&[("unit", "k p1_t_rk01a_x", "P0", ALL)], 0.97);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-08"].verdict, Verdict::NotMet);
        assert!(got["P1-EXIT-08"].evidence.contains("P1-T-RK01a"));
    }

    #[test]
    fn every_workflow_needs_a_passing_golden_scenario() {
        let g = gate(&[("golden", "golden p1_t19_wf01_happy_path_sqlite", "P0", ALL)], 0.97);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-11"].verdict, Verdict::NotMet);
        assert!(got["P1-EXIT-11"].evidence.contains("WF02"), "{}", got["P1-EXIT-11"].evidence);
        let g = gate(
            &[
                ("golden", "golden p1_t19_wf01_happy_path_sqlite", "P0", ALL),
                ("golden", "golden p1_t20_wf02_declined_sqlite", "P0", ALL),
            ],
            0.97,
        );
        assert_eq!(judge(Some(&g), None)["P1-EXIT-11"].verdict, Verdict::Met);
        // a unit test naming wf02 is not a golden scenario
        let g = gate(&[("golden", "golden p1_t19_wf01_a", "P0", ALL), ("unit", "k p1_t11_wf02", "P1", ALL)], 0.97);
        assert_eq!(judge(Some(&g), None)["P1-EXIT-11"].verdict, Verdict::NotMet);
    }

    fn soak(predicate: Value) -> Loaded {
        Loaded {
            path: "soak.json".into(),
            trust: Trust::Unverified { reason: "test".into() },
            statement: Statement::new("ab", "cd", "ef", predicate),
        }
    }

    fn good_soak() -> Value {
        json!({
            "verdict": "pass", "days": 7.0, "clock": "virtual", "events": 2100, "threshold": 0.95,
            "min_lower_bound": 0.962, "violations": [],
            "workflows": {"WF01": {"runs": 1200, "success_rate": 0.99}, "WF02": {"runs": 900, "success_rate": 0.985}}
        })
    }

    #[test]
    fn a_soak_passes_only_with_days_events_workflows_bound_and_no_violation() {
        let s = soak(good_soak());
        let got = judge(None, Some(&s));
        assert_eq!(got["P1-EXIT-04"].verdict, Verdict::Met, "{}", got["P1-EXIT-04"].evidence);
        assert_eq!(got["P1-EXIT-12"].verdict, Verdict::Met, "{}", got["P1-EXIT-12"].evidence);
        let cases: [(&str, Value, &str); 6] = [
            ("days", json!(3.0), "3 days < 7"),
            ("events", json!(120), "120 events < 300"),
            ("violations", json!([{"invariant": "duplicate_side_effect"}]), "1 invariant violations"),
            ("min_lower_bound", json!(0.93), "0.9300 < 0.95"),
            ("verdict", json!("fail"), "verdict is not pass"),
            ("workflows", json!({"WF01": {"runs": 5, "success_rate": 1.0}}), "not exercised: WF02"),
        ];
        for (field, value, expected) in cases {
            let mut p = good_soak();
            p[field] = value;
            let s = soak(p);
            let got = judge(None, Some(&s));
            assert_eq!(got["P1-EXIT-04"].verdict, Verdict::NotMet, "{field}");
            assert!(got["P1-EXIT-04"].evidence.contains(expected), "{field}: {}", got["P1-EXIT-04"].evidence);
        }
    }

    #[test]
    fn flake_policy_refuses_unowned_expired_or_p0_quarantine_entries() {
        let mut g = gate(&[("unit", "k p1_t11_a", "P1", ALL), ("unit", "k p1_h01_b", "P0", ALL)], 0.97);
        assert_eq!(judge(Some(&g), None)["P1-EXIT-10"].verdict, Verdict::Met);
        g.statement.predicate["result"]["quarantine"] = json!([
            {"id": "k p1_t11_a", "owner": "", "expires": "2026-12-31"},
            {"id": "k p1_h01_b", "owner": "ops", "expires": "2026-11-01"}
        ]);
        let got = judge(Some(&g), None);
        assert_eq!(got["P1-EXIT-10"].verdict, Verdict::NotMet);
        let e = &got["P1-EXIT-10"].evidence;
        assert!(
            e.contains("k p1_t11_a has no owner") && e.contains("k p1_h01_b expired") && e.contains("is P0"),
            "{e}"
        );
    }
}
