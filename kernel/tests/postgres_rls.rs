//! Row-level security on PostgreSQL, tested with hand-written SQL that has no
//! `WHERE tenant_id`: the database itself must keep tenants apart, whatever
//! the application code forgets. Every test gets its own database.

use autobiz_kernel::ErrorCode;
use autobiz_kernel::store::{DatabaseUrl, KERNEL_ROLE, Store, TENANT_TABLES};
use autobiz_kernel::tenant::{CorrelationId, EntityId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test"), CorrelationId::new("c"))
}

fn patch(ops: serde_json::Value) -> autobiz_kernel::state::Patch {
    serde_json::from_value(ops).unwrap()
}

fn url(s: &str) -> DatabaseUrl {
    s.parse().unwrap()
}

/// A migrated database with state and security rows for acme and globex,
/// written through the store as the kernel role.
async fn seeded() -> TestDatabase {
    let db = TestDatabase::postgres().await;
    Store::open_admin(&url(db.admin_url())).await.unwrap().migrate().await.unwrap();
    let store = Store::open(&url(db.kernel_url())).await.unwrap();
    for tenant in ["acme", "globex"] {
        store.register_tenant(&ctx(tenant), tenant).await.unwrap();
        for n in 0..3 {
            let e: EntityId = format!("{tenant}/order/{n}").parse().unwrap();
            store
                .apply_patch(&ctx(tenant), &e, 0, &patch(json!([{"op": "add", "path": "/tenant", "value": tenant}])))
                .await
                .unwrap();
        }
    }
    // One security event for acme (a refused read of globex's order).
    let _ = store.state(&ctx("acme"), &"globex/order/0".parse().unwrap()).await;
    store.close().await;
    db
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(conn).await.unwrap()
}

async fn set_tenant(conn: &mut PgConnection, tenant: &str) {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(tenant).execute(conn).await.unwrap();
}

#[tokio::test]
async fn p1_t31_tenant_transaction_sees_only_its_rows_without_a_where_clause() {
    let db = seeded().await;
    let mut conn = PgConnection::connect(db.kernel_url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    set_tenant(&mut tx, "acme").await;
    assert_eq!(count(&mut tx, "state_versions").await, 3);
    assert_eq!(count(&mut tx, "tenants").await, 1);
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM state_versions").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(tenants, vec!["acme".to_owned()]);
    // Even asking for globex by name returns nothing.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM state_versions WHERE tenant_id = 'globex'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn p1_t33_tenant_transaction_cannot_change_other_tenants_rows() {
    let db = seeded().await;
    let mut conn = PgConnection::connect(db.kernel_url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    set_tenant(&mut tx, "acme").await;
    // UPDATE and DELETE without a tenant filter touch acme's rows only.
    let updated =
        sqlx::query("UPDATE state_versions SET state = '{\"hijacked\": true}'").execute(&mut *tx).await.unwrap();
    assert_eq!(updated.rows_affected(), 3);
    let deleted = sqlx::query("DELETE FROM tenants").execute(&mut *tx).await.unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    // Writing a row for globex fails WITH CHECK.
    let err = sqlx::query(
        "INSERT INTO state_versions (tenant_id, entity_id, version, state, correlation_id) VALUES ('globex', 'globex/order/9', 1, '{}', 'c')",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(err.as_database_error().and_then(|d| d.code()).as_deref(), Some("42501"), "{err}");
    drop(tx);
    // Moving an own row to globex fails as well.
    let mut tx = conn.begin().await.unwrap();
    set_tenant(&mut tx, "acme").await;
    let err = sqlx::query("UPDATE state_versions SET tenant_id = 'globex'").execute(&mut *tx).await.unwrap_err();
    assert_eq!(err.as_database_error().and_then(|d| d.code()).as_deref(), Some("42501"), "{err}");
    drop(tx);

    // globex's rows are intact.
    let mut tx = conn.begin().await.unwrap();
    set_tenant(&mut tx, "globex").await;
    assert_eq!(count(&mut tx, "state_versions").await, 3);
    let hijacked: i64 = sqlx::query_scalar("SELECT count(*) FROM state_versions WHERE state ? 'hijacked'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(hijacked, 0);
}

#[tokio::test]
async fn p1_t_rk06a_transaction_without_tenant_sees_zero_rows_and_cannot_write() {
    let db = seeded().await;
    let mut conn = PgConnection::connect(db.kernel_url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let setting: Option<String> =
        sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(setting, None, "a fresh connection has no tenant setting");
    for table in TENANT_TABLES {
        assert_eq!(count(&mut tx, table).await, 0, "{table} must look empty without a tenant");
    }
    let err = sqlx::query("INSERT INTO tenants (tenant_id, display_name) VALUES ('acme', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some("42501"));
    assert!(
        db_err.message().contains("row-level security"),
        "the refusal is the policy's, not an error inside it: {}",
        db_err.message()
    );
    drop(tx);
    let mut tx = conn.begin().await.unwrap();
    let changed = sqlx::query("UPDATE state_versions SET state = '{}'").execute(&mut *tx).await.unwrap();
    assert_eq!(changed.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM security_events").execute(&mut *tx).await.unwrap();
    assert_eq!(deleted.rows_affected(), 0);
}

#[tokio::test]
async fn p1_t_rk06b_pooled_connection_after_a_tenant_transaction_sees_nothing() {
    let db = seeded().await;
    // One connection, reused as a pool would reuse it.
    let mut conn = PgConnection::connect(db.kernel_url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    set_tenant(&mut tx, "acme").await;
    assert_eq!(count(&mut tx, "state_versions").await, 3);
    tx.commit().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    let setting: Option<String> =
        sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(setting.as_deref(), Some(""), "after a transaction-local set_config the setting reads as ''");
    for table in TENANT_TABLES {
        assert_eq!(count(&mut tx, table).await, 0, "{table} must look empty with an empty tenant setting");
    }
    let err = sqlx::query("INSERT INTO tenants (tenant_id, display_name) VALUES ('', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(err.as_database_error().and_then(|d| d.code()).as_deref(), Some("42501"));
}

#[tokio::test]
async fn p1_t_rk06c_kernel_role_is_not_owner_and_has_no_bypassrls() {
    let db = seeded().await;
    let pool = PgPool::connect(db.admin_url()).await.unwrap();
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(KERNEL_ROLE)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    for table in TENANT_TABLES {
        let (owner, rls, force, kernel_is_member): (String, bool, bool, bool) = sqlx::query_as(
            "SELECT pg_get_userbyid(c.relowner)::text, c.relrowsecurity, c.relforcerowsecurity,
                    pg_has_role($2, c.relowner, 'MEMBER')
               FROM pg_class c WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .bind(KERNEL_ROLE)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_ne!(owner, KERNEL_ROLE, "{table} must not be owned by the kernel role");
        assert!(!kernel_is_member, "the kernel role must not be a member of {table}'s owner");
        assert!(rls && force, "{table} must ENABLE and FORCE row level security");
        let (qual, check): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT qual, with_check FROM pg_policies WHERE tablename = $1 AND policyname = 'tenant_isolation'",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(qual.unwrap().contains("autobiz_current_tenant()"), "{table} USING");
        assert!(check.unwrap().contains("autobiz_current_tenant()"), "{table} WITH CHECK");
    }
}

#[tokio::test]
async fn store_refuses_a_role_that_bypasses_rls() {
    let db = TestDatabase::postgres().await;
    let admin = url(db.admin_url());
    Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
    // The test server's admin is a superuser.
    let err = Store::open(&admin).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreRoleUnsafe, "{}", err.message());
}

#[tokio::test]
async fn store_refuses_an_unmigrated_database() {
    let db = TestDatabase::postgres().await;
    // Make sure the role exists on this cluster (another test may not have run yet).
    let other = TestDatabase::postgres().await;
    Store::open_admin(&url(other.admin_url())).await.unwrap().migrate().await.unwrap();
    let err = Store::open(&url(db.kernel_url())).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreNotMigrated, "{}", err.message());
}

#[tokio::test]
async fn unreachable_server_is_store_unavailable() {
    let err = Store::open(&url("postgres://postgres@127.0.0.1:1/none")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreUnavailable, "{}", err.message());
    let missing = url(&autobiz_testkit::server_url()).with_postgres_database("autobiz_no_such_database").unwrap();
    let err = Store::open_admin(&missing).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DatabaseUrlInvalid, "{}", err.message());
}

#[tokio::test]
async fn store_refuses_a_role_that_owns_the_tenant_tables() {
    let db = TestDatabase::postgres().await;
    Store::open_admin(&url(db.admin_url())).await.unwrap().migrate().await.unwrap();
    let mut admin = PgConnection::connect(db.admin_url()).await.unwrap();
    // A plain role (not superuser, no BYPASSRLS) that owns one tenant table:
    // as owner it could disable RLS, so the store must refuse it.
    sqlx::raw_sql(
        "DO $$ BEGIN
             CREATE ROLE autobiz_test_owner LOGIN NOSUPERUSER NOBYPASSRLS;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::raw_sql("ALTER TABLE audit_events OWNER TO autobiz_test_owner").execute(&mut admin).await.unwrap();
    let owner_url = url(db.admin_url()).with_postgres_user("autobiz_test_owner", None).unwrap();
    let err = Store::open(&owner_url).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreRoleUnsafe, "{}", err.message());
    assert!(err.message().contains("owns the tenant tables"), "{}", err.message());
}
