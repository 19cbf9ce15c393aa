//! Tenant identity, the per-call tenant context, and tenant-namespaced ids.
//!
//! Every store call takes a [`TenantContext`]; there is deliberately no way to
//! ask the store for "all tenants' rows". Ids of things that belong to a tenant
//! ([`EntityId`]) carry the tenant in their text (`acme/order/1001`), so an id
//! that crosses a tenant boundary is recognisable before any query runs, and
//! [`TenantContext::authorize`] refuses it with `TENANT_FORBIDDEN`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorCode, Result};

/// A validated tenant id: 1 to 63 characters of `[a-z0-9_-]`, starting with a
/// letter or digit. The restricted alphabet keeps ids safe to embed in entity
/// ids, file names, PostgreSQL settings and log lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(Error::new(
                ErrorCode::InvalidInput,
                format!(
                    "invalid tenant id {s:?}: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
                ),
            ))
        }
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e.message()))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is acting: `cli:alice`, `agent:wf01`, `webhook:stripe`. Recorded in
/// every audit and security event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    pub fn new(name: impl Into<String>) -> Self {
        Principal(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ties together everything one run or request does (trace rows, audit rows,
/// provider calls).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(String);

impl CorrelationId {
    pub fn new(id: impl Into<String>) -> Self {
        CorrelationId(id.into())
    }

    /// A fresh random id (`corr_` + 32 hex characters) from the OS RNG.
    /// Deterministic runs pass their own id instead.
    pub fn random() -> Self {
        use chacha20poly1305::aead::rand_core::RngCore;
        let mut bytes = [0u8; 16];
        chacha20poly1305::aead::OsRng.fill_bytes(&mut bytes);
        CorrelationId(format!("corr_{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant, principal and correlation id under which a call runs. Passed to
/// every store and secrets call; the store sets it per transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    tenant: TenantId,
    principal: Principal,
    correlation_id: CorrelationId,
}

impl TenantContext {
    pub fn new(tenant: TenantId, principal: Principal, correlation_id: CorrelationId) -> Self {
        TenantContext { tenant, principal, correlation_id }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    /// Refuse a resource that belongs to another tenant. The caller records
    /// the security event (it knows the resource kind and action).
    pub fn authorize(&self, owner: &TenantId, resource: &str) -> Result<()> {
        if owner == &self.tenant {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::TenantForbidden,
                format!("tenant {} may not access {resource}, which belongs to another tenant", self.tenant),
            ))
        }
    }
}

/// The id of a tenant-owned entity: `TENANT/KIND/LOCAL`, e.g.
/// `acme/order/1001`. The local part may itself contain `/` (Shopify gids do).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityId {
    tenant: TenantId,
    kind: String,
    local: String,
}

impl EntityId {
    pub fn new(tenant: TenantId, kind: &str, local: &str) -> Result<Self> {
        let kind_ok =
            !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !kind_ok || local.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidInput,
                format!("invalid entity id part: kind {kind:?} must be [a-z0-9_]+ and the local id must not be empty"),
            ));
        }
        Ok(EntityId { tenant, kind: kind.to_owned(), local: local.to_owned() })
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn local(&self) -> &str {
        &self.local
    }
}

impl FromStr for EntityId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(k), Some(l)) => EntityId::new(t.parse()?, k, l),
            _ => Err(Error::new(
                ErrorCode::InvalidInput,
                format!("invalid entity id {s:?}: expected TENANT/KIND/ID, e.g. acme/order/1001"),
            )),
        }
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.kind, self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(t: &str) -> TenantContext {
        TenantContext::new(t.parse().unwrap(), Principal::new("test"), CorrelationId::new("c1"))
    }

    #[test]
    fn tenant_ids_are_validated() {
        for ok in ["acme", "a", "t-1", "shop_2", "0abc"] {
            assert!(ok.parse::<TenantId>().is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-a", "a/b", "a b", "a'b", &"x".repeat(64), "é"] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn p1_t34_entity_ids_carry_the_tenant_namespace() {
        let id: EntityId = "acme/order/gid://shopify/Order/1".parse().unwrap();
        assert_eq!(id.tenant().as_str(), "acme");
        assert_eq!(id.kind(), "order");
        assert_eq!(id.local(), "gid://shopify/Order/1");
        assert_eq!(id.to_string(), "acme/order/gid://shopify/Order/1");
        assert!("acme/order".parse::<EntityId>().is_err());
        assert!("acme/Order/1".parse::<EntityId>().is_err());
        assert!("acme/order/".parse::<EntityId>().is_err());
    }

    #[test]
    fn p1_t34_authorize_refuses_another_tenants_entity() {
        let id: EntityId = "globex/order/1".parse().unwrap();
        let err = ctx("acme").authorize(id.tenant(), &id.to_string()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TenantForbidden);
        assert!(ctx("globex").authorize(id.tenant(), &id.to_string()).is_ok());
    }

    #[test]
    fn random_correlation_ids_differ() {
        let a = CorrelationId::random();
        let b = CorrelationId::random();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("corr_") && a.as_str().len() == 37);
    }
}
