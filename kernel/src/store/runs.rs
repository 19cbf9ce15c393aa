//! The run index: which runs exist, their status, where their transcript
//! is. The run's state is the versioned entity `<tenant>/run/<run_id>`
//! ([`Store::apply_patch`]); this table lets a restarted process find the
//! runs it must resume without reading every state.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Guard, Ran, Store, TenantTx, errors, on_tx};
use crate::error::{Error, ErrorCode, Result};
use crate::run::RunStatus;
use crate::state::Patch;
use crate::tenant::{EntityId, TenantContext};
use crate::trace::TraceRecord;

/// One row of the run index.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    pub status: String,
    pub principal: String,
    pub config_hash: String,
    pub event: Value,
    pub pins: Value,
    pub transcript: Option<String>,
    pub waiting_for: Option<String>,
    pub termination: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    Json<Value>,
    Json<Value>,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

const COLUMNS: &str = "run_id, workflow, status, principal, config_hash, event, pins, transcript, waiting_for, \
                       termination, created_at, updated_at";

fn record(r: Row) -> RunRecord {
    RunRecord {
        run_id: r.0,
        workflow: r.1,
        status: r.2,
        principal: r.3,
        config_hash: r.4,
        event: r.5.0,
        pins: r.6.0,
        transcript: r.7,
        waiting_for: r.8,
        termination: r.9,
        created_at: r.10,
        updated_at: r.11,
    }
}

/// A run to register.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub workflow: &'a str,
    pub config_hash: &'a str,
    pub event: &'a Value,
    pub pins: &'a Value,
    pub transcript: Option<&'a str>,
}

impl Store {
    /// Register a new run (status RUNNING). A run id already in use is
    /// `STATE_CONFLICT`: run ids are never reused.
    pub async fn create_run(&self, ctx: &TenantContext, run: &NewRun<'_>) -> Result<()> {
        let mut tx = self.begin_single(ctx).await?;
        insert_run(&mut tx, ctx, run, self.now()).await?;
        tx.commit().await
    }

    /// A run's start in one transaction: registered ([`Store::create_run`]),
    /// its initial state stored as version 1 of `entity` (`initial` is what
    /// `patch` makes of `{}`), and with `record` its `run_start` trace
    /// record. Either all are stored or none is.
    pub async fn start_run(
        &self,
        ctx: &TenantContext,
        run: &NewRun<'_>,
        entity: &EntityId,
        initial: &Value,
        patch: &Patch,
        record: Option<&TraceRecord>,
    ) -> Result<()> {
        let mut tx = self.begin_batch(ctx).await?;
        insert_run(&mut tx, ctx, run, self.now()).await?;
        if !self.put_state_in(&mut tx, ctx, entity, 0, initial, patch).await? {
            return Err(Error::new(ErrorCode::StateConflict, format!("{entity} already has a state")));
        }
        if let Some(record) = record {
            crate::trace::insert_trace(&mut tx, ctx, record).await?;
        }
        tx.commit().await
    }

    /// Record where a run is: its status, the approval it waits for, how
    /// it ended.
    pub async fn set_run_status(
        &self,
        ctx: &TenantContext,
        run_id: &str,
        status: RunStatus,
        waiting_for: Option<&str>,
        termination: Option<&str>,
    ) -> Result<()> {
        self.end_run(ctx, run_id, status, waiting_for, termination, None).await
    }

    /// [`Store::set_run_status`], and with `record` (the run's `run_end`
    /// trace record) both in one transaction.
    pub async fn end_run(
        &self,
        ctx: &TenantContext,
        run_id: &str,
        status: RunStatus,
        waiting_for: Option<&str>,
        termination: Option<&str>,
        record: Option<&TraceRecord>,
    ) -> Result<()> {
        let now = self.now();
        let mut tx = match record {
            Some(_) => self.begin_batch(ctx).await?,
            None => self.begin_single(ctx).await?,
        };
        if let Some(record) = record {
            crate::trace::insert_trace(&mut tx, ctx, record).await?;
        }
        tx.stmt(
            "UPDATE runs SET status = $3, waiting_for = $4, termination = $5, updated_at = $6
              WHERE tenant_id = $1 AND run_id = $2",
            "update a run",
        )
        .bind(ctx.tenant().as_str())
        .bind(run_id)
        .bind(status.as_str())
        .bind(waiting_for)
        .bind(termination)
        .bind(now)
        .execute(Guard::Any)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claim a run that waits for an approval, to resume it: moves it from
    /// WAITING_APPROVAL to RUNNING in one statement, so of several workers
    /// (processes) that saw its request decided exactly one gets `true`.
    pub async fn run_claim_resume(&self, ctx: &TenantContext, run_id: &str) -> Result<bool> {
        let now = self.now();
        let mut tx = self.begin(ctx).await?;
        let changed = on_tx!(tx, c => sqlx::query(
            "UPDATE runs SET status = 'RUNNING', updated_at = $3
              WHERE tenant_id = $1 AND run_id = $2 AND status = 'WAITING_APPROVAL'",
        )
        .bind(ctx.tenant().as_str())
        .bind(run_id)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| errors::map(e, "claim a run"))?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    /// One run of `ctx`'s tenant.
    pub async fn run_record(&self, ctx: &TenantContext, run_id: &str) -> Result<Option<RunRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2");
        let mut tx = self.begin(ctx).await?;
        let row: Option<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(run_id)
            .fetch_optional(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "read a run"))?;
        tx.commit().await?;
        Ok(row.map(record))
    }

    /// Runs of `ctx`'s tenant, newest first; `unfinished` keeps only
    /// RUNNING and WAITING_APPROVAL ones (the ones a restart resumes).
    pub async fn run_records(&self, ctx: &TenantContext, unfinished: bool, limit: i64) -> Result<Vec<RunRecord>> {
        let filter = if unfinished { "AND status IN ('RUNNING', 'WAITING_APPROVAL')" } else { "" };
        let sql = format!("SELECT {COLUMNS} FROM runs WHERE tenant_id = $1 {filter} ORDER BY id DESC LIMIT $2");
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| errors::map(e, "list runs"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(record).collect())
    }
}

/// Register `run` in `tx`; `STATE_CONFLICT` when its id is taken.
async fn insert_run(tx: &mut TenantTx, ctx: &TenantContext, run: &NewRun<'_>, now: DateTime<Utc>) -> Result<()> {
    let taken = || Error::new(ErrorCode::StateConflict, format!("run id {} is already taken", run.run_id));
    let inserted = tx
        .stmt(
            "INSERT INTO runs (tenant_id, run_id, workflow, status, principal, config_hash, event, pins, transcript,
                               created_at, updated_at)
             VALUES ($1, $2, $3, 'RUNNING', $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (tenant_id, run_id) DO NOTHING",
            "register a run",
        )
        .bind(ctx.tenant().as_str())
        .bind(run.run_id)
        .bind(run.workflow)
        .bind(ctx.principal().as_str())
        .bind(run.config_hash)
        .bind(Json(run.event))
        .bind(Json(run.pins))
        .bind(run.transcript)
        .bind(now)
        .execute(Guard::One(taken()))
        .await?;
    if matches!(inserted, Ran::Now(n) if n != 1) {
        return Err(taken());
    }
    Ok(())
}
