//! The store: one API over SQLite (embedded default) and PostgreSQL
//! (production), chosen by the URL scheme.
//!
//! Tenant isolation is enforced twice on PostgreSQL and once on SQLite:
//!
//! * Every call takes a [`TenantContext`] and opens a [`TenantTx`]. Every
//!   statement the store issues filters on `tenant_id = $1` (the only
//!   isolation SQLite has).
//! * On PostgreSQL the transaction also sets `app.tenant_id` with
//!   `set_config(..., true)` (transaction-local, never session-wide, so a
//!   pooled connection cannot carry one tenant into the next transaction),
//!   and row-level security (see `migrations/postgres`) hides every other
//!   tenant's rows even from SQL that forgets the filter. The runtime
//!   connection must be a role that RLS applies to: [`Store::open`] refuses a
//!   superuser, a `BYPASSRLS` role, or a role that owns (or is a member of the
//!   owner of) the tenant tables, with `STORE_ROLE_UNSAFE`.
//!
//! A request for another tenant's entity is refused with `TENANT_FORBIDDEN`
//! before any query runs, and the attempt is written to `security_events`.

mod drift;
mod errors;
mod events;
mod idempotency;
mod migrate;
mod receipts;
mod records;
mod runs;
mod state;
mod url;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::IdempotencyStats;
use crate::tenant::TenantContext;

pub use crate::state::StateVersion;
pub use drift::{NewAction, NewCase, ReconciliationAction};
pub use errors::is_unique_violation;
pub use errors::map as driver_error;
pub(crate) use errors::map as map_error;
pub use events::{Admitted, EventFinish, NewEvent, ReconciliationCase, StoredEvent};
pub use migrate::{MigrationState, MigrationSummary, migrator};
pub use records::{AuditEvent, AuditRecord, SecurityEvent, SecurityRecord, TenantRecord};
pub use runs::{NewRun, RunRecord};
pub use url::{Backend, DEFAULT_DATABASE_URL, DatabaseUrl};

/// The PostgreSQL role the kernel runs as; created by the first migration.
pub const KERNEL_ROLE: &str = "autobiz_kernel";

/// The tables that hold tenant data. Each has `tenant_id NOT NULL`, and on
/// PostgreSQL row-level security.
pub const TENANT_TABLES: &[&str] = &[
    "tenants",
    "state_versions",
    "receipts",
    "traces",
    "event_store",
    "reconciliation",
    "reconciliation_actions",
    "hitl_requests",
    "idempotency_keys",
    "security_events",
    "audit_events",
    "tool_blocks",
    "runs",
    "circuit_breakers",
];

/// What a committed transaction of a SQLite store survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteDurability {
    /// `synchronous=FULL`: every commit is flushed to the disk (an fsync of
    /// the WAL), so it survives power loss. The default, and every real
    /// store's.
    #[default]
    PowerLoss,
    /// `synchronous=NORMAL` in WAL mode: a commit is in the WAL (the OS's
    /// page cache) when it returns, so it survives the process being killed
    /// (kill -9) but not the machine losing power; the disk is flushed at
    /// checkpoints. For throwaway stores that die with their test
    /// (the golden runner's): the same transactions, without an fsync each.
    ProcessCrash,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    url: DatabaseUrl,
    clock: Arc<dyn Clock>,
    idempotency: Arc<IdempotencyStats>,
    /// Shared by this handle's clones only: see [`Store::same_pool`].
    pool_id: Arc<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Store {
    /// Open the store for the kernel's normal work.
    ///
    /// SQLite: the directory and file are created on first use and pending
    /// migrations are applied (the embedded default needs no set-up step).
    /// PostgreSQL: the schema must already be current (`autobiz db migrate`,
    /// run as the owner) and the role must be one row-level security applies
    /// to; otherwise `STORE_NOT_MIGRATED` or `STORE_ROLE_UNSAFE`.
    pub async fn open(url: &DatabaseUrl) -> Result<Store> {
        Self::open_with_clock(url, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(url: &DatabaseUrl, clock: Arc<dyn Clock>) -> Result<Store> {
        Self::open_with_durability(url, clock, SqliteDurability::PowerLoss).await
    }

    /// [`Store::open_with_clock`] with the commits of a SQLite store
    /// surviving only what `durability` says (PostgreSQL: unchanged, the
    /// server decides). [`SqliteDurability::ProcessCrash`] is for a
    /// throwaway store (the golden runner's), never for a real one.
    pub async fn open_with_durability(
        url: &DatabaseUrl,
        clock: Arc<dyn Clock>,
        durability: SqliteDurability,
    ) -> Result<Store> {
        let store = Self::connect(url, clock, durability).await?;
        match store.backend() {
            Backend::Sqlite => {
                store.migrate().await?;
            }
            Backend::Postgres => {
                store.check_role_is_isolated().await?;
                store.check_schema_current().await?;
            }
        }
        Ok(store)
    }

    /// Open the store as its owner, for `db migrate`, `db status` and
    /// `db downgrade`. No role or schema checks.
    pub async fn open_admin(url: &DatabaseUrl) -> Result<Store> {
        Self::connect(url, Arc::new(SystemClock), SqliteDurability::PowerLoss).await
    }

    async fn connect(url: &DatabaseUrl, clock: Arc<dyn Clock>, durability: SqliteDurability) -> Result<Store> {
        let pool = match url.backend() {
            Backend::Sqlite => Pool::Sqlite(connect_sqlite(url, durability).await?),
            Backend::Postgres => Pool::Postgres(connect_postgres(url).await?),
        };
        Ok(Store { pool, url: url.clone(), clock, idempotency: Arc::default(), pool_id: Arc::default() })
    }

    /// Whether `other` is a clone of this handle (the same connection pool,
    /// so the same database): one transaction may then write for both.
    pub fn same_pool(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.pool_id, &other.pool_id)
    }

    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The store's clock reading, the time every row it writes carries, at
    /// the precision both backends store (PostgreSQL keeps microseconds), so
    /// what a write returns equals what a read gets.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        use chrono::SubsecRound;
        self.clock.now().trunc_subsecs(6)
    }

    /// The idempotency decisions of this store and its clones so far
    /// (`idempotency_hit_total`, `idempotency_miss_total`, ...).
    pub fn idempotency_stats(&self) -> &IdempotencyStats {
        &self.idempotency
    }

    /// Begin a transaction bound to `ctx`'s tenant.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<TenantTx> {
        let inner = match &self.pool {
            Pool::Sqlite(p) => TxInner::Sqlite(p.begin().await.map_err(|e| errors::map(e, "begin a transaction"))?),
            Pool::Postgres(p) => {
                let mut tx = p.begin().await.map_err(|e| errors::map(e, "begin a transaction"))?;
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(ctx.tenant().as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| errors::map(e, "set the tenant context"))?;
                TxInner::Postgres(tx)
            }
        };
        Ok(TenantTx { inner })
    }

    /// A handle for statements that each stand alone (usually one) bound to
    /// `ctx`'s tenant: on SQLite a pooled connection in autocommit mode,
    /// where each statement is a transaction of its own (atomic, one
    /// snapshot, and committed as durably as [`TenantTx::commit`]), without
    /// the two extra round trips to the driver's worker thread that BEGIN
    /// and COMMIT cost; on PostgreSQL a transaction as [`Store::begin`]
    /// makes (the tenant setting that row-level security reads is
    /// transaction-local). Call [`TenantTx::commit`] after it all the same.
    /// Statements that must hold together take [`Store::begin`].
    pub async fn begin_single(&self, ctx: &TenantContext) -> Result<TenantTx> {
        match &self.pool {
            Pool::Sqlite(p) => {
                let conn = p.acquire().await.map_err(|e| errors::map(e, "acquire a connection"))?;
                Ok(TenantTx { inner: TxInner::SqliteRead(conn) })
            }
            Pool::Postgres(_) => self.begin(ctx).await,
        }
    }

    /// Close every connection. Pending work finishes first.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    async fn check_role_is_isolated(&self) -> Result<()> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(()) };
        let row: (String, bool, bool, i64) = sqlx::query_as(
            "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls,
                    (SELECT count(*) FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = current_schema()
                        AND c.relname = ANY($1)
                        AND c.relkind IN ('r', 'p')
                        AND pg_has_role(r.oid, c.relowner, 'MEMBER'))
               FROM pg_roles r WHERE r.rolname = current_user",
        )
        .bind(TENANT_TABLES)
        .fetch_one(pool)
        .await
        .map_err(|e| errors::map(e, "inspect the connection's role"))?;
        let (role, superuser, bypass, owned) = row;
        let why = if superuser {
            Some("is a superuser")
        } else if bypass {
            Some("has BYPASSRLS")
        } else if owned > 0 {
            Some("owns the tenant tables (or is a member of their owner)")
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::new(
                ErrorCode::StoreRoleUnsafe,
                format!(
                    "refusing to run as PostgreSQL role {role:?}: it {why}, so row-level security would not isolate tenants; \
                     connect as {KERNEL_ROLE} (created by `autobiz db migrate`), e.g. postgres://{KERNEL_ROLE}@HOST/DB"
                ),
            )),
            None => Ok(()),
        }
    }
}

/// A transaction bound to one tenant. Dropping it without [`TenantTx::commit`]
/// rolls back.
pub struct TenantTx {
    pub(crate) inner: TxInner,
}

pub(crate) enum TxInner {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// [`Store::begin_single`] on SQLite: autocommit, one statement.
    SqliteRead(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl TenantTx {
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(t) => t.commit().await,
            TxInner::SqliteRead(_) => Ok(()),
            TxInner::Postgres(t) => t.commit().await,
        }
        .map_err(|e| errors::map(e, "commit"))
    }
}

/// Run `$body` with `$c` bound to the transaction's connection, whatever the
/// backend. The body is compiled once per backend, so the SQL must be valid in
/// both dialects (`$N` placeholders work in SQLite too).
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match &mut $tx.inner {
            $crate::store::TxInner::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxInner::SqliteRead(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxInner::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}
pub(crate) use on_tx;

async fn connect_sqlite(url: &DatabaseUrl, durability: SqliteDurability) -> Result<SqlitePool> {
    let (options, max) = if url.is_sqlite_memory() {
        // Every connection to :memory: is a separate database: use one.
        (SqliteConnectOptions::new().in_memory(true), 1)
    } else {
        let path = url.sqlite_path().expect("sqlite URL has a path");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(ErrorCode::StoreIo, format!("cannot create the database directory {}: {e}", dir.display()))
                    .with_source(e)
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed receipt survives power loss, not only a crash.
            // Each commit is an fsync of the WAL: on a disk with a cache that
            // acknowledges at once, 448 µs a step against 433 µs with NORMAL
            // (floors in the design notes); on the shared VM disk of the
            // golden figures, an fsync takes ~5 ms (docs/benchmarks.md).
            .synchronous(match durability {
                SqliteDurability::PowerLoss => SqliteSynchronous::Full,
                SqliteDurability::ProcessCrash => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        (options, 4)
    };
    let pool = SqlitePoolOptions::new()
        // A connection to a local file does not go stale the way a network
        // one does: no ping (a round trip to the driver's worker thread)
        // before every acquire. A connection left in a bad state is still
        // caught by the ping sqlx makes when it is returned.
        .test_before_acquire(false)
        .max_connections(max)
        .min_connections(if url.is_sqlite_memory() { 1 } else { 0 })
        .idle_timeout(if url.is_sqlite_memory() { None } else { Some(Duration::from_secs(600)) })
        .max_lifetime(if url.is_sqlite_memory() { None } else { Some(Duration::from_secs(1800)) })
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| errors::map(e, &format!("open the SQLite database {url}")))?;
    // Opening a file that is not a database succeeds; the first read fails.
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .execute(&pool)
        .await
        .map_err(|e| errors::map(e, &format!("read the SQLite database {url}")))?;
    Ok(pool)
}

async fn connect_postgres(url: &DatabaseUrl) -> Result<PgPool> {
    use sqlx::Connection;
    let options: PgConnectOptions = url.expose().parse().map_err(|e| errors::map(e, "parse the database URL"))?;
    let options = options.application_name("autobiz");
    // One direct connection first: a pool retries until its timeout and then
    // reports only "timed out", while this reports the real reason
    // (connection refused, no such database, authentication failed).
    let probe = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!("cannot connect to PostgreSQL at {url}: timed out after 10 s"),
            )
        })?
        .map_err(|e| errors::map(e, &format!("connect to PostgreSQL at {url}")))?;
    let _ = probe.close().await;
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| errors::map(e, &format!("connect to PostgreSQL at {url}")))
}
