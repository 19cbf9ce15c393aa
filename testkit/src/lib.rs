//! A fresh database for every test, so tests never share state and can run in
//! parallel.
//!
//! * [`TestDatabase::sqlite`]: a file in a temporary directory.
//! * [`TestDatabase::postgres`]: a new database on the server named by
//!   `AUTOBIZ_TEST_DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/test`), dropped when the value is
//!   dropped, also when the test panics. If the server is not reachable the
//!   test fails with a message saying how to start it: a PostgreSQL test is
//!   never skipped.
//!
//! This crate knows only URLs; it does not depend on the kernel, so the
//! kernel's own tests can use it without a dependency cycle.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server PostgreSQL tests run against.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The role the kernel runs as (created by the first migration).
pub const KERNEL_ROLE: &str = "autobiz_kernel";

/// Which engine a test database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test.
pub struct TestDatabase {
    backend: Backend,
    admin_url: String,
    kernel_url: String,
    server_url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A SQLite file that does not exist yet, in a fresh temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("autobiz.db").display());
        TestDatabase {
            backend: Backend::Sqlite,
            admin_url: url.clone(),
            kernel_url: url,
            server_url: String::new(),
            name: String::new(),
            _dir: Some(dir),
        }
    }

    /// A new, empty PostgreSQL database. Panics loudly when the server is
    /// down: these tests must not pass by not running.
    pub async fn postgres() -> TestDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let server_url = server_url();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("autobiz_test_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut admin = connect_server(&server_url).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        let admin_url = with_database(&server_url, &name, None);
        let kernel_url = with_database(&server_url, &name, Some(KERNEL_ROLE));
        TestDatabase { backend: Backend::Postgres, admin_url, kernel_url, server_url, name, _dir: None }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// URL of the schema owner (migrations, raw inspection).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// URL of the kernel's runtime role (the same file for SQLite).
    pub fn kernel_url(&self) -> &str {
        &self.kernel_url
    }

    /// On SQLite, assert that its query planner serves `sql` through `index`
    /// (an index a migration added so a lookup does not scan a tenant's
    /// history). PostgreSQL's planner picks by table statistics, which a
    /// test database does not have, so there this checks nothing.
    pub async fn assert_sqlite_plan_uses(&self, sql: &str, index: &str) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let pool = sqlx::SqlitePool::connect(&self.admin_url).await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).fetch_all(&pool).await.unwrap();
        pool.close().await;
        assert!(plan.iter().any(|(_, _, _, d)| d.contains(index)), "{sql} is not planned through {index}: {plan:?}");
    }

    /// The SQLite file, for tests that corrupt or inspect it.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("autobiz.db"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime (or while unwinding): do the async
        // work on a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server_url).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

/// Generate `NAME::sqlite` and `NAME::postgres` from one async test body
/// taking a [`TestDatabase`], so every store test runs on both backends.
/// The calling crate needs `tokio` with the `macros` feature.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::TestDatabase::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::TestDatabase::postgres().await).await;
            }
        }
    };
}

/// `AUTOBIZ_TEST_DATABASE_URL` or the default.
pub fn server_url() -> String {
    std::env::var("AUTOBIZ_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

async fn connect_server(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required for this test and is not reachable at {url}: {e}\n\
             start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             or point AUTOBIZ_TEST_DATABASE_URL at a server"
        )
    })
}

/// The server URL with another database (and optionally another user).
fn with_database(server_url: &str, database: &str, user: Option<&str>) -> String {
    let (scheme, rest) = server_url.split_once("://").expect("a postgres:// URL");
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = match user {
        Some(user) => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}/{database}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten() {
        assert_eq!(with_database("postgres://postgres@h:5432/test", "x", None), "postgres://postgres@h:5432/x");
        assert_eq!(with_database("postgres://postgres:pw@h:5432/test", "x", Some("k")), "postgres://k@h:5432/x");
        assert_eq!(with_database("postgres://h/test?sslmode=disable", "x", Some("k")), "postgres://k@h/x");
    }
}
