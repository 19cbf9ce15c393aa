//! The store on both backends: migrations, tenant isolation, state versions,
//! and failure modes. Tests named `both!` run once on SQLite and once on a
//! fresh PostgreSQL database each.

use std::sync::Arc;

use autobiz_kernel::ErrorCode;
use autobiz_kernel::secrets::{FileSecrets, MasterKey, SecretsProvider};
use autobiz_kernel::store::{AuditEvent, Backend, DatabaseUrl, Store, TENANT_TABLES, migrator};
use autobiz_kernel::tenant::{CorrelationId, EntityId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use secrecy::SecretString;
use serde_json::json;

/// Generate `NAME::sqlite` and `NAME::postgres` from one async test body
/// taking a `TestDatabase`.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body(autobiz_testkit::TestDatabase::sqlite()).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$body(autobiz_testkit::TestDatabase::postgres().await).await;
            }
        }
    };
}

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(
        tenant.parse().unwrap(),
        Principal::new("test:runner"),
        CorrelationId::new(format!("corr-{tenant}")),
    )
}

/// A patch that sets the whole state to `value`.
fn set(value: serde_json::Value) -> autobiz_kernel::state::Patch {
    serde_json::from_value(json!([{"op": "add", "path": "", "value": value}])).unwrap()
}

fn url(s: &str) -> DatabaseUrl {
    s.parse().unwrap()
}

/// Every embedded migration version, ascending (the same on both backends).
/// Migrate as the owner, then open as the kernel role.
async fn migrated(db: &TestDatabase) -> Store {
    Store::open_admin(&url(db.admin_url())).await.unwrap().migrate().await.unwrap();
    Store::open(&url(db.kernel_url())).await.unwrap()
}

// --- Migrations ---------------------------------------------------------------

#[test]
fn migrations_stay_in_step_across_backends() {
    let list = |b| -> Vec<(i64, String, bool)> {
        migrator(b)
            .iter()
            .map(|m| (m.version, m.description.to_string(), m.migration_type.is_down_migration()))
            .collect()
    };
    let sqlite = list(Backend::Sqlite);
    assert!(!sqlite.is_empty());
    assert_eq!(
        sqlite,
        list(Backend::Postgres),
        "migrations/sqlite and migrations/postgres must have the same versions"
    );
    // Every up migration has a down migration: that is the downgrade path.
    for (v, _, down) in &sqlite {
        if !down {
            assert!(sqlite.iter().any(|(w, _, d)| w == v && *d), "migration {v} has no .down.sql");
        }
    }
}

/// Every embedded migration version, oldest first.
fn known_versions(backend: autobiz_testkit::Backend) -> Vec<i64> {
    let backend = match backend {
        autobiz_testkit::Backend::Sqlite => Backend::Sqlite,
        autobiz_testkit::Backend::Postgres => Backend::Postgres,
    };
    migrator(backend).iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect()
}

async fn fresh_migrate_then_again_is_a_noop(db: TestDatabase) {
    let known = known_versions(db.backend());
    let latest = *known.last().unwrap();
    let admin = Store::open_admin(&url(db.admin_url())).await.unwrap();
    let first = admin.migrate().await.unwrap();
    assert_eq!(first.changed, known);
    assert_eq!(first.current, latest);
    let second = admin.migrate().await.unwrap();
    assert!(second.changed.is_empty(), "second migrate must be a no-op: {second:?}");
    assert_eq!(second.current, latest);
    assert!(admin.migration_status().await.unwrap().iter().all(|m| m.applied));
}
both!(p1_t31_fresh_migrate_then_again_is_a_noop, fresh_migrate_then_again_is_a_noop);

async fn tables_have_tenant_id_audit_columns_and_indexes(db: TestDatabase) {
    migrated(&db).await;
    match db.backend() {
        autobiz_testkit::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(db.admin_url()).await.unwrap();
            for table in TENANT_TABLES {
                let cols: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT name, \"notnull\" FROM pragma_table_info('{table}')"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                for required in ["tenant_id", "created_at", "updated_at"] {
                    let col = cols
                        .iter()
                        .find(|(n, _)| n == required)
                        .unwrap_or_else(|| panic!("{table}.{required} missing"));
                    assert_eq!(col.1, 1, "{table}.{required} must be NOT NULL");
                }
            }
            // The event store's lookups by (tenant, source) and (tenant,
            // status) are served by indexes that lead with those columns.
            let indexes: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event_store'")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let mut leading = Vec::new();
            for (name,) in &indexes {
                let cols: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                leading.push(cols.into_iter().map(|(c,)| c).collect::<Vec<_>>().join(","));
            }
            for prefix in ["tenant_id,source", "tenant_id,status"] {
                assert!(
                    leading.iter().any(|cols| cols.starts_with(prefix)),
                    "no index leads with {prefix}: {leading:?}"
                );
            }
        }
        autobiz_testkit::Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.admin_url()).await.unwrap();
            for table in TENANT_TABLES {
                for required in ["tenant_id", "created_at", "updated_at"] {
                    let nullable: (String,) = sqlx::query_as(
                        "SELECT is_nullable::text FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                    )
                    .bind(table)
                    .bind(required)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{table}.{required}: {e}"));
                    assert_eq!(nullable.0, "NO", "{table}.{required} must be NOT NULL");
                }
            }
            let defs: Vec<(String,)> =
                sqlx::query_as("SELECT indexdef::text FROM pg_indexes WHERE tablename = 'event_store'")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            for prefix in ["(tenant_id, source", "(tenant_id, status"] {
                assert!(defs.iter().any(|(d,)| d.contains(prefix)), "no index leads with {prefix}: {defs:?}");
            }
        }
    }
}
both!(p1_t31_tables_have_tenant_id_audit_columns_and_indexes, tables_have_tenant_id_audit_columns_and_indexes);

async fn trace_run_ids_since_reads_only_the_newer_traces_of_the_tenant(db: TestDatabase) {
    use autobiz_kernel::trace::{RecordKind, TraceRecord};
    let store = migrated(&db).await;
    let (acme, globex) = (ctx("acme"), ctx("globex"));
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let at = |m: i64| t0 + chrono::Duration::minutes(m);
    for (c, run, seq, m) in [
        (&acme, "old", 0, 0),
        (&acme, "old", 1, 5),
        (&acme, "new", 0, 30),
        (&acme, "new", 1, 31),
        (&globex, "theirs", 0, 40),
    ] {
        let kind = if seq == 0 { RecordKind::RunStart } else { RecordKind::RunEnd };
        store.append_trace(c, &TraceRecord::new(c, run, seq, kind, at(m))).await.unwrap();
    }
    let ids = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(ids(store.trace_run_ids_since(&acme, at(10)).await.unwrap()), vec!["new"]);
    assert_eq!(ids(store.trace_run_ids_since(&acme, at(5)).await.unwrap()), vec!["new", "old"], "at or after");
    assert!(store.trace_run_ids_since(&acme, at(32)).await.unwrap().is_empty());
    assert_eq!(store.trace_run_ids_since(&globex, t0).await.unwrap(), vec!["theirs"], "never another tenant's");
    // Served by the (tenant_id, created_at) index of migration 0008, not a
    // read of every trace of the tenant.
    db.assert_sqlite_plan_uses(
        "SELECT DISTINCT run_id FROM traces WHERE tenant_id = 'acme' AND created_at >= 'x'",
        "idx_traces_tenant_created",
    )
    .await;
}
both!(
    p1_t10_trace_run_ids_since_reads_only_the_newer_traces_of_the_tenant,
    trace_run_ids_since_reads_only_the_newer_traces_of_the_tenant
);

async fn downgrade_to_zero_then_migrate_again(db: TestDatabase) {
    let known = known_versions(db.backend());
    let admin = Store::open_admin(&url(db.admin_url())).await.unwrap();
    admin.migrate().await.unwrap();
    let down = admin.downgrade(0).await.unwrap();
    assert_eq!(down.changed, known.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(down.current, 0);
    assert!(admin.migration_status().await.unwrap().iter().all(|m| !m.applied));
    let up = admin.migrate().await.unwrap();
    assert_eq!(up.changed, known);
    // The schema works after the round trip.
    let store = Store::open(&url(db.kernel_url())).await.unwrap();
    store.register_tenant(&ctx("acme"), "Acme").await.unwrap();
}
both!(downgrade_to_zero_then_migrate_again_restores_a_working_schema, downgrade_to_zero_then_migrate_again);

// --- Tenant isolation through the store API ------------------------------------

async fn cross_tenant_read_is_refused_and_recorded(db: TestDatabase) {
    let store = migrated(&db).await;
    let order: EntityId = "acme/order/1001".parse().unwrap();
    store.apply_patch(&ctx("acme"), &order, 0, &set(json!({"status": "paid", "card_last4": "4242"}))).await.unwrap();

    let err = store.state(&ctx("globex"), &order).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TenantForbidden);
    assert!(!err.message().contains("4242"), "nothing of the row may leak: {}", err.message());

    let events = store.security_events(&ctx("globex"), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.kind, "cross_tenant_access");
    assert_eq!(events[0].event.action, "read");
    assert_eq!(events[0].event.resource, "acme/order/1001");
    assert_eq!(events[0].event.target_tenant.as_deref(), Some("acme"));
    assert_eq!(events[0].principal, "test:runner");
    // The victim tenant's log does not receive the attacker's rows.
    assert!(store.security_events(&ctx("acme"), 10).await.unwrap().is_empty());
}
both!(p1_t31_cross_tenant_read_is_refused_and_recorded, cross_tenant_read_is_refused_and_recorded);

async fn cross_tenant_write_is_refused_and_changes_nothing(db: TestDatabase) {
    let store = migrated(&db).await;
    let order: EntityId = "acme/order/1001".parse().unwrap();
    store.apply_patch(&ctx("acme"), &order, 0, &set(json!({"status": "paid"}))).await.unwrap();

    let err = store.apply_patch(&ctx("globex"), &order, 1, &set(json!({"status": "refunded"}))).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TenantForbidden);

    let latest = store.state(&ctx("acme"), &order).await.unwrap().unwrap();
    assert_eq!(latest.version, 1);
    assert_eq!(latest.state, json!({"status": "paid"}));
    let events = store.security_events(&ctx("globex"), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.action, "write");
}
both!(p1_t33_cross_tenant_write_is_refused_and_changes_nothing, cross_tenant_write_is_refused_and_changes_nothing);

async fn same_local_id_in_two_tenants_stays_separate(db: TestDatabase) {
    let store = migrated(&db).await;
    let a: EntityId = "acme/order/1".parse().unwrap();
    let g: EntityId = "globex/order/1".parse().unwrap();
    store.apply_patch(&ctx("acme"), &a, 0, &set(json!({"owner": "acme"}))).await.unwrap();
    store.apply_patch(&ctx("globex"), &g, 0, &set(json!({"owner": "globex"}))).await.unwrap();
    assert_eq!(store.state(&ctx("acme"), &a).await.unwrap().unwrap().state["owner"], "acme");
    assert_eq!(store.state(&ctx("globex"), &g).await.unwrap().unwrap().state["owner"], "globex");
    assert_eq!(store.state(&ctx("acme"), &a).await.unwrap().unwrap().correlation_id, "corr-acme");
}
both!(p1_t34_same_local_id_in_two_tenants_stays_separate, same_local_id_in_two_tenants_stays_separate);

async fn stale_and_concurrent_state_writes_conflict(db: TestDatabase) {
    let store = migrated(&db).await;
    let e: EntityId = "acme/order/7".parse().unwrap();
    assert_eq!(store.apply_patch(&ctx("acme"), &e, 0, &set(json!({"v": 1}))).await.unwrap().version, 1);
    assert_eq!(
        store.apply_patch(&ctx("acme"), &e, 0, &set(json!({"v": "stale"}))).await.unwrap_err().code(),
        ErrorCode::StateConflict
    );
    assert_eq!(
        store.apply_patch(&ctx("acme"), &e, 5, &set(json!({"v": "ahead"}))).await.unwrap_err().code(),
        ErrorCode::StateConflict
    );
    // Eight writers race for version 2: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let e = e.clone();
        tasks.push(tokio::spawn(
            async move { store.apply_patch(&ctx("acme"), &e, 1, &set(json!({"writer": i}))).await },
        ));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => {
                assert_eq!(v.version, 2);
                wins += 1;
            }
            Err(err) => assert_eq!(err.code(), ErrorCode::StateConflict, "{}", err.message()),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.state(&ctx("acme"), &e).await.unwrap().unwrap().version, 2);
}
both!(stale_and_concurrent_state_writes_conflict, stale_and_concurrent_state_writes_conflict);

/// Writes after failed calls, and from more callers at once than the pool
/// has connections, are committed for every connection: a second handle on
/// the same database (its own pool) sees each of them. On SQLite a call
/// reuses the connection the one before it left (the store's spare); after
/// a failed call that connection is pinged first, and under contention
/// the spare is not kept while callers wait: the paths exercised here.
async fn p1_t13_writes_after_failures_and_under_contention_are_committed(db: TestDatabase) {
    let store = migrated(&db).await;
    let c = ctx("acme");
    let e: EntityId = "acme/order/1".parse().unwrap();
    assert_eq!(store.apply_patch(&c, &e, 0, &set(json!({"v": 1}))).await.unwrap().version, 1);
    let stale = store.apply_patch(&c, &e, 0, &set(json!({"v": "stale"}))).await.unwrap_err();
    assert_eq!(stale.code(), ErrorCode::StateConflict);
    assert!(store.block_tool(&c, "stripe.refund", "test").await.unwrap());
    assert!(!store.block_tool(&c, "stripe.refund", "again").await.unwrap());
    assert_eq!(store.apply_patch(&c, &e, 1, &set(json!({"v": 2}))).await.unwrap().version, 2);

    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e: EntityId = format!("acme/order/c{i}").parse().unwrap();
            for v in 0..3 {
                store.apply_patch(&ctx("acme"), &e, v, &set(json!({"v": v}))).await.unwrap();
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("every caller finishes");

    let other = Store::open(&url(db.kernel_url())).await.unwrap();
    assert_eq!(other.state(&c, &e).await.unwrap().unwrap().version, 2);
    assert!(other.tool_blocked(&c, "stripe.refund").await.unwrap().is_some());
    for i in 0..16 {
        let e: EntityId = format!("acme/order/c{i}").parse().unwrap();
        assert_eq!(other.state(&c, &e).await.unwrap().unwrap().version, 3, "entity c{i}");
    }
    other.close().await;
    tokio::time::timeout(std::time::Duration::from_secs(10), store.close()).await.expect("close returns");
}
both!(
    p1_t13_writes_after_failures_and_under_contention_are_committed,
    p1_t13_writes_after_failures_and_under_contention_are_committed
);

async fn cross_tenant_secret_access_is_refused_and_audited_in_the_store(db: TestDatabase) {
    let store = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets =
        FileSecrets::open(dir.path().join("secrets.json"), MasterKey::generate(), Arc::new(store.clone())).unwrap();
    secrets.set(&ctx("globex"), "STRIPE_KEY", SecretString::from("sk_test_globex_only".to_owned())).await.unwrap();

    let err = secrets.get(&ctx("acme"), "globex/STRIPE_KEY").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TenantForbidden);

    let audit = store.audit_events(&ctx("acme"), 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].event.outcome, "denied");
    assert_eq!(audit[0].event.resource, "secret:globex/STRIPE_KEY");
    let security = store.security_events(&ctx("acme"), 10).await.unwrap();
    assert_eq!(security.len(), 1);
    assert_eq!(security[0].event.target_tenant.as_deref(), Some("globex"));
    // The owner's own read is allowed and audited under the owner.
    secrets.get(&ctx("globex"), "STRIPE_KEY").await.unwrap();
    let owner_audit = store.audit_events(&ctx("globex"), 10).await.unwrap();
    assert_eq!(owner_audit[0].event.action, "secret_read");
    assert_eq!(owner_audit[0].event.outcome, "allowed");
}
both!(
    p1_t32_cross_tenant_secret_access_is_refused_and_audited_in_the_store,
    cross_tenant_secret_access_is_refused_and_audited_in_the_store
);

/// A credential's read and the request it authenticates, audited in one
/// write by `get_then`, are both in the store, in order, under the caller's
/// tenant and correlation id.
async fn a_read_and_its_request_are_both_in_the_store(db: TestDatabase) {
    let store = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets =
        FileSecrets::open(dir.path().join("secrets.json"), MasterKey::generate(), Arc::new(store.clone())).unwrap();
    let c = ctx("acme");
    secrets.set(&c, "STRIPE_KEY", SecretString::from("sk_test_acme".to_owned())).await.unwrap();
    let sent = [AuditEvent {
        action: "provider.stripe.request".into(),
        resource: "POST 127.0.0.1:9/v1/payment_intents".into(),
        outcome: "sent".into(),
    }];
    let accept = |_: &SecretString| Ok(());
    secrets.get_then(&c, "STRIPE_KEY", &accept, &sent, &store).await.unwrap();
    let audit = store.audit_events(&c, 10).await.unwrap();
    let newest: Vec<_> = audit.iter().take(2).map(|a| (a.event.action.as_str(), a.correlation_id.as_str())).collect();
    assert_eq!(
        newest,
        vec![("provider.stripe.request", c.correlation_id().as_str()), ("secret_read", c.correlation_id().as_str())],
        "newest first: the request after the read"
    );
    assert!(store.audit_events(&ctx("globex"), 10).await.unwrap().is_empty(), "nothing under another tenant");
}
both!(p1_h06_a_read_and_its_request_are_both_in_the_store, a_read_and_its_request_are_both_in_the_store);

// --- SQLite specifics ------------------------------------------------------------

#[tokio::test]
async fn sqlite_default_creates_directory_and_file_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/autobiz.db");
    let store = Store::open(&url(&format!("sqlite://{}", path.display()))).await.unwrap();
    assert!(path.exists());
    store.register_tenant(&ctx("acme"), "Acme").await.unwrap();
    drop(store);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
    assert_eq!(mode.0, "wal");
}

#[tokio::test]
async fn sqlite_corrupted_file_is_store_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.db");
    let garbage = b"this is not a sqlite database, it is a text file that got in the way".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&url(&format!("sqlite://{}", path.display()))).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{}", err.message());
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "no partial write");
}

#[tokio::test]
async fn sqlite_unusable_directory_is_store_io() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // A directory cannot be created under a regular file, even by root.
    let err = Store::open(&url(&format!("sqlite://{}/sub/autobiz.db", file.display()))).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreIo, "{}", err.message());
    let err = Store::open(&url("sqlite:///proc/autobiz-cannot-write-here/autobiz.db")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreIo, "{}", err.message());
}

#[tokio::test]
async fn sqlite_memory_database_works() {
    let store = Store::open(&url("sqlite::memory:")).await.unwrap();
    assert!(store.register_tenant(&ctx("acme"), "Acme").await.unwrap());
    assert!(!store.register_tenant(&ctx("acme"), "Acme again").await.unwrap());
    assert_eq!(store.tenant(&ctx("acme")).await.unwrap().unwrap().display_name, "Acme");
    assert!(store.tenant(&ctx("globex")).await.unwrap().is_none());
}
