//! Human approval (INV-07): the approval lifecycle, its persistence in
//! `hitl_requests`, and which calls need one.
//!
//! * [`HitlRules`]: the `[[hitl]]` rules of a config with their parsed
//!   [`condition::Condition`]s; [`HitlRules::required`] says whether a call
//!   needs a human, failing closed.
//! * [`ApprovalState`] and [`TRANSITIONS`]: the lifecycle as an explicit state
//!   machine. A request is created `PENDING` and leaves it once, to
//!   `APPROVED`, `DENIED` or `EXPIRED`; nothing else moves it. [`transition`]
//!   refuses anything not in the table (`HITL_ALREADY_DECIDED`).
//! * `Store::hitl_*`: create (idempotent per run and step, so a resumed run
//!   finds its own request), find, list, get, decide, expire. A decision is a
//!   conditional `UPDATE ... WHERE status = 'PENDING'`, so of two concurrent
//!   decisions exactly one wins; it is audited in the same transaction; and
//!   the database itself refuses to change a decided request or delete any
//!   (triggers, migration 0003).
//! * [`slack::SlackNotifier`]: posts a request to a Slack incoming webhook.
//!
//! Timeouts: [`Store::hitl_expire_due`] moves requests past their
//! `expires_at` to `EXPIRED` and returns them; the caller applies
//! [`Approval::on_timeout`], which is `FAIL` for a FINANCIAL step whatever
//! the rule says (money never moves by silence).

pub mod condition;
pub mod gate;
pub mod slack;

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use crate::config::model::{HitlPolicy, Model, OnTimeout};
use crate::contract::SideEffect;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{AuditEvent, Store, TenantTx, map_error, on_tx};
use crate::tenant::TenantContext;
use condition::Condition;

// --- The state machine ---------------------------------------------------------

/// Where an approval request is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "PENDING",
            ApprovalState::Approved => "APPROVED",
            ApprovalState::Denied => "DENIED",
            ApprovalState::Expired => "EXPIRED",
        }
    }

    fn parse(s: &str) -> Result<ApprovalState> {
        match s {
            "PENDING" => Ok(ApprovalState::Pending),
            "APPROVED" => Ok(ApprovalState::Approved),
            "DENIED" => Ok(ApprovalState::Denied),
            "EXPIRED" => Ok(ApprovalState::Expired),
            other => Err(Error::new(ErrorCode::StoreCorrupt, format!("unknown HITL request status {other:?}"))),
        }
    }

    /// Decided: no transition leaves this state.
    pub fn is_final(self) -> bool {
        self != ApprovalState::Pending
    }
}

/// What can happen to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalEvent {
    Approve,
    Deny,
    Expire,
}

/// Every allowed transition, and nothing else. A decided request has no
/// outgoing transition: decisions are immutable.
pub const TRANSITIONS: &[(ApprovalState, ApprovalEvent, ApprovalState)] = &[
    (ApprovalState::Pending, ApprovalEvent::Approve, ApprovalState::Approved),
    (ApprovalState::Pending, ApprovalEvent::Deny, ApprovalState::Denied),
    (ApprovalState::Pending, ApprovalEvent::Expire, ApprovalState::Expired),
];

/// The state `event` leads to from `from`, or `HITL_ALREADY_DECIDED` when
/// the table has no such transition.
pub fn transition(from: ApprovalState, event: ApprovalEvent) -> Result<ApprovalState> {
    TRANSITIONS.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to).ok_or_else(|| {
        Error::new(
            ErrorCode::HitlAlreadyDecided,
            format!("the request is {} and cannot {:?}: decisions are final", from.as_str(), event),
        )
    })
}

/// A human's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    fn event(self) -> ApprovalEvent {
        match self {
            Decision::Approve => ApprovalEvent::Approve,
            Decision::Deny => ApprovalEvent::Deny,
        }
    }
}

// --- Counters ------------------------------------------------------------------

/// Process-wide HITL counters (exported as metrics by `autobiz serve`).
#[derive(Debug, Default)]
pub struct HitlCounters {
    pub hitl_request_created_total: AtomicU64,
    pub hitl_approved_total: AtomicU64,
    pub hitl_denied_total: AtomicU64,
    pub hitl_expired_total: AtomicU64,
}

static COUNTERS: HitlCounters = HitlCounters {
    hitl_request_created_total: AtomicU64::new(0),
    hitl_approved_total: AtomicU64::new(0),
    hitl_denied_total: AtomicU64::new(0),
    hitl_expired_total: AtomicU64::new(0),
};

/// The process's HITL counters.
pub fn counters() -> &'static HitlCounters {
    &COUNTERS
}

impl HitlCounters {
    /// Name and value of every counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("hitl_request_created_total", get(&self.hitl_request_created_total)),
            ("hitl_approved_total", get(&self.hitl_approved_total)),
            ("hitl_denied_total", get(&self.hitl_denied_total)),
            ("hitl_expired_total", get(&self.hitl_expired_total)),
        ]
    }
}

// --- Rules -----------------------------------------------------------------------

/// The rule that made a call need approval, as the request records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleMatch {
    /// Index in the config's `[[hitl]]` list; `None` for the built-in rule
    /// that covers a FINANCIAL tool no rule names.
    pub rule_index: Option<usize>,
    pub approvers: Vec<String>,
    pub timeout_s: u64,
    /// Already forced to `FAIL` for a FINANCIAL tool.
    pub on_timeout: OnTimeout,
}

/// Timeout of the built-in rule for a FINANCIAL tool that no rule names
/// (only a model that skipped the compile checks has one: CC-04).
pub const DEFAULT_FINANCIAL_TIMEOUT_S: u64 = 3600;

#[derive(Debug, Clone)]
struct CompiledRule {
    index: usize,
    tool: String,
    condition: Option<Condition>,
    approvers: Vec<String>,
    timeout_s: u64,
    on_timeout: OnTimeout,
    policy: HitlPolicy,
}

/// The `[[hitl]]` rules of a config, conditions parsed once.
#[derive(Debug, Clone, Default)]
pub struct HitlRules {
    rules: Vec<CompiledRule>,
}

/// Does a tool reference (`name` or `name@version`) name this tool?
fn names(reference: &str, name: &str, version: &str) -> bool {
    match reference.split_once('@') {
        Some((n, v)) => n == name && v == version,
        None => reference == name,
    }
}

/// The timeout policy that applies: a FINANCIAL step fails on timeout,
/// whatever its rule says.
pub fn effective_on_timeout(side_effect: SideEffect, on_timeout: OnTimeout) -> OnTimeout {
    if side_effect == SideEffect::Financial { OnTimeout::Fail } else { on_timeout }
}

impl HitlRules {
    /// Parse every rule's condition (`HITL_CONDITION_INVALID` names the rule
    /// index and the column). `autobiz check` has type-checked them already.
    pub fn from_model(model: &Model) -> Result<HitlRules> {
        let mut rules = Vec::with_capacity(model.hitl.len());
        for (index, rule) in model.hitl.iter().enumerate() {
            let condition = match rule.when.as_deref() {
                None => None,
                Some(text) => Some(Condition::parse(text).map_err(|e| {
                    Error::new(ErrorCode::HitlConditionInvalid, format!("[[hitl]] rule {index}: `when` {e}"))
                })?),
            };
            rules.push(CompiledRule {
                index,
                tool: rule.tool.clone(),
                condition,
                approvers: rule.approvers.clone(),
                timeout_s: rule.timeout_s,
                on_timeout: rule.on_timeout,
                policy: rule.policy,
            });
        }
        Ok(HitlRules { rules })
    }

    /// Whether a call of tool `name@version` with `input` needs a human, and
    /// under which rule: the first rule (in declaration order) that names the
    /// tool and whose condition holds, or cannot be evaluated (fail closed).
    /// An `AUTO_APPROVE` rule lets a non-FINANCIAL call through. A FINANCIAL
    /// tool that no rule names needs approval under a built-in rule
    /// (approvers: anyone, [`DEFAULT_FINANCIAL_TIMEOUT_S`], FAIL).
    pub fn required(&self, name: &str, version: &str, side_effect: SideEffect, input: &Value) -> Option<RuleMatch> {
        let financial = side_effect == SideEffect::Financial;
        let mut named = false;
        for rule in self.rules.iter().filter(|r| names(&r.tool, name, version)) {
            named = true;
            let applies = rule.condition.as_ref().is_none_or(|c| c.requires_approval(input));
            if !applies {
                continue;
            }
            if rule.policy == HitlPolicy::AutoApprove && !financial {
                return None;
            }
            return Some(RuleMatch {
                rule_index: Some(rule.index),
                approvers: rule.approvers.clone(),
                timeout_s: rule.timeout_s,
                on_timeout: effective_on_timeout(side_effect, rule.on_timeout),
            });
        }
        (financial && !named).then(|| RuleMatch {
            rule_index: None,
            approvers: Vec::new(),
            timeout_s: DEFAULT_FINANCIAL_TIMEOUT_S,
            on_timeout: OnTimeout::Fail,
        })
    }
}

// --- Requests ------------------------------------------------------------------

/// What a paused step asks a human to decide.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NewApproval {
    pub run_id: String,
    pub step: String,
    /// `name@version`.
    pub tool: String,
    pub side_effect: SideEffect,
    /// What the approver sees: the call's input as redacted for traces. Never
    /// secrets (the caller redacts).
    pub summary: Value,
    pub rule: RuleMatch,
    pub expires_at: DateTime<Utc>,
}

/// A stored approval request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Approval {
    pub request_id: String,
    pub tenant_id: String,
    pub run_id: String,
    pub step: String,
    pub tool: String,
    pub side_effect: SideEffect,
    pub summary: Value,
    pub status: ApprovalState,
    pub rule_index: Option<i64>,
    pub approvers: Vec<String>,
    /// The rule's timeout policy as stored (already `FAIL` for FINANCIAL).
    pub on_timeout: OnTimeout,
    /// Who decided (absent while pending and for an expiry).
    pub approver: Option<String>,
    pub reason: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl Approval {
    /// What to do now that the request expired: `FAIL` for a FINANCIAL
    /// step whatever was stored, the rule's policy otherwise.
    pub fn timeout_policy(&self) -> OnTimeout {
        effective_on_timeout(self.side_effect, self.on_timeout)
    }
}

/// The request id of `run_id`'s approval at `step`: deterministic, so a run
/// resumed after a restart finds its own request instead of asking twice.
pub fn request_id(run_id: &str, step: &str) -> String {
    let mut h = Sha256::new();
    h.update(run_id.as_bytes());
    h.update([0]);
    h.update(step.as_bytes());
    format!("hitl_{}", &hex::encode(h.finalize())[..20])
}

/// Which requests [`Store::hitl_list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Pending,
    All,
}

fn side_effect_of(s: &str) -> Result<SideEffect> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| Error::new(ErrorCode::StoreCorrupt, format!("unknown side-effect class {s:?} in hitl_requests")))
}

fn on_timeout_of(s: &str) -> Result<OnTimeout> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| Error::new(ErrorCode::StoreCorrupt, format!("unknown on_timeout {s:?} in hitl_requests")))
}

fn on_timeout_str(t: OnTimeout) -> &'static str {
    match t {
        OnTimeout::Fail => "FAIL",
        OnTimeout::Proceed => "PROCEED",
        OnTimeout::Escalate => "ESCALATE",
    }
}

const COLUMNS: &str = "request_id, tenant_id, run_id, step, tool, side_effect, payload, status, rule_index, approvers, \
                       on_timeout, approver, reason, decided_at, expires_at, created_at";

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    Json<Value>,
    String,
    Option<i64>,
    Json<Vec<String>>,
    String,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    DateTime<Utc>,
);

fn from_row(r: Row) -> Result<Approval> {
    let (
        request_id,
        tenant_id,
        run_id,
        step,
        tool,
        side_effect,
        Json(summary),
        status,
        rule_index,
        Json(approvers),
        on_timeout,
        approver,
        reason,
        decided_at,
        expires_at,
        created_at,
    ) = r;
    Ok(Approval {
        request_id,
        tenant_id,
        run_id,
        step,
        tool,
        side_effect: side_effect_of(&side_effect)?,
        summary,
        status: ApprovalState::parse(&status)?,
        rule_index,
        approvers,
        on_timeout: on_timeout_of(&on_timeout)?,
        approver,
        reason,
        decided_at,
        expires_at,
        created_at,
    })
}

async fn fetch(tx: &mut TenantTx, ctx: &TenantContext, id: &str) -> Result<Option<Approval>> {
    let sql = format!("SELECT {COLUMNS} FROM hitl_requests WHERE tenant_id = $1 AND request_id = $2");
    let row: Option<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(ctx.tenant().as_str())
        .bind(id)
        .fetch_optional(&mut *c)
        .await)
    .map_err(|e| map_error(e, "read a HITL request"))?;
    row.map(from_row).transpose()
}

fn not_found(ctx: &TenantContext, id: &str) -> Error {
    Error::new(ErrorCode::HitlNotFound, format!("tenant {} has no HITL request {id:?}", ctx.tenant()))
}

fn already_decided(a: &Approval) -> Error {
    let by = a.approver.as_deref().map(|w| format!(" by {w}")).unwrap_or_default();
    let at = a.decided_at.map(|t| format!(" at {}", t.to_rfc3339())).unwrap_or_default();
    Error::new(
        ErrorCode::HitlAlreadyDecided,
        format!("HITL request {} is already {}{by}{at}; decisions are final", a.request_id, a.status.as_str()),
    )
}

impl Store {
    /// Persist a pending request for `new.run_id` at `new.step`, or return
    /// the one that exists (whatever its state): creating twice is a no-op,
    /// so a run resumed after a restart finds its own request.
    pub async fn hitl_create(&self, ctx: &TenantContext, new: &NewApproval) -> Result<Approval> {
        let id = request_id(&new.run_id, &new.step);
        let now = self.now();
        let rule_index = new.rule.rule_index.and_then(|i| i64::try_from(i).ok());
        let mut tx = self.begin(ctx).await?;
        let inserted = on_tx!(tx, c => sqlx::query(
            "INSERT INTO hitl_requests
               (tenant_id, request_id, run_id, step, tool, payload, status, side_effect, rule_index, approvers,
                on_timeout, expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'PENDING', $7, $8, $9, $10, $11, $12, $12)
             ON CONFLICT (tenant_id, request_id) DO NOTHING",
        )
        .bind(ctx.tenant().as_str())
        .bind(&id)
        .bind(&new.run_id)
        .bind(&new.step)
        .bind(&new.tool)
        .bind(Json(&new.summary))
        .bind(new.side_effect.as_str())
        .bind(rule_index)
        .bind(Json(&new.rule.approvers))
        .bind(on_timeout_str(effective_on_timeout(new.side_effect, new.rule.on_timeout)))
        .bind(new.expires_at)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| map_error(e, "create a HITL request"))?;
        let approval = fetch(&mut tx, ctx, &id).await?.ok_or_else(|| not_found(ctx, &id))?;
        tx.commit().await?;
        if inserted == 1 {
            COUNTERS.hitl_request_created_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "autobiz::hitl",
                tenant = %ctx.tenant(), request_id = %id, run_id = %new.run_id, step = %new.step, tool = %new.tool,
                "approval requested"
            );
        }
        Ok(approval)
    }

    /// The request of `run_id` at `step`, if one was created.
    pub async fn hitl_find(&self, ctx: &TenantContext, run_id: &str, step: &str) -> Result<Option<Approval>> {
        let mut tx = self.begin_single(ctx).await?;
        let found = fetch(&mut tx, ctx, &request_id(run_id, step)).await?;
        tx.commit().await?;
        Ok(found)
    }

    /// One request by id (`HITL_NOT_FOUND` when the tenant has none).
    pub async fn hitl_get(&self, ctx: &TenantContext, id: &str) -> Result<Approval> {
        let mut tx = self.begin(ctx).await?;
        let found = fetch(&mut tx, ctx, id).await?;
        tx.commit().await?;
        found.ok_or_else(|| not_found(ctx, id))
    }

    /// The tenant's requests, oldest first: pending ones, or all.
    pub async fn hitl_list(&self, ctx: &TenantContext, filter: StatusFilter) -> Result<Vec<Approval>> {
        let only_pending = filter == StatusFilter::Pending;
        let sql = format!(
            "SELECT {COLUMNS} FROM hitl_requests WHERE tenant_id = $1 AND ($2 = 0 OR status = 'PENDING') ORDER BY id"
        );
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(i32::from(only_pending))
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| map_error(e, "list HITL requests"))?;
        tx.commit().await?;
        rows.into_iter().map(from_row).collect()
    }

    /// The tenant's requests of one run, whatever their state, oldest
    /// first. Served by the `(tenant_id, run_id)` index (migration 0008):
    /// the cost is the run's requests, not the tenant's history.
    pub async fn hitl_of_run(&self, ctx: &TenantContext, run_id: &str) -> Result<Vec<Approval>> {
        let sql = format!("SELECT {COLUMNS} FROM hitl_requests WHERE tenant_id = $1 AND run_id = $2 ORDER BY id");
        let mut tx = self.begin_single(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(run_id)
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| map_error(e, "list a run's HITL requests"))?;
        tx.commit().await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Decide a pending request. `approver` must be one of the request's
    /// approvers when it lists any (`HITL_APPROVER_NOT_ALLOWED`, audited); a
    /// denial needs a reason. A decided request refuses
    /// (`HITL_ALREADY_DECIDED`); one past its expiry is expired instead
    /// (`HITL_EXPIRED`). The decision and its audit entry commit together,
    /// through a conditional update, so of two concurrent decisions exactly
    /// one wins.
    pub async fn hitl_decide(
        &self,
        ctx: &TenantContext,
        id: &str,
        decision: Decision,
        approver: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Approval> {
        let approver = approver.trim();
        if approver.is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "an approver is required: who decides?"));
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if decision == Decision::Deny && reason.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidInput,
                "a denial needs a reason: it becomes the run's termination reason",
            ));
        }
        let current = self.hitl_get(ctx, id).await?;
        let to = transition(current.status, decision.event()).map_err(|_| already_decided(&current))?;
        let resource = format!("hitl/{id}");
        if !current.approvers.is_empty() && !current.approvers.iter().any(|a| a == approver) {
            self.record_audit(
                ctx,
                &AuditEvent {
                    action: format!("hitl_{}", if decision == Decision::Approve { "approve" } else { "deny" }),
                    resource,
                    outcome: format!("refused: {approver} is not an approver"),
                },
            )
            .await?;
            return Err(Error::new(
                ErrorCode::HitlApproverNotAllowed,
                format!("{approver} may not decide {id}; its approvers are: {}", current.approvers.join(", ")),
            ));
        }
        if now >= current.expires_at {
            let expired = self.hitl_expire(ctx, &current, now).await?;
            return Err(match expired {
                Some(_) => Error::new(
                    ErrorCode::HitlExpired,
                    format!(
                        "HITL request {id} expired at {}; it can no longer be decided",
                        current.expires_at.to_rfc3339()
                    ),
                ),
                None => already_decided(&self.hitl_get(ctx, id).await?),
            });
        }
        let mut tx = self.begin(ctx).await?;
        let changed = on_tx!(tx, c => sqlx::query(
            "UPDATE hitl_requests SET status = $3, approver = $4, reason = $5, decided_at = $6, updated_at = $6
              WHERE tenant_id = $1 AND request_id = $2 AND status = 'PENDING'",
        )
        .bind(ctx.tenant().as_str())
        .bind(id)
        .bind(to.as_str())
        .bind(approver)
        .bind(reason)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| map_error(e, "decide a HITL request"))?;
        if changed != 1 {
            drop(tx);
            return Err(already_decided(&self.hitl_get(ctx, id).await?));
        }
        let verb = if decision == Decision::Approve { "approved" } else { "denied" };
        let event = AuditEvent {
            action: format!("hitl_{}", if decision == Decision::Approve { "approve" } else { "deny" }),
            resource,
            outcome: format!("{verb} by {approver}"),
        };
        Store::record_audit_in(&mut tx, ctx, &event, now).await?;
        let decided = fetch(&mut tx, ctx, id).await?.ok_or_else(|| not_found(ctx, id))?;
        tx.commit().await?;
        let counter =
            if decision == Decision::Approve { &COUNTERS.hitl_approved_total } else { &COUNTERS.hitl_denied_total };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "autobiz::hitl",
            tenant = %ctx.tenant(), request_id = %id, approver = %approver, status = to.as_str(),
            "approval decided"
        );
        Ok(decided)
    }

    /// Expire every pending request whose `expires_at` is at or before `now`
    /// and return them. The caller applies each one's
    /// [`Approval::timeout_policy`] (a FINANCIAL step fails).
    pub async fn hitl_expire_due(&self, ctx: &TenantContext, now: DateTime<Utc>) -> Result<Vec<Approval>> {
        let mut expired = Vec::new();
        for pending in self.hitl_list(ctx, StatusFilter::Pending).await? {
            if pending.expires_at <= now
                && let Some(done) = self.hitl_expire(ctx, &pending, now).await?
            {
                expired.push(done);
            }
        }
        Ok(expired)
    }

    /// Move one pending request to EXPIRED; `None` when someone decided it
    /// first.
    async fn hitl_expire(
        &self,
        ctx: &TenantContext,
        pending: &Approval,
        now: DateTime<Utc>,
    ) -> Result<Option<Approval>> {
        let to = transition(pending.status, ApprovalEvent::Expire)?;
        let mut tx = self.begin(ctx).await?;
        let changed = on_tx!(tx, c => sqlx::query(
            "UPDATE hitl_requests SET status = $3, reason = 'timeout', decided_at = $4, updated_at = $4
              WHERE tenant_id = $1 AND request_id = $2 AND status = 'PENDING'",
        )
        .bind(ctx.tenant().as_str())
        .bind(&pending.request_id)
        .bind(to.as_str())
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| map_error(e, "expire a HITL request"))?;
        if changed != 1 {
            return Ok(None);
        }
        let policy = on_timeout_str(pending.timeout_policy());
        let event = AuditEvent {
            action: "hitl_expire".to_owned(),
            resource: format!("hitl/{}", pending.request_id),
            outcome: format!("expired: on_timeout {policy}"),
        };
        Store::record_audit_in(&mut tx, ctx, &event, now).await?;
        let done = fetch(&mut tx, ctx, &pending.request_id).await?;
        tx.commit().await?;
        COUNTERS.hitl_expired_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "autobiz::hitl",
            tenant = %ctx.tenant(), request_id = %pending.request_id, on_timeout = policy,
            "approval expired"
        );
        Ok(done)
    }
}

/// `expires_at` for a request created at `now` under `rule`.
pub fn expiry(now: DateTime<Utc>, rule: &RuleMatch) -> DateTime<Utc> {
    let secs = i64::try_from(rule.timeout_s).unwrap_or(i64::MAX);
    now.checked_add_signed(Duration::try_seconds(secs).unwrap_or(Duration::MAX)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv07_the_table_has_no_way_out_of_a_decision() {
        for state in [ApprovalState::Approved, ApprovalState::Denied, ApprovalState::Expired] {
            for event in [ApprovalEvent::Approve, ApprovalEvent::Deny, ApprovalEvent::Expire] {
                let e = transition(state, event).unwrap_err();
                assert_eq!(e.code(), ErrorCode::HitlAlreadyDecided);
            }
        }
        assert_eq!(transition(ApprovalState::Pending, ApprovalEvent::Approve).unwrap(), ApprovalState::Approved);
        assert_eq!(transition(ApprovalState::Pending, ApprovalEvent::Deny).unwrap(), ApprovalState::Denied);
        assert_eq!(transition(ApprovalState::Pending, ApprovalEvent::Expire).unwrap(), ApprovalState::Expired);
    }

    #[test]
    fn request_ids_are_deterministic_per_run_and_step() {
        assert_eq!(request_id("run-1", "refund"), request_id("run-1", "refund"));
        assert_ne!(request_id("run-1", "refund"), request_id("run-1", "charge"));
        assert_ne!(request_id("run-1x", "y"), request_id("run-1", "xy"));
        assert!(request_id("r", "s").starts_with("hitl_") && request_id("r", "s").len() == 25);
    }

    #[test]
    fn p1_t07_neg_financial_never_proceeds_on_timeout() {
        assert_eq!(effective_on_timeout(SideEffect::Financial, OnTimeout::Proceed), OnTimeout::Fail);
        assert_eq!(effective_on_timeout(SideEffect::Financial, OnTimeout::Escalate), OnTimeout::Fail);
        assert_eq!(effective_on_timeout(SideEffect::Write, OnTimeout::Proceed), OnTimeout::Proceed);
        assert_eq!(effective_on_timeout(SideEffect::Write, OnTimeout::Escalate), OnTimeout::Escalate);
    }
}
