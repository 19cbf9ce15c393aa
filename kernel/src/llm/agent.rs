//! The agent step: the model proposes tool calls, the executor judges them.
//!
//! Why the model never calls a tool itself: a proposal is only data. Each
//! one goes through [`Executor::call_with`] exactly like a declared step's
//! call (schema, permission, bounds, loop detection, the FINANCIAL approval
//! gate), so an agent can do nothing a declared workflow could not.
//!
//! The protocol: the system message is the pinned template rendered with
//! `tools` (the allowed tools and their input schemas, as JSON) and the
//! caller's variables; the user message is the task. The model answers one
//! JSON object per turn:
//!
//! * `{"tool": "NAME", "version": "1", "input": {...}}` (version optional
//!   when the step allows one version of the tool): a proposal;
//! * `{"final": ...}`: the step's output.
//!
//! What happens to a proposal:
//!
//! * executed: its output goes back to the model as `{"result": ...}`;
//! * refused without ending the run (a tool outside the step's list,
//!   `AGENT_TOOL_NOT_ALLOWED`; unknown, schema invalid, permission denied,
//!   a failing tool): traced as a rejection, and fed back as
//!   `{"error": {"code", "message"}}` (the traced, scrubbed message) so the
//!   model can correct itself;
//! * a reply that is not such an object at all (`AGENT_REPLY_INVALID`):
//!   traced, and the run ends with `agent_reply_invalid`. A model that does
//!   not follow the protocol under its pinned prompt will not start to by
//!   being told; the fault is in the pin, and a person must look.
//!
//! Each turn is a step of the run ([`Executor::begin_step`]) and each
//! proposal a tool call, so `max_steps`, `max_tool_calls`, `max_tokens`
//! (the model's tokens, counted by [`Executor::record_model_call`]) and the
//! wall time bound the agent like any run: a model that keeps proposing bad
//! calls ends the run with the bound it hit.

use serde_json::{Value, json};

use crate::bounds::Termination;
use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallOptions, Executor, Run};
use crate::llm::{LlmClient, Message};
use crate::trace::TracedError;

/// A tool the step lets the model propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedTool {
    pub name: String,
    pub version: String,
}

impl AllowedTool {
    pub fn new(name: &str, version: &str) -> AllowedTool {
        AllowedTool { name: name.to_owned(), version: version.to_owned() }
    }
}

/// One agent step: its id and the tools it may propose.
#[derive(Debug, Clone)]
pub struct AgentStep {
    pub id: String,
    pub tools: Vec<AllowedTool>,
    /// Model turns at most; past it the step fails with `BOUND_EXCEEDED`
    /// (the run stays live, so a workflow's `on_error` can route it).
    pub max_turns: Option<u32>,
}

/// A proposal the executor ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutedCall {
    pub tool: String,
    pub version: String,
    pub input: Value,
    pub output: Value,
}

/// How the step ended well.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    /// The model's `final` value.
    pub output: Value,
    pub turns: u32,
    pub calls: Vec<ExecutedCall>,
    /// Proposals refused and fed back, by code, in order.
    pub rejected: Vec<ErrorCode>,
}

enum Reply {
    Call { tool: String, version: Option<String>, input: Value },
    Final(Value),
}

fn parse_reply(content: &str) -> std::result::Result<Reply, &'static str> {
    let v: Value = serde_json::from_str(content.trim()).map_err(|_| "the reply is not JSON")?;
    let obj = v.as_object().ok_or("the reply is not a JSON object")?;
    if let Some(out) = obj.get("final") {
        return Ok(Reply::Final(out.clone()));
    }
    let tool = obj.get("tool").and_then(Value::as_str).ok_or("the reply has neither `tool` nor `final`")?;
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`version` is not a string"),
    };
    let input = obj.get("input").cloned().unwrap_or_else(|| json!({}));
    Ok(Reply::Call { tool: tool.to_owned(), version, input })
}

fn feedback(e: &Error) -> Message {
    let traced = TracedError::from(e);
    Message::user(json!({ "error": { "code": traced.code, "message": traced.message } }).to_string())
}

impl AgentStep {
    pub fn new(id: &str, tools: Vec<AllowedTool>) -> AgentStep {
        AgentStep { id: id.to_owned(), tools, max_turns: None }
    }

    /// At most `max_turns` model turns.
    pub fn with_max_turns(mut self, max_turns: Option<u32>) -> AgentStep {
        self.max_turns = max_turns;
        self
    }

    /// The `tools` variable of the template: name, version and input schema
    /// of each allowed tool.
    fn tools_json(&self, exec: &Executor) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    let schema = exec.registry().lookup(&t.name, &t.version).map(|c| c.input.source().clone()).ok();
                    json!({ "tool": t.name, "version": t.version, "input_schema": schema })
                })
                .collect(),
        )
    }

    /// Match a proposal against the allowed list.
    fn allowed(&self, tool: &str, version: Option<&str>) -> Option<&AllowedTool> {
        let mut candidates = self.tools.iter().filter(|t| t.name == tool);
        match version {
            Some(v) => candidates.find(|t| t.version == v),
            None => {
                let first = candidates.next()?;
                // Ambiguous without a version: refuse rather than guess.
                if candidates.next().is_some() { None } else { Some(first) }
            }
        }
    }

    /// Run the step in `run` until the model gives its `final` answer, or a
    /// bound, a protocol failure or the LLM ends the run (then `Err`, and
    /// `run.termination()` says why).
    pub async fn run(
        &self,
        exec: &Executor,
        run: &mut Run,
        llm: &LlmClient,
        vars: &Value,
        task: &Value,
    ) -> Result<AgentOutcome> {
        let mut vars = vars.as_object().cloned().unwrap_or_default();
        vars.insert("tools".to_owned(), self.tools_json(exec));
        let mut messages =
            vec![Message::system(llm.template().render(&Value::Object(vars))), Message::user(task.to_string())];
        let mut outcome = AgentOutcome { output: Value::Null, turns: 0, calls: Vec::new(), rejected: Vec::new() };
        let model_tool = format!("llm:{}", llm.pin().model);
        loop {
            if let Some(max) = self.max_turns
                && outcome.turns >= max
            {
                let e = Error::new(
                    ErrorCode::BoundExceeded,
                    format!("agent step {}: no final answer within max_turns = {max}", self.id),
                );
                return Err(exec.record_rejection(run, &model_tool, &json!({}), e).await);
            }
            exec.begin_step(run).await?;
            outcome.turns += 1;
            let completion = match llm.complete(run.context(), &messages).await {
                Ok(c) => c,
                Err(e) => {
                    let termination = if e.code() == ErrorCode::LlmUnavailable {
                        Termination::LlmUnavailable
                    } else {
                        Termination::LlmFailed
                    };
                    let e = exec.record_rejection(run, &model_tool, &json!({}), e).await;
                    if run.termination().is_none() {
                        exec.finish(run, termination).await?;
                    }
                    return Err(e);
                }
            };
            exec.record_model_call(run, &completion).await?;
            messages.push(Message::assistant(completion.content.clone()));
            let (tool, version, input) = match parse_reply(&completion.content) {
                Ok(Reply::Final(output)) => {
                    outcome.output = output;
                    return Ok(outcome);
                }
                Ok(Reply::Call { tool, version, input }) => (tool, version, input),
                Err(why) => {
                    let e = Error::new(
                        ErrorCode::AgentReplyInvalid,
                        format!("agent step {}: {why}; expected {{\"tool\", \"input\"}} or {{\"final\"}}", self.id),
                    );
                    let e = exec.record_rejection(run, &model_tool, &json!({}), e).await;
                    if run.termination().is_none() {
                        exec.finish(run, Termination::AgentReplyInvalid).await?;
                    }
                    return Err(e);
                }
            };
            let Some(allowed) = self.allowed(&tool, version.as_deref()).cloned() else {
                let names: Vec<String> = self.tools.iter().map(|t| format!("{}@{}", t.name, t.version)).collect();
                let e = Error::new(
                    ErrorCode::AgentToolNotAllowed,
                    format!(
                        "agent step {}: {tool}@{} is not among this step's tools ({})",
                        self.id,
                        version.as_deref().unwrap_or("?"),
                        names.join(", ")
                    ),
                );
                let e = exec.record_rejection(run, &tool, &input, e).await;
                if run.termination().is_some() {
                    return Err(e);
                }
                outcome.rejected.push(e.code());
                messages.push(feedback(&e));
                continue;
            };
            match exec.call_with(run, &allowed.name, &allowed.version, input.clone(), CallOptions::default()).await {
                Ok(called) => {
                    messages.push(Message::user(json!({ "result": called.value }).to_string()));
                    outcome.calls.push(ExecutedCall {
                        tool: allowed.name,
                        version: allowed.version,
                        input,
                        output: called.value,
                    });
                }
                Err(e) => {
                    if run.termination().is_some() {
                        return Err(e);
                    }
                    outcome.rejected.push(e.code());
                    messages.push(feedback(&e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_into_proposals_finals_or_protocol_errors() {
        assert!(matches!(parse_reply(r#"{"final": {"intent": "wismo"}}"#), Ok(Reply::Final(_))));
        match parse_reply(r#" {"tool": "shopify.order.get", "input": {"order_id": 1}} "#) {
            Ok(Reply::Call { tool, version, input }) => {
                assert_eq!((tool.as_str(), version, input), ("shopify.order.get", None, json!({"order_id": 1})));
            }
            _ => panic!("a proposal"),
        }
        assert_eq!(parse_reply("Sure! I will look up the order.").err(), Some("the reply is not JSON"));
        assert_eq!(parse_reply("[1]").err(), Some("the reply is not a JSON object"));
        assert_eq!(parse_reply(r#"{"thought": "x"}"#).err(), Some("the reply has neither `tool` nor `final`"));
    }

    #[test]
    fn a_version_is_needed_only_when_the_name_is_ambiguous() {
        let step = AgentStep::new(
            "s",
            vec![AllowedTool::new("a", "1"), AllowedTool::new("b", "1"), AllowedTool::new("b", "2")],
        );
        assert_eq!(step.allowed("a", None), Some(&AllowedTool::new("a", "1")));
        assert_eq!(step.allowed("b", None), None);
        assert_eq!(step.allowed("b", Some("2")), Some(&AllowedTool::new("b", "2")));
        assert_eq!(step.allowed("c", None), None);
    }
}
