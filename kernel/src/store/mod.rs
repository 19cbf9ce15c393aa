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

mod batch;
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

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqliteTransactionManager;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection};
use sqlx_core::transaction::TransactionManager;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::IdempotencyStats;
use crate::tenant::TenantContext;

pub use crate::state::StateVersion;
pub(crate) use batch::{Guard, Ran};
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
    /// SQLite: the connection kept back from the pool between calls (see
    /// [`Spare`]); shared by this handle's clones.
    spare: Arc<Spare>,
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
        Ok(Store {
            pool,
            url: url.clone(),
            clock,
            idempotency: Arc::default(),
            pool_id: Arc::default(),
            spare: Arc::default(),
        })
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
            Pool::Sqlite(p) => {
                let mut lease = self.lease(p).await?;
                SqliteTransactionManager::begin(&mut lease, None)
                    .await
                    .map_err(|e| errors::map(e, "begin a transaction"))?;
                lease.open_tx = true;
                TxInner::Sqlite(lease)
            }
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

    /// A transaction bound to `ctx`'s tenant whose statements
    /// ([`TenantTx::stmt`]) are sent together at its commit on SQLite, with
    /// BEGIN and COMMIT: one round trip to the driver's worker thread for
    /// the whole transaction (see `store/batch.rs`). A queued statement's
    /// failure, or its [`Guard`]'s, fails the commit and nothing is
    /// written. On PostgreSQL a transaction as [`Store::begin`] makes. Only
    /// statements made with [`TenantTx::stmt`] may run in it.
    pub(crate) async fn begin_batch(&self, ctx: &TenantContext) -> Result<TenantTx> {
        match &self.pool {
            Pool::Sqlite(p) => {
                Ok(TenantTx { inner: TxInner::SqliteBatch(self.lease(p).await?, batch::Batch::default()) })
            }
            Pool::Postgres(_) => self.begin(ctx).await,
        }
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
            Pool::Sqlite(p) => Ok(TenantTx { inner: TxInner::SqliteRead(self.lease(p).await?) }),
            Pool::Postgres(_) => self.begin(ctx).await,
        }
    }

    /// A SQLite connection for one call: the spare if there is one, else
    /// one from the pool.
    async fn lease(&self, pool: &SqlitePool) -> Result<Lease> {
        let mut spare = None;
        if let Some((mut conn, checked)) = self.spare.take() {
            // The last call on it did not finish (it failed, was dropped or
            // cancelled): ping it first, as the pool does with a connection
            // returned to it, which also waits out a queued ROLLBACK.
            if checked || sqlx::Connection::ping(&mut *conn).await.is_ok() {
                spare = Some(conn);
            } else {
                conn.close_on_drop();
            }
        }
        let conn = match spare {
            Some(conn) => conn,
            None => pool.acquire().await.map_err(|e| errors::map(e, "acquire a connection"))?,
        };
        Ok(Lease {
            conn: Some(conn),
            pool: pool.clone(),
            spare: self.spare.clone(),
            open_tx: false,
            raw_open: false,
            done: false,
        })
    }

    /// Close every connection. Pending work finishes first.
    pub async fn close(&self) {
        // The spare counts as checked out: the pool's close waits for it.
        drop(self.spare.take());
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
    /// SQLite: BEGIN ... COMMIT on a leased connection.
    Sqlite(Lease),
    /// [`Store::begin_single`] on SQLite: autocommit, one statement.
    SqliteRead(Lease),
    /// [`Store::begin_batch`] on SQLite: statements queued for the commit.
    SqliteBatch(Lease, batch::Batch),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl TenantTx {
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(mut lease) => {
                SqliteTransactionManager::commit(&mut lease).await.map_err(|e| errors::map(e, "commit"))?;
                lease.open_tx = false;
                lease.done = true;
                Ok(())
            }
            TxInner::SqliteRead(mut lease) => {
                lease.done = true;
                Ok(())
            }
            TxInner::SqliteBatch(mut lease, batch) => {
                batch.commit(&mut lease).await?;
                lease.done = true;
                Ok(())
            }
            TxInner::Postgres(t) => t.commit().await.map_err(|e| errors::map(e, "commit")),
        }
    }
}

/// SQLite: one connection a store keeps back from its pool between calls,
/// so that calls made one after another (a run's steps) use the same
/// connection with its prepared statements, without a trip through the
/// pool each time.
///
/// sqlx returns a connection to the pool from a spawned task that first
/// pings it (a round trip to the connection's worker thread); a call made
/// meanwhile takes another idle connection, or opens one if the pool has
/// room (its own thread, pragmas and schema read), so calls made one after
/// another alternated over the pool's connections, each statement prepared
/// on each (docs/benchmarks.md, `golden4`).
/// A connection whose call did not finish ([`TenantTx::commit`] not
/// reached: it failed, was dropped, or was cancelled; a transaction left
/// open has its ROLLBACK queued first, as sqlx's `Transaction` does) is kept
/// marked unchecked and pinged before it is used again, as the pool would
/// on its return, so a broken connection is still weeded out before reuse.
/// It is kept only while the pool could serve a waiter without it (a
/// connection idle, or room to open one): it is never the connection
/// someone is queued for.
#[derive(Default)]
struct Spare(std::sync::Mutex<Option<(PoolConnection<Sqlite>, bool)>>);

impl Spare {
    /// The spare, and whether its last call finished.
    fn take(&self) -> Option<(PoolConnection<Sqlite>, bool)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Keep `conn` if the spare is free and the pool can do without it;
    /// else back to the pool. `checked`: its last call finished.
    fn put(&self, conn: PoolConnection<Sqlite>, checked: bool, pool: &SqlitePool) {
        let pool_can_serve = pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections();
        if pool_can_serve && !pool.is_closed() {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some((conn, checked));
                return;
            }
        }
        release(conn);
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some((conn, _)) = self.take() {
            release(conn);
        }
    }
}

/// Back to the pool. sqlx returns a connection from a spawned task, so
/// outside a runtime (a store dropped after its runtime) the connection is
/// closed instead.
fn release(conn: PoolConnection<Sqlite>) {
    if tokio::runtime::Handle::try_current().is_err() {
        drop(conn.detach());
    } else {
        drop(conn);
    }
}

/// A SQLite connection for one [`TenantTx`], back to the spare (or the
/// pool) when dropped; a transaction left open is rolled back first.
pub(crate) struct Lease {
    conn: Option<PoolConnection<Sqlite>>,
    pool: SqlitePool,
    spare: Arc<Spare>,
    /// A BEGIN without its COMMIT yet.
    open_tx: bool,
    /// A batch's BEGIN (sent as SQL, unknown to sqlx's transaction
    /// manager) without a COMMIT or ROLLBACK known to have ended it: the
    /// connection is closed, never reused.
    raw_open: bool,
    /// The call finished ([`TenantTx::commit`]).
    done: bool,
}

impl std::ops::Deref for Lease {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if self.raw_open {
            // Out of the pool and closed: closing rolls back whatever the
            // connection left open.
            drop(conn.detach());
            return;
        }
        if self.open_tx {
            // As sqlx's `Transaction` does when dropped: the ROLLBACK is
            // queued on the connection's worker before anything else.
            SqliteTransactionManager::start_rollback(&mut conn);
        }
        self.spare.put(conn, self.done && !self.open_tx, &self.pool);
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
            // Its queued statements have not run yet: a statement run
            // directly would overtake them. Only `TenantTx::stmt` runs here.
            $crate::store::TxInner::SqliteBatch(..) => {
                Err(sqlx::Error::Protocol("a statement run directly in a batched transaction".into()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{CorrelationId, EntityId, Principal};
    use autobiz_testkit::TestDatabase;

    pub(super) fn ctx() -> TenantContext {
        TenantContext::new("acme".parse().unwrap(), Principal::new("test:store"), CorrelationId::new("corr"))
    }

    pub(super) async fn migrated(db: &TestDatabase) -> Store {
        Store::open_admin(&db.admin_url().parse().unwrap()).await.unwrap().migrate().await.unwrap();
        Store::open(&db.kernel_url().parse().unwrap()).await.unwrap()
    }

    fn sqlite_pool(store: &Store) -> &SqlitePool {
        match &store.pool {
            Pool::Sqlite(p) => p,
            Pool::Postgres(_) => panic!("a SQLite store"),
        }
    }

    fn set(n: i64) -> crate::state::Patch {
        serde_json::from_value(serde_json::json!([{"op": "add", "path": "", "value": {"n": n}}])).unwrap()
    }

    async fn blocks(store: &Store) -> i64 {
        let c = ctx();
        let mut tx = store.begin_single(&c).await.unwrap();
        let n: i64 = on_tx!(tx, conn => sqlx::query_scalar("SELECT count(*) FROM tool_blocks WHERE tenant_id = $1")
            .bind(c.tenant().as_str())
            .fetch_one(conn)
            .await)
        .unwrap();
        tx.commit().await.unwrap();
        n
    }

    async fn insert_block(tx: &mut TenantTx, store: &Store, tool: &str) {
        let now = store.now();
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO tool_blocks (tenant_id, tool, reason, blocked_by, blocked_at, created_at, updated_at)
             VALUES ($1, $2, 'test', 'test', $3, $3, $3)",
        )
        .bind("acme")
        .bind(tool)
        .bind(now)
        .execute(conn)
        .await
        .map(|_| ()))
        .unwrap();
    }

    /// A run's calls come one after another: on SQLite they reuse one
    /// connection (the spare, with its prepared statements) instead of
    /// alternating over the pool's while sqlx returns the last one in the
    /// background, and open none.
    #[tokio::test]
    async fn sqlite_calls_one_after_another_use_one_connection() {
        use sqlx::Connection;
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        let e: EntityId = "acme/order/1".parse().unwrap();
        let calls = |from: i64, to: i64| {
            let (store, e) = (&store, &e);
            async move {
                for v in from..to {
                    store.apply_patch(&ctx(), e, v, &set(v)).await.unwrap();
                    assert_eq!(store.state(&ctx(), e).await.unwrap().unwrap().version, v + 1);
                    assert!(store.block_tool(&ctx(), &format!("tool{v}"), "test").await.unwrap());
                }
            }
        };
        calls(0, 10).await;
        // The pool's size is what `Store::open` left (its migration checks
        // use the pool directly).
        let size = sqlite_pool(&store).size();
        let (conn, checked) = store.spare.take().expect("the connection is kept as the spare");
        assert!(checked);
        let cached = conn.cached_statements_size();
        assert!(cached >= 3, "the calls' statements are prepared on the spare: {cached}");
        store.spare.put(conn, true, sqlite_pool(&store));
        calls(10, 20).await;
        let (conn, _) = store.spare.take().expect("the spare");
        assert_eq!(conn.cached_statements_size(), cached, "the same connection served every call");
        assert_eq!(sqlite_pool(&store).size(), size, "no connection opened for calls made one after another");
    }

    /// A call that failed (or was dropped) leaves its connection as the
    /// spare marked unchecked: it is pinged before it serves the next call,
    /// and the next call finishing marks it checked again.
    #[tokio::test]
    async fn sqlite_a_failed_call_leaves_its_connection_unchecked() {
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        let c = ctx();
        let mut tx = store.begin_single(&c).await.unwrap();
        let r = on_tx!(tx, conn => sqlx::query("SELECT * FROM no_such_table").execute(conn).await.map(|_| ()));
        assert!(r.is_err());
        drop(tx);
        assert!(matches!(*store.spare.0.lock().unwrap(), Some((_, false))));
        assert_eq!(blocks(&store).await, 0);
        assert!(matches!(*store.spare.0.lock().unwrap(), Some((_, true))));
    }

    /// A transaction dropped without its commit is rolled back before its
    /// connection serves anything else: a later commit is a transaction of
    /// its own, visible to another connection (not a savepoint inside the
    /// abandoned one), and the abandoned write is not.
    async fn dropped_transaction_is_rolled_back(db: TestDatabase) {
        let store = migrated(&db).await;
        let c = ctx();
        let mut tx = store.begin(&c).await.unwrap();
        insert_block(&mut tx, &store, "abandoned").await;
        drop(tx);
        assert_eq!(blocks(&store).await, 0);
        let mut tx = store.begin(&c).await.unwrap();
        insert_block(&mut tx, &store, "kept").await;
        tx.commit().await.unwrap();
        let other = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
        assert_eq!(blocks(&other).await, 1);
        assert!(other.tool_blocked(&c, "kept").await.unwrap().is_some());
        assert!(other.tool_blocked(&c, "abandoned").await.unwrap().is_none());
        other.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn dropped_transaction_is_rolled_back_sqlite() {
        dropped_transaction_is_rolled_back(TestDatabase::sqlite()).await;
    }

    #[tokio::test]
    async fn dropped_transaction_is_rolled_back_postgres() {
        dropped_transaction_is_rolled_back(TestDatabase::postgres().await).await;
    }

    /// A store (its spare connection) dropped after its runtime has gone
    /// does not panic: sqlx returns a connection from a spawned task, which
    /// needs a runtime, so the spare is closed instead.
    #[test]
    fn sqlite_a_store_outliving_its_runtime_drops_cleanly() {
        let db = TestDatabase::sqlite();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = rt.block_on(async {
            let store = migrated(&db).await;
            assert!(store.block_tool(&ctx(), "t", "test").await.unwrap());
            store
        });
        drop(rt);
        assert!(store.spare.0.lock().unwrap().is_some());
        drop(store);
    }
}
