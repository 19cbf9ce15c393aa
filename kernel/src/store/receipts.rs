//! Receipts and tool blocks (see [`crate::receipts`]).
//!
//! Receipts are only ever inserted: the database refuses UPDATE and DELETE
//! (triggers on both backends, and on PostgreSQL the kernel role lacks the
//! privileges). Blocks live in `tool_blocks`, at most one open per tool
//! (partial unique index); setting and clearing one is audited in the same
//! transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::records::insert_audit;
use super::{Guard, Store, TenantTx, errors, on_tx};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::IdempotencyKey;
use crate::receipts::{NewReceipt, Receipt, ToolBlock};
use crate::store::AuditEvent;
use crate::tenant::TenantContext;

const RECEIPT_COLUMNS: &str = "receipt_id, execution_id, run_id, tool, tool_version, side_effect, internal_key, \
     external_key, request_sha256, response_sha256, status, amount_minor, currency, started_at, completed_at, created_at";

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    receipt_id: String,
    execution_id: String,
    run_id: String,
    tool: String,
    tool_version: String,
    side_effect: String,
    internal_key: String,
    external_key: String,
    request_sha256: String,
    response_sha256: Option<String>,
    status: String,
    amount_minor: Option<i64>,
    currency: Option<String>,
    started_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl From<ReceiptRow> for Receipt {
    fn from(r: ReceiptRow) -> Receipt {
        Receipt {
            receipt_id: r.receipt_id,
            execution_id: r.execution_id,
            run_id: r.run_id,
            tool: r.tool,
            tool_version: r.tool_version,
            side_effect: r.side_effect,
            internal_key: r.internal_key,
            external_key: r.external_key,
            request_sha256: r.request_sha256,
            response_sha256: r.response_sha256,
            status: r.status,
            amount_minor: r.amount_minor,
            currency: r.currency,
            started_at: r.started_at,
            completed_at: r.completed_at,
            created_at: r.created_at,
        }
    }
}

impl Store {
    /// Write the receipt of a side effect made under `key` outside an
    /// idempotency claim (a claimed effect is receipted by
    /// [`Store::idempotency_complete`]). `RECEIPT_INVALID` when it fails
    /// [`NewReceipt::validate`]; a second receipt for the same execution and
    /// key is refused (`STATE_CONFLICT`).
    pub async fn record_receipt(
        &self,
        ctx: &TenantContext,
        key: &IdempotencyKey,
        receipt: &NewReceipt,
    ) -> Result<Receipt> {
        self.authorize(ctx, key.tenant(), &format!("idempotency:{}", key.external()), "write").await?;
        receipt.validate()?;
        let now = self.now();
        let receipt_id = crate::receipts::receipt_id(ctx.tenant().as_str(), key.internal(), &receipt.execution_id);
        let mut tx = self.begin(ctx).await?;
        let stored = self.insert_receipt(&mut tx, ctx, key, &receipt_id, receipt, now).await?;
        tx.commit().await?;
        Ok(stored)
    }

    pub(super) async fn insert_receipt(
        &self,
        tx: &mut TenantTx,
        ctx: &TenantContext,
        key: &IdempotencyKey,
        receipt_id: &str,
        r: &NewReceipt,
        now: DateTime<Utc>,
    ) -> Result<Receipt> {
        let currency = r.currency.as_ref().map(|c| c.to_ascii_uppercase());
        tx.stmt(
            "INSERT INTO receipts
               (tenant_id, receipt_id, execution_id, run_id, tool, tool_version, side_effect, internal_key,
                external_key, request_sha256, response_sha256, status, amount_minor, currency, started_at,
                completed_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)",
            "write a receipt",
        )
        .bind(ctx.tenant().as_str())
        .bind(receipt_id)
        .bind(&r.execution_id)
        .bind(&r.run_id)
        .bind(&r.tool)
        .bind(&r.tool_version)
        .bind(r.side_effect.as_str())
        .bind(key.internal())
        .bind(key.external())
        .bind(&r.request_sha256)
        .bind(r.response_sha256.as_deref())
        .bind(&r.status)
        .bind(r.amount_minor)
        .bind(currency.as_deref())
        .bind(r.started_at)
        .bind(r.completed_at)
        .bind(now)
        .execute(Guard::Any)
        .await?;
        Ok(Receipt {
            receipt_id: receipt_id.to_owned(),
            execution_id: r.execution_id.clone(),
            run_id: r.run_id.clone(),
            tool: r.tool.clone(),
            tool_version: r.tool_version.clone(),
            side_effect: r.side_effect.as_str().to_owned(),
            internal_key: key.internal().to_owned(),
            external_key: key.external().to_owned(),
            request_sha256: r.request_sha256.clone(),
            response_sha256: r.response_sha256.clone(),
            status: r.status.clone(),
            amount_minor: r.amount_minor,
            currency,
            started_at: r.started_at,
            completed_at: r.completed_at,
            created_at: now,
        })
    }

    /// The receipts of one run, in the order they were written.
    pub async fn receipts(&self, ctx: &TenantContext, run_id: &str) -> Result<Vec<Receipt>> {
        self.select_receipts(ctx, "run_id", run_id).await
    }

    /// The receipts of one tool (every version), in the order they were
    /// written: what reconciliation compares with the provider's records.
    pub async fn receipts_for_tool(&self, ctx: &TenantContext, tool: &str) -> Result<Vec<Receipt>> {
        self.select_receipts(ctx, "tool", tool).await
    }

    /// Every receipt of one tool with its stored result, in one query (what
    /// `autobiz reconcile` compares with the providers' records).
    pub async fn receipt_results(&self, ctx: &TenantContext, tool: &str) -> Result<Vec<(Receipt, Option<Value>)>> {
        self.receipt_results_since(ctx, tool, DateTime::UNIX_EPOCH).await
    }

    /// The receipts of one tool written at or after `since`, in the order
    /// they were written, each with the result stored with its effect (the
    /// provider's answer, `None` when its key holds none), in one query: what the daily closeout
    /// compares with the provider's records of the days concerned. Served
    /// by the `(tenant_id, tool, created_at)` index (migration 0009), so its
    /// cost follows the rows returned, not the tool's whole history.
    pub async fn receipt_results_since(
        &self,
        ctx: &TenantContext,
        tool: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(Receipt, Option<Value>)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            receipt: ReceiptRow,
            response: Option<sqlx::types::Json<Value>>,
        }
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS}, (SELECT k.response FROM idempotency_keys k \
             WHERE k.tenant_id = receipts.tenant_id AND k.internal_key = receipts.internal_key) AS response \
             FROM receipts WHERE tenant_id = $1 AND tool = $2 AND created_at >= $3 ORDER BY id"
        );
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(ctx.tenant().as_str())
            .bind(tool)
            .bind(since)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "read receipts"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| (Receipt::from(r.receipt), r.response.map(|j| j.0))).collect())
    }

    async fn select_receipts(&self, ctx: &TenantContext, column: &'static str, value: &str) -> Result<Vec<Receipt>> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE tenant_id = $1 AND {column} = $2 ORDER BY id");
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<ReceiptRow> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(ctx.tenant().as_str())
            .bind(value)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "read receipts"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(Receipt::from).collect())
    }

    /// Block `tool` for `ctx`'s tenant until [`Store::clear_tool_block`]:
    /// for a side effect whose receipt could not be written. Returns false
    /// when the tool was already blocked (the first reason stays). Audited.
    pub async fn block_tool(&self, ctx: &TenantContext, tool: &str, reason: &str) -> Result<bool> {
        let now = self.now();
        let mut tx = self.begin(ctx).await?;
        let inserted = on_tx!(tx, c => sqlx::query(
            "INSERT INTO tool_blocks (tenant_id, tool, reason, blocked_by, blocked_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5, $5)
             ON CONFLICT (tenant_id, tool) WHERE cleared_at IS NULL DO NOTHING",
        )
        .bind(ctx.tenant().as_str())
        .bind(tool)
        .bind(reason)
        .bind(ctx.principal().as_str())
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "block a tool"))?;
        let event = AuditEvent {
            action: "tool_block".to_owned(),
            resource: format!("tool:{tool}"),
            outcome: if inserted == 1 { "blocked" } else { "already_blocked" }.to_owned(),
        };
        insert_audit(&mut tx, ctx, &event, now).await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// The open block on `tool`, if any.
    pub async fn tool_blocked(&self, ctx: &TenantContext, tool: &str) -> Result<Option<ToolBlock>> {
        let mut tx = self.begin_single(ctx).await?;
        let row: Option<(String, String, String, DateTime<Utc>)> = on_tx!(tx, c => sqlx::query_as(
            "SELECT tool, reason, blocked_by, blocked_at FROM tool_blocks
              WHERE tenant_id = $1 AND tool = $2 AND cleared_at IS NULL",
        )
        .bind(ctx.tenant().as_str())
        .bind(tool)
        .fetch_optional(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read tool blocks"))?;
        tx.commit().await?;
        Ok(row.map(|(tool, reason, blocked_by, blocked_at)| ToolBlock { tool, reason, blocked_by, blocked_at }))
    }

    /// `TOOL_BLOCKED` when `tool` has an open block: the check to make
    /// before running it.
    pub async fn ensure_tool_unblocked(&self, ctx: &TenantContext, tool: &str) -> Result<()> {
        match self.tool_blocked(ctx, tool).await? {
            None => Ok(()),
            Some(b) => Err(Error::new(
                ErrorCode::ToolBlocked,
                format!(
                    "tool {tool} is blocked since {} until reconciled ({}); clear the block once reconciled",
                    b.blocked_at.to_rfc3339(),
                    b.reason
                ),
            )),
        }
    }

    /// Clear the open block on `tool` after reconciliation, recording `who`.
    /// Returns false when there was none. Audited.
    pub async fn clear_tool_block(&self, ctx: &TenantContext, tool: &str, who: &str) -> Result<bool> {
        let now = self.now();
        let mut tx = self.begin(ctx).await?;
        let cleared = on_tx!(tx, c => sqlx::query(
            "UPDATE tool_blocks SET cleared_at = $3, cleared_by = $4, updated_at = $3
              WHERE tenant_id = $1 AND tool = $2 AND cleared_at IS NULL",
        )
        .bind(ctx.tenant().as_str())
        .bind(tool)
        .bind(now)
        .bind(who)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "clear a tool block"))?;
        let event = AuditEvent {
            action: "tool_unblock".to_owned(),
            resource: format!("tool:{tool}"),
            outcome: if cleared == 1 { "cleared" } else { "not_blocked" }.to_owned(),
        };
        insert_audit(&mut tx, ctx, &event, now).await?;
        tx.commit().await?;
        Ok(cleared == 1)
    }
}
