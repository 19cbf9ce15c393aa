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
use sha2::{Digest, Sha256};

use crate::contract::ToolRegistry;
use crate::llm::{LlmClient, Message, PromptTemplate};
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
    fn tools_json(&self, registry: &ToolRegistry) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    let schema = registry.lookup(&t.name, &t.version).map(|c| c.input.source().clone()).ok();
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
        let mut dialogue = Dialogue::new(self, exec, llm.template(), vars, task);
        let model_tool = format!("llm:{}", llm.pin().model);
        loop {
            if let Err(e) = dialogue.check_turns(self) {
                return Err(exec.record_rejection(run, &model_tool, &json!({}), e).await);
            }
            exec.begin_step(run).await?;
            let completion = match llm.complete(run.context(), dialogue.messages()).await {
                Ok(c) => c,
                Err(e) => return Err(llm_failed(exec, run, &model_tool, e).await),
            };
            exec.record_model_call(run, &completion).await?;
            let (allowed, input) = match dialogue.reply(self, &completion.content) {
                Turn::Final => return Ok(dialogue.outcome),
                Turn::Call(allowed, input) => (allowed, input),
                Turn::Invalid(e) => return Err(reply_invalid(exec, run, &model_tool, e).await),
                Turn::NotAllowed(tool, input, e) => {
                    let e = exec.record_rejection(run, &tool, &input, e).await;
                    if run.termination().is_some() {
                        return Err(e);
                    }
                    dialogue.refused(&TracedError::from(&e));
                    continue;
                }
            };
            match exec.call_with(run, &allowed.name, &allowed.version, input.clone(), CallOptions::default()).await {
                Ok(called) => dialogue.executed(allowed, input, called.value),
                Err(e) => {
                    if run.termination().is_some() {
                        return Err(e);
                    }
                    dialogue.refused(&TracedError::from(&e));
                }
            }
        }
    }
}

/// An LLM failure ends the run (`llm_unavailable` / `llm_failed`), traced.
pub(crate) async fn llm_failed(exec: &Executor, run: &mut Run, model_tool: &str, e: Error) -> Error {
    let termination =
        if e.code() == ErrorCode::LlmUnavailable { Termination::LlmUnavailable } else { Termination::LlmFailed };
    let e = exec.record_rejection(run, model_tool, &json!({}), e).await;
    if run.termination().is_none() {
        let _ = exec.finish(run, termination).await;
    }
    e
}

/// A reply outside the protocol ends the run (`agent_reply_invalid`), traced.
pub(crate) async fn reply_invalid(exec: &Executor, run: &mut Run, model_tool: &str, e: Error) -> Error {
    let e = exec.record_rejection(run, model_tool, &json!({}), e).await;
    if run.termination().is_none() {
        let _ = exec.finish(run, Termination::AgentReplyInvalid).await;
    }
    e
}

/// What the model's reply asks for.
pub(crate) enum Turn {
    /// The step is done: `dialogue.outcome.output` is the answer.
    Final,
    /// Run this allowed tool with this input.
    Call(AllowedTool, Value),
    /// A proposal for a tool outside the step's list (tool, input, error):
    /// refuse it and feed it back.
    NotAllowed(String, Value, Error),
    /// Not a proposal at all (`AGENT_REPLY_INVALID`): the run ends.
    Invalid(Error),
}

/// The conversation of one agent step: the messages so far and what the step
/// did. Pure: the live drivers feed it the model's replies and the
/// executor's answers, replay feeds it the recorded ones, so both build the
/// same messages and the same output.
pub(crate) struct Dialogue {
    messages: Vec<Message>,
    pub outcome: AgentOutcome,
}

impl Dialogue {
    /// The system message (the template rendered with `vars` and the step's
    /// `tools`) and the task.
    pub fn new(step: &AgentStep, exec: &Executor, template: &PromptTemplate, vars: &Value, task: &Value) -> Dialogue {
        Dialogue::with_registry(step, exec.registry(), template, vars, task)
    }

    pub fn with_registry(
        step: &AgentStep,
        registry: &ToolRegistry,
        template: &PromptTemplate,
        vars: &Value,
        task: &Value,
    ) -> Dialogue {
        let mut vars = vars.as_object().cloned().unwrap_or_default();
        vars.insert("tools".to_owned(), step.tools_json(registry));
        let messages = vec![Message::system(template.render(&Value::Object(vars))), Message::user(task.to_string())];
        Dialogue {
            messages,
            outcome: AgentOutcome { output: Value::Null, turns: 0, calls: Vec::new(), rejected: Vec::new() },
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// SHA-256 (hex) of the messages the next turn sends: what a recorded
    /// turn answered.
    pub fn request_sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for m in &self.messages {
            for part in [m.role.as_bytes(), b"\0", m.content.as_bytes(), b"\0"] {
                hasher.update(part);
            }
        }
        hex::encode(hasher.finalize())
    }

    /// Begin a turn: `BOUND_EXCEEDED` past `max_turns`.
    pub fn check_turns(&mut self, step: &AgentStep) -> Result<()> {
        if let Some(max) = step.max_turns
            && self.outcome.turns >= max
        {
            return Err(Error::new(
                ErrorCode::BoundExceeded,
                format!("agent step {}: no final answer within max_turns = {max}", step.id),
            ));
        }
        self.outcome.turns += 1;
        Ok(())
    }

    /// Take the model's reply to the current turn.
    pub fn reply(&mut self, step: &AgentStep, content: &str) -> Turn {
        self.messages.push(Message::assistant(content.to_owned()));
        let (tool, version, input) = match parse_reply(content) {
            Ok(Reply::Final(output)) => {
                self.outcome.output = output;
                return Turn::Final;
            }
            Ok(Reply::Call { tool, version, input }) => (tool, version, input),
            Err(why) => {
                return Turn::Invalid(Error::new(
                    ErrorCode::AgentReplyInvalid,
                    format!("agent step {}: {why}; expected {{\"tool\", \"input\"}} or {{\"final\"}}", step.id),
                ));
            }
        };
        match step.allowed(&tool, version.as_deref()).cloned() {
            Some(allowed) => Turn::Call(allowed, input),
            None => {
                let names: Vec<String> = step.tools.iter().map(|t| format!("{}@{}", t.name, t.version)).collect();
                let e = Error::new(
                    ErrorCode::AgentToolNotAllowed,
                    format!(
                        "agent step {}: {tool}@{} is not among this step's tools ({})",
                        step.id,
                        version.as_deref().unwrap_or("?"),
                        names.join(", ")
                    ),
                );
                Turn::NotAllowed(tool, input, e)
            }
        }
    }

    /// The proposal ran: its output goes back to the model.
    pub fn executed(&mut self, tool: AllowedTool, input: Value, output: Value) {
        self.messages.push(Message::user(json!({ "result": output }).to_string()));
        self.outcome.calls.push(ExecutedCall { tool: tool.name, version: tool.version, input, output });
    }

    /// The proposal was refused (as traced): the error goes back to the model.
    pub fn refused(&mut self, e: &TracedError) {
        self.outcome.rejected.push(ErrorCode::from_code(&e.code).unwrap_or(ErrorCode::ToolFailed));
        self.messages.push(Message::user(json!({ "error": { "code": e.code, "message": e.message } }).to_string()));
    }

    /// The step's output: `{"final", "calls", "turns"}`.
    pub fn output(&self) -> Value {
        let calls: Vec<Value> = self
            .outcome
            .calls
            .iter()
            .map(|c| json!({ "tool": c.tool, "version": c.version, "input": c.input, "output": c.output }))
            .collect();
        json!({ "final": self.outcome.output, "calls": calls, "turns": self.outcome.turns })
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
