//! The typed business config: serde structs mirroring
//! `kernel/schemas/autobiz.schema.json` one to one (unknown keys are refused,
//! as the schema's `additionalProperties: false` does).
//!
//! Obtain it with [`super::BusinessConfig::model`] after the schema check
//! passed, or build it in code. The compile checks ([`super::compile`]) and
//! the executor read it; the reference rules below are shared by both, so a
//! config that compiles means what the executor will enforce.
//!
//! **Tool references.** A step's `tool`, a HITL rule's `tool`, a scope's
//! `tools` entry and a `compensate_with` name tools either by bare name
//! (`stripe.refund.create`: every declared version of that name) or pinned
//! (`stripe.refund.create@2`: that version only). Tool names cannot contain
//! `@`, so the split is unambiguous. A step must resolve to exactly one tool.
//!
//! **Scopes.** A scope's `tools` entry `*` allows every tool that is not
//! `FINANCIAL`; a `FINANCIAL` tool is allowed only by naming it. No other
//! patterns exist (`stripe.*` is just an undeclared name).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The scope entry that allows every non-`FINANCIAL` tool.
pub const WILDCARD: &str = "*";

/// The whole config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub business: Business,
    pub bounds: Bounds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_detection: Option<LoopDetection>,
    pub tools: Vec<ToolDecl>,
    #[serde(default)]
    pub scopes: Vec<ScopeDecl>,
    #[serde(default)]
    pub hitl: Vec<HitlRule>,
    #[serde(default)]
    pub workflows: Vec<WorkflowDecl>,
}

/// `[business]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Business {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `[bounds]`, and a workflow's `bounds` override. Every limit is > 0
/// (CC-02); an override may only tighten the top-level bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub max_steps: u64,
    pub max_wall_time_ms: u64,
    pub max_tokens: u64,
    pub max_tool_calls: u64,
}

impl Bounds {
    /// The four limits with their config keys, in schema order.
    pub fn limits(&self) -> [(&'static str, u64); 4] {
        [
            ("max_steps", self.max_steps),
            ("max_wall_time_ms", self.max_wall_time_ms),
            ("max_tokens", self.max_tokens),
            ("max_tool_calls", self.max_tool_calls),
        ]
    }
}

/// `[loop_detection]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_identical_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sequence_repeats: Option<u64>,
    #[serde(default)]
    pub retry_allowlist: Vec<String>,
}

/// The side-effect class of a tool: one type for the config and the
/// executor's contracts. FINANCIAL needs a HITL rule, never `AUTO_APPROVE`
/// (CC-04), and is never covered by a `*` scope (CC-03).
pub use crate::contract::SideEffect;

/// One `[[tools]]` entry. Identity is `name` + `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDecl {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub side_effect: SideEffect,
    pub timeout_ms: u64,
    /// A JSON Schema (checked to compile: `TOOL_SCHEMA_INVALID`).
    pub input_schema: Value,
    /// A JSON Schema (checked to compile: `TOOL_SCHEMA_INVALID`).
    pub output_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

impl ToolDecl {
    /// `name@version`, the pinned reference to exactly this tool.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Does `reference` (`name` or `name@version`) name this tool?
    pub fn is_named_by(&self, reference: &str) -> bool {
        match reference.split_once('@') {
            Some((name, version)) => self.name == name && self.version == version,
            None => self.name == reference,
        }
    }

    pub fn is_financial(&self) -> bool {
        self.side_effect == SideEffect::Financial
    }
}

/// A tool's price, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_call_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_1k_tokens_usd: Option<f64>,
}

/// One `[[scopes]]` entry: what a principal may call (deny by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDecl {
    pub principal: String,
    /// Tenant ids, or `["*"]`; absent: every tenant. Not judged at compile
    /// time (the tenant is known only at run time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// Tool references, or `*` for every non-`FINANCIAL` tool.
    pub tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
}

impl ScopeDecl {
    /// Does this scope's tool list allow `tool`? (Principal and tenant are
    /// the caller's to compare.) `*` never allows a `FINANCIAL` tool.
    pub fn allows_tool(&self, tool: &ToolDecl) -> bool {
        self.tools.iter().any(|t| if t == WILDCARD { !tool.is_financial() } else { tool.is_named_by(t) })
    }
}

/// What happens when nobody decides a HITL request in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnTimeout {
    Fail,
    /// Go ahead without a decision. Refused for `FINANCIAL` tools (CC-04).
    Proceed,
    Escalate,
}

/// Whether a matching call waits for a human.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HitlPolicy {
    #[default]
    RequireApproval,
    /// Refused for `FINANCIAL` tools (CC-04).
    AutoApprove,
}

/// One `[[hitl]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitlRule {
    /// A tool reference (`name` or `name@version`).
    pub tool: String,
    /// Condition over the tool input; absent: always. Not evaluated at
    /// compile time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    pub timeout_s: u64,
    pub on_timeout: OnTimeout,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub policy: HitlPolicy,
}

impl HitlRule {
    pub fn applies_to(&self, tool: &ToolDecl) -> bool {
        tool.is_named_by(&self.tool)
    }
}

/// One `[[workflows]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDecl {
    /// `WF` + two digits, unique in the config.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The principal every call of this workflow runs as (CC-03).
    pub principal: String,
    /// Tighter bounds for this workflow; never looser than the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
    pub steps: Vec<StepDecl>,
}

impl WorkflowDecl {
    pub fn step(&self, id: &str) -> Option<&StepDecl> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The bounds this workflow runs under: its override, or `top`.
    pub fn effective_bounds(&self, top: &Bounds) -> Bounds {
        self.bounds.unwrap_or(*top)
    }
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDecl {
    /// Unique within its workflow.
    pub id: String,
    /// A tool reference resolving to exactly one declared tool (CC-01).
    /// Exactly one of `tool` and `agent` (the schema's `oneOf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// An agent step: the model proposes calls of `agent.tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentDecl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// What undoes this step: the id of a step of the same workflow (looked
    /// up first), or a tool reference resolving to exactly one tool (CC-01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate_with: Option<String>,
    /// The input of a `compensate_with` that names a tool (a template like
    /// `input`); a step named there has its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate_input: Option<Map<String, Value>>,
    /// Attempts in all when the step fails, `on_error` after the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
}

/// A step's `agent = { model, prompt, tools, max_turns }`: the model (with
/// the prompt as its pinned template) proposes calls of `tools`, each run
/// through the executor like a declared step's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// The model the run's LLM client must be pinned to.
    pub model: String,
    /// The system prompt template (`{{tools}}` and the step's input fields
    /// are filled in); pinned by its SHA-256.
    pub prompt: String,
    /// Tool references, each resolving to exactly one declared tool (CC-01),
    /// in scope for the workflow's principal (CC-03).
    pub tools: Vec<String>,
    /// Model turns at most; 1 ..= the workflow's `max_steps` (CC-02).
    /// Absent: only the run's bounds limit the turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u64>,
}

/// What a `compensate_with` names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compensation<'a> {
    Step(&'a StepDecl),
    Tool(&'a ToolDecl),
}

impl Model {
    /// Every declared tool a reference names (all versions for a bare name),
    /// in declaration order.
    pub fn tools_named<'a, 'r>(&'a self, reference: &'r str) -> impl Iterator<Item = &'a ToolDecl> + use<'a, 'r> {
        self.tools.iter().filter(move |t| t.is_named_by(reference))
    }

    /// The one tool a step-style reference names; `None` when it names none
    /// or several (a bare name with more than one version declared).
    pub fn resolve_tool(&self, reference: &str) -> Option<&ToolDecl> {
        let mut found = self.tools_named(reference);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// What a step's `compensate_with` names in `workflow`, if anything.
    pub fn resolve_compensation<'a>(&'a self, workflow: &'a WorkflowDecl, reference: &str) -> Option<Compensation<'a>> {
        if let Some(step) = workflow.step(reference) {
            return Some(Compensation::Step(step));
        }
        self.resolve_tool(reference).map(Compensation::Tool)
    }

    /// May `principal` call `tool` by some scope? Deny by default.
    pub fn allows(&self, principal: &str, tool: &ToolDecl) -> bool {
        self.scopes.iter().any(|s| s.principal == principal && s.allows_tool(tool))
    }

    /// The HITL rules that apply to `tool`, in declaration order.
    pub fn hitl_rules_for<'a>(&'a self, tool: &'a ToolDecl) -> impl Iterator<Item = &'a HitlRule> + 'a {
        self.hitl.iter().filter(move |r| r.applies_to(tool))
    }

    /// The tools a workflow's calls may reach: each step's tool, each agent
    /// step's tools and each compensation that names a tool (resolvable
    /// references only).
    pub fn tools_used_by<'a>(&'a self, workflow: &'a WorkflowDecl) -> Vec<&'a ToolDecl> {
        let mut used: Vec<&ToolDecl> = Vec::new();
        for step in &workflow.steps {
            let mut add = |t: &'a ToolDecl| {
                if !used.iter().any(|u| std::ptr::eq(*u, t)) {
                    used.push(t);
                }
            };
            if let Some(t) = step.tool.as_deref().and_then(|r| self.resolve_tool(r)) {
                add(t);
            }
            for t in step.agent.iter().flat_map(|a| &a.tools).filter_map(|r| self.resolve_tool(r)) {
                add(t);
            }
            if let Some(Compensation::Tool(t)) =
                step.compensate_with.as_deref().and_then(|c| self.resolve_compensation(workflow, c))
            {
                add(t);
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, version: &str, side_effect: SideEffect) -> ToolDecl {
        ToolDecl {
            name: name.into(),
            version: version.into(),
            description: None,
            side_effect,
            timeout_ms: 1000,
            input_schema: serde_json::json!({"type": "object"}),
            output_schema: serde_json::json!({"type": "object"}),
            price: None,
        }
    }

    #[test]
    fn references_name_every_version_or_one() {
        let v1 = tool("a.b", "1", SideEffect::Read);
        let v2 = tool("a.b", "2", SideEffect::Read);
        assert!(v1.is_named_by("a.b") && v2.is_named_by("a.b"));
        assert!(v1.is_named_by("a.b@1") && !v2.is_named_by("a.b@1"));
        assert!(!v1.is_named_by("a.bc") && !v1.is_named_by("a.b@"));
        assert_eq!(v2.id(), "a.b@2");
    }

    #[test]
    fn p1_t_cc03_the_wildcard_never_covers_financial_tools() {
        let scope = ScopeDecl { principal: "p".into(), tenants: None, tools: vec!["*".into()], actions: None };
        assert!(scope.allows_tool(&tool("r", "1", SideEffect::Read)));
        assert!(scope.allows_tool(&tool("n", "1", SideEffect::Notify)));
        assert!(!scope.allows_tool(&tool("f", "1", SideEffect::Financial)));
        let named = ScopeDecl { tools: vec!["*".into(), "f".into()], ..scope };
        assert!(named.allows_tool(&tool("f", "1", SideEffect::Financial)));
    }

    #[test]
    fn defaults_follow_the_schema() {
        let rule: HitlRule =
            serde_json::from_value(serde_json::json!({"tool": "t", "timeout_s": 5, "on_timeout": "FAIL"})).unwrap();
        assert_eq!(rule.policy, HitlPolicy::RequireApproval);
        assert!(rule.approvers.is_empty() && rule.when.is_none());
        let err = serde_json::from_value::<HitlRule>(
            serde_json::json!({"tool": "t", "timeout_s": 5, "on_timeout": "FAIL", "polcy": "AUTO_APPROVE"}),
        );
        assert!(err.is_err(), "unknown keys are refused");
    }
}
