//! `autobiz serve` as a provider and an approver meet it: the real binary
//! on a loopback port, over SQLite and PostgreSQL, secrets in an encrypted
//! file. Hostile corpus, duplicate storms, two servers on one database,
//! the approval API, health and metrics, graceful shutdown, and Stripe
//! signatures made and checked by the official Stripe SDK for Python.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autobiz_kernel::config::model::OnTimeout;
use autobiz_kernel::contract::SideEffect;
use autobiz_kernel::hitl::{NewApproval, RuleMatch};
use autobiz_kernel::ingress::EventStatus;
use autobiz_kernel::ingress::signature::{shopify_header, stripe_header};
use autobiz_kernel::secrets::{FileSecrets, MasterKey, SecretsProvider};
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use autobiz_testkit::TestDatabase;
use futures_util::StreamExt;
use secrecy::SecretString;

const STRIPE: &str = "whsec_serve_acme";
const SHOPIFY: &str = "shpss_serve_acme";
const PRINTFUL: &str = "pf_token_acme";
const BETA_STRIPE: &str = "whsec_serve_beta";
const ALICE: &str = "tok-alice-approver";
const MAX_BODY: usize = 16 * 1024;

fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(tenant.parse().unwrap(), Principal::new("test"), CorrelationId::random())
}

/// A migrated database, a secrets file with acme's and beta's webhook
/// secrets and alice's approver token, and a working directory.
struct Env {
    db: TestDatabase,
    dir: tempfile::TempDir,
    secrets: PathBuf,
    master: String,
    store: Store,
}

impl Env {
    async fn new(db: TestDatabase) -> Env {
        let admin: DatabaseUrl = db.admin_url().parse().unwrap();
        Store::open_admin(&admin).await.unwrap().migrate().await.unwrap();
        let store = Store::open(&db.kernel_url().parse().unwrap()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.json");
        let key = MasterKey::generate();
        let master = key.to_base64().to_string();
        let file = FileSecrets::open(&secrets, key, Arc::new(store.clone())).unwrap();
        for (tenant, name, value) in [
            ("acme", "stripe_webhook_secret", STRIPE),
            ("acme", "shopify_webhook_secret", SHOPIFY),
            ("acme", "printful_webhook_token", PRINTFUL),
            ("acme", "approver_token_alice", ALICE),
            ("beta", "stripe_webhook_secret", BETA_STRIPE),
        ] {
            file.set(&ctx(tenant), name, SecretString::from(value)).await.unwrap();
        }
        Env { db, dir, secrets, master, store }
    }

    fn serve(&self, extra: &[&str]) -> Server {
        self.serve_with(extra, &[])
    }

    /// `serve` with more environment (set last: it wins over the defaults).
    fn serve_with(&self, extra: &[&str], env: &[(&str, String)]) -> Server {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("autobiz"));
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AUTOBIZ_MASTER_KEY", &self.master)
            .env("AUTOBIZ_SECRETS_FILE", &self.secrets)
            // Provider clients point at a closed loopback port: nothing leaves the machine.
            .env("AUTOBIZ_STRIPE_URL", "http://127.0.0.1:9")
            .env("AUTOBIZ_SHOPIFY_URL", "http://127.0.0.1:9")
            .env("AUTOBIZ_PRINTFUL_URL", "http://127.0.0.1:9")
            .env("AUTOBIZ_SENDGRID_URL", "http://127.0.0.1:9")
            .args(["--database-url", self.db.kernel_url(), "--config", common::EXAMPLE, "serve"])
            .args(["--bind", "127.0.0.1:0", "--tenants", "acme,beta", "--max-body", &MAX_BODY.to_string()])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_owned();
        Server { child, base, http: reqwest::Client::new() }
    }
}

struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    async fn get(&self, path: &str, headers: &[(&str, String)]) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics", &[]).await;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn stripe_event(id: &str, ty: &str, object: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","type":"{ty}","created":1700000000,"data":{{"object":{{"id":"{object}","object":"payment_intent"}}}}}}"#)
        .into_bytes()
}

fn signed_stripe(body: &[u8], secret: &str, t: i64) -> Vec<(&'static str, String)> {
    vec![("Stripe-Signature", stripe_header(body, t, &[SecretString::from(secret)]))]
}

fn shopify_delivery(topic: &str, id: &str, order: u64) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = format!(r#"{{"id":{order},"total_price":"10.00"}}"#).into_bytes();
    let headers = vec![
        ("X-Shopify-Hmac-Sha256", shopify_header(&body, &SecretString::from(SHOPIFY))),
        ("X-Shopify-Topic", topic.to_owned()),
        ("X-Shopify-Webhook-Id", id.to_owned()),
    ];
    (headers, body)
}

/// Wait until `done` says yes (the worker is asynchronous); a generous
/// deadline only turns a hang into a failure, it measures nothing.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One request of the hostile corpus: path, headers, body.
fn hostile(i: usize) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let id = format!("evt_hostile_{i}");
    let body = stripe_event(&id, "payment_intent.created", &format!("pi_{i}"));
    let stripe = "/webhooks/acme/stripe".to_owned();
    match i % 12 {
        // Forged: signed with a secret that is not the tenant's.
        0 => (stripe, signed_stripe(&body, "whsec_forger", now()), body),
        // Replayed: a genuine signature captured 400 s ago.
        1 => (stripe, signed_stripe(&body, STRIPE, now() - 400), body),
        // Timestamp from the future.
        2 => (stripe, signed_stripe(&body, STRIPE, now() + 1000), body),
        // No signature at all.
        3 => (stripe, vec![], body),
        // Body changed after signing.
        4 => {
            let h = signed_stripe(&body, STRIPE, now());
            (stripe, h, stripe_event(&id, "payment_intent.succeeded", &format!("pi_{i}")))
        }
        // Malformed JSON, validly signed.
        5 => {
            let bad = format!(r#"{{"id":"{id}","type":"#).into_bytes();
            (stripe, signed_stripe(&bad, STRIPE, now()), bad)
        }
        // Oversized, validly signed.
        6 => {
            let big = format!(r#"{{"id":"{id}","type":"x","pad":"{}"}}"#, "a".repeat(MAX_BODY + 1)).into_bytes();
            (stripe, signed_stripe(&big, STRIPE, now()), big)
        }
        // Shopify with a forged HMAC.
        7 => {
            let (mut h, b) = shopify_delivery("orders/paid", &id, i as u64);
            h[0].1 = shopify_header(&b, &SecretString::from("shpss_forger"));
            ("/webhooks/acme/shopify".to_owned(), h, b)
        }
        // Shopify, valid HMAC, no webhook id: not what Shopify sends.
        8 => {
            let (mut h, b) = shopify_delivery("orders/paid", &id, i as u64);
            h.retain(|(k, _)| *k != "X-Shopify-Webhook-Id");
            ("/webhooks/acme/shopify".to_owned(), h, b)
        }
        // Printful with a wrong token (URL and header).
        9 => {
            let b = format!(r#"{{"type":"package_shipped","event_id":"{id}","data":{{"order":{{"id":{i}}}}}}}"#)
                .into_bytes();
            if i.is_multiple_of(2) {
                ("/webhooks/acme/printful?token=pf_guess".to_owned(), vec![], b)
            } else {
                ("/webhooks/acme/printful".to_owned(), vec![("X-Autobiz-Webhook-Token", "pf_guess".to_owned())], b)
            }
        }
        // Wrong tenant: acme's genuine signature sent to beta's endpoint.
        10 => ("/webhooks/beta/stripe".to_owned(), signed_stripe(&body, STRIPE, now()), body),
        // A tenant this server does not serve, a provider it does not know, a JSON array.
        _ => match i % 3 {
            0 => ("/webhooks/gamma/stripe".to_owned(), signed_stripe(&body, STRIPE, now()), body),
            1 => ("/webhooks/acme/paypal".to_owned(), signed_stripe(&body, STRIPE, now()), body),
            _ => {
                let arr = b"[1,2,3]".to_vec();
                (stripe, signed_stripe(&arr, STRIPE, now()), arr)
            }
        },
    }
}

async fn hostile_corpus(db: TestDatabase) {
    let env = Env::new(db).await;
    let server = env.serve(&[]);
    const N: usize = 10_200;
    let statuses: Vec<u16> = futures_util::stream::iter(0..N)
        .map(|i| {
            let server = &server;
            async move {
                let (path, headers, body) = hostile(i);
                server.post(&path, &headers, body).await.0
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let rejected = statuses.iter().filter(|s| (400..500).contains(*s)).count();
    assert_eq!(rejected, N, "every hostile request gets a 4xx: {:?}", statuses.iter().collect::<BTreeSet<_>>());
    for tenant in ["acme", "beta"] {
        assert_eq!(env.store.event_count(&ctx(tenant)).await.unwrap(), 0, "nothing stored for {tenant}");
        assert!(env.store.run_records(&ctx(tenant), false, 10).await.unwrap().is_empty(), "no run for {tenant}");
    }
    assert_eq!(server.metric("event_received_total").await, 0);
    // Counted by code; oversized bodies by the body limit, before the kernel sees them.
    assert_eq!(server.metric("event_rejected_total").await as usize, N);
    assert_eq!(server.metric("event_rejected_total{code=\"PAYLOAD_TOO_LARGE\"}").await as usize, N / 12);
    assert_eq!(server.metric("http_responses_total{class=\"4xx\"}").await as usize, N);
    // And a genuine delivery still goes through afterwards.
    let body = stripe_event("evt_genuine", "payment_intent.created", "pi_genuine");
    let (status, out) = server.post("/webhooks/acme/stripe", &signed_stripe(&body, STRIPE, now()), body).await;
    assert_eq!((status, out["outcome"].as_str()), (200, Some("stored")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_h10_hostile_corpus_is_rejected_and_nothing_is_stored_sqlite() {
    hostile_corpus(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_h10_hostile_corpus_is_rejected_and_nothing_is_stored_postgres() {
    hostile_corpus(TestDatabase::postgres().await).await;
}

async fn duplicate_storm(db: TestDatabase) {
    let env = Env::new(db).await;
    let server = env.serve(&[]);
    let (h, b) = shopify_delivery("orders/create", "wh-create-1001", 1001);
    assert_eq!(server.post("/webhooks/acme/shopify", &h, b).await.0, 200);
    let (h, b) = shopify_delivery("orders/paid", "wh-paid-1001", 1001);
    let outcomes: Vec<String> = futures_util::future::join_all((0..1000).map(|_| {
        let (h, b, server) = (h.clone(), b.clone(), &server);
        async move {
            let (status, out) = server.post("/webhooks/acme/shopify", &h, b).await;
            assert_eq!(status, 200, "{out}");
            out["outcome"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    assert_eq!(outcomes.iter().filter(|o| *o == "stored").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 999);
    let acme = ctx("acme");
    eventually("both events processed", || async {
        let events = env.store.events(&acme, 10).await.unwrap();
        events.len() == 2 && events.iter().all(|e| matches!(e.status, EventStatus::Done | EventStatus::Skipped))
    })
    .await;
    let events = env.store.events(&acme, 10).await.unwrap();
    let paid = events.iter().find(|e| e.event_type == "orders/paid").unwrap();
    assert_eq!(paid.status, EventStatus::Done);
    assert_eq!(paid.workflow.as_deref(), Some("WF01"));
    assert_eq!(events.iter().find(|e| e.event_type == "orders/create").unwrap().status, EventStatus::Skipped);
    let runs = env.store.run_records(&acme, false, 100).await.unwrap();
    assert_eq!(runs.len(), 1, "one workflow for 1000 deliveries");
    assert_eq!(Some(runs[0].run_id.as_str()), paid.run_id.as_deref());
    assert_eq!(runs[0].event["order_id"], "1001");
    assert_eq!(server.metric("workflow_started_total").await, 1);
    assert_eq!(server.metric("event_duplicate_total").await, 999);
    // The run ended (the providers are unreachable here): one completion,
    // by its status, and one cost observation (P1-OR06's series).
    let status = autobiz_kernel::run::RunStatus::parse(&runs[0].status).unwrap();
    assert!(status.is_terminal(), "{status:?}");
    let (_, text) = server.get("/metrics", &[]).await;
    let line =
        format!("workflow_completion_total{{tenant=\"acme\",workflow=\"WF01\",status=\"{}\"}} 1", status.as_str());
    assert!(text.contains(&line), "{line} not in\n{text}");
    assert_eq!(server.metric("run_cost_histogram_count").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t40_thousand_concurrent_duplicates_start_one_workflow_sqlite() {
    duplicate_storm(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t40_thousand_concurrent_duplicates_start_one_workflow_postgres() {
    duplicate_storm(TestDatabase::postgres().await).await;
}

// Two `autobiz serve` on one PostgreSQL: each event is processed by one of
// them, each workflow started once, and both did work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t_rk02b_two_servers_on_one_postgres_share_the_work() {
    let env = Env::new(TestDatabase::postgres().await).await;
    let (a, b) = (env.serve(&[]), env.serve(&[]));
    const ORDERS: u64 = 40;
    for order in 0..ORDERS {
        let (h, body) = shopify_delivery("orders/create", &format!("c-{order}"), 5000 + order);
        a.post("/webhooks/acme/shopify", &h, body).await;
    }
    let (ra, rb) = (&a, &b);
    futures_util::future::join_all((0..ORDERS).map(|order| {
        let (server, other) = if order % 2 == 0 { (ra, rb) } else { (rb, ra) };
        async move {
            let (h, body) = shopify_delivery("orders/paid", &format!("p-{order}"), 5000 + order);
            // Each delivery twice, once to each server.
            assert_eq!(server.post("/webhooks/acme/shopify", &h, body.clone()).await.0, 200);
            assert_eq!(other.post("/webhooks/acme/shopify", &h, body).await.0, 200);
        }
    }))
    .await;
    let acme = ctx("acme");
    eventually("all events processed", || async {
        let events = env.store.events(&acme, 1000).await.unwrap();
        events.len() == 2 * ORDERS as usize
            && events.iter().all(|e| matches!(e.status, EventStatus::Done | EventStatus::Skipped))
    })
    .await;
    let runs = env.store.run_records(&acme, false, 1000).await.unwrap();
    assert_eq!(runs.len(), ORDERS as usize);
    let ids: BTreeSet<_> = runs.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(ids.len(), ORDERS as usize);
    let events = env.store.events(&acme, 1000).await.unwrap();
    assert!(events.iter().all(|e| e.attempts == 1), "no event claimed twice");
    let (sa, sb) = (a.metric("workflow_started_total").await, b.metric("workflow_started_total").await);
    assert_eq!(sa + sb, ORDERS);
    let (pa, pb) = (a.metric("event_processed_total").await, b.metric("event_processed_total").await);
    assert_eq!(pa + pb, 2 * ORDERS);
    assert!(pa > 0 && pb > 0, "both servers processed events ({pa}, {pb})");
}

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    let python = std::env::var_os("AUTOBIZ_PYTHON").map(PathBuf::from).unwrap_or(venv);
    let ok = Command::new(&python).args(["-c", "import stripe"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{} cannot import stripe: run `bash ci/python-stripe` (CI's ci/test does)", python.display());
    python
}

fn stripe_py(mode: &str, secret: &str, arg: &str, body: &[u8]) -> (bool, String) {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/stripe_sig.py");
    let mut child = Command::new(python())
        .arg(script)
        .args([mode, secret, arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

// The official Stripe SDK signs; the server accepts exactly those
// signatures and refuses the SDK's signature under another secret or an
// old timestamp. And the SDK's verifier accepts the headers autobiz makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t36_stripe_signatures_from_the_official_python_sdk() {
    let env = Env::new(TestDatabase::sqlite()).await;
    let server = env.serve(&["--no-worker"]);
    let body = stripe_event("evt_sdk_1", "payment_intent.created", "pi_sdk");
    let (ok, header) = stripe_py("sign", STRIPE, &now().to_string(), &body);
    assert!(ok && header.starts_with("t=") && header.contains(",v1="), "{header}");
    let (status, out) = server.post("/webhooks/acme/stripe", &[("Stripe-Signature", header)], body.clone()).await;
    assert_eq!((status, out["outcome"].as_str()), (200, Some("stored")), "{out}");
    let (_, other) = stripe_py("sign", "whsec_not_acme", &now().to_string(), &body);
    assert_eq!(server.post("/webhooks/acme/stripe", &[("Stripe-Signature", other)], body.clone()).await.0, 401);
    let body2 = stripe_event("evt_sdk_2", "payment_intent.created", "pi_sdk");
    let (_, old) = stripe_py("sign", STRIPE, &(now() - 600).to_string(), &body2);
    let (status, out) = server.post("/webhooks/acme/stripe", &[("Stripe-Signature", old)], body2).await;
    assert_eq!((status, out["error"]["code"].as_str()), (401, Some("SIGNATURE_EXPIRED")));
    // The other direction: the SDK verifies what autobiz signs, rotation headers included.
    let ours = stripe_header(&body, now(), &[SecretString::from("whsec_old"), SecretString::from(STRIPE)]);
    assert!(stripe_py("verify", STRIPE, &ours, &body).0);
    assert!(stripe_py("verify", "whsec_old", &ours, &body).0);
    assert!(!stripe_py("verify", "whsec_nope", &ours, &body).0);
    assert_eq!(env.store.event_count(&ctx("acme")).await.unwrap(), 1);
}

// The approval API: bearer token per approver, decisions audited, tenants apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t40_approval_api_authenticates_approvers_and_audits_decisions() {
    let env = Env::new(TestDatabase::sqlite()).await;
    let acme = ctx("acme");
    let new = NewApproval {
        run_id: "run-api".into(),
        step: "refund".into(),
        tool: "stripe.refund.create@1".into(),
        side_effect: SideEffect::Financial,
        summary: serde_json::json!({"amount": 500}),
        rule: RuleMatch {
            rule_index: Some(0),
            approvers: vec!["alice".into()],
            timeout_s: 3600,
            on_timeout: OnTimeout::Fail,
        },
        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    let id = env.store.hitl_create(&acme, &new).await.unwrap().request_id;
    let server = env.serve(&["--no-worker"]);
    let alice = [("Authorization", format!("Bearer {ALICE}")), ("X-Autobiz-Tenant", "acme".to_owned())];
    let (status, list) = server.get("/hitl", &alice).await;
    assert_eq!(status, 200);
    assert!(list.contains(&id));
    // The backlog gauges count it (P1-OR02's alerts read them).
    assert_eq!(server.metric("hitl_pending_requests").await, 1);
    assert!(server.metric("hitl_oldest_pending_age_seconds").await < 600);
    // No token, a wrong token, the right token for another tenant: 401.
    assert_eq!(server.get("/hitl", &[("X-Autobiz-Tenant", "acme".to_owned())]).await.0, 401);
    let wrong = [("Authorization", "Bearer tok-guess".to_owned()), ("X-Autobiz-Tenant", "acme".to_owned())];
    assert_eq!(server.post(&format!("/hitl/{id}/approve"), &wrong, vec![]).await.0, 401);
    let beta = [("Authorization", format!("Bearer {ALICE}")), ("X-Autobiz-Tenant", "beta".to_owned())];
    assert_eq!(server.post(&format!("/hitl/{id}/approve"), &beta, vec![]).await.0, 401);
    // A denial needs a reason.
    assert_eq!(server.post(&format!("/hitl/{id}/deny"), &alice, vec![]).await.0, 400);
    let (status, out) = server.post(&format!("/hitl/{id}/approve"), &alice, br#"{"reason":"checked"}"#.to_vec()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["request"]["approver"], "alice");
    assert_eq!(out["request"]["status"], "APPROVED");
    assert_eq!(server.metric("hitl_pending_requests").await, 0, "decided: no longer pending");
    let (status, out) = server.post(&format!("/hitl/{id}/deny"), &alice, br#"{"reason":"late"}"#.to_vec()).await;
    assert_eq!((status, out["error"]["code"].as_str()), (409, Some("HITL_ALREADY_DECIDED")));
    assert_eq!(server.post("/hitl/hitl_nope/approve", &alice, vec![]).await.0, 404);
    let audit = env.store.audit_events(&acme, 1000).await.unwrap();
    assert!(
        audit.iter().any(|a| a.event.action == "hitl_approve"
            && a.event.resource.contains(&id)
            && a.event.outcome.contains("by alice")
            && a.principal == "approver:alice"),
        "{audit:?}"
    );
    let security = env.store.security_events(&acme, 1000).await.unwrap();
    assert!(security.iter().any(|s| s.event.kind == "approver_auth_failed"));
    assert_eq!(server.metric("hitl_approved_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t36_health_readiness_and_metrics_names() {
    let env = Env::new(TestDatabase::sqlite()).await;
    let server = env.serve(&["--no-worker"]);
    assert_eq!(server.get("/healthz", &[]).await, (200, "ok\n".to_owned()));
    assert_eq!(server.get("/readyz", &[]).await.0, 200);
    let (status, text) = server.get("/metrics", &[]).await;
    assert_eq!(status, 200);
    for name in [
        "event_received_total",
        "event_held_total",
        "event_timeout_released_total",
        "event_duplicate_total",
        "hitl_request_created_total",
        "idempotency_hit_total",
        "idempotency_miss_total",
        "circuit_breaker_state",
        "circuit_breaker_transition_total",
        "workflow_started_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from\n{text}");
    }
    // Every series ops/metrics.toml says `autobiz serve` exports today is there.
    let exported = common::exported_metrics("serve");
    assert!(exported.len() >= 8, "{exported:?}");
    for name in exported {
        assert!(text.contains(&format!("# TYPE {name} ")), "ops/metrics.toml: {name} is exported, but not in\n{text}");
    }
    // Held counts: paid before created.
    let (h, b) = shopify_delivery("orders/paid", "wh-held", 77);
    let (_, out) = server.post("/webhooks/acme/shopify", &h, b).await;
    assert_eq!(out["status"], "HELD");
    assert_eq!(server.metric("event_held_total").await, 1);
    // Not ready once the schema is behind this binary.
    let admin = Store::open_admin(&env.db.admin_url().parse().unwrap()).await.unwrap();
    admin.downgrade(4).await.unwrap();
    let (status, text) = server.get("/readyz", &[]).await;
    assert_eq!((status, text.trim()), (503, "not ready: STORE_NOT_MIGRATED"));
}

// SIGTERM while deliveries are in flight: every delivery that was
// acknowledged is in the store, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t37_graceful_shutdown_loses_no_acknowledged_event() {
    let env = Env::new(TestDatabase::sqlite()).await;
    let mut server = env.serve(&[]);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let sends = tokio::spawn(async move {
        futures_util::stream::iter(0..400)
            .map(|i| {
                let (http, base) = (http.clone(), base.clone());
                async move {
                    let (h, b) = shopify_delivery("orders/create", &format!("sd-{i}"), 9000 + i);
                    let mut req = http.post(format!("{base}/webhooks/acme/shopify")).body(b);
                    for (k, v) in h {
                        req = req.header(k, v);
                    }
                    match req.send().await {
                        Ok(r) if r.status().as_u16() == 200 => Some(format!("sd-{i}")),
                        _ => None,
                    }
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
    });
    // Stop once some deliveries are in.
    eventually("some deliveries stored", || async { env.store.event_count(&ctx("acme")).await.unwrap() >= 50 }).await;
    let status = server.terminate();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");
    let acked: BTreeSet<String> = sends.await.unwrap().into_iter().flatten().collect();
    let stored: BTreeSet<String> =
        env.store.events(&ctx("acme"), 1000).await.unwrap().into_iter().map(|e| e.provider_event_id).collect();
    assert!(acked.len() >= 50);
    assert!(
        acked.is_subset(&stored),
        "acknowledged but not stored: {:?}",
        acked.difference(&stored).collect::<Vec<_>>()
    );
}

// `autobiz reconcile list` shows the case the ordering gate opened for an
// event whose predecessor never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t39_reconcile_list_shows_the_routed_event() {
    let env = Env::new(TestDatabase::sqlite()).await;
    let clock = Arc::new(autobiz_kernel::clock::ManualClock::new(chrono::Utc::now()));
    let store = Store::open_with_clock(&env.db.kernel_url().parse().unwrap(), clock.clone()).await.unwrap();
    let mut keys = std::collections::BTreeMap::new();
    keys.insert(autobiz_kernel::ingress::Provider::Shopify, Arc::new(vec![SecretString::from(SHOPIFY)]));
    let ingress = autobiz_kernel::ingress::Ingress::new(
        store.clone(),
        Arc::new(autobiz_kernel::ingress::StaticKeys(keys)),
        clock.clone(),
    );
    let (h, b) = shopify_delivery("orders/fulfilled", "wh-lonely", 31);
    let headers = autobiz_kernel::ingress::Headers::new(h.into_iter().map(|(k, v)| (k.to_owned(), v)));
    let acme = ctx("acme");
    let delivery = autobiz_kernel::ingress::Delivery {
        provider: autobiz_kernel::ingress::Provider::Shopify,
        headers: &headers,
        body: &b,
        url_token: None,
    };
    ingress.receive(&acme, delivery).await.unwrap();
    clock.advance(chrono::Duration::seconds(61));
    let sweep = ingress.sweep(&acme, &autobiz_kernel::ingress::StorePrecondition(store.clone())).await.unwrap();
    assert_eq!(sweep.reconcile, 1);
    store.close().await;
    let out = common::autobiz(env.dir.path())
        .args(["--database-url", env.db.kernel_url(), "--tenant", "acme", "--format", "json", "reconcile", "list"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let cases = common::json_of(&out);
    assert_eq!(cases[0]["kind"], "event_precondition_failed");
    assert_eq!(cases[0]["entity_id"], "order:31");
    assert_eq!(cases[0]["detail"]["waiting_for"], "orders/paid");
    let out = common::autobiz(env.dir.path())
        .args(["--database-url", env.db.kernel_url(), "--tenant", "beta", "reconcile", "list"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("no reconciliation cases"), "tenants apart");
}

/// The detector on its schedule inside `autobiz serve`: a charge and a
/// refund made at Stripe without receipts here are financial drift, found
/// by a scheduled pass, counted once each in `drift_case_opened_total`, open
/// in `reconciliation_open_cases` and sent to a human (never repaired);
/// later passes open nothing again; a tenant without provider credentials fails
/// its own pass without stopping acme's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t_rk02d_serve_detector_finds_financial_drift_on_its_schedule_and_exports_it() {
    let env = Env::new(TestDatabase::sqlite()).await;
    for (name, value) in [
        ("STRIPE_SECRET_KEY", "sk_test_serve"),
        ("SHOPIFY_ACCESS_TOKEN", "shpat_serve"),
        ("PRINTFUL_API_TOKEN", "pf-serve"),
    ] {
        common::autobiz(env.dir.path())
            .env("AUTOBIZ_MASTER_KEY", &env.master)
            .env("AUTOBIZ_SECRETS_FILE", &env.secrets)
            .args(["--database-url", env.db.kernel_url(), "--tenant", "acme", "secrets", "set", name])
            .write_stdin(value)
            .assert()
            .success();
    }
    let fakes = autobiz_fakes::Fakes::start().await;
    // A charge and a partial refund made at Stripe directly (the dashboard).
    let http = reqwest::Client::new();
    let pi: serde_json::Value = http
        .post(format!("{}/v1/payment_intents", fakes.stripe.uri()))
        .bearer_auth("sk_test_serve")
        .form(&[("amount", "2500"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pi_id = pi["id"].as_str().unwrap().to_owned();
    let refund = http
        .post(format!("{}/v1/refunds", fakes.stripe.uri()))
        .bearer_auth("sk_test_serve")
        .form(&[("payment_intent", pi_id.as_str()), ("amount", "500")])
        .send()
        .await
        .unwrap();
    assert!(refund.status().is_success(), "{}", refund.text().await.unwrap());
    let urls = vec![
        ("AUTOBIZ_STRIPE_URL", fakes.stripe.uri()),
        ("AUTOBIZ_SHOPIFY_URL", fakes.shopify.uri()),
        ("AUTOBIZ_PRINTFUL_URL", fakes.printful.uri()),
    ];
    let server = env.serve_with(&["--reconcile-every", "200ms"], &urls);
    let (_, text) = server.get("/metrics", &[]).await;
    for series in [
        "drift_case_opened_total{tenant=\"acme\",kind=\"financial\"} 0",
        "reconciliation_open_cases{tenant=\"acme\",kind=\"financial\"} 0",
    ] {
        assert!(text.contains(series), "before the first pass: {series} not in\n{text}");
    }
    eventually("a pass opened the two cases", || async { server.metric("drift_case_opened_total").await == 2 }).await;
    let acme = ctx("acme");
    let cases = env.store.reconciliation_cases(&acme).await.unwrap();
    let mut kinds: Vec<&str> = cases.iter().map(|c| c.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["stripe_capture_missing_receipt", "stripe_refund_missing_receipt"], "{cases:?}");
    let entity = format!("payment_intent:{pi_id}");
    assert!(cases.iter().all(|c| c.entity_id.as_deref() == Some(entity.as_str())), "{cases:?}");
    eventually("both cases went to a human", || async {
        env.store.reconciliation_cases(&acme).await.unwrap().iter().all(|c| c.status == "AWAITING_HUMAN")
    })
    .await;
    // Several more passes: nothing opened twice, nothing repaired.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, text) = server.get("/metrics", &[]).await;
    for series in [
        "drift_case_opened_total{tenant=\"acme\",kind=\"financial\"} 2",
        "drift_case_opened_total{tenant=\"acme\",kind=\"non_financial\"} 0",
        "reconciliation_open_cases{tenant=\"acme\",kind=\"financial\"} 2",
        "drift_case_opened_total{tenant=\"beta\",kind=\"financial\"} 0",
        "hitl_pending_requests{tenant=\"acme\"} 2",
    ] {
        assert!(text.contains(series), "{series} not in\n{text}");
    }
    assert_eq!(env.store.reconciliation_cases(&acme).await.unwrap().len(), 2);
    assert_eq!(fakes.stripe.refunds().len(), 1, "financial drift is never repaired by the detector");
    // Without the detector (--reconcile-every 0s) nothing is asked of Stripe.
    drop(server);
    let asked = fakes.stripe.requests_for("/v1/payment_intents").len();
    let quiet = env.serve_with(&["--reconcile-every", "0s"], &urls);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fakes.stripe.requests_for("/v1/payment_intents").len(), asked);
    assert_eq!(quiet.metric("drift_case_opened_total").await, 0);
}
