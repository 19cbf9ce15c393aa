//! The workflow executor: declared steps and branches, each step through the
//! [`Executor`] so that every check applies to every step.
//!
//! A workflow is a list of steps. Each step names a tool and an input
//! template; strings of the form `$.event.order_id` or `$.fetch.total` in the
//! template are replaced by the value at that path of the triggering event or
//! of an earlier step's output. After a step the run goes to its `next` step
//! (or the following one; `"end"` ends the run), and after a failed step to
//! its `on_error` step if it has one. Otherwise a failure ends the run with a
//! termination reason matching the error. `max_steps` bounds every cycle.
//!
//! An agent step ([`AgentSpec`]) runs [`crate::llm::AgentStep`] instead of
//! one tool: the model proposes calls of the step's tools, each through the
//! executor, until its final answer, which (with the executed calls) is the
//! step's output. The durable engine runs them too, recording every model
//! turn in the transcript ([`crate::engine`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::bounds::{Bounds, Termination};
use crate::engine::{Engine, RunSpec};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::Executor;
use crate::llm::{AllowedTool, LlmClient, PromptTemplate};
use crate::tenant::TenantContext;
use crate::trace::Cost;
use crate::transcript::TranscriptWriter;

/// The step id that ends a run when used as `next` or `on_error`.
pub const END: &str = "end";

/// One declared step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// The tool of a tool step (empty for an agent step).
    pub tool: String,
    pub version: String,
    /// The tool's input; for an agent step, the task given to the model
    /// (resolved the same way) and the variables of its prompt.
    pub input: Value,
    pub next: Option<String>,
    pub on_error: Option<String>,
    /// Set for an agent step: the model proposes the calls.
    pub agent: Option<AgentSpec>,
    /// The step that undoes this one (a step of the same workflow), run when
    /// a later step fails the run after this one succeeded
    /// ([`crate::run::compensation_plan`]).
    pub compensate_with: Option<String>,
    /// Attempts in all when the step fails (`None`: one); each further
    /// attempt is a new visit, with its own idempotency key, before
    /// `on_error` or the end of the run.
    pub retry: Option<u32>,
}

/// What an agent step runs: the model and prompt its client must be pinned
/// to, the tools it may propose, its turn limit.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub model: String,
    pub prompt: PromptTemplate,
    pub tools: Vec<AllowedTool>,
    pub max_turns: Option<u32>,
}

impl Workflow {
    /// Does any step of this workflow run an agent?
    pub fn has_agent_steps(&self) -> bool {
        self.steps.iter().any(|s| s.agent.is_some())
    }
}

/// A declared workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub id: String,
    pub name: String,
    pub steps: Vec<Step>,
}

/// How a workflow run ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub termination: Termination,
    /// The error that ended the run, if one did.
    pub error: Option<String>,
    /// Output of every step that succeeded, by step id.
    pub outputs: BTreeMap<String, Value>,
    /// Step ids in the order they ran.
    pub path: Vec<String>,
    pub cost: Cost,
}

impl Workflow {
    /// Check the step graph: unique ids, `next`/`on_error` naming steps.
    pub fn validate(&self) -> Result<()> {
        let mut seen = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.id == END || seen.insert(s.id.as_str(), i).is_some() {
                return Err(Error::new(
                    ErrorCode::ConfigInvalid,
                    format!("workflow {}: step id {:?} is reserved or repeated", self.id, s.id),
                ));
            }
        }
        for s in &self.steps {
            if let Some(c) = &s.compensate_with
                && !seen.contains_key(c.as_str())
            {
                return Err(Error::new(
                    ErrorCode::ConfigInvalid,
                    format!("workflow {}: step {} is compensated by unknown step {c:?}", self.id, s.id),
                ));
            }
            for target in [&s.next, &s.on_error].into_iter().flatten() {
                if target != END && !seen.contains_key(target.as_str()) {
                    return Err(Error::new(
                        ErrorCode::ConfigInvalid,
                        format!("workflow {}: step {} goes to unknown step {target:?}", self.id, s.id),
                    ));
                }
            }
        }
        if self.steps.is_empty() {
            return Err(Error::new(ErrorCode::ConfigInvalid, format!("workflow {} has no steps", self.id)));
        }
        Ok(())
    }

    /// Run the workflow for `event` under `ctx`, in memory (no transcript
    /// file, no approval policy): the [`Engine`] does the work. Without an
    /// LLM client an agent step fails with `AGENT_LLM_MISSING`; see
    /// [`Workflow::run_with_llm`].
    pub async fn run(
        &self,
        exec: &Executor,
        ctx: &TenantContext,
        run_id: &str,
        bounds: Bounds,
        event: Value,
        pins: Value,
    ) -> Result<Outcome> {
        self.run_with_llm(exec, None, ctx, run_id, bounds, event, pins).await
    }

    /// [`Workflow::run`] with the LLM client agent steps decide with. The
    /// client must be pinned to the step's `model` and `prompt`
    /// (`AGENT_PIN_MISMATCH` otherwise); every model call is traced with
    /// that pin. An agent step's output is `{"final": <the model's final
    /// answer>, "calls": [{tool, version, input, output}...], "turns": n}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_with_llm(
        &self,
        exec: &Executor,
        llm: Option<&LlmClient>,
        ctx: &TenantContext,
        run_id: &str,
        bounds: Bounds,
        event: Value,
        pins: Value,
    ) -> Result<Outcome> {
        let spec = RunSpec {
            workflow: self,
            ctx: ctx.clone(),
            run_id: run_id.to_owned(),
            bounds,
            event,
            pins,
            config_hash: String::new(),
        };
        let engine = Engine::new(exec).with_llm(llm);
        let report = engine.run(&spec, &mut TranscriptWriter::to(Box::new(std::io::sink()))).await?;
        Ok(Outcome {
            run_id: report.run_id,
            termination: report.termination.unwrap_or(Termination::Completed),
            error: report.error,
            outputs: report.outputs,
            path: report.path,
            cost: report.cost,
        })
    }
}

/// The termination reason for a step failure that did not end the run itself.
pub fn termination_for(code: ErrorCode) -> Termination {
    match code {
        ErrorCode::SchemaInvalid => Termination::SchemaInvalid,
        ErrorCode::OutputSchemaInvalid => Termination::OutputSchemaInvalid,
        ErrorCode::PermissionDenied => Termination::PermissionDenied,
        ErrorCode::ApprovalRequired => Termination::ApprovalRequired,
        ErrorCode::ToolUnknown => Termination::ToolUnknown,
        ErrorCode::ToolTimeout => Termination::ToolTimeout,
        ErrorCode::TraceWriteFailed => Termination::TraceWriteFailed,
        ErrorCode::LoopDetected => Termination::LoopDetected,
        _ => Termination::ToolFailed,
    }
}

/// Replace every `$.path` string in `template` by the value it names in
/// `scope`; `Err(path)` for the first that names nothing.
pub fn resolve(template: &Value, scope: &Map<String, Value>) -> std::result::Result<Value, String> {
    resolve_with(template, &|root| scope.get(root))
}

/// [`resolve`] with the roots (`event`, step ids) looked up by `root`, so a
/// caller holding its outputs elsewhere need not copy them into a map.
pub fn resolve_with<'a>(
    template: &Value,
    root: &impl Fn(&str) -> Option<&'a Value>,
) -> std::result::Result<Value, String> {
    match template {
        Value::String(s) if s.starts_with("$.") => {
            let mut parts = s[2..].split('.');
            let mut current = parts.next().and_then(root).ok_or_else(|| s.clone())?;
            for part in parts {
                current = match current {
                    Value::Object(m) => m.get(part),
                    Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                }
                .ok_or_else(|| s.clone())?;
            }
            Ok(current.clone())
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(k.clone(), resolve_with(v, root)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => {
            items.iter().map(|v| resolve_with(v, root)).collect::<std::result::Result<Vec<_>, _>>().map(Value::Array)
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_resolve_into_events_and_earlier_outputs() {
        let mut scope = Map::new();
        scope.insert("event".into(), json!({"order_id": "1001", "items": [{"sku": "A"}]}));
        scope.insert("fetch".into(), json!({"total": 4200}));
        let t = json!({"order": "$.event.order_id", "amount": "$.fetch.total", "sku": "$.event.items.0.sku", "tags": ["$.event.order_id", "x"], "n": 3, "literal": "not $.a ref"});
        assert_eq!(
            resolve(&t, &scope).unwrap(),
            json!({"order": "1001", "amount": 4200, "sku": "A", "tags": ["1001", "x"], "n": 3, "literal": "not $.a ref"})
        );
        assert_eq!(resolve(&json!({"x": "$.event.missing"}), &scope), Err("$.event.missing".to_owned()));
        assert_eq!(resolve(&json!("$.nope"), &scope), Err("$.nope".to_owned()));
    }

    fn step(id: &str, next: Option<&str>, on_error: Option<&str>) -> Step {
        Step {
            id: id.into(),
            tool: "t".into(),
            version: "1".into(),
            input: json!({}),
            next: next.map(Into::into),
            on_error: on_error.map(Into::into),
            agent: None,
            compensate_with: None,
            retry: None,
        }
    }

    #[test]
    fn step_graph_is_validated() {
        let ok = Workflow {
            id: "WF01".into(),
            name: "n".into(),
            steps: vec![step("a", Some("b"), Some("end")), step("b", None, None)],
        };
        assert!(ok.validate().is_ok());
        let bad = Workflow { id: "WF01".into(), name: "n".into(), steps: vec![step("a", Some("zz"), None)] };
        assert_eq!(bad.validate().unwrap_err().code(), ErrorCode::ConfigInvalid);
        let dup =
            Workflow { id: "WF01".into(), name: "n".into(), steps: vec![step("a", None, None), step("a", None, None)] };
        assert!(dup.validate().is_err());
        let empty = Workflow { id: "WF01".into(), name: "n".into(), steps: vec![] };
        assert!(empty.validate().is_err());
    }
}
