//! Statements a SQLite transaction sends to the driver together.
//!
//! Why: sqlx runs each SQLite connection on a worker thread of its own, and
//! every statement, BEGIN and COMMIT is a round trip to that thread: two
//! thread wake-ups. On this project's 2-vCPU VMs a wake-up of a thread on
//! the other vCPU costs about 40 µs, so one `SELECT 1` takes about 95 µs
//! while SQLite's own work on a step's few rows takes a few (measured in
//! docs/benchmarks.md, "`golden5`: one round trip per transaction"). A step's commit
//! (its result, receipt, trace record and state version) was six such
//! round trips.
//!
//! A batched transaction ([`Store::begin_batch`](super::Store::begin_batch))
//! queues its statements instead of running them. At commit they go to the
//! worker as one multi-statement query, `BEGIN; s1; ...; sn; COMMIT`, which
//! sqlx runs statement by statement on the worker, with `$N` arguments
//! numbered across the whole query (each statement's own `$1..$k` are
//! renumbered here), stopping at the first statement that fails. A
//! statement with a [`Guard::One`] is followed by its check,
//! `INSERT INTO batch_guard (ok) VALUES (changes() = 1)`, which stores
//! nothing and fails when the statement before changed another number of
//! rows (the view and trigger of migration 0010). So a transaction whose
//! statements all succeed is one round trip; one that fails is rolled back
//! with a second (ROLLBACK).
//!
//! What this changes for a caller: a queued statement's failure (its
//! constraint, its guard) is reported by the commit, not by the statement,
//! and nothing is written. So a statement is queued ([`Stmt::run`] answers
//! [`Ran::Queued`]) only where no later statement of the transaction needs
//! its outcome; PostgreSQL and unbatched SQLite transactions run it at once
//! ([`Ran::Now`]) as before, and the caller checks the rows itself.
//!
//! A connection whose BEGIN may have been sent without its COMMIT or
//! ROLLBACK acknowledged (the commit's future dropped, a COMMIT or ROLLBACK
//! that failed) is closed rather than reused: sqlx does not know of that
//! transaction (it was not begun through sqlx's transaction manager), so
//! nothing else would roll it back.

use futures_util::StreamExt;
use sqlx::postgres::PgArguments;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Either, Executor, Postgres, Sqlite};

use super::{Lease, TenantTx, TxInner, errors};
use crate::error::{Error, ErrorCode, Result};

/// What a queued statement must have done for its transaction to commit.
pub(crate) enum Guard {
    /// Anything: only its failure fails the transaction.
    Any,
    /// Changed exactly one row; otherwise the transaction is rolled back
    /// and the commit fails with this error.
    One(Error),
}

/// What [`Stmt::run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Ran in the transaction: the rows it changed.
    Now(u64),
    /// Queued in a batched transaction: its commit runs it and checks its
    /// guard.
    Queued,
}

/// SQLite statements queued for one round trip at commit.
#[derive(Default)]
pub(crate) struct Batch {
    /// The statements, renumbered, separated by `;\n`.
    sql: String,
    args: SqliteArguments,
    parts: Vec<Part>,
}

/// A statement of the batch's SQL, in order.
enum Part {
    /// A caller's statement, and what it does (for its error).
    Statement(&'static str),
    /// The check of the statement before it ([`Guard::One`]): its error.
    Check(Error),
}

/// The check of a [`Guard::One`] (migration 0010).
const CHECK: &str = "INSERT INTO batch_guard (ok) VALUES (changes() = 1)";

/// One statement of a transaction and its arguments, bound for whichever
/// backend the transaction is on ([`TenantTx::stmt`]).
pub(crate) struct Stmt<'t> {
    tx: &'t mut TenantTx,
    sql: &'static str,
    doing: &'static str,
    args: Args,
    /// The first argument that failed to encode.
    bad: Option<sqlx::error::BoxDynError>,
}

enum Args {
    Sqlite(SqliteArguments),
    Postgres(PgArguments),
    /// Bound straight into the batch's arguments, from this index on.
    Batched {
        offset: usize,
    },
}

impl TenantTx {
    /// `sql` (one statement, `$1..$k` bound in order by [`Stmt::bind`]) in
    /// this transaction; `doing` names it in errors ("write a receipt").
    pub(crate) fn stmt(&mut self, sql: &'static str, doing: &'static str) -> Stmt<'_> {
        let args = match &self.inner {
            TxInner::SqliteBatch(_, batch) => Args::Batched { offset: batch.args.len() },
            TxInner::Sqlite(_) | TxInner::SqliteRead(_) => Args::Sqlite(SqliteArguments::default()),
            TxInner::Postgres(_) => Args::Postgres(PgArguments::default()),
        };
        Stmt { tx: self, sql, doing, args, bad: None }
    }
}

impl Stmt<'_> {
    /// The next argument (`$1`, then `$2`, ...).
    pub(crate) fn bind<'v, T>(mut self, value: T) -> Self
    where
        T: sqlx::Encode<'v, Sqlite> + sqlx::Type<Sqlite> + sqlx::Encode<'v, Postgres> + sqlx::Type<Postgres>,
    {
        let added = match (&mut self.args, &mut self.tx.inner) {
            (Args::Sqlite(a), _) => a.add(value),
            (Args::Postgres(a), _) => a.add(value),
            (Args::Batched { .. }, TxInner::SqliteBatch(_, batch)) => batch.args.add(value),
            (Args::Batched { .. }, _) => unreachable!("a batched statement belongs to a batched transaction"),
        };
        if let Err(e) = added {
            self.bad.get_or_insert(e);
        }
        self
    }

    /// [`Stmt::run`], a driver error mapped to a kernel one ("cannot
    /// `doing`: ..."), as the batch's commit maps a queued statement's.
    pub(crate) async fn execute(self, guard: Guard) -> Result<Ran> {
        let doing = self.doing;
        self.run(guard).await.map_err(|e| errors::map(e, doing))
    }

    /// Run the statement now, or queue it when its transaction is batched
    /// (where `guard` is checked at commit; run now, the caller checks the
    /// rows it gets).
    pub(crate) async fn run(self, guard: Guard) -> std::result::Result<Ran, sqlx::Error> {
        let Stmt { tx, sql, doing, args, bad } = self;
        if let Some(e) = bad {
            return Err(sqlx::Error::Encode(e));
        }
        match (args, &mut tx.inner) {
            (Args::Batched { offset }, TxInner::SqliteBatch(_, batch)) => {
                batch.push(sql, offset, Part::Statement(doing));
                if let Guard::One(e) = guard {
                    batch.push(CHECK, 0, Part::Check(e));
                }
                Ok(Ran::Queued)
            }
            (Args::Sqlite(a), TxInner::Sqlite(c) | TxInner::SqliteRead(c)) => {
                sqlx::query_with(sql, a).execute(&mut **c).await.map(|r| Ran::Now(r.rows_affected()))
            }
            (Args::Postgres(a), TxInner::Postgres(t)) => {
                sqlx::query_with(sql, a).execute(&mut **t).await.map(|r| Ran::Now(r.rows_affected()))
            }
            _ => unreachable!("a statement's arguments are bound for its transaction's backend"),
        }
    }
}

/// `sql` with each `$N` as `$(N + offset)`, appended to `out`. The SQL is
/// the store's own (no `$` inside a literal or a name).
fn renumber(sql: &str, offset: usize, out: &mut String) {
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
}

impl Batch {
    fn push(&mut self, sql: &str, offset: usize, part: Part) {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        renumber(sql, offset, &mut self.sql);
        self.parts.push(part);
    }

    /// Run the queued statements in one transaction on `lease` (see the
    /// module doc): `Ok` when every statement ran, every guard held and the
    /// COMMIT went through; otherwise nothing is written and the error is
    /// the failed statement's (or guard's).
    pub(super) async fn commit(self, lease: &mut Lease) -> Result<()> {
        let Batch { sql, args, parts } = self;
        if parts.is_empty() {
            return Ok(());
        }
        // One statement without a check is a transaction by itself.
        let alone = parts.len() == 1;
        let sql = if alone { sql } else { format!("BEGIN;\n{sql};\nCOMMIT") };
        lease.raw_open = !alone;
        // Statements that finished, BEGIN's included.
        let mut finished = 0;
        let mut failed = None;
        {
            let mut results = (&mut **lease).fetch_many(sqlx::query_with(sqlx::AssertSqlSafe(sql), args));
            while let Some(item) = results.next().await {
                match item {
                    Ok(Either::Left(_)) => finished += 1,
                    Ok(Either::Right(_)) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        let Some(e) = failed else {
            let expected = if alone { 1 } else { parts.len() + 2 };
            if finished != expected {
                // Not seen: sqlx reports every statement of the query.
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!("a batched transaction ran {finished} of its {expected} statements"),
                ));
            }
            lease.raw_open = false;
            return Ok(());
        };
        // The failed statement is the one after those that finished.
        let at = if alone { Some(0) } else { finished.checked_sub(1) };
        let error = match at.and_then(|i| parts.into_iter().nth(i)) {
            Some(Part::Statement(doing)) => errors::map(e, doing),
            Some(Part::Check(guard)) if is_check_failure(&e) => guard,
            Some(Part::Check(_)) => errors::map(e, "check a batched statement"),
            None if finished == 0 => errors::map(e, "begin a transaction"),
            None => errors::map(e, "commit"),
        };
        if !alone && (&mut **lease).execute("ROLLBACK").await.is_ok() {
            lease.raw_open = false;
        }
        // Else the lease closes the connection (`raw_open`), which rolls
        // back whatever is still open.
        Err(error)
    }
}

/// The check's own refusal (migration 0010's trigger), not another failure.
fn is_check_failure(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("a batch guard failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::store::tests::{ctx, migrated};
    use crate::store::{Backend, Store};
    use autobiz_testkit::TestDatabase;

    const BLOCK: &str =
        "INSERT INTO tool_blocks (tenant_id, tool, reason, blocked_by, blocked_at, created_at, updated_at)
                         VALUES ($1, $2, 'test', 'test', $3, $3, $3)";
    const UNBLOCK: &str = "UPDATE tool_blocks SET cleared_at = $3
                            WHERE tenant_id = $1 AND tool = $2 AND cleared_at IS NULL";

    async fn queue(tx: &mut TenantTx, store: &Store, sql: &'static str, tool: &str, guard: Guard) -> Ran {
        tx.stmt(sql, "change a block in the test").bind("acme").bind(tool).bind(store.now()).run(guard).await.unwrap()
    }

    async fn blocked(store: &Store, tool: &str) -> bool {
        store.tool_blocked(&ctx(), tool).await.unwrap().is_some()
    }

    fn lost() -> Guard {
        Guard::One(Error::new(ErrorCode::IdempotencyClaimLost, "the test's guard"))
    }

    /// Queued on SQLite, run at once on PostgreSQL; either way nothing is
    /// seen by another connection before the commit and everything after,
    /// in the order the statements were made (the block, then its removal).
    async fn batched_statements_commit_together(db: TestDatabase) {
        let store = migrated(&db).await;
        let other = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        let expected = |n| if store.backend() == Backend::Sqlite { Ran::Queued } else { Ran::Now(n) };
        assert_eq!(queue(&mut tx, &store, BLOCK, "a", Guard::Any).await, expected(1));
        assert_eq!(queue(&mut tx, &store, BLOCK, "b", Guard::Any).await, expected(1));
        assert_eq!(queue(&mut tx, &store, UNBLOCK, "a", lost()).await, expected(1));
        assert!(!blocked(&other, "b").await, "nothing is visible before the commit");
        tx.commit().await.unwrap();
        assert!(blocked(&other, "b").await);
        assert!(!blocked(&other, "a").await, "the statements ran in the order they were made");
        other.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn batched_statements_commit_together_sqlite() {
        batched_statements_commit_together(TestDatabase::sqlite()).await;
    }

    #[tokio::test]
    async fn batched_statements_commit_together_postgres() {
        batched_statements_commit_together(TestDatabase::postgres().await).await;
    }

    /// A guard that does not hold (the removal of a block that is not
    /// there) fails the commit with the guard's error and writes nothing,
    /// not even the statements before it; the connection is left in
    /// autocommit and serves the next transaction, and the same batch (its
    /// statements prepared and cached, stopped midway) runs again: failing
    /// while the guard fails, committing once it holds.
    #[tokio::test]
    async fn sqlite_a_guard_that_fails_writes_nothing() {
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        for removed in ["not-blocked", "not-blocked", "a"] {
            let mut tx = store.begin_batch(&ctx()).await.unwrap();
            queue(&mut tx, &store, BLOCK, "a", Guard::Any).await;
            queue(&mut tx, &store, UNBLOCK, removed, lost()).await;
            queue(&mut tx, &store, BLOCK, "c", Guard::Any).await;
            let committed = tx.commit().await;
            if removed == "a" {
                committed.unwrap();
                assert!(!blocked(&store, "a").await && blocked(&store, "c").await);
            } else {
                assert_eq!(committed.unwrap_err().code(), ErrorCode::IdempotencyClaimLost);
                assert!(!blocked(&store, "a").await && !blocked(&store, "c").await, "nothing of it is written");
            }
        }
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        queue(&mut tx, &store, BLOCK, "d", Guard::Any).await;
        queue(&mut tx, &store, BLOCK, "e", lost()).await;
        tx.commit().await.unwrap();
        assert!(blocked(&store, "d").await && blocked(&store, "e").await);
        assert!(store.spare.take().is_some(), "the connection was kept for the next call");
    }

    /// A statement the database refuses (a second open block of one tool)
    /// fails the commit with that statement's error, named by what it was
    /// doing, and rolls back the statements before it; the next batch is a
    /// transaction of its own (not inside one left open).
    #[tokio::test]
    async fn sqlite_a_refused_statement_rolls_back_its_batch() {
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        queue(&mut tx, &store, BLOCK, "a", Guard::Any).await;
        queue(&mut tx, &store, BLOCK, "b", Guard::Any).await;
        queue(&mut tx, &store, BLOCK, "b", Guard::Any).await;
        let e = tx.commit().await.unwrap_err();
        assert!(e.message().starts_with("cannot change a block in the test:"), "{}", e.message());
        assert!(!blocked(&store, "a").await && !blocked(&store, "b").await);
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        queue(&mut tx, &store, BLOCK, "a", Guard::Any).await;
        queue(&mut tx, &store, BLOCK, "b", Guard::Any).await;
        tx.commit().await.unwrap();
        let other = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
        assert!(blocked(&other, "a").await && blocked(&other, "b").await, "committed, not left open");
        other.close().await;
    }

    /// One statement without a guard is a transaction by itself (no BEGIN);
    /// an empty batch commits nothing.
    #[tokio::test]
    async fn sqlite_a_batch_of_one_or_none_commits() {
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        store.begin_batch(&ctx()).await.unwrap().commit().await.unwrap();
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        queue(&mut tx, &store, BLOCK, "a", Guard::Any).await;
        tx.commit().await.unwrap();
        assert!(blocked(&store, "a").await);
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        queue(&mut tx, &store, BLOCK, "a", Guard::Any).await;
        assert!(tx.commit().await.is_err(), "the one statement's refusal fails the commit");
    }

    /// A statement run directly (not queued) in a batched transaction would
    /// overtake the queued ones: it fails instead. A batch whose end is not
    /// known (its commit dropped midway) does not go back to the pool.
    #[tokio::test]
    async fn sqlite_a_batch_is_not_overtaken_and_an_unfinished_one_is_not_reused() {
        let db = TestDatabase::sqlite();
        let store = migrated(&db).await;
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        let direct = crate::store::on_tx!(tx, c => sqlx::query("SELECT 1").execute(c).await.map(|_| ()));
        assert!(direct.is_err());
        drop(tx);
        let _ = store.spare.take();
        let mut tx = store.begin_batch(&ctx()).await.unwrap();
        let TxInner::SqliteBatch(lease, _) = &mut tx.inner else { panic!("a batched SQLite transaction") };
        lease.raw_open = true;
        drop(tx);
        assert!(store.spare.take().is_none(), "the connection was closed, not kept");
        assert!(!blocked(&store, "a").await, "the store still serves calls");
    }

    #[test]
    fn renumbering_shifts_every_argument_by_the_offset() {
        let mut out = String::new();
        renumber("INSERT INTO t VALUES ($1, $2, $10, $2)", 7, &mut out);
        assert_eq!(out, "INSERT INTO t VALUES ($8, $9, $17, $9)");
        let mut out = String::new();
        renumber("SELECT $1 WHERE a = $2", 0, &mut out);
        assert_eq!(out, "SELECT $1 WHERE a = $2");
    }
}
