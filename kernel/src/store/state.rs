//! Versioned entity state in `state_versions` (see [`crate::state`]).
//!
//! A write reads the latest version in one short transaction, applies the
//! patch in memory, and inserts the next version in a second transaction
//! whose `INSERT ... SELECT ... WHERE max(version) = expected` re-checks the
//! version at write time; the unique key `(tenant_id, entity_id, version)`
//! settles two writers that pass that check together. So a stale writer and
//! the loser of a race both get `STATE_CONFLICT` and write nothing, without
//! any lock held across the patch.
//!
//! A writer that holds the latest version itself (the engine, which wrote
//! it) skips the read: [`Store::put_state`] inserts the state it computed
//! under the same re-check, and [`Store::put_state_in`] does so inside a
//! caller's transaction (a step's result, receipt and trace record commit
//! with its state version), where a conflict writes nothing of the state and
//! leaves the rest of the transaction to commit.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Guard, Ran, Store, TenantTx, errors, on_tx};
use crate::error::{Error, ErrorCode, Result};
use crate::state::{self, Patch, StateVersion};
use crate::tenant::{EntityId, TenantContext};

type Row = (String, i64, Json<Value>, Json<Value>, String, DateTime<Utc>);

fn version(row: Row) -> StateVersion {
    let (entity_id, version, Json(state), Json(patch), correlation_id, created_at) = row;
    StateVersion { entity_id, version, state, patch, correlation_id, created_at }
}

impl Store {
    /// Apply `patch` to `entity`'s state at `expected_version` (0 to create
    /// it, starting from `{}`) and store version `expected_version + 1`, with
    /// the patch and the context's correlation id.
    ///
    /// `STATE_CONFLICT` when `expected_version` is not the latest version
    /// (also when another writer wins a race for it); `STATE_PATCH_INVALID`
    /// when the patch does not apply; `TENANT_FORBIDDEN` for another
    /// tenant's entity. Nothing is written in any of these cases.
    pub async fn apply_patch(
        &self,
        ctx: &TenantContext,
        entity: &EntityId,
        expected_version: i64,
        patch: &Patch,
    ) -> Result<StateVersion> {
        self.check_state_write(ctx, entity, expected_version).await?;
        let current = self.read_latest(ctx, entity).await?;
        let (found, base) = match &current {
            Some(v) => (v.version, &v.state),
            None => (0, &state::initial_state()),
        };
        if found != expected_version {
            return Err(conflict_at(entity, found, expected_version));
        }
        let next_state = state::apply(base, patch)?;
        self.put_checked(ctx, entity, expected_version, next_state, patch).await
    }

    /// [`Store::apply_patch`] without the read: `next_state` is what
    /// `patch` makes of version `expected_version` as the caller holds it
    /// (the state it wrote or read last; versions never change once
    /// written). The insert's `WHERE` still checks at write time that
    /// `expected_version` is the latest, so a stale caller gets
    /// `STATE_CONFLICT` and writes nothing, as with [`Store::apply_patch`].
    pub async fn put_state(
        &self,
        ctx: &TenantContext,
        entity: &EntityId,
        expected_version: i64,
        next_state: Value,
        patch: &Patch,
    ) -> Result<StateVersion> {
        self.check_state_write(ctx, entity, expected_version).await?;
        self.put_checked(ctx, entity, expected_version, next_state, patch).await
    }

    async fn put_checked(
        &self,
        ctx: &TenantContext,
        entity: &EntityId,
        expected_version: i64,
        next_state: Value,
        patch: &Patch,
    ) -> Result<StateVersion> {
        let patch_json = patch_json(patch)?;
        let now = self.now();
        // One statement: its WHERE re-checks the version as it writes.
        let mut tx = self.begin_single(ctx).await?;
        if !insert_version(&mut tx, ctx, entity, expected_version, &next_state, &patch_json, now).await? {
            return Err(conflict_at(entity, expected_version + 1, expected_version));
        }
        tx.commit().await?;
        Ok(StateVersion {
            entity_id: entity.to_string(),
            version: expected_version + 1,
            state: next_state,
            patch: patch_json,
            correlation_id: ctx.correlation_id().as_str().to_owned(),
            created_at: now,
        })
    }

    /// [`Store::put_state`] in `tx`, committed with whatever else `tx`
    /// writes (a step's result, receipt and trace record). `Ok(false)` when
    /// `expected_version` is no longer the latest: nothing of the state is
    /// written and `tx` stays usable (a version another writer inserted
    /// first does nothing instead of failing the statement, which on
    /// PostgreSQL would abort the whole transaction), so the caller decides
    /// what of `tx` still commits. In a batched transaction
    /// ([`Store::begin_batch`]) the check is the commit's: `Ok(true)` means
    /// queued, and a version already taken fails the commit, which then
    /// writes nothing.
    pub(crate) async fn put_state_in(
        &self,
        tx: &mut TenantTx,
        ctx: &TenantContext,
        entity: &EntityId,
        expected_version: i64,
        next_state: &Value,
        patch: &Patch,
    ) -> Result<bool> {
        self.check_state_write(ctx, entity, expected_version).await?;
        let patch_json = patch_json(patch)?;
        insert_version(tx, ctx, entity, expected_version, next_state, &patch_json, self.now()).await
    }

    async fn check_state_write(&self, ctx: &TenantContext, entity: &EntityId, expected_version: i64) -> Result<()> {
        self.authorize(ctx, entity.tenant(), &entity.to_string(), "write").await?;
        if ctx.correlation_id().as_str().is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "a state write needs a correlation id"));
        }
        if expected_version < 0 {
            return Err(Error::new(ErrorCode::InvalidInput, "expected_version must be 0 (create) or more"));
        }
        Ok(())
    }

    /// The latest version of `entity`'s state, if it has one.
    pub async fn state(&self, ctx: &TenantContext, entity: &EntityId) -> Result<Option<StateVersion>> {
        self.authorize(ctx, entity.tenant(), &entity.to_string(), "read").await?;
        self.read_latest(ctx, entity).await
    }

    /// Every version of `entity`'s state, oldest first.
    pub async fn state_history(&self, ctx: &TenantContext, entity: &EntityId) -> Result<Vec<StateVersion>> {
        self.authorize(ctx, entity.tenant(), &entity.to_string(), "read").await?;
        let mut tx = self.begin(ctx).await?;
        let rows: Vec<Row> = on_tx!(tx, c => sqlx::query_as(
            "SELECT entity_id, version, state, patch, correlation_id, created_at FROM state_versions
              WHERE tenant_id = $1 AND entity_id = $2 ORDER BY version",
        )
        .bind(ctx.tenant().as_str())
        .bind(entity.to_string())
        .fetch_all(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read state history"))?;
        tx.commit().await?;
        Ok(rows.into_iter().map(version).collect())
    }

    async fn read_latest(&self, ctx: &TenantContext, entity: &EntityId) -> Result<Option<StateVersion>> {
        let mut tx = self.begin_single(ctx).await?;
        let row: Option<Row> = on_tx!(tx, c => sqlx::query_as(
            "SELECT entity_id, version, state, patch, correlation_id, created_at FROM state_versions
              WHERE tenant_id = $1 AND entity_id = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(ctx.tenant().as_str())
        .bind(entity.to_string())
        .fetch_optional(&mut *c)
        .await)
        .map_err(|e| errors::map(e, "read state"))?;
        tx.commit().await?;
        Ok(row.map(version))
    }
}

fn conflict_at(entity: &EntityId, found: i64, expected_version: i64) -> Error {
    Error::new(
        ErrorCode::StateConflict,
        format!("state of {entity} is at version {found}, not {expected_version}: reload and retry"),
    )
}

fn patch_json(patch: &Patch) -> Result<Value> {
    serde_json::to_value(patch)
        .map_err(|e| Error::new(ErrorCode::StatePatchInvalid, format!("cannot serialize the patch: {e}")))
}

/// Insert version `expected_version + 1` if `expected_version` is the
/// latest: one statement whose `WHERE` re-checks the version as it writes;
/// a row another writer inserted first for that version does nothing
/// (`ON CONFLICT DO NOTHING`). `false`: nothing was written. In a batched
/// transaction ([`Store::begin_batch`]) `true` means queued, and a version
/// already taken fails the commit (`STATE_CONFLICT`).
async fn insert_version(
    tx: &mut TenantTx,
    ctx: &TenantContext,
    entity: &EntityId,
    expected_version: i64,
    next_state: &Value,
    patch_json: &Value,
    now: DateTime<Utc>,
) -> Result<bool> {
    // Batched, a version someone else wrote first fails the commit: nothing
    // of the transaction is written, and the caller writes its parts apart.
    let taken = Error::new(
        ErrorCode::StateConflict,
        format!("state of {entity} moved past version {expected_version} before this write"),
    );
    let inserted = tx
        .stmt(
            "INSERT INTO state_versions
               (tenant_id, entity_id, version, state, patch, correlation_id, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $7
              WHERE (SELECT COALESCE(MAX(version), 0) FROM state_versions
                      WHERE tenant_id = $1 AND entity_id = $2) = $8
             ON CONFLICT (tenant_id, entity_id, version) DO NOTHING",
            "write state",
        )
        .bind(ctx.tenant().as_str())
        .bind(entity.to_string())
        .bind(expected_version + 1)
        .bind(Json(next_state))
        .bind(Json(patch_json))
        .bind(ctx.correlation_id().as_str())
        .bind(now)
        .bind(expected_version)
        .run(Guard::One(taken))
        .await;
    match inserted {
        Ok(Ran::Now(n)) => Ok(n == 1),
        Ok(Ran::Queued) => Ok(true),
        Err(e) if errors::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(errors::map(e, "write state")),
    }
}
