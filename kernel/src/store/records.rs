//! Tenant-scoped records: the tenant registry and the security and audit
//! logs (versioned state is in `state.rs`).
//!
//! Every statement here names `tenant_id = $1` with the context's tenant: that
//! filter is SQLite's only isolation and PostgreSQL's second line behind RLS.

use super::{Store, TenantTx, errors, on_tx};
use crate::error::Result;
use crate::tenant::{TenantContext, TenantId};
use chrono::{DateTime, Utc};

/// A registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantRecord {
    pub tenant_id: String,
    pub display_name: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// A security-relevant refusal, such as a cross-tenant access attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecurityEvent {
    /// `cross_tenant_access`, ...
    pub kind: String,
    /// `read`, `write`, `secret_read`, ...
    pub action: String,
    /// What was asked for (an entity id, a secret name). Never a value.
    pub resource: String,
    /// The tenant the resource belongs to, when known.
    pub target_tenant: Option<String>,
}

/// A stored security event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecurityRecord {
    pub tenant_id: String,
    pub principal: String,
    pub correlation_id: String,
    #[serde(flatten)]
    pub event: SecurityEvent,
    pub created_at: DateTime<Utc>,
}

/// An audited action (every secret access, later every approval decision).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEvent {
    pub action: String,
    pub resource: String,
    /// `allowed`, `denied`, `not_found`, ...
    pub outcome: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub tenant_id: String,
    pub principal: String,
    pub correlation_id: String,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Register `ctx`'s tenant. Returns false when it already existed (the
    /// display name is then left as it was).
    pub async fn register_tenant(&self, ctx: &TenantContext, display_name: &str) -> Result<bool> {
        let now = self.clock.now();
        let mut tx = self.begin(ctx).await?;
        let done = on_tx!(tx, c => sqlx::query(
            "INSERT INTO tenants (tenant_id, display_name, status, created_at, updated_at)
             VALUES ($1, $2, 'active', $3, $3) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(ctx.tenant().as_str())
        .bind(display_name)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "register the tenant"))?;
        tx.commit().await?;
        Ok(done == 1)
    }

    /// `ctx`'s tenant as registered, if it is.
    pub async fn tenant(&self, ctx: &TenantContext) -> Result<Option<TenantRecord>> {
        let mut tx = self.begin(ctx).await?;
        let row: Option<(String, String, String, DateTime<Utc>)> = on_tx!(tx, c => sqlx::query_as(
            "SELECT tenant_id, display_name, status, created_at FROM tenants WHERE tenant_id = $1",
        )
        .bind(ctx.tenant().as_str())
        .fetch_optional(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read the tenant"))?;
        tx.commit().await?;
        Ok(row.map(|(tenant_id, display_name, status, created_at)| TenantRecord {
            tenant_id,
            display_name,
            status,
            created_at,
        }))
    }

    /// Refuse `resource` unless it belongs to `ctx`'s tenant; a refusal is
    /// recorded as a security event (and logged) before it is returned.
    pub async fn authorize(&self, ctx: &TenantContext, owner: &TenantId, resource: &str, action: &str) -> Result<()> {
        let Err(refusal) = ctx.authorize(owner, resource) else { return Ok(()) };
        self.record_security_event(
            ctx,
            &SecurityEvent {
                kind: "cross_tenant_access".to_owned(),
                action: action.to_owned(),
                resource: resource.to_owned(),
                target_tenant: Some(owner.to_string()),
            },
        )
        .await?;
        Err(refusal)
    }

    /// Write a security event under `ctx`'s tenant and log it at WARN on the
    /// `autobiz::security` target.
    pub async fn record_security_event(&self, ctx: &TenantContext, event: &SecurityEvent) -> Result<()> {
        tracing::warn!(
            target: "autobiz::security",
            tenant = %ctx.tenant(),
            principal = %ctx.principal(),
            correlation_id = %ctx.correlation_id(),
            kind = %event.kind,
            action = %event.action,
            resource = %event.resource,
            target_tenant = event.target_tenant.as_deref().unwrap_or("-"),
            "security event"
        );
        let now = self.clock.now();
        let mut tx = self.begin(ctx).await?;
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO security_events
               (tenant_id, principal, correlation_id, kind, action, resource, target_tenant, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(ctx.tenant().as_str())
        .bind(ctx.principal().as_str())
        .bind(ctx.correlation_id().as_str())
        .bind(&event.kind)
        .bind(&event.action)
        .bind(&event.resource)
        .bind(event.target_tenant.as_deref())
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "record a security event"))?;
        tx.commit().await
    }

    /// The newest security events of `ctx`'s tenant, newest first.
    pub async fn security_events(&self, ctx: &TenantContext, limit: i64) -> Result<Vec<SecurityRecord>> {
        type Row = (String, String, String, String, String, String, Option<String>, DateTime<Utc>);
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(
            "SELECT tenant_id, principal, correlation_id, kind, action, resource, target_tenant, created_at
               FROM security_events WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(ctx.tenant().as_str())
        .bind(limit)
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read security events"))?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, principal, correlation_id, kind, action, resource, target_tenant, created_at)| {
                SecurityRecord {
                    tenant_id,
                    principal,
                    correlation_id,
                    event: SecurityEvent { kind, action, resource, target_tenant },
                    created_at,
                }
            })
            .collect())
    }

    /// Write an audit event under `ctx`'s tenant (one statement: on SQLite
    /// a commit of its own, without BEGIN and COMMIT round trips).
    pub async fn record_audit(&self, ctx: &TenantContext, event: &AuditEvent) -> Result<()> {
        let now = self.clock.now();
        let mut tx = self.begin_single(ctx).await?;
        insert_audit(&mut tx, ctx, event, now).await?;
        tx.commit().await
    }

    /// Write `events` under `ctx`'s tenant, in order, in one transaction:
    /// all of them are on record or none is. One commit (one flush to the
    /// disk) for entries that precede one action, such as a credential's
    /// read and the request it authenticates.
    pub async fn record_audits(&self, ctx: &TenantContext, events: &[AuditEvent]) -> Result<()> {
        match events {
            [] => Ok(()),
            [one] => self.record_audit(ctx, one).await,
            _ => {
                let now = self.clock.now();
                let mut tx = self.begin(ctx).await?;
                for event in events {
                    insert_audit(&mut tx, ctx, event, now).await?;
                }
                tx.commit().await
            }
        }
    }

    /// Write an audit event inside `tx`, so that it commits (or not) with
    /// the change it records: a decision without its audit entry cannot
    /// exist.
    pub(crate) async fn record_audit_in(
        tx: &mut super::TenantTx,
        ctx: &TenantContext,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<()> {
        insert_audit(tx, ctx, event, now).await
    }

    /// The newest audit events of `ctx`'s tenant, newest first.
    pub async fn audit_events(&self, ctx: &TenantContext, limit: i64) -> Result<Vec<AuditRecord>> {
        type Row = (String, String, String, String, String, String, DateTime<Utc>);
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(
            "SELECT tenant_id, principal, correlation_id, action, resource, outcome, created_at
               FROM audit_events WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(ctx.tenant().as_str())
        .bind(limit)
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read audit events"))?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, principal, correlation_id, action, resource, outcome, created_at)| AuditRecord {
                tenant_id,
                principal,
                correlation_id,
                event: AuditEvent { action, resource, outcome },
                created_at,
            })
            .collect())
    }
}

/// Write an audit event inside `tx`, so it commits or rolls back with the
/// change it records.
pub(super) async fn insert_audit(
    tx: &mut TenantTx,
    ctx: &TenantContext,
    event: &AuditEvent,
    now: DateTime<Utc>,
) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO audit_events
           (tenant_id, principal, correlation_id, action, resource, outcome, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(ctx.tenant().as_str())
    .bind(ctx.principal().as_str())
    .bind(ctx.correlation_id().as_str())
    .bind(&event.action)
    .bind(&event.resource)
    .bind(&event.outcome)
    .bind(now)
    .execute(&mut *c)
    .await
    .map(|_| ()))
    .map_err(|e| errors::map(e, "record an audit event"))
}
