//! Circuit breakers, one per (tenant, dependency), with their state in the
//! database (`circuit_breakers`, migration 0003) so every process sees the
//! same breaker and it survives restarts.
//!
//! The lifecycle is the state machine in [`TRANSITIONS`]:
//!
//! * `CLOSED`: calls pass; a failure is remembered with its time. When
//!   `failure_threshold` failures fall within `window`, the breaker opens.
//!   Failures older than the window are forgotten.
//! * `OPEN`: calls are refused at once with `CIRCUIT_OPEN` (an outage of the
//!   dependency: infrastructure class, exit 3) until `open_for` has passed
//!   since it opened; then the next call moves it to `HALF_OPEN` as a probe.
//! * `HALF_OPEN`: at most `half_open_probes` calls are admitted as probes at
//!   once; the first probe to succeed closes the breaker, the first to fail
//!   reopens it. A probe whose outcome is never reported (its process died)
//!   would hold its slot forever, so after `open_for` in `HALF_OPEN` the
//!   slots are handed out again (`probes_stale`).
//! * `reset` (an operator, audited) closes it from any state.
//!
//! Every change is a compare-and-set on the row's `version`: read, decide,
//! `UPDATE ... WHERE version = $seen`; a loser re-reads and decides again, so
//! two processes never both admit a probe past the limit or both open the
//! breaker. Every transition is logged (`autobiz::breaker`) and counted
//! (`circuit_breaker_transition_total`); [`BreakerMetrics`] also keeps each
//! breaker's last state as the `circuit_breaker_state` gauge value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;

use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{AuditEvent, Store, map_error, on_tx};
use crate::tenant::TenantContext;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    /// The `circuit_breaker_state` gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    fn parse(s: &str) -> Result<BreakerState> {
        match s {
            "CLOSED" => Ok(BreakerState::Closed),
            "OPEN" => Ok(BreakerState::Open),
            "HALF_OPEN" => Ok(BreakerState::HalfOpen),
            other => Err(Error::new(ErrorCode::StoreCorrupt, format!("unknown breaker state {other:?}"))),
        }
    }
}

/// What moves a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerEvent {
    /// `failure_threshold` failures within the window.
    FailureThreshold,
    /// `open_for` passed since the breaker opened; a call arrives.
    CooldownElapsed,
    ProbeSucceeded,
    ProbeFailed,
    /// `open_for` passed in HALF_OPEN without an outcome: probe slots are
    /// handed out again.
    ProbesStale,
    /// An operator reset the breaker (audited).
    Reset,
}

/// Every transition a breaker can make, and nothing else.
pub const TRANSITIONS: &[(BreakerState, BreakerEvent, BreakerState)] = &[
    (BreakerState::Closed, BreakerEvent::FailureThreshold, BreakerState::Open),
    (BreakerState::Open, BreakerEvent::CooldownElapsed, BreakerState::HalfOpen),
    (BreakerState::HalfOpen, BreakerEvent::ProbeSucceeded, BreakerState::Closed),
    (BreakerState::HalfOpen, BreakerEvent::ProbeFailed, BreakerState::Open),
    (BreakerState::HalfOpen, BreakerEvent::ProbesStale, BreakerState::HalfOpen),
    (BreakerState::Closed, BreakerEvent::Reset, BreakerState::Closed),
    (BreakerState::Open, BreakerEvent::Reset, BreakerState::Closed),
    (BreakerState::HalfOpen, BreakerEvent::Reset, BreakerState::Closed),
];

/// The state `event` leads to from `from`, if the table allows it.
pub fn transition(from: BreakerState, event: BreakerEvent) -> Option<BreakerState> {
    TRANSITIONS.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to)
}

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    /// 5 failures in 60 s open the breaker for 30 s; then 1 probe at a time.
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            window: Duration::seconds(60),
            open_for: Duration::seconds(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerPolicy {
    /// `INVALID_INPUT` for a policy that could never open or never recover.
    pub fn validate(&self) -> Result<()> {
        if self.failure_threshold == 0 || self.half_open_probes == 0 {
            return Err(Error::new(
                ErrorCode::InvalidInput,
                "failure_threshold and half_open_probes must be at least 1",
            ));
        }
        if self.window <= Duration::zero() || self.open_for <= Duration::zero() {
            return Err(Error::new(ErrorCode::InvalidInput, "window and open_for must be positive"));
        }
        Ok(())
    }
}

/// A breaker as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakerRecord {
    pub name: String,
    pub state: BreakerState,
    /// Failures remembered (within the window as of the last write).
    pub recent_failures: usize,
    pub opened_at: Option<DateTime<Utc>>,
    pub half_open_at: Option<DateTime<Utc>>,
    pub probes_in_flight: i64,
    pub last_transition_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    version: i64,
    #[serde(skip)]
    failures: Vec<DateTime<Utc>>,
}

type Row = (
    String,
    String,
    i64,
    Json<Vec<DateTime<Utc>>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

const COLUMNS: &str =
    "name, state, version, failures, opened_at, half_open_at, probes_in_flight, last_transition_at, updated_at";

fn from_row(r: Row) -> Result<BreakerRecord> {
    let (
        name,
        state,
        version,
        Json(failures),
        opened_at,
        half_open_at,
        probes_in_flight,
        last_transition_at,
        updated_at,
    ) = r;
    Ok(BreakerRecord {
        name,
        state: BreakerState::parse(&state)?,
        recent_failures: failures.len(),
        opened_at,
        half_open_at,
        probes_in_flight,
        last_transition_at,
        updated_at,
        version,
        failures,
    })
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorCode::InvalidInput, "a breaker name is 1 to 128 characters of A-Z a-z 0-9 . _ - : /"))
    }
}

impl Store {
    /// The tenant's breakers, by name.
    pub async fn breakers(&self, ctx: &TenantContext) -> Result<Vec<BreakerRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM circuit_breakers WHERE tenant_id = $1 ORDER BY name");
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .fetch_all(&mut *c)
            .await)
        .map_err(|e| map_error(e, "list circuit breakers"))?;
        tx.commit().await?;
        rows.into_iter().map(from_row).collect()
    }

    /// One breaker, if it was ever used.
    pub async fn breaker(&self, ctx: &TenantContext, name: &str) -> Result<Option<BreakerRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM circuit_breakers WHERE tenant_id = $1 AND name = $2");
        let mut tx = self.begin_single(ctx).await?;
        let row: Option<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(name)
            .fetch_optional(&mut *c)
            .await)
        .map_err(|e| map_error(e, "read a circuit breaker"))?;
        tx.commit().await?;
        row.map(from_row).transpose()
    }
}

/// Transition counts and last-seen states, for `/metrics`.
#[derive(Debug, Default)]
pub struct BreakerMetrics {
    transitions: Mutex<BTreeMap<(String, BreakerState, BreakerState), u64>>,
    states: Mutex<BTreeMap<(String, String), BreakerState>>,
}

impl BreakerMetrics {
    fn record(&self, tenant: &str, name: &str, from: BreakerState, to: BreakerState) {
        let mut t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        *t.entry((name.to_owned(), from, to)).or_default() += 1;
        drop(t);
        self.observe(tenant, name, to);
    }

    fn observe(&self, tenant: &str, name: &str, state: BreakerState) {
        let mut s = self.states.lock().unwrap_or_else(|p| p.into_inner());
        s.insert((tenant.to_owned(), name.to_owned()), state);
    }

    /// `circuit_breaker_transition_total` by (dependency, from, to).
    pub fn transitions(&self) -> BTreeMap<(String, BreakerState, BreakerState), u64> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Total transitions counted.
    pub fn transition_total(&self) -> u64 {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// `circuit_breaker_state` by (tenant, dependency): the gauge value of
    /// the last state this process saw ([`BreakerState::gauge`]).
    pub fn states(&self) -> BTreeMap<(String, String), u8> {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.gauge())).collect()
    }
}

/// How many times a compare-and-set is retried before giving up with
/// `STATE_CONFLICT` (only under extreme contention on one breaker).
const CAS_ATTEMPTS: usize = 32;

/// The breakers of one store, under one policy and clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Breakers {
    store: Store,
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    metrics: Arc<BreakerMetrics>,
}

/// Leave to make one call through a breaker. Report its outcome with
/// [`Permit::success`] or [`Permit::failure`]; a permit dropped unreported
/// counts as nothing (a probe's slot is recovered after `open_for`).
#[derive(Debug)]
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    breakers: Breakers,
    ctx: TenantContext,
    name: String,
    probe: bool,
}

/// What a compare-and-set writes.
struct Next {
    state: BreakerState,
    failures: Vec<DateTime<Utc>>,
    opened_at: Option<DateTime<Utc>>,
    half_open_at: Option<DateTime<Utc>>,
    probes_in_flight: i64,
    transitioned: bool,
}

impl Next {
    /// CLOSED with nothing remembered (a probe succeeded, or a reset).
    fn closed() -> Next {
        Next {
            state: BreakerState::Closed,
            failures: Vec::new(),
            opened_at: None,
            half_open_at: None,
            probes_in_flight: 0,
            transitioned: true,
        }
    }

    /// OPEN since `now` (the threshold was reached, or a probe failed).
    fn open(now: DateTime<Utc>) -> Next {
        Next { state: BreakerState::Open, opened_at: Some(now), ..Next::closed() }
    }
}

impl Breakers {
    /// `INVALID_INPUT` for a policy that fails [`BreakerPolicy::validate`].
    pub fn new(store: Store, policy: BreakerPolicy, clock: Arc<dyn Clock>) -> Result<Breakers> {
        policy.validate()?;
        Ok(Breakers { store, policy, clock, metrics: Arc::new(BreakerMetrics::default()) })
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    pub fn metrics(&self) -> &BreakerMetrics {
        &self.metrics
    }

    /// The metrics, shared (for an exporter that outlives this handle).
    pub fn metrics_handle(&self) -> Arc<BreakerMetrics> {
        self.metrics.clone()
    }

    /// May a call to `name` go ahead? `CIRCUIT_OPEN` when the breaker is
    /// open (and its cool-down has not passed) or half-open with every probe
    /// slot taken.
    pub async fn acquire(&self, ctx: &TenantContext, name: &str) -> Result<Permit> {
        validate_name(name)?;
        for _ in 0..CAS_ATTEMPTS {
            let now = self.clock.now();
            let current = self.load_or_create(ctx, name, now).await?;
            let p = &self.policy;
            let permit = |probe| Permit { breakers: self.clone(), ctx: ctx.clone(), name: name.to_owned(), probe };
            match current.state {
                BreakerState::Closed => {
                    self.metrics.observe(ctx.tenant().as_str(), name, BreakerState::Closed);
                    return Ok(permit(false));
                }
                BreakerState::Open => {
                    let opened = current.opened_at.unwrap_or(now);
                    if now < opened + p.open_for {
                        return Err(open_error(name, "open", opened + p.open_for));
                    }
                    let next = Next {
                        state: BreakerState::HalfOpen,
                        failures: Vec::new(),
                        opened_at: current.opened_at,
                        half_open_at: Some(now),
                        probes_in_flight: 1,
                        transitioned: true,
                    };
                    if self.cas(ctx, &current, next, BreakerEvent::CooldownElapsed, now).await? {
                        return Ok(permit(true));
                    }
                }
                BreakerState::HalfOpen => {
                    let since = current.half_open_at.unwrap_or(now);
                    let (event, probes, half_open_at) = if current.probes_in_flight < i64::from(p.half_open_probes) {
                        (None, current.probes_in_flight + 1, current.half_open_at)
                    } else if now >= since + p.open_for {
                        (Some(BreakerEvent::ProbesStale), 1, Some(now))
                    } else {
                        return Err(open_error(name, "half-open with every probe slot taken", since + p.open_for));
                    };
                    let next = Next {
                        state: BreakerState::HalfOpen,
                        failures: Vec::new(),
                        opened_at: current.opened_at,
                        half_open_at,
                        probes_in_flight: probes,
                        transitioned: event.is_some(),
                    };
                    let event = event.unwrap_or(BreakerEvent::ProbesStale);
                    if self.cas(ctx, &current, next, event, now).await? {
                        return Ok(permit(true));
                    }
                }
            }
        }
        Err(contended(name))
    }

    /// Close `name` whatever its state; audited with `who`.
    /// `BREAKER_NOT_FOUND` for a breaker the tenant never used.
    pub async fn reset(&self, ctx: &TenantContext, name: &str, who: &str) -> Result<BreakerRecord> {
        validate_name(name)?;
        let who = who.trim();
        if who.is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "a reset needs --by WHO: it is audited"));
        }
        for _ in 0..CAS_ATTEMPTS {
            let now = self.clock.now();
            let Some(current) = self.store.breaker(ctx, name).await? else {
                return Err(Error::new(
                    ErrorCode::BreakerNotFound,
                    format!("tenant {} has no circuit breaker {name:?}", ctx.tenant()),
                ));
            };
            let next = Next::closed();
            let audit = AuditEvent {
                action: "breaker_reset".to_owned(),
                resource: format!("breaker/{name}"),
                outcome: format!("reset from {} by {who}", current.state.as_str()),
            };
            if self.cas_audited(ctx, &current, next, BreakerEvent::Reset, now, Some(&audit)).await? {
                return self.store.breaker(ctx, name).await?.ok_or_else(|| contended(name));
            }
        }
        Err(contended(name))
    }

    async fn load_or_create(&self, ctx: &TenantContext, name: &str, now: DateTime<Utc>) -> Result<BreakerRecord> {
        if let Some(found) = self.store.breaker(ctx, name).await? {
            return Ok(found);
        }
        // First use: one statement that creates the breaker and returns it
        // (autocommit on SQLite), not a transaction and a second read. When
        // another caller created it first, the insert does nothing and
        // returns no row: read theirs.
        let sql = format!(
            "INSERT INTO circuit_breakers (tenant_id, name, state, version, failures, probes_in_flight, created_at, updated_at)
             VALUES ($1, $2, 'CLOSED', 0, $3, 0, $4, $4) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING {COLUMNS}"
        );
        let mut tx = self.store.begin_single(ctx).await?;
        let created: Option<Row> = on_tx!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ctx.tenant().as_str())
            .bind(name)
            .bind(Json(Vec::<DateTime<Utc>>::new()))
            .bind(now)
            .fetch_optional(&mut *c)
            .await)
        .map_err(|e| map_error(e, "create a circuit breaker"))?;
        tx.commit().await?;
        match created {
            Some(row) => from_row(row),
            None => self.store.breaker(ctx, name).await?.ok_or_else(|| contended(name)),
        }
    }

    async fn cas(
        &self,
        ctx: &TenantContext,
        current: &BreakerRecord,
        next: Next,
        event: BreakerEvent,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.cas_audited(ctx, current, next, event, now, None).await
    }

    /// Write `next` if the row is still at `current.version`. A transition
    /// not in [`TRANSITIONS`] is a bug and refused before anything is
    /// written.
    async fn cas_audited(
        &self,
        ctx: &TenantContext,
        current: &BreakerRecord,
        next: Next,
        event: BreakerEvent,
        now: DateTime<Utc>,
        audit: Option<&AuditEvent>,
    ) -> Result<bool> {
        if next.transitioned && transition(current.state, event) != Some(next.state) {
            return Err(Error::new(
                ErrorCode::StateConflict,
                format!(
                    "breaker {}: no transition {} --{event:?}--> {}",
                    current.name,
                    current.state.as_str(),
                    next.state.as_str()
                ),
            ));
        }
        let last_transition_at = if next.transitioned { Some(now) } else { current.last_transition_at };
        let mut tx = self.store.begin(ctx).await?;
        let changed = on_tx!(tx, c => sqlx::query(
            "UPDATE circuit_breakers
                SET state = $4, version = version + 1, failures = $5, opened_at = $6, half_open_at = $7,
                    probes_in_flight = $8, last_transition_at = $9, updated_at = $10
              WHERE tenant_id = $1 AND name = $2 AND version = $3",
        )
        .bind(ctx.tenant().as_str())
        .bind(&current.name)
        .bind(current.version)
        .bind(next.state.as_str())
        .bind(Json(&next.failures))
        .bind(next.opened_at)
        .bind(next.half_open_at)
        .bind(next.probes_in_flight)
        .bind(last_transition_at)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| map_error(e, "update a circuit breaker"))?;
        if changed != 1 {
            return Ok(false);
        }
        if let Some(event) = audit {
            Store::record_audit_in(&mut tx, ctx, event, now).await?;
        }
        tx.commit().await?;
        let tenant = ctx.tenant().as_str();
        if next.transitioned {
            self.metrics.record(tenant, &current.name, current.state, next.state);
            let (from, to) = (current.state.as_str(), next.state.as_str());
            if next.state == BreakerState::Open {
                tracing::warn!(target: "autobiz::breaker", tenant, dependency = %current.name, from, to, event = ?event, "circuit breaker transition");
            } else {
                tracing::info!(target: "autobiz::breaker", tenant, dependency = %current.name, from, to, event = ?event, "circuit breaker transition");
            }
        } else {
            self.metrics.observe(tenant, &current.name, next.state);
        }
        Ok(true)
    }
}

fn open_error(name: &str, how: &str, until: DateTime<Utc>) -> Error {
    Error::new(
        ErrorCode::CircuitOpen,
        format!("circuit breaker {name} is {how}: calls are refused until {}", until.to_rfc3339()),
    )
}

fn contended(name: &str) -> Error {
    Error::new(ErrorCode::StateConflict, format!("circuit breaker {name} changed too often to update; retry"))
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: a probe closes the breaker.
    pub async fn success(self) -> Result<()> {
        if !self.probe {
            return Ok(());
        }
        let b = &self.breakers;
        for _ in 0..CAS_ATTEMPTS {
            let now = b.clock.now();
            let Some(current) = b.store.breaker(&self.ctx, &self.name).await? else { return Ok(()) };
            if current.state != BreakerState::HalfOpen {
                return Ok(()); // another probe or an operator decided first
            }
            let next = Next::closed();
            if b.cas(&self.ctx, &current, next, BreakerEvent::ProbeSucceeded, now).await? {
                return Ok(());
            }
        }
        Err(contended(&self.name))
    }

    /// The call failed: remembered in CLOSED (opening the breaker at the
    /// threshold); a probe reopens it.
    pub async fn failure(self) -> Result<()> {
        let b = &self.breakers;
        let p = b.policy;
        for _ in 0..CAS_ATTEMPTS {
            let now = b.clock.now();
            let Some(current) = b.store.breaker(&self.ctx, &self.name).await? else { return Ok(()) };
            let (next, event) = match (current.state, self.probe) {
                (BreakerState::HalfOpen, true) => (Next::open(now), BreakerEvent::ProbeFailed),
                (BreakerState::Closed, _) => {
                    let mut failures: Vec<DateTime<Utc>> =
                        current.failures.iter().copied().filter(|t| *t > now - p.window && *t <= now).collect();
                    failures.push(now);
                    let keep = usize::try_from(p.failure_threshold).unwrap_or(usize::MAX);
                    if failures.len() > keep {
                        failures.drain(..failures.len() - keep);
                    }
                    if failures.len() >= keep {
                        (Next::open(now), BreakerEvent::FailureThreshold)
                    } else {
                        (
                            Next {
                                state: BreakerState::Closed,
                                failures,
                                opened_at: None,
                                half_open_at: None,
                                probes_in_flight: 0,
                                transitioned: false,
                            },
                            BreakerEvent::FailureThreshold,
                        )
                    }
                }
                // Already open, or a call admitted before a probe was sent:
                // the breaker has decided without this outcome.
                _ => return Ok(()),
            };
            if b.cas(&self.ctx, &current, next, event, now).await? {
                return Ok(());
            }
        }
        Err(contended(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_documented_lifecycle() {
        use BreakerEvent::*;
        use BreakerState::*;
        assert_eq!(transition(Closed, FailureThreshold), Some(Open));
        assert_eq!(transition(Open, CooldownElapsed), Some(HalfOpen));
        assert_eq!(transition(HalfOpen, ProbeSucceeded), Some(Closed));
        assert_eq!(transition(HalfOpen, ProbeFailed), Some(Open));
        for s in [Closed, Open, HalfOpen] {
            assert_eq!(transition(s, Reset), Some(Closed));
        }
        // Nothing jumps from CLOSED to HALF_OPEN or from OPEN straight to CLOSED but a reset.
        assert_eq!(transition(Closed, CooldownElapsed), None);
        assert_eq!(transition(Open, ProbeSucceeded), None);
        assert_eq!(transition(Closed, ProbeFailed), None);
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert!(BreakerPolicy::default().validate().is_ok());
        assert!(BreakerPolicy { failure_threshold: 0, ..Default::default() }.validate().is_err());
        assert!(BreakerPolicy { half_open_probes: 0, ..Default::default() }.validate().is_err());
        assert!(BreakerPolicy { window: Duration::zero(), ..Default::default() }.validate().is_err());
    }

    #[test]
    fn names_are_plain() {
        assert!(validate_name("stripe").is_ok() && validate_name("provider:stripe/v1").is_ok());
        assert!(
            validate_name("").is_err() && validate_name("a b").is_err() && validate_name(&"a".repeat(129)).is_err()
        );
    }
}
