//! The compile checks: what a config must satisfy beyond its JSON Schema
//! before anything runs it. [`compile`] judges a [`Model`] and returns
//! [`Diagnostic`]s without lines; [`super::BusinessConfig::check`] runs it
//! after the schema check passed, adds the TOML lines and sorts.
//!
//! | code | rule |
//! | --- | --- |
//! | `CC-01` | tool closure: every step `tool`, agent step `agent.tools` entry, HITL rule `tool`, scope `tools` entry (except `*`) and `compensate_with` names a declared tool (a `compensate_with` may name a step of the same workflow instead); a step or a compensation must name exactly one tool (pin `name@version` when several versions are declared) |
//! | `CC-02` | bounds: all four top-level limits > 0, a workflow's `bounds` never looser than the top-level ones, and an agent step's `max_turns` within 1 ..= the workflow's `max_steps` |
//! | `CC-03` | scopes: every tool a workflow can call (steps, agent steps' tools and tool compensations) is allowed for its `principal` by a scope; `*` never covers a `FINANCIAL` tool |
//! | `CC-04` | every `FINANCIAL` tool has a HITL rule; no rule for one has `policy = "AUTO_APPROVE"` or `on_timeout = "PROCEED"` |
//! | `TOOL_SCHEMA_INVALID` | a tool's `input_schema` / `output_schema` does not compile as a JSON Schema (no remote `$ref`) |
//! | `CONFIG_INVALID` | duplicate tool (name + version), workflow id, or step id within a workflow; a step with both or neither of `tool` and `agent` |
//! | `HITL_CONDITION_INVALID` | a HITL rule's `when` that does not parse, or does not type-check against the input schema of a tool the rule names (unknown field, a number compared with a string, not boolean); the message names the rule index, the column and what was expected |

use std::collections::BTreeMap;

use super::Diagnostic;
use super::model::{Compensation, HitlPolicy, Model, OnTimeout, ToolDecl, WILDCARD};
use crate::error::ErrorCode;

/// CC-01: tool closure.
pub const CC01_TOOL_CLOSURE: &str = "CC-01";
/// CC-02: bounds present and not loosened.
pub const CC02_BOUNDS: &str = "CC-02";
/// CC-03: every workflow tool is in scope for its principal.
pub const CC03_SCOPES: &str = "CC-03";
/// CC-04: FINANCIAL tools need human approval.
pub const CC04_FINANCIAL_HITL: &str = "CC-04";
/// A tool's input or output schema is not a valid JSON Schema.
pub const TOOL_SCHEMA_INVALID: &str = "TOOL_SCHEMA_INVALID";
/// A HITL rule's `when` does not parse or does not type-check.
pub const HITL_CONDITION_INVALID: &str = "HITL_CONDITION_INVALID";

/// Run every compile check on `model`. Deterministic; diagnostics come in
/// check order, without lines (the caller locates and sorts them).
pub fn compile(model: &Model) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    duplicates(model, &mut out);
    tool_schemas(model, &mut out);
    cc01_tool_closure(model, &mut out);
    cc02_bounds(model, &mut out);
    cc02_agent_turns(model, &mut out);
    cc03_scopes(model, &mut out);
    cc04_financial_hitl(model, &mut out);
    hitl_conditions(model, &mut out);
    out
}

fn diag(code: &str, path: String, message: String, fix: Option<String>) -> Diagnostic {
    Diagnostic { code: code.to_owned(), path, line: None, message, fix }
}

fn duplicates(model: &Model, out: &mut Vec<Diagnostic>) {
    let invalid = ErrorCode::ConfigInvalid.as_str();
    let mut tools: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, t) in model.tools.iter().enumerate() {
        if let Some(&first) = tools.get(&(t.name.as_str(), t.version.as_str())) {
            out.push(diag(
                invalid,
                format!("/tools/{i}/name"),
                format!("tool \"{}\" version \"{}\" is declared twice (first at /tools/{first})", t.name, t.version),
                Some("remove one of the two declarations, or give this one another version".into()),
            ));
        } else {
            tools.insert((&t.name, &t.version), i);
        }
    }
    let mut workflows: BTreeMap<&str, usize> = BTreeMap::new();
    for (w, wf) in model.workflows.iter().enumerate() {
        if let Some(&first) = workflows.get(wf.id.as_str()) {
            out.push(diag(
                invalid,
                format!("/workflows/{w}/id"),
                format!("workflow id \"{}\" is used twice (first at /workflows/{first})", wf.id),
                Some("give each workflow its own id (WF01..WF99)".into()),
            ));
        } else {
            workflows.insert(&wf.id, w);
        }
        let mut steps: BTreeMap<&str, usize> = BTreeMap::new();
        for (s, step) in wf.steps.iter().enumerate() {
            if let Some(&first) = steps.get(step.id.as_str()) {
                out.push(diag(
                    invalid,
                    format!("/workflows/{w}/steps/{s}/id"),
                    format!(
                        "step id \"{}\" is used twice in workflow {} (first at /workflows/{w}/steps/{first})",
                        step.id, wf.id
                    ),
                    Some("give each step of a workflow its own id".into()),
                ));
            } else {
                steps.insert(&step.id, s);
            }
        }
        // Exactly one of `tool` and `agent` (the schema's oneOf, for models
        // built in code).
        for (s, step) in wf.steps.iter().enumerate() {
            if step.tool.is_some() == step.agent.is_some() {
                let has = if step.tool.is_some() { "both `tool` and `agent`" } else { "neither `tool` nor `agent`" };
                out.push(diag(
                    invalid,
                    format!("/workflows/{w}/steps/{s}"),
                    format!("step \"{}\" of {} has {has}", step.id, wf.id),
                    Some("give the step either tool = \"...\" or agent = { model, prompt, tools }".into()),
                ));
            }
        }
        // Branch targets: a step of the same workflow, or "end".
        for (s, step) in wf.steps.iter().enumerate() {
            for (key, target) in [("next", &step.next), ("on_error", &step.on_error)] {
                let Some(target) = target else { continue };
                if target != crate::workflow::END && !wf.steps.iter().any(|other| &other.id == target) {
                    let ids: Vec<&str> = wf.steps.iter().map(|o| o.id.as_str()).collect();
                    out.push(diag(
                        invalid,
                        format!("/workflows/{w}/steps/{s}/{key}"),
                        format!("{key} \"{target}\" names no step of workflow {}", wf.id),
                        Some(format!("use one of: {}, or \"end\"", ids.join(", "))),
                    ));
                }
            }
        }
    }
}

fn tool_schemas(model: &Model, out: &mut Vec<Diagnostic>) {
    for (i, t) in model.tools.iter().enumerate() {
        for (key, schema) in [("input_schema", &t.input_schema), ("output_schema", &t.output_schema)] {
            if let Err(e) = jsonschema::validator_for(schema) {
                out.push(diag(
                    TOOL_SCHEMA_INVALID,
                    format!("/tools/{i}/{key}{}", e.instance_path().as_str()),
                    format!("{key} of tool \"{}\" is not a valid JSON Schema: {e}", t.id()),
                    Some("correct the schema (JSON Schema 2020-12; remote $ref is not resolved)".into()),
                ));
            }
        }
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `target`, if close enough to be a likely typo
/// (distance at most a third of the longer name, and at least 2 allowed).
/// Ties go to the alphabetically first, so the suggestion is stable.
fn closest<'a>(target: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(target, c), c))
        .filter(|(d, c)| *d <= (target.chars().count().max(c.chars().count()) / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

fn tool_names(model: &Model) -> Vec<&str> {
    let mut names: Vec<&str> = model.tools.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Why a reference names no tool, and the fix.
fn unknown_tool(model: &Model, what: &str, reference: &str, extra: &[&str]) -> (String, String) {
    if let Some((name, version)) = reference.split_once('@') {
        let mut versions: Vec<&str> = model.tools_named(name).map(|t| t.version.as_str()).collect();
        if !versions.is_empty() {
            versions.sort_unstable();
            return (
                format!("{what} \"{reference}\" names version \"{version}\" of \"{name}\", which is not declared"),
                format!("use a declared version of \"{name}\": {}", versions.join(", ")),
            );
        }
    }
    let name = reference.split_once('@').map_or(reference, |(n, _)| n);
    let message = if reference.contains('*') {
        format!("{what} \"{reference}\" names no declared tool (the only wildcard is \"*\", alone, in scope tools)")
    } else {
        format!("{what} \"{reference}\" names no declared tool")
    };
    let candidates = tool_names(model).into_iter().chain(extra.iter().copied());
    let fix = match closest(name, candidates) {
        Some(near) => format!("did you mean \"{near}\"?"),
        None => format!("declare a [[tools]] entry named \"{name}\", or name a declared tool"),
    };
    (message, fix)
}

/// How many different tools (name + version) a reference names; a tool
/// declared twice counts once (the duplicate is its own diagnostic).
fn distinct_versions(model: &Model, reference: &str) -> usize {
    let mut ids: Vec<String> = model.tools_named(reference).map(ToolDecl::id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

fn ambiguous_tool(model: &Model, what: &str, reference: &str) -> (String, String) {
    let mut ids: Vec<String> = model.tools_named(reference).map(ToolDecl::id).collect();
    ids.sort_unstable();
    ids.dedup();
    (
        format!("{what} \"{reference}\" names {} declared versions; a call needs exactly one", ids.len()),
        format!("pin a version: {}", ids.join(" or ")),
    )
}

fn cc01_tool_closure(model: &Model, out: &mut Vec<Diagnostic>) {
    let mut push = |path: String, (message, fix): (String, String)| {
        out.push(diag(CC01_TOOL_CLOSURE, path, message, Some(fix)));
    };
    for (w, wf) in model.workflows.iter().enumerate() {
        for (s, step) in wf.steps.iter().enumerate() {
            let mut refs: Vec<(String, String, &str)> = Vec::new();
            if let Some(tool) = step.tool.as_deref() {
                refs.push((
                    format!("step \"{}\" of {}: tool", step.id, wf.id),
                    format!("/workflows/{w}/steps/{s}/tool"),
                    tool,
                ));
            }
            for (k, tool) in step.agent.iter().flat_map(|a| a.tools.iter()).enumerate() {
                refs.push((
                    format!("agent step \"{}\" of {}: tool", step.id, wf.id),
                    format!("/workflows/{w}/steps/{s}/agent/tools/{k}"),
                    tool,
                ));
            }
            for (what, path, tool) in refs {
                match distinct_versions(model, tool) {
                    0 => push(path, unknown_tool(model, &what, tool, &[])),
                    1 => {}
                    _ => push(path, ambiguous_tool(model, &what, tool)),
                }
            }
            let Some(comp) = step.compensate_with.as_deref() else { continue };
            if wf.step(comp).is_some() {
                continue;
            }
            let what = format!("step \"{}\" of {}: compensate_with", step.id, wf.id);
            let path = format!("/workflows/{w}/steps/{s}/compensate_with");
            match distinct_versions(model, comp) {
                0 => {
                    let steps: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
                    let (message, fix) = unknown_tool(model, &what, comp, &steps);
                    push(
                        path,
                        (
                            message.replace(
                                "names no declared tool",
                                "names no step of this workflow and no declared tool",
                            ),
                            fix,
                        ),
                    );
                }
                1 => {}
                _ => push(path, ambiguous_tool(model, &what, comp)),
            }
        }
    }
    for (r, rule) in model.hitl.iter().enumerate() {
        if model.tools_named(&rule.tool).next().is_none() {
            push(format!("/hitl/{r}/tool"), unknown_tool(model, "HITL rule tool", &rule.tool, &[]));
        }
    }
    for (c, scope) in model.scopes.iter().enumerate() {
        for (k, entry) in scope.tools.iter().enumerate() {
            if entry != WILDCARD && model.tools_named(entry).next().is_none() {
                let what = format!("scope tool for principal \"{}\"", scope.principal);
                push(format!("/scopes/{c}/tools/{k}"), unknown_tool(model, &what, entry, &[]));
            }
        }
    }
}

fn cc02_bounds(model: &Model, out: &mut Vec<Diagnostic>) {
    for (key, value) in model.bounds.limits() {
        if value == 0 {
            out.push(diag(
                CC02_BOUNDS,
                format!("/bounds/{key}"),
                format!("bounds.{key} is 0; every run needs all four limits > 0"),
                Some(format!("set bounds.{key} to a positive limit")),
            ));
        }
    }
    for (w, wf) in model.workflows.iter().enumerate() {
        let Some(own) = wf.bounds else { continue };
        for ((key, value), (_, top)) in own.limits().into_iter().zip(model.bounds.limits()) {
            if value == 0 {
                out.push(diag(
                    CC02_BOUNDS,
                    format!("/workflows/{w}/bounds/{key}"),
                    format!("{}: bounds.{key} is 0; every run needs all four limits > 0", wf.id),
                    Some(format!("set it to a positive limit of at most {top}")),
                ));
            } else if value > top {
                out.push(diag(
                    CC02_BOUNDS,
                    format!("/workflows/{w}/bounds/{key}"),
                    format!(
                        "{}: bounds.{key} = {value} is looser than the top-level bounds.{key} = {top}; a workflow may only tighten the bounds",
                        wf.id
                    ),
                    Some(format!("lower it to at most {top}, or raise the top-level bounds.{key}")),
                ));
            }
        }
    }
}

/// CC-02 for agent steps: `max_turns` within 1 ..= the workflow's
/// `max_steps` (each turn is a step of the run).
fn cc02_agent_turns(model: &Model, out: &mut Vec<Diagnostic>) {
    for (w, wf) in model.workflows.iter().enumerate() {
        let max_steps = wf.effective_bounds(&model.bounds).max_steps;
        for (s, step) in wf.steps.iter().enumerate() {
            let Some(turns) = step.agent.as_ref().and_then(|a| a.max_turns) else { continue };
            let path = format!("/workflows/{w}/steps/{s}/agent/max_turns");
            if turns == 0 {
                out.push(diag(
                    CC02_BOUNDS,
                    path,
                    format!(
                        "{}: agent step \"{}\" has max_turns = 0; an agent needs at least one turn",
                        wf.id, step.id
                    ),
                    Some(format!("set max_turns between 1 and {max_steps}")),
                ));
            } else if turns > max_steps {
                out.push(diag(
                    CC02_BOUNDS,
                    path,
                    format!(
                        "{}: agent step \"{}\" has max_turns = {turns}, more than the workflow's bounds.max_steps = {max_steps}; each turn is a step",
                        wf.id, step.id
                    ),
                    Some(format!("lower max_turns to at most {max_steps}")),
                ));
            }
        }
    }
}

fn cc03_scopes(model: &Model, out: &mut Vec<Diagnostic>) {
    for (w, wf) in model.workflows.iter().enumerate() {
        if !model.scopes.iter().any(|s| s.principal == wf.principal) {
            let mut tools: Vec<&str> = model.tools_used_by(wf).iter().map(|t| t.name.as_str()).collect();
            tools.sort_unstable();
            tools.dedup();
            let list = tools.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
            out.push(diag(
                CC03_SCOPES,
                format!("/workflows/{w}/principal"),
                format!(
                    "{}: no [[scopes]] entry for principal \"{}\"; deny by default refuses every tool it calls",
                    wf.id, wf.principal
                ),
                Some(format!("add [[scopes]] principal = \"{}\", tools = [{list}]", wf.principal)),
            ));
            continue;
        }
        for (s, step) in wf.steps.iter().enumerate() {
            let mut judge = |key: &str, tool: &ToolDecl| {
                if model.allows(&wf.principal, tool) {
                    return;
                }
                let star = tool.is_financial()
                    && model
                        .scopes
                        .iter()
                        .any(|sc| sc.principal == wf.principal && sc.tools.iter().any(|t| t == WILDCARD));
                let why = if star { " (\"*\" never covers a FINANCIAL tool)" } else { "" };
                let verb = match key {
                    "tool" => "calls",
                    "compensate_with" => "compensates with",
                    _ => "lets its agent propose",
                };
                out.push(diag(
                    CC03_SCOPES,
                    format!("/workflows/{w}/steps/{s}/{key}"),
                    format!(
                        "{}: step \"{}\" {verb} \"{}\", which no scope allows for principal \"{}\"{why}",
                        wf.id, step.id, tool.name, wf.principal
                    ),
                    Some(format!(
                        "add \"{}\" to the tools of a [[scopes]] entry for principal \"{}\"",
                        tool.name, wf.principal
                    )),
                ));
            };
            if let Some(tool) = step.tool.as_deref().and_then(|r| model.resolve_tool(r)) {
                judge("tool", tool);
            }
            for (k, tool) in step.agent.iter().flat_map(|a| a.tools.iter()).enumerate() {
                if let Some(tool) = model.resolve_tool(tool) {
                    judge(&format!("agent/tools/{k}"), tool);
                }
            }
            if let Some(Compensation::Tool(tool)) =
                step.compensate_with.as_deref().and_then(|c| model.resolve_compensation(wf, c))
            {
                judge("compensate_with", tool);
            }
        }
    }
}

fn cc04_financial_hitl(model: &Model, out: &mut Vec<Diagnostic>) {
    for (i, tool) in model.tools.iter().enumerate().filter(|(_, t)| t.is_financial()) {
        if model.hitl_rules_for(tool).next().is_none() {
            out.push(diag(
                CC04_FINANCIAL_HITL,
                format!("/tools/{i}/side_effect"),
                format!("FINANCIAL tool \"{}\" has no [[hitl]] rule; money never moves without a human", tool.id()),
                Some(format!("add [[hitl]] tool = \"{}\", timeout_s = 3600, on_timeout = \"FAIL\"", tool.name)),
            ));
        }
    }
    for (r, rule) in model.hitl.iter().enumerate() {
        let mut financial: Vec<String> =
            model.tools_named(&rule.tool).filter(|t| t.is_financial()).map(ToolDecl::id).collect();
        if financial.is_empty() {
            continue;
        }
        financial.sort_unstable();
        let names = financial.join(", ");
        if rule.policy == HitlPolicy::AutoApprove {
            out.push(diag(
                CC04_FINANCIAL_HITL,
                format!("/hitl/{r}/policy"),
                format!("HITL rule for FINANCIAL tool {names} has policy = \"AUTO_APPROVE\"; FINANCIAL calls always need a human"),
                Some("remove the policy line (REQUIRE_APPROVAL is the default)".into()),
            ));
        }
        if rule.on_timeout == OnTimeout::Proceed {
            out.push(diag(
                CC04_FINANCIAL_HITL,
                format!("/hitl/{r}/on_timeout"),
                format!("HITL rule for FINANCIAL tool {names} has on_timeout = \"PROCEED\", an approval by silence"),
                Some("use on_timeout = \"FAIL\" (or \"ESCALATE\")".into()),
            ));
        }
    }
}

/// Every `when` parses and type-checks against the input schema of each
/// tool its rule names (rules naming no tool are CC-01's).
fn hitl_conditions(model: &Model, out: &mut Vec<Diagnostic>) {
    use crate::hitl::condition::Condition;
    for (r, rule) in model.hitl.iter().enumerate() {
        let Some(text) = rule.when.as_deref() else { continue };
        let path = format!("/hitl/{r}/when");
        let condition = match Condition::parse(text) {
            Ok(c) => c,
            Err(e) => {
                out.push(diag(
                    HITL_CONDITION_INVALID,
                    path,
                    format!("[[hitl]] rule {r} (tool \"{}\"): `when` does not parse {e}", rule.tool),
                    Some("write e.g. amount > 5000 && currency == \"usd\" (operators: || && ! == != < <= > >=)".into()),
                ));
                continue;
            }
        };
        let mut seen: Vec<String> = Vec::new();
        for tool in model.tools_named(&rule.tool) {
            if seen.contains(&tool.id()) {
                continue;
            }
            seen.push(tool.id());
            if let Err(e) = condition.check(&tool.input_schema) {
                out.push(diag(
                    HITL_CONDITION_INVALID,
                    path.clone(),
                    format!("[[hitl]] rule {r}: `when` does not fit the input of tool \"{}\" {e}", tool.id()),
                    Some("name fields declared in the tool's input_schema properties, compared with values of their type".into()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{BusinessConfig, CheckReport};

    /// A config that passes every check: a READ tool, a FINANCIAL tool with a
    /// HITL rule, one scope, one workflow with a compensation.
    const BASE: &str = r#"[business]
name = "t"

[bounds]
max_steps = 10
max_wall_time_ms = 1000
max_tokens = 100
max_tool_calls = 5

[[tools]]
name = "shop.order.get"
version = "1"
side_effect = "READ"
timeout_ms = 1000
input_schema = { type = "object" }
output_schema = { type = "object" }

[[tools]]
name = "pay.charge"
version = "1"
side_effect = "FINANCIAL"
timeout_ms = 1000
input_schema = { type = "object", required = ["amount"], properties = { amount = { type = "integer" } } }
output_schema = { type = "object" }

[[tools]]
name = "pay.refund"
version = "1"
side_effect = "FINANCIAL"
timeout_ms = 1000
input_schema = { type = "object" }
output_schema = { type = "object" }

[[scopes]]
principal = "agent:a"
tools = ["shop.order.get", "pay.charge", "pay.refund"]

[[hitl]]
tool = "pay.charge"
when = "amount > 100"
timeout_s = 60
on_timeout = "FAIL"

[[hitl]]
tool = "pay.refund"
timeout_s = 60
on_timeout = "ESCALATE"

[[workflows]]
id = "WF01"
name = "Order"
principal = "agent:a"
steps = [
  { id = "fetch", tool = "shop.order.get" },
  { id = "charge", tool = "pay.charge", compensate_with = "pay.refund" },
]
"#;

    const EXAMPLE: &str = include_str!("../../../examples/shop/autobiz.toml");

    fn check(s: &str) -> CheckReport {
        BusinessConfig::parse(Path::new("t.toml"), s.to_owned()).unwrap().check()
    }

    fn with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "BASE lacks {from:?}");
        BASE.replacen(from, to, 1)
    }

    /// (code, path, line) of each diagnostic.
    fn found(s: &str) -> Vec<(String, String, Option<usize>)> {
        check(s).diagnostics.into_iter().map(|d| (d.code, d.path, d.line)).collect()
    }

    fn only(s: &str) -> Diagnostic {
        let report = check(s);
        assert_eq!(report.diagnostics.len(), 1, "{:#?}", report.diagnostics);
        report.diagnostics.into_iter().next().unwrap()
    }

    fn line_of(s: &str, needle: &str) -> Option<usize> {
        s.lines().position(|l| l.contains(needle)).map(|i| i + 1)
    }

    #[test]
    fn p1_t28_branch_targets_must_name_a_step_or_end() {
        let ok = with(
            r#"{ id = "fetch", tool = "shop.order.get" }"#,
            r#"{ id = "fetch", tool = "shop.order.get", next = "charge", on_error = "end" }"#,
        );
        assert!(check(&ok).is_ok(), "{:#?}", check(&ok).diagnostics);
        let bad = with(
            r#"{ id = "fetch", tool = "shop.order.get" }"#,
            r#"{ id = "fetch", tool = "shop.order.get", on_error = "charg" }"#,
        );
        let d = only(&bad);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CONFIG_INVALID", "/workflows/0/steps/0/on_error"));
        assert!(d.fix.unwrap().contains("fetch, charge"));
    }

    #[test]
    fn the_base_config_and_the_shipped_example_pass_every_check() {
        let report = check(BASE);
        assert!(report.is_ok(), "{:#?}", report.diagnostics);
        let report = check(EXAMPLE);
        assert!(report.is_ok(), "{:#?}", report.diagnostics);
    }

    #[test]
    fn edit_distance_and_closest_are_plain_levenshtein() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("pay.chrage", ["pay.charge", "pay.refund"]), Some("pay.charge"));
        assert_eq!(closest("zzzzzzzz", ["pay.charge"]), None);
        assert_eq!(closest("ab", ["ac", "aa"]), Some("aa"), "ties go to the first alphabetically");
    }

    // --- CC-01 tool closure ------------------------------------------------

    #[test]
    fn p1_t_cc01_steps_hitl_scopes_and_compensations_naming_declared_tools_pass() {
        let pinned = with("tool = \"pay.charge\", compensate_with", "tool = \"pay.charge@1\", compensate_with");
        let to_step = pinned.replace("compensate_with = \"pay.refund\"", "compensate_with = \"fetch\"");
        for s in [BASE.to_owned(), pinned, to_step] {
            assert!(check(&s).is_ok(), "{:#?}", check(&s).diagnostics);
        }
    }

    #[test]
    fn p1_t_cc01_an_undeclared_step_tool_is_refused_with_the_closest_name() {
        let s = with("tool = \"shop.order.get\" }", "tool = \"shop.order.gte\" }");
        let d = only(&s);
        assert_eq!(d.code, CC01_TOOL_CLOSURE);
        assert_eq!(d.path, "/workflows/0/steps/0/tool");
        assert_eq!(d.line, line_of(&s, "shop.order.gte"));
        assert!(d.message.contains("\"shop.order.gte\" names no declared tool"), "{}", d.message);
        assert_eq!(d.fix.as_deref(), Some("did you mean \"shop.order.get\"?"));
    }

    #[test]
    fn p1_t_cc01_a_far_off_name_gets_a_declare_it_fix() {
        let d = only(&with("tool = \"shop.order.get\" }", "tool = \"crm.contact.upsert\" }"));
        assert_eq!(d.code, CC01_TOOL_CLOSURE);
        assert!(d.fix.unwrap().starts_with("declare a [[tools]] entry named \"crm.contact.upsert\""));
    }

    #[test]
    fn p1_t_cc01_hitl_rules_and_scope_entries_must_name_declared_tools() {
        let s = with("tool = \"pay.refund\"\ntimeout_s", "tool = \"pay.refnd\"\ntimeout_s").replacen(
            "tools = [\"shop.order.get\", ",
            "tools = [\"shop.*\", \"shop.order.get\", ",
            1,
        );
        let f = found(&s);
        assert!(f.contains(&("CC-01".into(), "/hitl/1/tool".into(), line_of(&s, "pay.refnd"))), "{f:#?}");
        assert!(f.contains(&("CC-01".into(), "/scopes/0/tools/0".into(), line_of(&s, "shop.*"))), "{f:#?}");
        let report = check(&s);
        let scope = report.diagnostics.iter().find(|d| d.path == "/scopes/0/tools/0").unwrap();
        assert!(scope.message.contains("the only wildcard is \"*\""), "{}", scope.message);
        // With its rule misnamed, pay.refund also lacks a HITL rule (CC-04).
        assert!(f.iter().any(|(c, p, _)| c == "CC-04" && p == "/tools/2/side_effect"), "{f:#?}");
    }

    #[test]
    fn p1_t_cc01_compensate_with_must_name_a_step_of_the_workflow_or_a_tool() {
        let s = with("compensate_with = \"pay.refund\"", "compensate_with = \"void\"");
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-01", "/workflows/0/steps/1/compensate_with"));
        assert!(d.message.contains("names no step of this workflow and no declared tool"), "{}", d.message);
        let d = only(&with("compensate_with = \"pay.refund\"", "compensate_with = \"fetc\""));
        assert_eq!(d.fix.as_deref(), Some("did you mean \"fetch\"?"), "step ids are candidates too");
    }

    #[test]
    fn p1_t_cc01_a_bare_name_with_two_versions_is_ambiguous_until_pinned() {
        let two = BASE.replacen(
            "[[scopes]]",
            "[[tools]]\nname = \"shop.order.get\"\nversion = \"2\"\nside_effect = \"READ\"\ntimeout_ms = 1\ninput_schema = {}\noutput_schema = {}\n\n[[scopes]]",
            1,
        );
        let d = only(&two);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-01", "/workflows/0/steps/0/tool"));
        assert_eq!(d.fix.as_deref(), Some("pin a version: shop.order.get@1 or shop.order.get@2"));
        let pinned = two.replacen("tool = \"shop.order.get\" }", "tool = \"shop.order.get@2\" }", 1);
        assert!(check(&pinned).is_ok(), "{:#?}", check(&pinned).diagnostics);
        let d = only(&two.replacen("tool = \"shop.order.get\" }", "tool = \"shop.order.get@3\" }", 1));
        assert_eq!(d.fix.as_deref(), Some("use a declared version of \"shop.order.get\": 1, 2"));
    }

    // --- CC-02 bounds --------------------------------------------------------

    #[test]
    fn p1_t29_p1_t_cc02_workflow_bounds_equal_or_tighter_pass() {
        let s = with(
            "principal = \"agent:a\"\nsteps",
            "principal = \"agent:a\"\nbounds = { max_steps = 10, max_wall_time_ms = 500, max_tokens = 1, max_tool_calls = 5 }\nsteps",
        );
        assert!(check(&s).is_ok(), "{:#?}", check(&s).diagnostics);
    }

    #[test]
    fn p1_t29_p1_t_cc02_a_workflow_may_not_loosen_the_bounds() {
        let s = with(
            "principal = \"agent:a\"\nsteps",
            "principal = \"agent:a\"\nbounds = { max_steps = 11, max_wall_time_ms = 1000, max_tokens = 100, max_tool_calls = 50 }\nsteps",
        );
        let report = check(&s);
        let line = line_of(&s, "max_steps = 11");
        let got: Vec<_> = report.diagnostics.iter().map(|d| (d.code.as_str(), d.path.as_str(), d.line)).collect();
        assert_eq!(
            got,
            [("CC-02", "/workflows/0/bounds/max_steps", line), ("CC-02", "/workflows/0/bounds/max_tool_calls", line)]
        );
        assert_eq!(
            report.diagnostics[1].fix.as_deref(),
            Some("lower it to at most 5, or raise the top-level bounds.max_tool_calls")
        );
    }

    #[test]
    fn p1_t29_p1_t_cc02_missing_or_zero_bounds_are_refused() {
        let no_bounds = BASE
            .replace("[bounds]\nmax_steps = 10\nmax_wall_time_ms = 1000\nmax_tokens = 100\nmax_tool_calls = 5\n", "");
        let d = only(&no_bounds);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CONFIG_INVALID", ""));
        assert!(d.message.contains("\"bounds\" is a required property"), "{}", d.message);
        let missing_limit = only(&with("max_tool_calls = 5\n", ""));
        assert_eq!((missing_limit.code.as_str(), missing_limit.path.as_str()), ("CONFIG_INVALID", "/bounds"));
        for limit in ["max_steps = 10", "max_wall_time_ms = 1000", "max_tokens = 100", "max_tool_calls = 5"] {
            let zero = format!("{} = 0", limit.split(' ').next().unwrap());
            let s = with(limit, &zero);
            let d = only(&s);
            assert_eq!(d.code, "CONFIG_INVALID", "the schema refuses {zero}");
            assert_eq!(d.line, line_of(&s, &zero));
        }
    }

    #[test]
    fn p1_t29_p1_t_cc02_a_model_built_in_code_with_a_zero_limit_is_refused() {
        let config = BusinessConfig::parse(Path::new("t.toml"), BASE.to_owned()).unwrap();
        let mut model = config.model().unwrap();
        model.bounds.max_tokens = 0;
        model.workflows[0].bounds = Some(super::super::model::Bounds { max_steps: 0, ..model.bounds });
        let got: Vec<_> = compile(&model).into_iter().map(|d| (d.code, d.path)).collect();
        assert_eq!(
            got,
            [
                ("CC-02".to_owned(), "/bounds/max_tokens".to_owned()),
                ("CC-02".to_owned(), "/workflows/0/bounds/max_steps".to_owned()),
                ("CC-02".to_owned(), "/workflows/0/bounds/max_tokens".to_owned()),
            ]
        );
    }

    // --- CC-03 scopes --------------------------------------------------------

    #[test]
    fn p1_t30_p1_t_cc03_the_wildcard_covers_non_financial_tools() {
        let s = with(
            "tools = [\"shop.order.get\", \"pay.charge\", \"pay.refund\"]",
            "tools = [\"*\", \"pay.charge\", \"pay.refund\"]",
        );
        assert!(check(&s).is_ok(), "{:#?}", check(&s).diagnostics);
    }

    #[test]
    fn p1_t30_p1_t_cc03_a_tool_outside_the_principals_scopes_is_refused() {
        let s = with(
            "tools = [\"shop.order.get\", \"pay.charge\", \"pay.refund\"]",
            "tools = [\"pay.charge\", \"pay.refund\"]\n\n[[scopes]]\nprincipal = \"agent:other\"\ntools = [\"shop.order.get\"]",
        );
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-03", "/workflows/0/steps/0/tool"));
        assert_eq!(d.line, line_of(&s, "id = \"fetch\""));
        assert_eq!(
            d.fix.as_deref(),
            Some("add \"shop.order.get\" to the tools of a [[scopes]] entry for principal \"agent:a\"")
        );
    }

    #[test]
    fn p1_t30_p1_t_cc03_the_wildcard_never_covers_a_financial_tool() {
        let s = with("tools = [\"shop.order.get\", \"pay.charge\", \"pay.refund\"]", "tools = [\"*\", \"pay.refund\"]");
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-03", "/workflows/0/steps/1/tool"));
        assert!(d.message.contains("\"*\" never covers a FINANCIAL tool"), "{}", d.message);
    }

    #[test]
    fn p1_t30_p1_t_cc03_a_compensation_tool_needs_scope_too() {
        let s = with(
            "tools = [\"shop.order.get\", \"pay.charge\", \"pay.refund\"]",
            "tools = [\"shop.order.get\", \"pay.charge\"]\n\n[[scopes]]\nprincipal = \"agent:b\"\ntools = [\"pay.refund\"]",
        );
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-03", "/workflows/0/steps/1/compensate_with"));
        assert!(d.message.contains("step \"charge\" compensates with \"pay.refund\""), "{}", d.message);
    }

    #[test]
    fn p1_t30_p1_t_cc03_a_principal_without_any_scope_is_refused_once() {
        let s = with("principal = \"agent:a\"\nsteps", "principal = \"agent:nobody\"\nsteps");
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-03", "/workflows/0/principal"));
        assert_eq!(d.line, line_of(&s, "agent:nobody"));
        assert_eq!(
            d.fix.as_deref(),
            Some(
                "add [[scopes]] principal = \"agent:nobody\", tools = [\"pay.charge\", \"pay.refund\", \"shop.order.get\"]"
            )
        );
    }

    // --- CC-04 FINANCIAL needs HITL, never AUTO_APPROVE ------------------------

    #[test]
    fn p1_t41_p1_t_cc04_financial_tools_with_approval_rules_pass_and_auto_approve_is_fine_elsewhere() {
        let s = format!(
            "{BASE}\n[[hitl]]\ntool = \"shop.order.get\"\ntimeout_s = 5\non_timeout = \"PROCEED\"\npolicy = \"AUTO_APPROVE\"\n"
        );
        assert!(check(&s).is_ok(), "{:#?}", check(&s).diagnostics);
        let explicit = with("on_timeout = \"ESCALATE\"", "on_timeout = \"ESCALATE\"\npolicy = \"REQUIRE_APPROVAL\"");
        assert!(check(&explicit).is_ok());
    }

    #[test]
    fn p1_t41_p1_t_cc04_a_financial_tool_without_a_hitl_rule_is_refused() {
        let s = with("[[hitl]]\ntool = \"pay.refund\"\ntimeout_s = 60\non_timeout = \"ESCALATE\"\n", "");
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-04", "/tools/2/side_effect"));
        assert_eq!(d.line, Some(29));
        assert!(d.message.contains("\"pay.refund@1\" has no [[hitl]] rule"), "{}", d.message);
        assert!(d.fix.unwrap().starts_with("add [[hitl]] tool = \"pay.refund\""));
    }

    #[test]
    fn p1_t41_p1_t_cc04_auto_approve_on_a_financial_tool_is_refused_even_beside_a_required_approval() {
        let s = format!(
            "{BASE}\n[[hitl]]\ntool = \"pay.charge@1\"\ntimeout_s = 5\non_timeout = \"FAIL\"\npolicy = \"AUTO_APPROVE\"\n"
        );
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-04", "/hitl/2/policy"));
        assert_eq!(d.line, line_of(&s, "AUTO_APPROVE"));
        assert_eq!(d.fix.as_deref(), Some("remove the policy line (REQUIRE_APPROVAL is the default)"));
    }

    #[test]
    fn p1_t41_p1_t_cc04_a_financial_approval_that_proceeds_on_timeout_is_refused() {
        let s = with("on_timeout = \"ESCALATE\"", "on_timeout = \"PROCEED\"");
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CC-04", "/hitl/1/on_timeout"));
    }

    // --- P1-T28 tool definitions ---------------------------------------------

    #[test]
    fn p1_t28_tool_schemas_that_do_not_compile_are_refused_with_their_line() {
        let s = with(
            "input_schema = { type = \"object\" }\noutput_schema = { type = \"object\" }\n\n[[tools]]\nname = \"pay.charge\"",
            "input_schema = { type = \"objekt\" }\noutput_schema = { type = \"object\", properties = { a = { minimum = \"one\" } } }\n\n[[tools]]\nname = \"pay.charge\"",
        );
        let report = check(&s);
        let got: Vec<_> = report.diagnostics.iter().map(|d| (d.code.as_str(), d.path.as_str(), d.line)).collect();
        assert_eq!(
            got,
            [
                ("TOOL_SCHEMA_INVALID", "/tools/0/input_schema/type", line_of(&s, "objekt")),
                ("TOOL_SCHEMA_INVALID", "/tools/0/output_schema/properties/a/minimum", line_of(&s, "\"one\"")),
            ],
            "{:#?}",
            report.diagnostics
        );
        assert!(report.diagnostics[0].message.contains("input_schema of tool \"shop.order.get@1\""));
    }

    #[test]
    fn p1_t28_a_remote_ref_in_a_tool_schema_is_refused() {
        let s = with(
            "input_schema = { type = \"object\" }",
            "input_schema = { \"$ref\" = \"https://example.invalid/s.json\" }",
        );
        let d = only(&s);
        assert_eq!(d.code, TOOL_SCHEMA_INVALID);
        assert!(d.path.starts_with("/tools/0/input_schema"), "{}", d.path);
    }

    #[test]
    fn p1_t28_duplicate_tools_workflows_and_steps_are_refused() {
        let s = format!(
            "{}\n[[workflows]]\nid = \"WF01\"\nname = \"Again\"\nprincipal = \"agent:a\"\nsteps = [{{ id = \"x\", tool = \"shop.order.get\" }}, {{ id = \"x\", tool = \"shop.order.get\" }}]\n",
            BASE.replacen("name = \"pay.refund\"", "name = \"pay.charge\"", 1)
                .replace("tool = \"pay.refund\"", "tool = \"pay.charge\"")
                .replace(", \"pay.refund\"]", "]")
                .replace("compensate_with = \"pay.refund\"", "compensate_with = \"fetch\""),
        );
        let report = check(&s);
        let got: Vec<_> = report.diagnostics.iter().map(|d| (d.code.as_str(), d.path.as_str())).collect();
        assert_eq!(
            got,
            [
                ("CONFIG_INVALID", "/tools/2/name"),
                ("CONFIG_INVALID", "/workflows/1/id"),
                ("CONFIG_INVALID", "/workflows/1/steps/1/id"),
            ],
            "{:#?}",
            report.diagnostics
        );
        assert!(
            report.diagnostics[0]
                .message
                .contains("tool \"pay.charge\" version \"1\" is declared twice (first at /tools/1)")
        );
        assert!(report.diagnostics[2].message.contains("step id \"x\" is used twice in workflow WF01"));
    }

    // --- determinism -----------------------------------------------------------

    #[test]
    fn p1_t_cc04_hitl_conditions_are_parsed_and_type_checked_against_the_tool_input() {
        let ok = with("when = \"amount > 100\"", "when = \"amount > 100 && !(amount == 7) || amount <= 3\"");
        assert!(check(&ok).is_ok(), "{:#?}", check(&ok).diagnostics);
        for (when, expected) in [
            ("amount > \\\"100\\\"", "column 8: expected two numbers or two strings"),
            ("amont > 100", "column 1: expected a field of the tool input; \"amont\" is unknown, one of: amount"),
            ("amount >", "does not parse at column 9"),
            ("amount", "expected a boolean condition"),
        ] {
            let bad = with("when = \"amount > 100\"", &format!("when = \"{when}\""));
            let d = only(&bad);
            assert_eq!((d.code.as_str(), d.path.as_str()), ("HITL_CONDITION_INVALID", "/hitl/0/when"), "{when}");
            assert!(d.message.contains("rule 0") && d.message.contains(expected), "{when}: {}", d.message);
            assert_eq!(d.line, line_of(&bad, "when = "), "{when}");
        }
    }

    #[test]
    fn p1_t_cc_diagnostics_and_hash_are_deterministic_and_sorted() {
        let s = with("tool = \"shop.order.get\" }", "tool = \"shop.order.gte\" }")
            .replace("on_timeout = \"ESCALATE\"", "on_timeout = \"PROCEED\"\npolicy = \"AUTO_APPROVE\"")
            .replace("input_schema = { type = \"object\" }\noutput_schema = { type = \"object\" }\n\n[[scopes]]", "input_schema = { type = 1 }\noutput_schema = { type = \"object\" }\n\n[[scopes]]")
            .replace("principal = \"agent:a\"\nsteps", "principal = \"agent:a\"\nbounds = { max_steps = 99, max_wall_time_ms = 1000, max_tokens = 100, max_tool_calls = 5 }\nsteps");
        let a = check(&s);
        let b = check(&s);
        assert_eq!(a, b);
        assert_eq!(a.config_hash, BusinessConfig::parse(Path::new("t.toml"), s.clone()).unwrap().hash());
        let codes: Vec<_> = a.diagnostics.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["TOOL_SCHEMA_INVALID", "CC-04", "CC-04", "CC-02", "CC-01"], "{:#?}", a.diagnostics);
        for w in a.diagnostics.windows(2) {
            assert!((w[0].line, &w[0].code, &w[0].path) <= (w[1].line, &w[1].code, &w[1].path));
        }
        assert!(a.diagnostics.iter().all(|d| d.line.is_some() && d.fix.is_some()));
    }
    // --- agent steps -------------------------------------------------------

    const FETCH: &str = "  { id = \"fetch\", tool = \"shop.order.get\" },";

    /// BASE with an agent step `ask` (step 1 of WF01) proposing `tools`.
    fn with_agent(tools: &str, max_turns: u64) -> String {
        with(
            FETCH,
            &format!(
                "{FETCH}\n  {{ id = \"ask\", agent = {{ model = \"gpt-4o-mini\", prompt = \"Help. {{{{tools}}}}\", tools = [{tools}], max_turns = {max_turns} }} }},"
            ),
        )
    }

    /// `extra` declared as a READ tool before the scopes.
    fn declaring(s: &str, extra: &str, side_effect: &str) -> String {
        s.replacen(
            "[[scopes]]",
            &format!(
                "[[tools]]\nname = \"{extra}\"\nversion = \"1\"\nside_effect = \"{side_effect}\"\ntimeout_ms = 1000\ninput_schema = {{ type = \"object\" }}\noutput_schema = {{ type = \"object\" }}\n\n[[scopes]]"
            ),
            1,
        )
    }

    #[test]
    fn p1_t_cc01_agent_steps_naming_declared_tools_pass() {
        assert_eq!(found(&with_agent("\"shop.order.get\", \"pay.charge@1\"", 3)), []);
    }

    #[test]
    fn p1_t_cc01_an_undeclared_agent_tool_is_refused_with_the_closest_name() {
        let s = with_agent("\"shop.order.get\", \"shop.order.gte\"", 3);
        let d = only(&s);
        assert_eq!(d.code, CC01_TOOL_CLOSURE);
        assert_eq!(d.path, "/workflows/0/steps/1/agent/tools/1");
        assert_eq!(d.line, line_of(&s, "shop.order.gte"));
        assert!(
            d.message.contains("agent step \"ask\" of WF01: tool \"shop.order.gte\" names no declared tool"),
            "{}",
            d.message
        );
        assert_eq!(d.fix.as_deref(), Some("did you mean \"shop.order.get\"?"));
    }

    #[test]
    fn p1_t_cc01_a_step_needs_exactly_one_of_tool_and_agent() {
        let both = with(
            FETCH,
            "  { id = \"fetch\", tool = \"shop.order.get\", agent = { model = \"m\", prompt = \"p\", tools = [\"shop.order.get\"] } },",
        );
        let d = only(&both);
        assert_eq!((d.code.as_str(), d.path.as_str()), ("CONFIG_INVALID", "/workflows/0/steps/0"), "{d:#?}");
        let mut model = BusinessConfig::parse(Path::new("t.toml"), BASE.to_owned()).unwrap().model().unwrap();
        model.workflows[0].steps[0].tool = None;
        let d: Vec<Diagnostic> = compile(&model);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!((d[0].code.as_str(), d[0].path.as_str()), ("CONFIG_INVALID", "/workflows/0/steps/0"));
        assert!(d[0].message.contains("neither `tool` nor `agent`"), "{}", d[0].message);
    }

    #[test]
    fn p1_t29_p1_t_cc02_agent_max_turns_within_the_workflow_max_steps_pass() {
        assert_eq!(found(&with_agent("\"shop.order.get\"", 1)), []);
        assert_eq!(found(&with_agent("\"shop.order.get\"", 10)), [], "max_steps = 10");
    }

    #[test]
    fn p1_t29_p1_t_cc02_agent_max_turns_of_zero_or_past_max_steps_are_refused() {
        for (turns, says) in
            [(0, "max_turns = 0"), (11, "max_turns = 11, more than the workflow's bounds.max_steps = 10")]
        {
            let s = with_agent("\"shop.order.get\"", turns);
            let d = only(&s);
            assert_eq!(d.code, CC02_BOUNDS);
            assert_eq!(d.path, "/workflows/0/steps/1/agent/max_turns");
            assert!(d.message.contains(says), "{}", d.message);
        }
        // A workflow's own, tighter bounds are the limit.
        let s = with_agent("\"shop.order.get\"", 5).replacen(
            "principal = \"agent:a\"\nsteps",
            "principal = \"agent:a\"\nbounds = { max_steps = 4, max_wall_time_ms = 1000, max_tokens = 100, max_tool_calls = 5 }\nsteps",
            1,
        );
        assert!(only(&s).message.contains("bounds.max_steps = 4"));
    }

    #[test]
    fn p1_t_cc03_agent_tools_in_the_principals_scopes_pass() {
        let s = declaring(&with_agent("\"shop.order.list\"", 3), "shop.order.list", "READ").replacen(
            "tools = [\"shop.order.get\", ",
            "tools = [\"shop.order.list\", \"shop.order.get\", ",
            1,
        );
        assert_eq!(found(&s), []);
    }

    #[test]
    fn p1_t_cc03_an_agent_tool_outside_the_principals_scopes_is_refused() {
        let s = declaring(&with_agent("\"shop.order.get\", \"shop.order.list\"", 3), "shop.order.list", "READ");
        let d = only(&s);
        assert_eq!(d.code, CC03_SCOPES);
        assert_eq!(d.path, "/workflows/0/steps/1/agent/tools/1");
        assert!(
            d.message.contains("step \"ask\" lets its agent propose \"shop.order.list\", which no scope allows for principal \"agent:a\""),
            "{}",
            d.message
        );
    }

    #[test]
    fn p1_t_cc04_a_financial_tool_only_an_agent_proposes_needs_a_hitl_rule() {
        let s = declaring(&with_agent("\"pay.payout\"", 3), "pay.payout", "FINANCIAL").replacen(
            "tools = [\"shop.order.get\", ",
            "tools = [\"pay.payout\", \"shop.order.get\", ",
            1,
        );
        let d = only(&s);
        assert_eq!((d.code.as_str(), d.path.as_str()), (CC04_FINANCIAL_HITL, "/tools/3/side_effect"));
        assert!(d.message.contains("FINANCIAL tool \"pay.payout@1\" has no [[hitl]] rule"), "{}", d.message);
        let ruled = s.replacen(
            "[[workflows]]",
            "[[hitl]]\ntool = \"pay.payout\"\ntimeout_s = 60\non_timeout = \"FAIL\"\n\n[[workflows]]",
            1,
        );
        assert_eq!(found(&ruled), []);
    }
}
