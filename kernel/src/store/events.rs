//! The event store (`event_store`, migrations 0001, 0005 and 0007): verified
//! webhook events, deduplicated by `(tenant, source, provider event id)`,
//! their place in the ordering gate, and the worker's claims.
//!
//! Every status change is one conditional `UPDATE ... WHERE status = ...`
//! following [`crate::ingress::EVENT_TRANSITIONS`], so concurrent processes
//! agree on one outcome. Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL,
//! so several `autobiz serve` processes share one database without taking
//! the same event; SQLite has one writer at a time.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Backend, Pool, Store, errors, on_tx};
use crate::error::Result;
use crate::ingress::ordering::EventStatus;
use crate::tenant::TenantContext;

/// A verified, normalized event to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub source: &'a str,
    pub event_type: &'a str,
    pub provider_event_id: &'a str,
    pub entity_id: Option<&'a str>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: &'a Value,
    pub payload_sha256: &'a str,
    /// The event type that must be stored first for the same entity.
    pub waiting_for: Option<&'a str>,
    /// When a hold times out.
    pub hold_until: DateTime<Utc>,
}

/// What [`Store::event_insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Stored as `status` (READY or HELD); `released` held events of the
    /// same entity waited for this one and are READY now.
    Stored {
        event_id: i64,
        status: EventStatus,
        released: u64,
    },
    Duplicate,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub source: String,
    pub event_type: String,
    pub provider_event_id: String,
    pub entity_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: Value,
    pub payload_sha256: String,
    pub signature_valid: bool,
    pub status: EventStatus,
    pub waiting_for: Option<String>,
    pub hold_until: Option<DateTime<Utc>>,
    pub timeout_released: bool,
    pub attempts: i32,
    pub workflow: Option<String>,
    pub run_id: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    source: String,
    event_type: String,
    provider_event_id: String,
    entity_id: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
    payload: Json<Value>,
    payload_sha256: String,
    signature_valid: bool,
    status: String,
    waiting_for: Option<String>,
    hold_until: Option<DateTime<Utc>>,
    timeout_released: bool,
    attempts: i32,
    workflow: Option<String>,
    run_id: Option<String>,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, source, event_type, provider_event_id, entity_id, occurred_at, payload, payload_sha256, \
                       signature_valid, status, waiting_for, hold_until, timeout_released, attempts, workflow, run_id, \
                       error, created_at";

impl EventRow {
    fn into_event(self) -> Result<StoredEvent> {
        Ok(StoredEvent {
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            provider_event_id: self.provider_event_id,
            entity_id: self.entity_id,
            occurred_at: self.occurred_at,
            payload: self.payload.0,
            payload_sha256: self.payload_sha256,
            signature_valid: self.signature_valid,
            status: EventStatus::parse(&self.status)?,
            waiting_for: self.waiting_for,
            hold_until: self.hold_until,
            timeout_released: self.timeout_released,
            attempts: self.attempts,
            workflow: self.workflow,
            run_id: self.run_id,
            error: self.error,
            created_at: self.created_at,
        })
    }
}

/// How a claimed event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFinish<'a> {
    /// Its workflow's run was started (by this claim or an earlier one).
    Started { workflow: &'a str, run_id: &'a str },
    /// No workflow is triggered by it.
    Skipped,
    /// The run could not be started: a code and message, never the payload.
    Failed { error: &'a str },
}

/// An open reconciliation case.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReconciliationCase {
    pub case_id: String,
    pub kind: String,
    pub entity_id: Option<String>,
    pub status: String,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

/// HELD -> READY where the predecessor type is stored and not itself held.
const RELEASE_ARRIVED: &str = "UPDATE event_store SET status = 'READY', updated_at = $2
  WHERE tenant_id = $1 AND status = 'HELD' AND EXISTS (
        SELECT 1 FROM event_store p
         WHERE p.tenant_id = $1 AND p.source = event_store.source AND p.entity_id = event_store.entity_id
           AND p.event_type = event_store.waiting_for AND p.status <> 'HELD')";

/// [`RELEASE_ARRIVED`] for one entity (`$3` source, `$4` entity).
const RELEASE_ARRIVED_FOR_ENTITY: &str = "UPDATE event_store SET status = 'READY', updated_at = $2
  WHERE tenant_id = $1 AND source = $3 AND entity_id = $4 AND status = 'HELD' AND EXISTS (
        SELECT 1 FROM event_store p
         WHERE p.tenant_id = $1 AND p.source = $3 AND p.entity_id = $4
           AND p.event_type = event_store.waiting_for AND p.status <> 'HELD')";

/// The insert of [`Store::event_insert`] on SQLite, with the ordering
/// gate's decision; `autobiz_event_insert` (migration 0007) runs the same
/// statement on PostgreSQL. Parameters as [`bind_event!`] binds them.
const INSERT_EVENT: &str =
    "INSERT INTO event_store (tenant_id, source, event_type, provider_event_id, entity_id, occurred_at, payload,
               payload_sha256, signature_valid, status, waiting_for, hold_until,
               created_at, updated_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE,
          CASE WHEN $9 IS NULL OR EXISTS (
                   SELECT 1 FROM event_store p
                    WHERE p.tenant_id = $1 AND p.source = $2 AND p.entity_id = $5 AND p.event_type = $9
                      AND p.status <> 'HELD')
               THEN 'READY' ELSE 'HELD' END,
          $9, $10, $11, $11)
  ON CONFLICT (tenant_id, source, provider_event_id) DO NOTHING
  RETURNING id, status";

/// Bind a [`NewEvent`]'s eleven parameters in the order both event inserts
/// take them: $1 tenant, $2 source, $3 type, $4 provider event id, $5
/// entity, $6 occurred at, $7 payload, $8 its SHA-256, $9 the predecessor
/// type, $10 the hold deadline, $11 now.
macro_rules! bind_event {
    ($q:expr, $ctx:expr, $e:expr, $now:expr) => {
        $q.bind($ctx.tenant().as_str())
            .bind($e.source)
            .bind($e.event_type)
            .bind($e.provider_event_id)
            .bind($e.entity_id)
            .bind($e.occurred_at)
            .bind(Json($e.payload))
            .bind($e.payload_sha256)
            .bind($e.waiting_for)
            .bind($e.hold_until)
            .bind($now)
    };
}

/// [`Store::event_insert`] on PostgreSQL: one autocommit call of
/// `autobiz_event_insert` (migration 0007), which sets the tenant context
/// transaction-locally and runs the same insert and release statements as
/// the SQLite path, under the same row-level security: one round trip
/// instead of five (BEGIN, the tenant context, insert, release, COMMIT),
/// the difference that matters for verified ingest on a loaded server.
async fn event_insert_postgres(
    pool: &sqlx::PgPool,
    ctx: &TenantContext,
    e: &NewEvent<'_>,
    now: DateTime<Utc>,
) -> Result<Admitted> {
    let (id, status, released): (Option<i64>, Option<String>, i64) = bind_event!(
        sqlx::query_as(
            "SELECT o_id, o_status, o_released FROM autobiz_event_insert($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        ctx,
        e,
        now
    )
    .fetch_one(pool)
    .await
    .map_err(|err| errors::map(err, "store an event"))?;
    match (id, status) {
        (Some(event_id), Some(status)) => {
            Ok(Admitted::Stored { event_id, status: EventStatus::parse(&status)?, released: released as u64 })
        }
        _ => Ok(Admitted::Duplicate),
    }
}

fn rows(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>> {
    rows.into_iter().map(EventRow::into_event).collect()
}

impl Store {
    /// Store a verified event for `ctx`'s tenant, or recognize it as a
    /// duplicate. The ordering gate's decision (HELD when `waiting_for` is
    /// not stored yet for the entity, else READY) is part of the insert
    /// statement, and releasing the entity's events that waited for this
    /// type commits with it.
    pub async fn event_insert(&self, ctx: &TenantContext, e: &NewEvent<'_>) -> Result<Admitted> {
        if let Pool::Postgres(pool) = &self.pool {
            return event_insert_postgres(pool, ctx, e, self.now()).await;
        }
        let now = self.now();
        let tenant = ctx.tenant().as_str();
        let mut tx = self.begin(ctx).await?;
        let inserted: Option<(i64, String)> = on_tx!(tx, c => bind_event!(sqlx::query_as(INSERT_EVENT), ctx, e, now)
        .fetch_optional(&mut *c)
        .await)
        .map_err(|err| errors::map(err, "store an event"))?;
        let Some((event_id, status)) = inserted else {
            tx.commit().await?;
            return Ok(Admitted::Duplicate);
        };
        // Release the entity's events that waited for this one, and those
        // that waited for them (a chain is as long as the precedence table).
        let mut released = 0;
        if let (Some(entity), "READY") = (e.entity_id, status.as_str()) {
            for _ in 0..8 {
                let n = on_tx!(tx, c => sqlx::query(RELEASE_ARRIVED_FOR_ENTITY)
                    .bind(tenant)
                    .bind(now)
                    .bind(e.source)
                    .bind(entity)
                    .execute(&mut *c)
                    .await
                    .map(|r| r.rows_affected()))
                .map_err(|err| errors::map(err, "release held events"))?;
                released += n;
                if n == 0 {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(Admitted::Stored { event_id, status: EventStatus::parse(&status)?, released })
    }

    /// Whether an event of `event_type` is stored for the entity.
    pub async fn event_has_type(
        &self,
        ctx: &TenantContext,
        source: &str,
        entity: &str,
        event_type: &str,
    ) -> Result<bool> {
        let mut tx = self.begin(ctx).await?;
        let row: Option<(i64,)> = on_tx!(tx, c => sqlx::query_as(
            "SELECT id FROM event_store WHERE tenant_id = $1 AND source = $2 AND entity_id = $3 AND event_type = $4 LIMIT 1",
        )
        .bind(ctx.tenant().as_str())
        .bind(source)
        .bind(entity)
        .bind(event_type)
        .fetch_optional(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "look up an event"))?;
        tx.commit().await?;
        Ok(row.is_some())
    }

    /// HELD -> READY for every held event whose predecessor is stored by
    /// now (one that arrived in a racing transaction).
    pub async fn event_release_arrived(&self, ctx: &TenantContext) -> Result<u64> {
        let mut tx = self.begin(ctx).await?;
        let mut released = 0;
        for _ in 0..8 {
            let n = on_tx!(tx, c => sqlx::query(RELEASE_ARRIVED)
                .bind(ctx.tenant().as_str())
                .bind(self.now())
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()))
            .map_err(|e| errors::map(e, "release held events"))?;
            released += n;
            if n == 0 {
                break;
            }
        }
        tx.commit().await?;
        Ok(released)
    }

    /// HELD events whose hold ran out by `now`, oldest first.
    pub async fn event_held_due(
        &self,
        ctx: &TenantContext,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM event_store WHERE tenant_id = $1 AND status = 'HELD' AND hold_until <= $2
              ORDER BY id LIMIT $3"
        );
        let mut tx = self.begin(ctx).await?;
        let found: Vec<EventRow> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "list held events"))?;
        tx.commit().await?;
        rows(found)
    }

    /// HELD -> READY with `timeout_released` (its precondition held).
    /// False when another process decided first.
    pub async fn event_timeout_release(&self, ctx: &TenantContext, id: i64) -> Result<bool> {
        self.event_update(
            ctx,
            id,
            "UPDATE event_store SET status = 'READY', timeout_released = TRUE, updated_at = $3
              WHERE tenant_id = $1 AND id = $2 AND status = 'HELD'",
            "release a held event",
        )
        .await
    }

    /// Run `sql`, a conditional status change of event `id` (binding $1
    /// tenant, $2 id, $3 now), in its own transaction; true when it
    /// changed the event (its `WHERE status = ...` matched).
    async fn event_update(&self, ctx: &TenantContext, id: i64, sql: &'static str, doing: &str) -> Result<bool> {
        let mut tx = self.begin(ctx).await?;
        let n = on_tx!(tx, c => sqlx::query(sql)
            .bind(ctx.tenant().as_str())
            .bind(id)
            .bind(self.now())
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, doing))?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// HELD -> RECONCILE, and an open `event_precondition_failed`
    /// reconciliation case naming the event, in one transaction.
    pub async fn event_route_to_reconciliation(&self, ctx: &TenantContext, event: &StoredEvent) -> Result<bool> {
        let now = self.now();
        let tenant = ctx.tenant().as_str();
        let why = format!(
            "EVENT_PRECONDITION_FAILED: no {} before the hold ran out",
            event.waiting_for.as_deref().unwrap_or("-")
        );
        let mut tx = self.begin(ctx).await?;
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE event_store SET status = 'RECONCILE', error = $3, updated_at = $4
              WHERE tenant_id = $1 AND id = $2 AND status = 'HELD'",
        )
        .bind(tenant)
        .bind(event.id)
        .bind(&why)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "route an event to reconciliation"))?;
        if n == 1 {
            let detail = serde_json::json!({
                "event_id": event.id,
                "source": event.source,
                "event_type": event.event_type,
                "provider_event_id": event.provider_event_id,
                "waiting_for": event.waiting_for,
            });
            on_tx!(tx, c => sqlx::query(
                "INSERT INTO reconciliation (tenant_id, case_id, kind, entity_id, status, detail, created_at, updated_at)
                 VALUES ($1, $2, 'event_precondition_failed', $3, 'OPEN', $4, $5, $5)
                 ON CONFLICT (tenant_id, case_id) DO NOTHING",
            )
            .bind(tenant)
            .bind(format!("event-{}", event.id))
            .bind(event.entity_id.as_deref())
            .bind(Json(&detail))
            .bind(now)
            .execute(&mut *c)
            .await
            .map(|_| ()))
            .map_err(|e| errors::map(e, "open a reconciliation case"))?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Claim up to `limit` READY events (and PROCESSING ones whose lease
    /// ran out: a worker that died) for `worker` until `lease_until`,
    /// oldest first. On PostgreSQL rows another transaction is claiming are
    /// skipped, not waited for.
    pub async fn event_claim(
        &self,
        ctx: &TenantContext,
        worker: &str,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let lock = if self.backend() == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE event_store SET status = 'PROCESSING', claimed_by = $2, claimed_until = $3,
                    attempts = attempts + 1, updated_at = $4
              WHERE tenant_id = $1 AND id IN (
                    SELECT id FROM event_store
                     WHERE tenant_id = $1 AND (status = 'READY' OR (status = 'PROCESSING' AND claimed_until < $4))
                     ORDER BY id LIMIT $5 {lock})
              RETURNING {COLUMNS}"
        );
        let mut tx = self.begin(ctx).await?;
        let claimed: Vec<EventRow> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(worker)
            .bind(lease_until)
            .bind(self.now())
            .bind(limit)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "claim events"))?;
        tx.commit().await?;
        let mut out = rows(claimed)?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// PROCESSING -> DONE | SKIPPED | FAILED, only for the worker holding
    /// the claim. False when the claim was lost (the lease ran out and
    /// another worker took it).
    pub async fn event_finish(&self, ctx: &TenantContext, id: i64, worker: &str, how: EventFinish<'_>) -> Result<bool> {
        let (status, workflow, run_id, error) = match how {
            EventFinish::Started { workflow, run_id } => ("DONE", Some(workflow), Some(run_id), None),
            EventFinish::Skipped => ("SKIPPED", None, None, None),
            EventFinish::Failed { error } => ("FAILED", None, None, Some(error)),
        };
        let mut tx = self.begin(ctx).await?;
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE event_store SET status = $3, workflow = $4, run_id = $5, error = $6, claimed_until = NULL,
                    updated_at = $7
              WHERE tenant_id = $1 AND id = $2 AND status = 'PROCESSING' AND claimed_by = $8",
        )
        .bind(ctx.tenant().as_str())
        .bind(id)
        .bind(status)
        .bind(workflow)
        .bind(run_id)
        .bind(error)
        .bind(self.now())
        .bind(worker)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "finish an event"))?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// `ctx`'s events, oldest first.
    pub async fn events(&self, ctx: &TenantContext, limit: i64) -> Result<Vec<StoredEvent>> {
        let sql = format!("SELECT {COLUMNS} FROM event_store WHERE tenant_id = $1 ORDER BY id LIMIT $2");
        let mut tx = self.begin(ctx).await?;
        let found: Vec<EventRow> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "list events"))?;
        tx.commit().await?;
        rows(found)
    }

    /// How many events `ctx`'s tenant has stored.
    pub async fn event_count(&self, ctx: &TenantContext) -> Result<i64> {
        let mut tx = self.begin(ctx).await?;
        let (n,): (i64,) = on_tx!(tx, c => sqlx::query_as("SELECT count(*) FROM event_store WHERE tenant_id = $1")
            .bind(ctx.tenant().as_str())
            .fetch_one(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "count events"))?;
        tx.commit().await?;
        Ok(n)
    }

    /// One of `ctx`'s events by id.
    pub async fn event(&self, ctx: &TenantContext, id: i64) -> Result<Option<StoredEvent>> {
        let sql = format!("SELECT {COLUMNS} FROM event_store WHERE tenant_id = $1 AND id = $2");
        let mut tx = self.begin(ctx).await?;
        let found: Option<EventRow> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(id)
            .fetch_optional(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "read an event"))?;
        tx.commit().await?;
        found.map(EventRow::into_event).transpose()
    }

    /// RECONCILE -> READY with `timeout_released` (reconciliation found its
    /// precondition true by now, or a human approved it), so the worker
    /// processes it. False when it is not in RECONCILE.
    pub async fn event_release_reconciled(&self, ctx: &TenantContext, id: i64) -> Result<bool> {
        self.event_update(
            ctx,
            id,
            "UPDATE event_store SET status = 'READY', timeout_released = TRUE, error = NULL, updated_at = $3
              WHERE tenant_id = $1 AND id = $2 AND status = 'RECONCILE'",
            "release an event from reconciliation",
        )
        .await
    }

    /// `ctx`'s reconciliation cases, oldest first.
    pub async fn reconciliation_cases(&self, ctx: &TenantContext) -> Result<Vec<ReconciliationCase>> {
        type Row = (String, String, Option<String>, String, Json<Value>, DateTime<Utc>);
        let mut tx = self.begin(ctx).await?;
        let found: Vec<Row> = on_tx!(tx, c => sqlx::query_as(
            "SELECT case_id, kind, entity_id, status, detail, created_at FROM reconciliation
              WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(ctx.tenant().as_str())
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "list reconciliation cases"))?;
        tx.commit().await?;
        Ok(found
            .into_iter()
            .map(|(case_id, kind, entity_id, status, detail, created_at)| ReconciliationCase {
                case_id,
                kind,
                entity_id,
                status,
                detail: detail.0,
                created_at,
            })
            .collect())
    }
}
