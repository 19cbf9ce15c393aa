//! Permissions, deny by default (INV-02).
//!
//! A [`Scope`] allows one principal to perform some actions with some tools
//! for some tenants. A call is allowed only if a scope names its principal,
//! its tenant (or every tenant), its tool and its action; everything else is
//! `PERMISSION_DENIED`. Every decision, allowed or not, comes back as a
//! [`Decision`] naming principal, tenant, tool and action, so the executor can
//! trace it.

use crate::error::{Error, ErrorCode, Result};

/// The action every tool call performs unless a caller says otherwise.
pub const EXECUTE: &str = "execute";

/// Which tenants a scope covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Tenants {
    All,
    Only(Vec<String>),
}

/// One grant: `principal` may do `actions` with `tools` for `tenants`. A
/// tool entry is a name (every version) or `name@version` (that one only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    pub principal: String,
    pub tenants: Tenants,
    pub tools: Vec<String>,
    pub actions: Vec<String>,
}

impl Scope {
    /// A scope over every tenant with the `execute` action.
    pub fn new(principal: &str, tools: &[&str]) -> Scope {
        Scope {
            principal: principal.to_owned(),
            tenants: Tenants::All,
            tools: tools.iter().map(|t| (*t).to_owned()).collect(),
            actions: vec![EXECUTE.to_owned()],
        }
    }

    fn allows(&self, principal: &str, tenant: &str, tool: &str, version: &str, action: &str) -> bool {
        self.principal == principal
            && match &self.tenants {
                Tenants::All => true,
                Tenants::Only(list) => list.iter().any(|t| t == tenant),
            }
            && self
                .tools
                .iter()
                .any(|t| t == tool || t.strip_prefix(tool).and_then(|rest| rest.strip_prefix('@')) == Some(version))
            && self.actions.iter().any(|a| a == action)
    }
}

/// The outcome of one permission check, kept for the trace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub principal: String,
    pub tenant: String,
    pub tool: String,
    pub version: String,
    pub action: String,
    /// Index of the scope that allowed the call.
    pub scope: Option<usize>,
}

impl Decision {
    /// `Ok` when allowed, `PERMISSION_DENIED` naming the four parts otherwise.
    pub fn into_result(self) -> Result<Decision> {
        if self.allowed {
            Ok(self)
        } else {
            Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "principal {} may not {} {}@{} for tenant {}: no scope allows it",
                    self.principal, self.action, self.tool, self.version, self.tenant
                ),
            ))
        }
    }
}

/// Checks calls against the configured scopes.
#[derive(Debug, Clone, Default)]
pub struct PermissionEnforcer {
    scopes: Vec<Scope>,
}

impl PermissionEnforcer {
    pub fn new(scopes: Vec<Scope>) -> Self {
        PermissionEnforcer { scopes }
    }

    /// Decide; never fails, a denial is a decision.
    pub fn check(&self, principal: &str, tenant: &str, tool: &str, version: &str, action: &str) -> Decision {
        let scope = self.scopes.iter().position(|s| s.allows(principal, tenant, tool, version, action));
        Decision {
            allowed: scope.is_some(),
            principal: principal.to_owned(),
            tenant: tenant.to_owned(),
            tool: tool.to_owned(),
            version: version.to_owned(),
            action: action.to_owned(),
            scope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforcer() -> PermissionEnforcer {
        PermissionEnforcer::new(vec![
            Scope::new("agent:support", &["shopify.order.get", "stripe.refund.create"]),
            Scope {
                principal: "agent:acme-only".into(),
                tenants: Tenants::Only(vec!["acme".into()]),
                tools: vec!["shopify.order.get".into()],
                actions: vec![EXECUTE.into()],
            },
        ])
    }

    #[test]
    fn p1_t03_allowed_call_passes_and_names_its_scope() {
        let d = enforcer().check("agent:support", "acme", "stripe.refund.create", "1", EXECUTE);
        assert!(d.allowed);
        assert_eq!(d.scope, Some(0));
        assert!(d.into_result().is_ok());
    }

    #[test]
    fn p1_t04_forbidden_tool_is_denied_with_principal_tenant_tool_and_action() {
        let d = enforcer().check("agent:support", "acme", "stripe.payment_intent.capture", "1", EXECUTE);
        assert!(!d.allowed);
        let err = d.into_result().unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        for part in ["agent:support", "acme", "stripe.payment_intent.capture", "execute"] {
            assert!(err.message().contains(part), "{}", err.message());
        }
    }

    #[test]
    fn p1_t02_neg_unknown_principal_is_denied_by_default() {
        assert!(!enforcer().check("agent:stranger", "acme", "shopify.order.get", "1", EXECUTE).allowed);
        assert!(
            !PermissionEnforcer::default().check("agent:support", "acme", "shopify.order.get", "1", EXECUTE).allowed
        );
    }

    #[test]
    fn p1_t02_neg_scope_for_one_tenant_does_not_cover_another() {
        let e = enforcer();
        assert!(e.check("agent:acme-only", "acme", "shopify.order.get", "1", EXECUTE).allowed);
        assert!(!e.check("agent:acme-only", "globex", "shopify.order.get", "1", EXECUTE).allowed);
    }

    #[test]
    fn p1_t02_neg_a_version_pinned_grant_covers_only_that_version() {
        let e = PermissionEnforcer::new(vec![Scope::new("agent:a", &["stripe.refund.create@2"])]);
        assert!(e.check("agent:a", "acme", "stripe.refund.create", "2", EXECUTE).allowed);
        assert!(!e.check("agent:a", "acme", "stripe.refund.create", "1", EXECUTE).allowed);
        assert!(!e.check("agent:a", "acme", "stripe.refund", "create@2", EXECUTE).allowed);
    }

    #[test]
    fn p1_t02_neg_other_action_is_denied() {
        assert!(!enforcer().check("agent:support", "acme", "shopify.order.get", "1", "delete").allowed);
    }
}
