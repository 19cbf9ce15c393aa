//! Idempotency claims in `idempotency_keys` (see [`crate::idempotency`]).
//!
//! The primary key `(tenant_id, internal_key)` is the only arbiter: a new
//! key is claimed by `INSERT ... ON CONFLICT DO NOTHING`, and whoever's
//! insert did nothing reads the row that won (on PostgreSQL the insert waits
//! for a concurrent inserter to commit first). An expired key is re-claimed
//! by an `UPDATE` guarded by the status and execution id it was read with,
//! so two re-claimers cannot both win. The insert comes first (a fresh key,
//! the usual case, is one statement); a key is read only when it did
//! nothing, and a read never decides that a call may execute.
//!
//! Completing a claim stores the result and writes the receipt in one
//! transaction: a side effect never counts as done without its receipt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::records::insert_audit;
use super::{Guard, Ran, Store, TenantTx, errors, on_tx};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::{Begin, Claim, IdempotencyKey, StoredResult};
use crate::receipts::{NewReceipt, Receipt};
use crate::store::AuditEvent;
use crate::tenant::TenantContext;
use crate::trace::TraceRecord;

const COMPLETED: &str = "completed";

type KeyRow = (String, String, String, Option<Json<Value>>, Option<String>, DateTime<Utc>, DateTime<Utc>);

/// A stored key as read.
struct KeyState {
    fingerprint: String,
    status: String,
    execution_id: String,
    response: Option<Value>,
    receipt_id: Option<String>,
    first_seen_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

enum Decision {
    Done(Result<Begin>),
    /// Completed, and its window has passed: may be re-claimed.
    Expired {
        old_execution: String,
    },
}

impl KeyState {
    fn from_row(row: KeyRow) -> KeyState {
        let (fingerprint, status, execution_id, response, receipt_id, first_seen_at, updated_at) = row;
        KeyState {
            fingerprint,
            status,
            execution_id,
            response: response.map(|Json(v)| v),
            receipt_id,
            first_seen_at,
            updated_at,
        }
    }

    fn decide(
        self,
        key: &IdempotencyKey,
        fingerprint: &str,
        execution_id: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Decision {
        // An unfinished claim never expires: its effect may have happened,
        // and only its own execution (resume) or reconciliation may settle it.
        if self.status == COMPLETED && self.first_seen_at + window <= now {
            return Decision::Expired { old_execution: self.execution_id };
        }
        if self.fingerprint != fingerprint {
            return Decision::Done(Err(Error::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "idempotency key {} was first used at {} with different parameters; use a new key for a different request",
                    key.external(),
                    self.first_seen_at.to_rfc3339()
                ),
            )));
        }
        Decision::Done(Ok(match (self.status.as_str(), self.response) {
            (COMPLETED, response) => Begin::Replay(StoredResult {
                internal_key: key.internal().to_owned(),
                external_key: key.external().to_owned(),
                execution_id: self.execution_id,
                response: response.unwrap_or(Value::Null),
                receipt_id: self.receipt_id,
                first_seen_at: self.first_seen_at,
                completed_at: self.updated_at,
            }),
            _ if self.execution_id == execution_id => Begin::Execute(Claim {
                key: key.clone(),
                execution_id: execution_id.to_owned(),
                request_fingerprint: self.fingerprint,
                first_seen_at: self.first_seen_at,
                resumed: true,
            }),
            _ => Begin::InProgress,
        }))
    }
}

fn chrono_window(window: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(window)
        .map_err(|_| Error::new(ErrorCode::InvalidInput, "the idempotency window is too long"))
}

impl Store {
    /// Decide whether the call identified by `key` executes now, replays a
    /// stored result, or meets another execution's claim. See [`Begin`].
    ///
    /// `request_fingerprint` ([`crate::idempotency::request_fingerprint`])
    /// must match the one stored with the key while its window lasts, or
    /// the call is refused with `IDEMPOTENCY_KEY_REUSED`. `window` is the
    /// lookback ([`crate::idempotency::DEFAULT_WINDOW`] by default), counted
    /// from `first_seen_at`, on the store's clock.
    pub async fn idempotency_begin(
        &self,
        ctx: &TenantContext,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        execution_id: &str,
        window: Duration,
    ) -> Result<Begin> {
        let outcome = self.begin_claim(ctx, None, key, request_fingerprint, execution_id, window).await;
        self.idempotency.count(&outcome);
        outcome
    }

    /// [`Store::idempotency_begin`], waiting while another execution holds
    /// the claim: polls with backoff (5 ms doubling to 200 ms) until the
    /// claim completes (a replay), is released (this call may execute), or
    /// `timeout` passes, which is `IN_PROGRESS` (Refused class: the caller
    /// retries later; nothing was executed).
    pub async fn idempotency_wait(
        &self,
        ctx: &TenantContext,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        execution_id: &str,
        window: Duration,
        timeout: Duration,
    ) -> Result<Begin> {
        self.wait_claim(ctx, None, key, request_fingerprint, execution_id, window, timeout).await
    }

    /// [`Store::idempotency_wait`] for a call of `tool`, refused with
    /// `TOOL_BLOCKED` while the tool is blocked ([`Store::block_tool`]),
    /// as [`Store::ensure_tool_unblocked`] then [`Store::idempotency_wait`]
    /// would, but a fresh claim checks the block in its own statement (one
    /// round trip to the database instead of three).
    #[allow(clippy::too_many_arguments)]
    pub async fn idempotency_wait_unblocked(
        &self,
        ctx: &TenantContext,
        tool: &str,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        execution_id: &str,
        window: Duration,
        timeout: Duration,
    ) -> Result<Begin> {
        self.wait_claim(ctx, Some(tool), key, request_fingerprint, execution_id, window, timeout).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn wait_claim(
        &self,
        ctx: &TenantContext,
        tool: Option<&str>,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        execution_id: &str,
        window: Duration,
        timeout: Duration,
    ) -> Result<Begin> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let outcome = loop {
            match self.begin_claim(ctx, tool, key, request_fingerprint, execution_id, window).await {
                Ok(Begin::InProgress) if tokio::time::Instant::now() + pause <= deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Ok(Begin::InProgress) => {
                    break Err(Error::new(
                        ErrorCode::InProgress,
                        format!(
                            "idempotency key {} is held by another execution that has not finished after {} ms",
                            key.external(),
                            timeout.as_millis()
                        ),
                    ));
                }
                other => break other,
            }
        };
        match &outcome {
            Err(e) if e.code() == ErrorCode::InProgress => self.idempotency.count(&Ok(Begin::InProgress)),
            other => self.idempotency.count(other),
        }
        outcome
    }

    /// With `tool`, refused with `TOOL_BLOCKED` while that tool is blocked.
    async fn begin_claim(
        &self,
        ctx: &TenantContext,
        tool: Option<&str>,
        key: &IdempotencyKey,
        fingerprint: &str,
        execution_id: &str,
        window: Duration,
    ) -> Result<Begin> {
        self.authorize(ctx, key.tenant(), &format!("idempotency:{}", key.external()), "write").await?;
        if execution_id.is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "an idempotency claim needs an execution id"));
        }
        let window = chrono_window(window)?;
        let now = self.now();
        // Claim: the primary key decides. A fresh key (the usual case) is
        // claimed by one statement, which also checks the tool's block; a
        // key that exists (a replay, another execution's claim, an expired
        // key) is read and decided after that insert did nothing. A few
        // rounds cover a claim released or re-claimed between our
        // statements; past them, report the key as in progress rather than
        // risk a second execution. Each statement decides by its own guard
        // (the primary key and the block; the status and execution id it
        // read), so none needs the others in its transaction: on SQLite they
        // run in autocommit (`begin_single`).
        let expires_at = now + window;
        let fresh = |first_seen_at| Claim {
            key: key.clone(),
            execution_id: execution_id.to_owned(),
            request_fingerprint: fingerprint.to_owned(),
            first_seen_at,
            resumed: false,
        };
        for _ in 0..4 {
            let mut tx = self.begin_single(ctx).await?;
            let inserted = on_tx!(tx, c => sqlx::query(
                "INSERT INTO idempotency_keys
                   (tenant_id, internal_key, external_key, request_fingerprint, status, execution_id,
                    first_seen_at, expires_at, created_at, updated_at)
                 SELECT $1, $2, $3, $4, 'in_progress', $5, $6, $7, $6, $6
                  WHERE NOT EXISTS (SELECT 1 FROM tool_blocks
                                     WHERE tenant_id = $1 AND tool = $8 AND cleared_at IS NULL)
                 ON CONFLICT (tenant_id, internal_key) DO NOTHING",
            )
            .bind(ctx.tenant().as_str())
            .bind(key.internal())
            .bind(key.external())
            .bind(fingerprint)
            .bind(execution_id)
            .bind(now)
            .bind(expires_at)
            .bind(tool)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| errors::map(e, "claim an idempotency key"))?;
            if inserted == 1 {
                tx.commit().await?;
                return Ok(Begin::Execute(fresh(now)));
            }
            if let Some(tool) = tool {
                // Nothing inserted: the key exists, or the tool is blocked
                // (which refuses even a replay, as it did before the claim).
                tx.commit().await?;
                self.ensure_tool_unblocked(ctx, tool).await?;
                tx = self.begin_single(ctx).await?;
            }
            let Some(row) = read_key(&mut tx, ctx, key).await? else {
                tx.commit().await?;
                continue; // released in between: try to claim again
            };
            match row.decide(key, fingerprint, execution_id, now, window) {
                Decision::Done(outcome) => {
                    tx.commit().await?;
                    return outcome;
                }
                Decision::Expired { old_execution } => {
                    let reclaimed = on_tx!(tx, c => sqlx::query(
                        "UPDATE idempotency_keys
                            SET status = 'in_progress', execution_id = $3, request_fingerprint = $4,
                                response = NULL, receipt_id = NULL, first_seen_at = $5, expires_at = $6,
                                updated_at = $5
                          WHERE tenant_id = $1 AND internal_key = $2 AND status = 'completed' AND execution_id = $7",
                    )
                    .bind(ctx.tenant().as_str())
                    .bind(key.internal())
                    .bind(execution_id)
                    .bind(fingerprint)
                    .bind(now)
                    .bind(expires_at)
                    .bind(&old_execution)
                    .execute(&mut *c)
                    .await
                    .map(|r| r.rows_affected()))
                    .map_err(|e| errors::map(e, "re-claim an expired idempotency key"))?;
                    tx.commit().await?;
                    if reclaimed == 1 {
                        return Ok(Begin::Execute(fresh(now)));
                    }
                }
            }
        }
        Ok(Begin::InProgress)
    }

    /// Store `response` as the result of `claim` and write the effect's
    /// receipt, in one transaction: either both are stored or neither is.
    ///
    /// `RECEIPT_INVALID` (nothing written) for a receipt that fails
    /// [`NewReceipt::validate`] or names another execution;
    /// `IDEMPOTENCY_CLAIM_LOST` when the claim is no longer this execution's.
    /// On any error the side effect must be treated as unreceipted: report
    /// the call as failed and block the tool ([`Store::block_tool`]).
    pub async fn idempotency_complete(
        &self,
        ctx: &TenantContext,
        claim: &Claim,
        response: &Value,
        receipt: &NewReceipt,
    ) -> Result<Receipt> {
        self.idempotency_complete_traced(ctx, claim, response, receipt, None).await
    }

    /// [`Store::idempotency_complete`], and with `trace` the call's trace
    /// record in the same transaction (one commit instead of two: the
    /// executor's write path when its trace sink is this store). Either the
    /// result, the receipt and the record are all stored, or none is.
    pub async fn idempotency_complete_traced(
        &self,
        ctx: &TenantContext,
        claim: &Claim,
        response: &Value,
        receipt: &NewReceipt,
        trace: Option<&TraceRecord>,
    ) -> Result<Receipt> {
        let (stored, tx) = self.idempotency_complete_open(ctx, claim, response, receipt, trace).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// [`Store::idempotency_complete_traced`] without the commit: the
    /// transaction is the caller's, to add its own write (the run's state
    /// version) and commit. Dropping it rolls everything back.
    pub(crate) async fn idempotency_complete_open(
        &self,
        ctx: &TenantContext,
        claim: &Claim,
        response: &Value,
        receipt: &NewReceipt,
        trace: Option<&TraceRecord>,
    ) -> Result<(Receipt, TenantTx)> {
        let key = &claim.key;
        self.authorize(ctx, key.tenant(), &format!("idempotency:{}", key.external()), "write").await?;
        receipt.validate()?;
        if receipt.execution_id != claim.execution_id {
            return Err(Error::new(
                ErrorCode::ReceiptInvalid,
                "the receipt names another execution than the claim it completes",
            ));
        }
        let now = self.now();
        let receipt_id = crate::receipts::receipt_id(ctx.tenant().as_str(), key.internal(), &claim.execution_id);
        let lost = || {
            Error::new(
                ErrorCode::IdempotencyClaimLost,
                format!(
                    "execution {} no longer holds idempotency key {}: the result was not stored",
                    claim.execution_id,
                    key.external()
                ),
            )
        };
        // Batched on SQLite: the claim's check is the commit's, and a lost
        // claim writes nothing (the receipt and record queued after it
        // included).
        let mut tx = self.begin_batch(ctx).await?;
        let updated = tx
            .stmt(
                "UPDATE idempotency_keys SET status = 'completed', response = $3, receipt_id = $4, updated_at = $5
                  WHERE tenant_id = $1 AND internal_key = $2 AND execution_id = $6 AND status = 'in_progress'",
                "complete an idempotency claim",
            )
            .bind(ctx.tenant().as_str())
            .bind(key.internal())
            .bind(Json(response))
            .bind(&receipt_id)
            .bind(now)
            .bind(&claim.execution_id)
            .execute(Guard::One(lost()))
            .await?;
        if matches!(updated, Ran::Now(n) if n != 1) {
            return Err(lost());
        }
        let stored = self.insert_receipt(&mut tx, ctx, key, &receipt_id, receipt, now).await?;
        if let Some(record) = trace {
            crate::trace::insert_trace(&mut tx, ctx, record).await?;
        }
        Ok((stored, tx))
    }

    /// Give up `claim` because the tool failed before any side effect, so a
    /// retry may execute. Audited (`idempotency_release`, outcome = the
    /// error's code). Returns false when the claim was not (or no longer)
    /// this execution's, in which case nothing changes.
    pub async fn idempotency_release(&self, ctx: &TenantContext, claim: &Claim, error: &Error) -> Result<bool> {
        let key = &claim.key;
        let resource = format!("idempotency:{}", key.external());
        self.authorize(ctx, key.tenant(), &resource, "write").await?;
        let now = self.now();
        let mut tx = self.begin(ctx).await?;
        let deleted = on_tx!(tx, c => sqlx::query(
            "DELETE FROM idempotency_keys
              WHERE tenant_id = $1 AND internal_key = $2 AND execution_id = $3 AND status = 'in_progress'",
        )
        .bind(ctx.tenant().as_str())
        .bind(key.internal())
        .bind(&claim.execution_id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "release an idempotency claim"))?;
        if deleted == 1 {
            let event = AuditEvent {
                action: "idempotency_release".to_owned(),
                resource,
                outcome: error.code().as_str().to_owned(),
            };
            insert_audit(&mut tx, ctx, &event, now).await?;
        }
        tx.commit().await?;
        Ok(deleted == 1)
    }
}

async fn read_key(tx: &mut TenantTx, ctx: &TenantContext, key: &IdempotencyKey) -> Result<Option<KeyState>> {
    let row: Option<KeyRow> = on_tx!(tx, c => sqlx::query_as(
        "SELECT request_fingerprint, status, execution_id, response, receipt_id, first_seen_at, updated_at
           FROM idempotency_keys WHERE tenant_id = $1 AND internal_key = $2",
    )
    .bind(ctx.tenant().as_str())
    .bind(key.internal())
    .fetch_optional(&mut *c)
    .await)
    .map_err(|e| errors::map(e, "read an idempotency key"))?;
    Ok(row.map(KeyState::from_row))
}
