//! `autobiz reconcile run | list` as a user runs them, on SQLite and
//! PostgreSQL: the exit-code contract, the report, the human decision
//! recorded by the next run, the provider clients read from the secrets
//! file, and failing closed without a tenant. The detector's behaviour
//! itself is proven in `kernel/tests/reconcile.rs`.

use std::path::Path;

use autobiz_kernel::receipts::payload_sha256;
use autobiz_kernel::store::{DatabaseUrl, NewEvent, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use predicates::prelude::*;
use serde_json::{Value, json};

mod common;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test"), CorrelationId::new("corr"))
}

async fn migrated(db: &TestDatabase) -> Store {
    let admin: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
    Store::open(&db.kernel_url().parse().unwrap()).await.unwrap()
}

/// An `orders/paid` event whose `orders/create` never came: held, its hold
/// ran out, routed to reconciliation as the ordering gate does.
async fn routed_event(store: &Store, tenant: &str) -> i64 {
    let c = ctx(tenant);
    let payload = json!({"id": 77});
    let sha = payload_sha256(&payload).unwrap();
    let new = NewEvent {
        source: "shopify",
        event_type: "orders/paid",
        provider_event_id: "wh-77",
        entity_id: Some("order:77"),
        occurred_at: None,
        payload: &payload,
        payload_sha256: &sha,
        waiting_for: Some("orders/create"),
        hold_until: store.now() - chrono::Duration::seconds(1),
    };
    store.event_insert(&c, &new).await.unwrap();
    let event = store.event_held_due(&c, store.now(), 10).await.unwrap().remove(0);
    assert!(store.event_route_to_reconciliation(&c, &event).await.unwrap());
    event.id
}

fn cli(dir: &Path, db: &TestDatabase, tenant: Option<&str>, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = common::autobiz(dir);
    cmd.args(["--database-url", db.kernel_url()]);
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    cmd.args(args).assert()
}

fn json_run(dir: &Path, db: &TestDatabase, tenant: &str, extra: &[&str], code: i32) -> Value {
    let mut args = vec!["--format", "json", "reconcile", "run"];
    args.extend_from_slice(extra);
    common::json_of(&cli(dir, db, Some(tenant), &args).code(code).get_output().stdout.clone())
}

async fn escalate_then_approve(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let store = migrated(&db).await;
    let event = routed_event(&store, "acme").await;
    store.close().await;

    // Without credentials the provider checks cannot run: said so, exit 2.
    cli(dir.path(), &db, Some("acme"), &["reconcile", "run"])
        .code(2)
        .stderr(predicate::str::contains("error[PROVIDERS_NOT_CONFIGURED]"));

    // The event's precondition still fails: a human is asked; drift found
    // is a completed run (exit 0), and exit 1 only when asked to fail on it.
    let r = json_run(dir.path(), &db, "acme", &["--skip-providers"], 0);
    let case = format!("event-{event}");
    assert_eq!(r["findings"][0]["case_id"], case.as_str());
    assert_eq!(r["findings"][0]["action"], "sent_to_hitl");
    assert_eq!(r["skipped"], json!(["stripe", "shopify", "printful"]));
    assert_eq!(r["awaiting_human"], 1);
    let request = r["findings"][0]["hitl_request"].as_str().unwrap().to_owned();
    let again = json_run(dir.path(), &db, "acme", &["--skip-providers", "--fail-on-drift"], 1);
    assert_eq!((again["opened"].as_u64(), again["escalated"].as_u64()), (Some(0), Some(0)), "no second case");
    let table = cli(dir.path(), &db, Some("acme"), &["reconcile", "run", "--skip-providers"]).success();
    let text = String::from_utf8(table.get_output().stdout.clone()).unwrap();
    assert!(text.contains(&case) && text.contains("awaiting_human") && text.contains("skipped"), "{text}");
    let open = cli(dir.path(), &db, Some("acme"), &["--format", "json", "reconcile", "list", "--open"]).success();
    let open = common::json_of(&open.get_output().stdout.clone());
    assert_eq!(open[0]["status"], "AWAITING_HUMAN");

    // Another tenant sees none of it.
    let other = json_run(dir.path(), &db, "globex", &["--skip-providers", "--fail-on-drift"], 0);
    assert_eq!(other["findings"], json!([]));

    // A human approves; the next run records it and releases the event.
    cli(dir.path(), &db, Some("acme"), &["hitl", "approve", &request, "--approver", "ops@example.com"]).success();
    let done = json_run(dir.path(), &db, "acme", &["--skip-providers", "--fail-on-drift"], 0);
    assert_eq!(
        (done["findings"][0]["action"].as_str(), done["findings"][0]["status"].as_str()),
        (Some("approved"), Some("RESOLVED"))
    );
    let open = cli(dir.path(), &db, Some("acme"), &["--format", "json", "reconcile", "list", "--open"]).success();
    assert_eq!(common::json_of(&open.get_output().stdout.clone()), json!([]));
    let all = cli(dir.path(), &db, Some("acme"), &["--format", "json", "reconcile", "list"]).success();
    assert_eq!(common::json_of(&all.get_output().stdout.clone())[0]["status"], "RESOLVED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t_rk07a_cli_reconcile_run_escalates_a_routed_event_and_records_the_approval_sqlite() {
    escalate_then_approve(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t_rk07a_cli_reconcile_run_escalates_a_routed_event_and_records_the_approval_postgres() {
    escalate_then_approve(TestDatabase::postgres().await).await;
}

#[test]
fn p1_t_rk07b_cli_reconcile_without_a_tenant_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::sqlite();
    for args in [&["reconcile", "run", "--skip-providers"][..], &["reconcile", "list"][..]] {
        cli(dir.path(), &db, None, args).code(2).stderr(predicate::str::contains("error[TENANT_REQUIRED]"));
    }
}

/// The tenant's credentials from the secrets file, the providers at the
/// fakes: a clean account is a clean run; an unreachable provider exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t_rk02c_cli_reconcile_run_reads_the_providers_with_the_tenants_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::sqlite();
    for (name, value) in
        [("STRIPE_SECRET_KEY", "sk_test_cli"), ("SHOPIFY_ACCESS_TOKEN", "shpat_cli"), ("PRINTFUL_API_TOKEN", "pf-cli")]
    {
        common::autobiz(dir.path())
            .env("AUTOBIZ_MASTER_KEY", KEY)
            .args(["--tenant", "acme", "secrets", "set", name])
            .write_stdin(value)
            .assert()
            .success();
    }
    let fakes = autobiz_fakes::Fakes::start().await;
    let run = |stripe: &str| {
        common::autobiz(dir.path())
            .env("AUTOBIZ_MASTER_KEY", KEY)
            .env("AUTOBIZ_STRIPE_URL", stripe)
            .env("AUTOBIZ_SHOPIFY_URL", fakes.shopify.uri())
            .env("AUTOBIZ_PRINTFUL_URL", fakes.printful.uri())
            .args(["--database-url", db.kernel_url(), "--tenant", "acme", "--format", "json", "reconcile", "run"])
            .assert()
    };
    let out = run(&fakes.stripe.uri()).success().get_output().stdout.clone();
    let r = common::json_of(&out);
    assert_eq!((r["findings"].clone(), r["skipped"].clone()), (json!([]), json!([])), "{r}");
    assert_eq!(r["checked"]["stripe.captures"], 0);
    assert!(!fakes.stripe.requests_for("/v1/payment_intents").is_empty(), "Stripe was asked");
    run("http://127.0.0.1:9").code(3);
}
