//! Drift cases (`reconciliation`, migration 0001) and their append-only
//! audit trail (`reconciliation_actions`, migration 0006), for the
//! reconciliation detector ([`crate::reconcile`]).
//!
//! A case is opened once per `(tenant, case_id)`: the detector derives the
//! id from the drift, so opening it again is a no-op. Every status change
//! is a conditional `UPDATE ... WHERE status = from` that commits together
//! with its action row (what was wrong, what was done, by which principal,
//! when), so a change without its audit record cannot exist and of two
//! concurrent runs exactly one records it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Store, errors, on_tx};
use crate::error::Result;
use crate::tenant::TenantContext;

/// A drift case to open.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCase<'a> {
    pub case_id: &'a str,
    pub kind: &'a str,
    pub entity_id: Option<&'a str>,
    pub status: &'a str,
    pub detail: &'a Value,
}

/// One audited step of a case: the status it moved from and to, what was
/// wrong and what was done.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction<'a> {
    pub action: &'a str,
    pub wrong: &'a Value,
    pub done: &'a Value,
}

/// A stored action (immutable).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReconciliationAction {
    pub case_id: String,
    pub action: String,
    pub from_status: String,
    pub to_status: String,
    pub wrong: Value,
    pub done: Value,
    pub principal: String,
    pub created_at: DateTime<Utc>,
}

type ActionRow = (String, String, String, String, Json<Value>, Json<Value>, String, DateTime<Utc>);

impl Store {
    /// Open `case` for `ctx`'s tenant unless a case with its id exists
    /// (whatever its status). True when this call opened it.
    pub async fn reconciliation_open(&self, ctx: &TenantContext, case: &NewCase<'_>) -> Result<bool> {
        let now = self.now();
        let mut tx = self.begin(ctx).await?;
        let n = on_tx!(tx, c => sqlx::query(
            "INSERT INTO reconciliation (tenant_id, case_id, kind, entity_id, status, detail, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (tenant_id, case_id) DO NOTHING",
        )
        .bind(ctx.tenant().as_str())
        .bind(case.case_id)
        .bind(case.kind)
        .bind(case.entity_id)
        .bind(case.status)
        .bind(Json(case.detail))
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "open a drift case"))?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Move case `case_id` from `from` to `to` and record `action` (with
    /// `ctx`'s principal), in one transaction. False, and nothing recorded,
    /// when the case is not in `from` (another run decided first).
    pub async fn reconciliation_transition(
        &self,
        ctx: &TenantContext,
        case_id: &str,
        from: &str,
        to: &str,
        action: &NewAction<'_>,
    ) -> Result<bool> {
        let now = self.now();
        let tenant = ctx.tenant().as_str();
        let mut tx = self.begin(ctx).await?;
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE reconciliation SET status = $4, updated_at = $5
              WHERE tenant_id = $1 AND case_id = $2 AND status = $3",
        )
        .bind(tenant)
        .bind(case_id)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "change a drift case's status"))?;
        if n != 1 {
            return Ok(false);
        }
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO reconciliation_actions
               (tenant_id, case_id, action, from_status, to_status, wrong, done, principal, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(tenant)
        .bind(case_id)
        .bind(action.action)
        .bind(from)
        .bind(to)
        .bind(Json(action.wrong))
        .bind(Json(action.done))
        .bind(ctx.principal().as_str())
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|_| ()))
        .map_err(|e| errors::map(e, "record a reconciliation action"))?;
        tx.commit().await?;
        Ok(true)
    }

    /// How many of `ctx`'s cases there are per (kind, status): what the
    /// `reconciliation_open_cases` gauge needs, without reading every case.
    pub async fn reconciliation_counts(&self, ctx: &TenantContext) -> Result<Vec<(String, String, i64)>> {
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<(String, String, i64)> = on_tx!(tx, c => sqlx::query_as(
            "SELECT kind, status, COUNT(*) FROM reconciliation WHERE tenant_id = $1 GROUP BY kind, status",
        )
        .bind(ctx.tenant().as_str())
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "count reconciliation cases"))?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The actions recorded for `ctx`'s cases (one case's when `case_id`
    /// is given), oldest first.
    pub async fn reconciliation_actions(
        &self,
        ctx: &TenantContext,
        case_id: Option<&str>,
    ) -> Result<Vec<ReconciliationAction>> {
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<ActionRow> = on_tx!(tx, c => sqlx::query_as(
            "SELECT case_id, action, from_status, to_status, wrong, done, principal, created_at
               FROM reconciliation_actions WHERE tenant_id = $1 AND ($2 IS NULL OR case_id = $2) ORDER BY id",
        )
        .bind(ctx.tenant().as_str())
        .bind(case_id)
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "list reconciliation actions"))?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(case_id, action, from_status, to_status, wrong, done, principal, created_at)| ReconciliationAction {
                case_id,
                action,
                from_status,
                to_status,
                wrong: wrong.0,
                done: done.0,
                principal,
                created_at,
            })
            .collect())
    }
}
