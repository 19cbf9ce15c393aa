//! From a checked business config to the executor's runtime parts.
//!
//! [`Assembly::from_config`] refuses a config with any diagnostic (an
//! invalid config never executes), then compiles each tool into a
//! [`ToolContract`], each scope into a [`Scope`] (a `*` entry becomes every
//! non-FINANCIAL tool, as CC-03 reads it), the bounds and loop policy, and
//! each workflow into a [`Workflow`] whose steps name one tool version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::bounds::{Bounds, LoopPolicy};
use crate::clock::Clock;
use crate::config::BusinessConfig;
use crate::config::model::{self, Model, WILDCARD};
use crate::contract::{PriceModel, ToolContract, ToolRegistry};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::Executor;
use crate::llm::{AllowedTool, PromptTemplate};
use crate::permission::{EXECUTE, PermissionEnforcer, Scope, Tenants};
use crate::redaction::RedactionPolicy;
use crate::trace::TraceSink;
use crate::workflow::{AgentSpec, Step, Workflow};

/// A workflow ready to run: its steps, the principal it runs as, its bounds.
#[derive(Debug, Clone)]
pub struct RunnableWorkflow {
    pub workflow: Workflow,
    pub principal: String,
    pub bounds: Bounds,
    pub trigger: Option<String>,
}

/// The runtime parts of one business config.
#[derive(Debug)]
pub struct Assembly {
    pub config_hash: String,
    pub registry: ToolRegistry,
    pub permissions: PermissionEnforcer,
    pub loop_policy: LoopPolicy,
    pub bounds: Bounds,
    pub workflows: BTreeMap<String, RunnableWorkflow>,
}

impl Assembly {
    /// Check `config` and assemble it; `CONFIG_INVALID` naming the first
    /// diagnostic when the check finds anything.
    pub fn from_config(config: &BusinessConfig) -> Result<Assembly> {
        let report = config.check();
        if let Some(first) = report.diagnostics.first() {
            let at = first.line.map(|l| format!(":{l}")).unwrap_or_default();
            return Err(Error::new(
                ErrorCode::ConfigInvalid,
                format!(
                    "{}{at}: {} {}: {} ({} problem(s); run `autobiz check`)",
                    report.path,
                    first.code,
                    first.path,
                    first.message,
                    report.diagnostics.len()
                ),
            ));
        }
        let mut assembly = Self::from_model(&config.model()?)?;
        assembly.config_hash = report.config_hash;
        Ok(assembly)
    }

    /// Assemble a model that passed the compile checks.
    pub fn from_model(model: &Model) -> Result<Assembly> {
        let mut registry = ToolRegistry::new();
        for t in &model.tools {
            let price = t.price.as_ref();
            registry.register(ToolContract::new(
                &t.name,
                &t.version,
                t.side_effect,
                &t.input_schema,
                &t.output_schema,
                Duration::from_millis(t.timeout_ms),
                PriceModel::from_usd(
                    price.and_then(|p| p.per_call_usd).unwrap_or(0.0),
                    price.and_then(|p| p.per_1k_tokens_usd).unwrap_or(0.0),
                ),
            )?)?;
        }
        let scopes = model.scopes.iter().map(|s| scope(model, s)).collect();
        let lp = model.loop_detection.as_ref();
        let defaults = LoopPolicy::default();
        let loop_policy = LoopPolicy {
            max_identical_calls: lp.and_then(|l| l.max_identical_calls).map_or(defaults.max_identical_calls, clamp_u32),
            max_sequence_repeats: lp
                .and_then(|l| l.max_sequence_repeats)
                .map_or(defaults.max_sequence_repeats, clamp_u32),
            max_period: defaults.max_period,
            retry_allowlist: lp.map(|l| l.retry_allowlist.iter().cloned().collect()).unwrap_or_default(),
        };
        let bounds = runtime_bounds(&model.bounds);
        let mut workflows = BTreeMap::new();
        for wf in &model.workflows {
            let mut undo: Vec<Step> = Vec::new();
            let steps = wf
                .steps
                .iter()
                .map(|s| {
                    let resolve = |reference: &str| {
                        model.resolve_tool(reference).ok_or_else(|| {
                            Error::new(
                                ErrorCode::ConfigInvalid,
                                format!("workflow {} step {}: tool {reference:?} does not resolve", wf.id, s.id),
                            )
                        })
                    };
                    let (tool, version, agent) = match (&s.tool, &s.agent) {
                        (Some(reference), None) => {
                            let tool = resolve(reference)?;
                            (tool.name.clone(), tool.version.clone(), None)
                        }
                        (None, Some(a)) => {
                            let tools = a
                                .tools
                                .iter()
                                .map(|r| resolve(r).map(|t| AllowedTool::new(&t.name, &t.version)))
                                .collect::<Result<Vec<_>>>()?;
                            let agent = AgentSpec {
                                model: a.model.clone(),
                                prompt: PromptTemplate::new(a.prompt.clone()),
                                tools,
                                max_turns: a.max_turns.map(clamp_u32),
                            };
                            (String::new(), String::new(), Some(agent))
                        }
                        _ => {
                            return Err(Error::new(
                                ErrorCode::ConfigInvalid,
                                format!("workflow {} step {}: exactly one of tool and agent", wf.id, s.id),
                            ));
                        }
                    };
                    let compensate_with = match s.compensate_with.as_deref() {
                        None => None,
                        Some(c) if wf.step(c).is_some() => Some(c.to_owned()),
                        Some(c) => {
                            // A tool: a step of its own, reached only by compensation.
                            let tool = resolve(c)?;
                            let id = format!("undo:{}", s.id);
                            undo.push(Step {
                                id: id.clone(),
                                tool: tool.name.clone(),
                                version: tool.version.clone(),
                                input: serde_json::Value::Object(s.compensate_input.clone().unwrap_or_default()),
                                next: Some(crate::workflow::END.to_owned()),
                                on_error: None,
                                agent: None,
                                compensate_with: None,
                                retry: None,
                            });
                            Some(id)
                        }
                    };
                    Ok(Step {
                        id: s.id.clone(),
                        tool,
                        version,
                        input: serde_json::Value::Object(s.input.clone().unwrap_or_default()),
                        next: s.next.clone(),
                        on_error: s.on_error.clone(),
                        agent,
                        compensate_with,
                        retry: s.retry.map(clamp_u32),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut steps = steps;
            if !undo.is_empty() {
                // The last declared step must not fall through into them.
                if let Some(last) = steps.last_mut().filter(|l| l.next.is_none()) {
                    last.next = Some(crate::workflow::END.to_owned());
                }
                steps.append(&mut undo);
            }
            let workflow = Workflow { id: wf.id.clone(), name: wf.name.clone(), steps };
            workflow.validate()?;
            workflows.insert(
                wf.id.clone(),
                RunnableWorkflow {
                    workflow,
                    principal: wf.principal.clone(),
                    bounds: runtime_bounds(&wf.effective_bounds(&model.bounds)),
                    trigger: wf.trigger.clone(),
                },
            );
        }
        Ok(Assembly {
            config_hash: String::new(),
            registry,
            permissions: PermissionEnforcer::new(scopes),
            loop_policy,
            bounds,
            workflows,
        })
    }

    /// An executor over these parts (tools still to be bound).
    pub fn into_executor(
        self,
        redaction: RedactionPolicy,
        trace: Arc<dyn TraceSink>,
        clock: Arc<dyn Clock>,
    ) -> (Executor, BTreeMap<String, RunnableWorkflow>) {
        let exec = Executor::new(self.registry, self.permissions, self.loop_policy, redaction, trace, clock);
        (exec, self.workflows)
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn runtime_bounds(b: &model::Bounds) -> Bounds {
    Bounds {
        max_steps: clamp_u32(b.max_steps),
        max_wall_time: Duration::from_millis(b.max_wall_time_ms),
        max_tokens: b.max_tokens,
        max_tool_calls: clamp_u32(b.max_tool_calls),
    }
}

/// A config scope as the enforcer reads it: `*` expanded to every
/// non-FINANCIAL tool name; tenants `["*"]` or absent meaning every tenant.
fn scope(model: &Model, s: &model::ScopeDecl) -> Scope {
    let mut tools: Vec<String> = Vec::new();
    for entry in &s.tools {
        if entry == WILDCARD {
            tools.extend(model.tools.iter().filter(|t| !t.is_financial()).map(|t| t.name.clone()));
        } else {
            tools.push(entry.clone());
        }
    }
    tools.sort();
    tools.dedup();
    let tenants = match &s.tenants {
        None => Tenants::All,
        Some(list) if list.iter().any(|t| t == WILDCARD) => Tenants::All,
        Some(list) => Tenants::Only(list.clone()),
    };
    let actions = s.actions.clone().unwrap_or_else(|| vec![EXECUTE.to_owned()]);
    Scope { principal: s.principal.clone(), tenants, tools, actions }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/shop/autobiz.toml");

    fn example() -> BusinessConfig {
        BusinessConfig::parse(Path::new("examples/shop/autobiz.toml"), EXAMPLE.to_owned()).unwrap()
    }

    #[test]
    fn the_shipped_example_assembles_into_seven_workflows() {
        let a = Assembly::from_config(&example()).unwrap();
        assert_eq!(a.workflows.len(), 7);
        assert!(a.config_hash.starts_with("sha256:"));
        let wf01 = &a.workflows["WF01"];
        assert_eq!(wf01.principal, "agent:fulfillment");
        assert_eq!(wf01.workflow.steps[0].tool, "shopify.order.get");
        assert_eq!(wf01.workflow.steps[0].version, "1");
        assert!(a.registry.lookup("stripe.refund.create", "1").is_ok());
        let d = a.permissions.check("agent:fulfillment", "acme", "shopify.order.get", "1", EXECUTE);
        assert!(d.allowed);
        let d = a.permissions.check("job:closeout", "acme", "stripe.refund.create", "1", EXECUTE);
        assert!(!d.allowed);
        let (exec, workflows) = a.into_executor(
            RedactionPolicy::default(),
            Arc::new(crate::trace::MemoryTraceSink::new()),
            Arc::new(crate::clock::SystemClock),
        );
        assert_eq!(exec.registry().len(), 16);
        assert_eq!(workflows.len(), 7);
    }

    #[test]
    fn p1_t28_an_invalid_config_never_assembles() {
        let bad = EXAMPLE.replacen("tool = \"shopify.order.get\"", "tool = \"shopify.order.gett\"", 1);
        let config = BusinessConfig::parse(Path::new("x.toml"), bad).unwrap();
        let err = Assembly::from_config(&config).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConfigInvalid);
        assert!(err.message().contains("CC-01"), "{}", err.message());
    }

    #[test]
    fn p1_t30_a_wildcard_scope_never_grants_a_financial_tool() {
        let cfg = EXAMPLE.replacen(
            "principal = \"job:closeout\"\ntools = [\"shopify.order.get\", \"printful.order.get\", \"sendgrid.mail.send\", \"stripe.payment_intent.list\",\n         \"ledger.reconcile\", \"ledger.drift.open\"]",
            "principal = \"job:closeout\"\ntools = [\"*\"]",
            1,
        );
        assert_ne!(cfg, EXAMPLE, "the example's closeout scope moved; update this test");
        let a = Assembly::from_config(&BusinessConfig::parse(Path::new("x.toml"), cfg).unwrap()).unwrap();
        assert!(a.permissions.check("job:closeout", "acme", "printful.order.create", "1", EXECUTE).allowed);
        assert!(!a.permissions.check("job:closeout", "acme", "stripe.refund.create", "1", EXECUTE).allowed);
    }
}
