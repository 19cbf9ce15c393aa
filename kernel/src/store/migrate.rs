//! Embedded migrations: `migrations/sqlite` and `migrations/postgres`, compiled
//! into the binary, with the same version numbers in both (a test keeps them
//! in step). Every migration is reversible (`.up.sql` / `.down.sql`), which is
//! the downgrade path: `autobiz db downgrade --to VERSION`.

use sqlx::migrate::Migrator;

use super::{Backend, Pool, Store, errors};
use crate::error::{Error, ErrorCode, Result};

static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/postgres");

/// The embedded migrations for a backend.
pub fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

/// One known migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// What `migrate` or `downgrade` changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationSummary {
    pub backend: Backend,
    /// Versions applied (migrate) or reverted (downgrade) by this call, in order.
    pub changed: Vec<i64>,
    /// The highest applied version afterwards (0 for an empty database).
    pub current: i64,
}

impl Store {
    /// Apply every pending migration. Applying twice is a no-op. Each
    /// migration runs in its own transaction, so a failure leaves the database
    /// at the last complete version.
    pub async fn migrate(&self) -> Result<MigrationSummary> {
        let before = self.applied_versions().await?;
        let m = migrator(self.backend());
        let result = match &self.pool {
            Pool::Sqlite(p) => m.run(p).await,
            Pool::Postgres(p) => m.run(p).await,
        };
        result.map_err(|e| migrate_error(e, "apply migrations"))?;
        self.summary(before, false).await
    }

    /// Revert applied migrations above `target` (0 reverts everything), newest
    /// first, each with its `.down.sql`.
    pub async fn downgrade(&self, target: i64) -> Result<MigrationSummary> {
        if target < 0 {
            return Err(Error::new(ErrorCode::InvalidInput, "the target version must be 0 or more"));
        }
        let before = self.applied_versions().await?;
        let m = migrator(self.backend());
        let result = match &self.pool {
            Pool::Sqlite(p) => m.undo(p, target).await,
            Pool::Postgres(p) => m.undo(p, target).await,
        };
        result.map_err(|e| migrate_error(e, "revert migrations"))?;
        self.summary(before, true).await
    }

    /// Every embedded migration with whether it is applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationState>> {
        let applied = self.applied_versions().await?;
        Ok(migrator(self.backend())
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// Fail with `STORE_NOT_MIGRATED` unless the database has exactly the
    /// embedded migrations.
    pub async fn check_schema_current(&self) -> Result<()> {
        let applied = self.applied_versions().await?;
        let known: Vec<i64> =
            migrator(self.backend()).iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect();
        if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
            return Err(Error::new(
                ErrorCode::StoreNotMigrated,
                format!("the database has migration {newer}, which this autobiz does not know: upgrade autobiz"),
            ));
        }
        let missing: Vec<String> = known.iter().filter(|v| !applied.contains(v)).map(i64::to_string).collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorCode::StoreNotMigrated,
                format!(
                    "the database at {} lacks migration(s) {}: run `autobiz db migrate` as the schema owner",
                    self.url,
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Versions recorded as successfully applied; empty when the migrations
    /// table does not exist yet.
    async fn applied_versions(&self) -> Result<Vec<i64>> {
        const SQL: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let rows: std::result::Result<Vec<(i64,)>, sqlx::Error> = match &self.pool {
            Pool::Sqlite(p) => {
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                        .fetch_optional(p)
                        .await
                        .map_err(|e| errors::map(e, "read the migration history"))?;
                if exists.is_none() {
                    return Ok(Vec::new());
                }
                sqlx::query_as(SQL).fetch_all(p).await
            }
            Pool::Postgres(p) => {
                let exists: (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(p)
                    .await
                    .map_err(|e| errors::map(e, "read the migration history"))?;
                if !exists.0 {
                    return Ok(Vec::new());
                }
                sqlx::query_as(SQL).fetch_all(p).await
            }
        };
        match rows {
            Ok(rows) => Ok(rows.into_iter().map(|(v,)| v).collect()),
            Err(e) => {
                let mapped = errors::map(e, "read the migration history");
                if mapped.code() == ErrorCode::TenantForbidden {
                    // The role may not read the history: treat as not migrated.
                    Err(Error::new(
                        ErrorCode::StoreNotMigrated,
                        "this role cannot read the migration history: run `autobiz db migrate` as the schema owner",
                    ))
                } else {
                    Err(mapped)
                }
            }
        }
    }

    async fn summary(&self, before: Vec<i64>, reverted: bool) -> Result<MigrationSummary> {
        let after = self.applied_versions().await?;
        let changed = if reverted {
            before.iter().rev().filter(|v| !after.contains(v)).copied().collect()
        } else {
            after.iter().filter(|v| !before.contains(v)).copied().collect()
        };
        Ok(MigrationSummary { backend: self.backend(), changed, current: after.last().copied().unwrap_or(0) })
    }
}

fn migrate_error(e: sqlx::migrate::MigrateError, doing: &str) -> Error {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => {
            let mapped = errors::map(inner, doing);
            // Connection trouble stays an infrastructure failure; a statement
            // that fails is a failed migration.
            if mapped.code() == ErrorCode::StoreUnavailable
                || mapped.code() == ErrorCode::StoreIo
                || mapped.code() == ErrorCode::StoreCorrupt
            {
                mapped
            } else {
                Error::new(ErrorCode::MigrationFailed, format!("cannot {doing}: {}", mapped.message()))
            }
        }
        other => Error::new(ErrorCode::MigrationFailed, format!("cannot {doing}: {other}")).with_source(other),
    }
}
