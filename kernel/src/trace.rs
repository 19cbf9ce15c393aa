//! Traces (INV-04): one record per thing that happened in a run, persisted
//! through a [`TraceSink`] (the store in production).
//!
//! Records carry the run id and correlation id, the tool, the redacted inputs
//! and outputs, the permission decision, the duration, the state diff and the
//! cost. A run whose trace cannot be written fails closed: the executor stops
//! it with `trace_write_failed` rather than act unobserved.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use crate::bounds::Termination;
use crate::error::{Error, ErrorCode, Result};
use crate::permission::Decision;
use crate::store::{Store, TenantTx};
use crate::tenant::TenantContext;

/// What one record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    RunStart,
    ToolCall,
    Rejection,
    LoopDetected,
    RedactionAlert,
    /// One LLM call (an agent turn): pin, endpoint, tokens, cost.
    ModelCall,
    RunEnd,
}

/// What a call or a run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub tokens: u64,
    pub provider_calls: u64,
    /// Millionths of a US dollar.
    pub micro_usd: u64,
}

impl Cost {
    pub fn add(&mut self, other: Cost) {
        self.tokens += other.tokens;
        self.provider_calls += other.provider_calls;
        self.micro_usd += other.micro_usd;
    }

    pub fn is_zero(&self) -> bool {
        *self == Cost::default()
    }
}

/// A failure as the trace keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TracedError {
    pub code: String,
    pub message: String,
}

impl From<&Error> for TracedError {
    /// The message goes through the redaction scanners: a tool's error text
    /// (a provider's reply, say) may quote a key or an e-mail address.
    fn from(e: &Error) -> Self {
        TracedError { code: e.code().as_str().to_owned(), message: crate::redaction::scrub(e.message()).0 }
    }
}

/// One trace record. Inputs and outputs are already redacted when a record
/// is built; nothing else in it may hold customer data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceRecord {
    pub run_id: String,
    pub correlation_id: String,
    pub seq: u64,
    pub kind: RecordKind,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TracedError>,
    #[serde(default)]
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_diff: Option<Value>,
    #[serde(default)]
    pub cost: Cost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<Termination>,
    /// Free-form, redacted detail (loop kind, redaction detections, pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl TraceRecord {
    /// A record with only the identifying fields set.
    pub fn new(ctx: &TenantContext, run_id: &str, seq: u64, kind: RecordKind, at: DateTime<Utc>) -> Self {
        TraceRecord {
            run_id: run_id.to_owned(),
            correlation_id: ctx.correlation_id().to_string(),
            seq,
            kind,
            at,
            tool: None,
            input: None,
            output: None,
            decision: None,
            error: None,
            duration_us: 0,
            state_diff: None,
            cost: Cost::default(),
            termination: None,
            detail: None,
        }
    }
}

/// Where trace records go.
#[async_trait::async_trait]
pub trait TraceSink: Send + Sync {
    async fn append(&self, ctx: &TenantContext, record: &TraceRecord) -> Result<()>;

    /// The store the records go to, when the sink is one: a write to the
    /// same database may then carry a record in its own transaction.
    fn store(&self) -> Option<&Store> {
        None
    }
}

#[async_trait::async_trait]
impl TraceSink for Store {
    async fn append(&self, ctx: &TenantContext, record: &TraceRecord) -> Result<()> {
        self.append_trace(ctx, record).await
    }

    fn store(&self) -> Option<&Store> {
        Some(self)
    }
}

/// Insert one trace record of `ctx`'s tenant in `tx` (committed with
/// whatever else the transaction writes).
pub(crate) async fn insert_trace(tx: &mut TenantTx, ctx: &TenantContext, record: &TraceRecord) -> Result<()> {
    let seq = i64::try_from(record.seq).map_err(|_| Error::new(ErrorCode::InvalidInput, "trace seq too large"))?;
    tx.stmt(
        "INSERT INTO traces (tenant_id, run_id, correlation_id, seq, record, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        "write a trace record",
    )
    .bind(ctx.tenant().as_str())
    .bind(&record.run_id)
    .bind(&record.correlation_id)
    .bind(seq)
    .bind(Json(record))
    .bind(record.at)
    .execute(crate::store::Guard::Any)
    .await
    .map(|_| ())
}

/// Keeps records in memory; for tests and benchmarks. Can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryTraceSink {
    records: Mutex<Vec<(String, TraceRecord)>>,
    fail_after: Mutex<Option<usize>>,
}

impl MemoryTraceSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every append after the first `n` fails with `STORE_UNAVAILABLE`.
    pub fn fail_after(&self, n: usize) {
        *self.fail_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
    }

    /// The records of `run_id`, in order.
    pub fn records(&self, run_id: &str) -> Vec<TraceRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().filter(|(_, r)| r.run_id == run_id).map(|(_, r)| r.clone()).collect()
    }

    /// Every record with its tenant.
    pub fn all(&self) -> Vec<(String, TraceRecord)> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl TraceSink for MemoryTraceSink {
    async fn append(&self, ctx: &TenantContext, record: &TraceRecord) -> Result<()> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = *self.fail_after.lock().unwrap_or_else(|p| p.into_inner())
            && records.len() >= n
        {
            return Err(Error::new(ErrorCode::StoreUnavailable, "trace sink is failing (test)"));
        }
        records.push((ctx.tenant().to_string(), record.clone()));
        Ok(())
    }
}

impl Store {
    /// Persist one trace record of `ctx`'s tenant.
    pub async fn append_trace(&self, ctx: &TenantContext, record: &TraceRecord) -> Result<()> {
        let mut tx = self.begin_single(ctx).await?;
        insert_trace(&mut tx, ctx, record).await?;
        tx.commit().await
    }

    /// The highest sequence number in `run_id`'s trace (0 for none): where a
    /// resumed run's records continue.
    pub async fn last_trace_seq(&self, ctx: &TenantContext, run_id: &str) -> Result<u64> {
        let mut tx = self.begin(ctx).await?;
        let (seq,): (Option<i64>,) = crate::store::on_tx!(tx, c => sqlx::query_as(
            "SELECT MAX(seq) FROM traces WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(ctx.tenant().as_str())
        .bind(run_id)
        .fetch_one(&mut *c)
        .await)
        .map_err(|e| crate::store::map_error(e, "read a trace"))?;
        tx.commit().await?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    /// The run ids with a trace record written at or after `since` in
    /// `ctx`'s tenant (the soak's monitor looks for traces without a run).
    pub async fn trace_run_ids_since(&self, ctx: &TenantContext, since: DateTime<Utc>) -> Result<Vec<String>> {
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<(String,)> = crate::store::on_tx!(tx, c => sqlx::query_as(
            "SELECT DISTINCT run_id FROM traces WHERE tenant_id = $1 AND created_at >= $2",
        )
        .bind(ctx.tenant().as_str())
        .bind(since)
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| crate::store::map_error(e, "read trace run ids"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// The trace of `run_id` in `ctx`'s tenant, in order. Empty when the run
    /// is unknown to this tenant (another tenant's run looks the same).
    pub async fn trace(&self, ctx: &TenantContext, run_id: &str) -> Result<Vec<TraceRecord>> {
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<(Json<TraceRecord>,)> = crate::store::on_tx!(tx, c => sqlx::query_as(
            "SELECT record FROM traces WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq",
        )
        .bind(ctx.tenant().as_str())
        .bind(run_id)
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| crate::store::map_error(e, "read a trace"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(Json(r),)| r).collect())
    }
}
