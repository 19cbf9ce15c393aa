//! The golden suite's harness: scenarios (`golden/scenarios/WFnn/*.toml`),
//! each run in-process against fresh provider fakes and a fresh store, and
//! judged by oracles (`oracles/README.md`).
//!
//! * [`Scenario`]: the on-disk format (a trigger event, setup, faults per
//!   tool call, human decisions, triggers, expectations), read with
//!   [`load_dir`]. The format belongs to the harness: the kernel gets parsed
//!   data (a [`BusinessConfig`], an event, a database URL).
//! * [`runner::run`]: one scenario through the durable [`Engine`], its
//!   [`Observed`] outcome.
//! * [`oracle::check`]: expectations against the observed outcome, a
//!   [`Mismatch`] per failed oracle with expected and actual values.
//!
//! [`Engine`]: autobiz_kernel::engine::Engine
//! [`BusinessConfig`]: autobiz_kernel::config::BusinessConfig

pub mod oracle;
pub mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub use oracle::{Mismatch, check, render};
pub use runner::{Backend, Observed, run};

/// One golden scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, one line.
    pub title: String,
    /// The workflow it runs (`WF01`..).
    pub workflow: String,
    /// The trigger event handed to the run.
    pub event: Value,
    /// How often the trigger arrives (a duplicate delivery is 2). Each
    /// delivery is its own run; the idempotency keys decide what runs again.
    #[serde(default = "one")]
    pub deliveries: u32,
    /// What the providers hold before the run.
    #[serde(default)]
    pub setup: Setup,
    /// Runs of other workflows before this one, in the same store and fakes
    /// (the day a closeout reconciles). Each must end; they are not judged.
    #[serde(default)]
    pub before: Vec<Before>,
    /// Faults the fakes answer with, per tool call.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// The human decisions, in the order the run asks for them.
    #[serde(default)]
    pub hitl: Vec<HumanDecision>,
    /// The LLM cassette the scenario replays (`cassettes/NAME`), if it calls
    /// a model. With `AUTOBIZ_CASSETTE_MODE=record` and an `[llm]` table the
    /// runner records it instead, against the LLM fake.
    #[serde(default)]
    pub cassette: Option<String>,
    /// The LLM fake, for a scenario whose model misbehaves (or to record its
    /// cassette): without a cassette the agent step talks to it.
    #[serde(default)]
    pub llm: Option<LlmSpec>,
    pub expect: Expect,
}

/// The OpenAI-compatible LLM fake behind a scenario's agent steps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// The model's replies, in order; past them the fake answers its own
    /// one-word classification (`wismo` / `other`), which is not the agent
    /// protocol.
    #[serde(default)]
    pub replies: Vec<String>,
    /// Faults of the primary endpoint, from its first request on.
    #[serde(default)]
    pub faults: Vec<LlmFault>,
    /// A fallback endpoint (a second fake) and its replies.
    #[serde(default)]
    pub fallback: Option<Vec<String>>,
}

/// A fault of the LLM fake: the kinds of [`FaultSpec`], no tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmFault {
    pub fault: String,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Provider state made before the run, through the fakes' own APIs (never
/// through the kernel: nothing here has a receipt).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Shopify orders to seed (each needs a numeric `id`).
    #[serde(default)]
    pub shopify_orders: Vec<Value>,
    /// Stripe PaymentIntents authorized and captured, amounts in minor
    /// units (USD). Ids count from `pi_fake0000000001` in a fresh fake.
    #[serde(default)]
    pub captured_payments: Vec<i64>,
    /// Stripe PaymentIntents authorized only (manual capture pending).
    #[serde(default)]
    pub authorized_payments: Vec<i64>,
    /// Printful orders created as drafts: `{external_id, items}`.
    #[serde(default)]
    pub printful_orders: Vec<Value>,
    /// Printful orders created and confirmed (pending).
    #[serde(default)]
    pub printful_confirmed: Vec<Value>,
    /// Printful orders confirmed and shipped (fulfilled, one shipment):
    /// `{external_id, items, carrier, tracking_number}`.
    #[serde(default)]
    pub printful_shipped: Vec<Value>,
}

/// A run made before the scenario's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Before {
    pub workflow: String,
    pub event: Value,
}

/// A fault injected into the fake behind `tool`, before its `call`-th call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub tool: String,
    /// `status500`, `rate_limited`, `delay`, `malformed`, `html`,
    /// `truncated`, `error_in_200`.
    pub fault: String,
    /// Requests that get it, one after the other.
    #[serde(default = "one")]
    pub times: u32,
    /// Which call of the tool (1 = the first, over all deliveries).
    #[serde(default = "one")]
    pub call: u32,
    /// `delay`: how late the answer comes.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// `rate_limited`: the `Retry-After` seconds.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// What a human does with the run's next approval request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HumanDecision {
    /// `approve`, `deny`, or `expire` (nobody decides; the clock passes the
    /// request's expiry).
    pub decision: String,
    #[serde(default = "ops_lead")]
    pub approver: String,
    #[serde(default)]
    pub reason: Option<String>,
}

fn ops_lead() -> String {
    "ops-lead".to_owned()
}

/// The expected outcome, oracle by oracle. Absent fields are not judged,
/// except `trace_complete` and `replay`, which every scenario is held to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Terminal status of the (last) run: `COMPLETED`, `FAILED`, `ABORTED`,
    /// `WAITING_APPROVAL`.
    pub status: String,
    /// Its termination reason (`completed`, `tool_failed`, `hitl_denied`...).
    #[serde(default)]
    pub termination: Option<String>,
    /// The steps it ran, in order.
    #[serde(default)]
    pub path: Option<Vec<String>>,
    /// A substring of the run's last error.
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Receipts in the store by tool (over every delivery); a tool not
    /// listed must have none.
    #[serde(default)]
    pub receipts: Option<BTreeMap<String, u64>>,
    /// Side-effect counters at the fakes (see `oracles/README.md`).
    #[serde(default)]
    pub side_effects: BTreeMap<String, i64>,
    /// JSON pointers into the fakes' snapshot and the values there.
    #[serde(default)]
    pub fakes: BTreeMap<String, Value>,
    /// JSON pointers into the final run state and the values there.
    #[serde(default)]
    pub state: BTreeMap<String, Value>,
    /// Approval requests by status: `requests`, `approved`, `denied`, `expired`, `pending`.
    #[serde(default)]
    pub hitl: BTreeMap<String, u64>,
    /// The compensation steps that ran, in order (`[]`: none).
    #[serde(default)]
    pub compensated: Option<Vec<String>>,
    /// Every tool request of the transcript has its trace record, the trace
    /// opens and (for an ended run) closes.
    #[serde(default = "yes")]
    pub trace_complete: bool,
    /// Every transcript replays identically.
    #[serde(default = "yes")]
    pub replay: bool,
    /// The run's cost is above zero (it called a priced tool or a model).
    #[serde(default)]
    pub cost_positive: Option<bool>,
    /// Model calls answered (`model_call` trace records), over every run.
    #[serde(default)]
    pub model_calls: Option<u64>,
    /// Every answered model call cost tokens and micro-USD, and so did the
    /// run that made it (default `true`).
    #[serde(default = "yes")]
    pub model_cost: bool,
}

fn yes() -> bool {
    true
}

/// A scenario file: its name (`WF01/happy_path`) and contents.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    pub name: String,
    pub path: PathBuf,
    pub scenario: Scenario,
}

impl ScenarioFile {
    /// The test name stem: `wf01_happy_path`.
    pub fn stem(&self) -> String {
        self.name.to_ascii_lowercase().replace(['/', '-'], "_")
    }
}

/// Parse one scenario; errors name the file and what is wrong.
pub fn parse(name: &str, text: &str) -> Result<Scenario, String> {
    toml::from_str::<Scenario>(text).map_err(|e| format!("{name}: {e}"))
}

/// Every `*.toml` under `dir/WFnn/`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<ScenarioFile>, String> {
    let mut out = Vec::new();
    let mut workflows: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    workflows.sort();
    for wf in workflows {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&wf)
            .map_err(|e| format!("{}: {e}", wf.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let dir_name = wf.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
            let name = format!("{dir_name}/{stem}");
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let scenario = parse(&name, &text)?;
            if scenario.workflow != dir_name {
                return Err(format!("{name}: runs {} but lies under {dir_name}/", scenario.workflow));
            }
            out.push(ScenarioFile { name, path, scenario });
        }
    }
    Ok(out)
}
