//! Versioned entity state in `state_versions` (see [`crate::state`]).
//!
//! A write reads the latest version in one short transaction, applies the
//! patch in memory, and inserts the next version in a second transaction
//! whose `INSERT ... SELECT ... WHERE max(version) = expected` re-checks the
//! version at write time; the unique key `(tenant_id, entity_id, version)`
//! settles two writers that pass that check together. So a stale writer and
//! the loser of a race both get `STATE_CONFLICT` and write nothing, without
//! any lock held across the patch.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Store, errors, on_tx};
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
        self.authorize(ctx, entity.tenant(), &entity.to_string(), "write").await?;
        if ctx.correlation_id().as_str().is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "a state write needs a correlation id"));
        }
        if expected_version < 0 {
            return Err(Error::new(ErrorCode::InvalidInput, "expected_version must be 0 (create) or more"));
        }
        let conflict = |found: i64| {
            Error::new(
                ErrorCode::StateConflict,
                format!("state of {entity} is at version {found}, not {expected_version}: reload and retry"),
            )
        };
        let current = self.read_latest(ctx, entity).await?;
        let (found, base) = match &current {
            Some(v) => (v.version, &v.state),
            None => (0, &state::initial_state()),
        };
        if found != expected_version {
            return Err(conflict(found));
        }
        let next_state = state::apply(base, patch)?;
        let next = expected_version + 1;
        let now = self.now();
        let patch_json = serde_json::to_value(patch)
            .map_err(|e| Error::new(ErrorCode::StatePatchInvalid, format!("cannot serialize the patch: {e}")))?;
        // One statement: its WHERE re-checks the version as it writes.
        let mut tx = self.begin_single(ctx).await?;
        let inserted = on_tx!(tx, c => sqlx::query(
            "INSERT INTO state_versions
               (tenant_id, entity_id, version, state, patch, correlation_id, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $7
              WHERE (SELECT COALESCE(MAX(version), 0) FROM state_versions
                      WHERE tenant_id = $1 AND entity_id = $2) = $8",
        )
        .bind(ctx.tenant().as_str())
        .bind(entity.to_string())
        .bind(next)
        .bind(Json(&next_state))
        .bind(Json(&patch_json))
        .bind(ctx.correlation_id().as_str())
        .bind(now)
        .bind(expected_version)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()));
        match inserted {
            Ok(1) => tx.commit().await?,
            Ok(_) => return Err(conflict(next)),
            Err(e) if errors::is_unique_violation(&e) => return Err(conflict(next)),
            Err(e) => return Err(errors::map(e, "write state")),
        }
        Ok(StateVersion {
            entity_id: entity.to_string(),
            version: next,
            state: next_state,
            patch: patch_json,
            correlation_id: ctx.correlation_id().as_str().to_owned(),
            created_at: now,
        })
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
