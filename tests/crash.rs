//! Crash safety with a real `kill -9` (P1-T12, INV-05, INV-06): `autobiz
//! run` is started as a child process against the provider fakes and killed
//! with SIGKILL at 24 moments spread over its run; `autobiz run --resume`
//! then finishes it. For every kill point: the run completes, Stripe
//! captured and Printful created exactly once for the order (the resumed
//! run sends the same idempotency key, and the fakes deduplicate as the real
//! providers do), the store holds one receipt per side effect, and the
//! transcript, crash and all, replays identically.

mod common;

use std::path::Path;
use std::process::Stdio;

use autobiz_fakes::Fakes;
use common::{EXAMPLE, autobiz, json_of};
use serde_json::{Value, json};

const TENANT: &str = "acme";
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The example business plus a workflow over four providers' side effects.
fn config(dir: &Path) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(EXAMPLE).unwrap();
    text.push_str(
        r#"
[[workflows]]
id = "WF08"
name = "CrashDrill"
principal = "agent:fulfillment"
steps = [
  { id = "authorize", tool = "stripe.payment_intent.authorize", input = { amount = "$.event.amount", currency = "$.event.currency", order_id = "$.event.order_id", payment_method = "pm_card_visa" } },
  { id = "capture", tool = "stripe.payment_intent.capture", input = { payment_intent = "$.authorize.id", amount = "$.event.amount" } },
  { id = "fulfil", tool = "printful.order.create", input = { external_id = "$.event.order_id", items = [{ quantity = 1, variant_id = 4011 }] } },
  { id = "mail", tool = "sendgrid.mail.send", input = { to = "$.event.email", template = "order-confirmed", data = { order = "$.event.order_id" } } },
]
"#,
    );
    let path = dir.join("autobiz.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The environment of every invocation: credentials, tenant, config and
/// the fakes' addresses.
fn envs(cfg: &Path, fakes: &Fakes) -> Vec<(&'static str, String)> {
    vec![
        ("AUTOBIZ_MASTER_KEY", MASTER_KEY.to_owned()),
        ("AUTOBIZ_TENANT", TENANT.to_owned()),
        ("AUTOBIZ_CONFIG", cfg.display().to_string()),
        ("AUTOBIZ_STRIPE_URL", fakes.stripe.uri()),
        ("AUTOBIZ_SHOPIFY_URL", fakes.shopify.uri()),
        ("AUTOBIZ_PRINTFUL_URL", fakes.printful.uri()),
        ("AUTOBIZ_SENDGRID_URL", fakes.sendgrid.uri()),
    ]
}

fn cmd(dir: &Path, cfg: &Path, fakes: &Fakes) -> assert_cmd::Command {
    let mut c = autobiz(dir);
    c.envs(envs(cfg, fakes));
    c
}

fn setup(dir: &Path, cfg: &Path, fakes: &Fakes) {
    autobiz(dir).args(["db", "migrate"]).assert().success();
    for (name, value) in [
        ("STRIPE_SECRET_KEY", "sk_test_crashdrill"),
        ("SHOPIFY_ACCESS_TOKEN", "shpat_test"),
        ("PRINTFUL_API_TOKEN", "pf_test"),
        ("SENDGRID_API_KEY", "SG.test"),
    ] {
        cmd(dir, cfg, fakes).args(["secrets", "set", name]).write_stdin(value).assert().success();
    }
}

fn captures_of(fakes: &Fakes, order: &str) -> usize {
    fakes.stripe.captures().iter().filter(|pi| pi["metadata"]["order_id"] == order).count()
}

fn fulfilments_of(fakes: &Fakes, order: &str) -> usize {
    fakes.printful.orders().iter().filter(|o| o["external_id"] == order).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t12_kill_9_at_24_points_then_resume_duplicates_no_side_effect() {
    let fakes = Fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    setup(dir.path(), &cfg, &fakes);

    // How long an uninterrupted run takes here, to spread the kills over it.
    let event = dir.path().join("e-base.json");
    std::fs::write(
        &event,
        json!({"order_id": "base", "amount": 4200, "currency": "usd", "email": "ann@example.com"}).to_string(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = cmd(dir.path(), &cfg, &fakes)
        .args(["--format", "json", "run", "WF08", "--event"])
        .arg(&event)
        .args(["--run-id", "base"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = json_of(&out.stdout);
    assert_eq!(base["status"], "COMPLETED", "{base}");
    let mut scale = started.elapsed();

    let points = 24u32;
    let mut killed_mid_run = 0;
    for k in 0..points {
        let order = format!("k{k}");
        let run_id = format!("run-{order}");
        let event = dir.path().join(format!("e-{order}.json"));
        let body = json!({"order_id": order, "amount": 1000 + k, "currency": "usd", "email": "ann@example.com"});
        std::fs::write(&event, body.to_string()).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_autobiz"))
            .env_remove("AUTOBIZ_DATABASE_URL")
            .env_remove("AUTOBIZ_SECRETS_FILE")
            .envs(envs(&cfg, &fakes))
            .current_dir(dir.path())
            .args(["run", "WF08", "--event"])
            .arg(&event)
            .args(["--run-id", &run_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill points spread from the start of the process to past its end.
        // The base run may have been slower than these (a loaded machine):
        // a kill meant for mid-run that found the process done shrinks the
        // scale for the next ones, so the kills keep landing inside runs.
        let fraction = f64::from(k) / f64::from(points - 4);
        tokio::time::sleep(scale.mul_f64(fraction)).await;
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        } else if fraction < 1.0 {
            scale = scale.mul_f64(0.7);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // Resume until done; a process killed before it registered the run
        // left nothing, and then the run starts afresh under the same id.
        let resumed =
            cmd(dir.path(), &cfg, &fakes).args(["--format", "json", "run", "--resume", &run_id]).output().unwrap();
        let report: Value =
            if resumed.status.code() == Some(2) && String::from_utf8_lossy(&resumed.stdout).contains("RUN_NOT_FOUND") {
                let again = cmd(dir.path(), &cfg, &fakes)
                    .args(["--format", "json", "run", "WF08", "--event"])
                    .arg(&event)
                    .args(["--run-id", &run_id, "--transcript"])
                    .arg(dir.path().join(format!("{run_id}-fresh.jsonl")))
                    .output()
                    .unwrap();
                json_of(&again.stdout)
            } else {
                json_of(&resumed.stdout)
            };
        assert_eq!(report["status"], "COMPLETED", "kill point {k}: {report}");
        assert_eq!(captures_of(&fakes, &order), 1, "kill point {k}: captures");
        assert_eq!(fulfilments_of(&fakes, &order), 1, "kill point {k}: fulfilments");
        // Replay of the (appended) transcript reproduces the run.
        let transcript = report["transcript"].as_str().unwrap().to_owned();
        cmd(dir.path(), &cfg, &fakes).args(["replay", &transcript]).assert().success();
    }
    assert!(killed_mid_run >= 12, "only {killed_mid_run} of {points} kills landed mid-run");
    // Each order was authorized once: no PaymentIntent was created twice.
    let intents = fakes.stripe.payment_intents();
    for k in 0..points {
        let n = intents.iter().filter(|pi| pi["metadata"]["order_id"] == format!("k{k}")).count();
        assert_eq!(n, 1, "order k{k} has {n} payment intents");
    }
}

/// `autobiz replay` on bad transcripts: a cut file, an edited line and a
/// newer format are input errors (exit 2) with their codes, never a panic
/// and never "identical".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv06_replay_refuses_cut_edited_and_newer_transcripts() {
    let fakes = Fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    setup(dir.path(), &cfg, &fakes);
    let event = dir.path().join("e.json");
    std::fs::write(
        &event,
        json!({"order_id": "r1", "amount": 900, "currency": "usd", "email": "ann@example.com"}).to_string(),
    )
    .unwrap();
    cmd(dir.path(), &cfg, &fakes)
        .args(["run", "WF08", "--event"])
        .arg(&event)
        .args(["--run-id", "r1", "--transcript", "t.jsonl"])
        .assert()
        .success();
    cmd(dir.path(), &cfg, &fakes).args(["replay", "t.jsonl"]).assert().success();
    let text = std::fs::read_to_string(dir.path().join("t.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cases = [
        ("cut.jsonl", lines[..lines.len() - 1].join("\n"), "TRANSCRIPT_TRUNCATED"),
        ("edited.jsonl", text.replacen("\"amount\":900", "\"amount\":901", 1), "TRANSCRIPT_CORRUPT"),
        ("newer.jsonl", text.replacen("{\"v\":2,", "{\"v\":9,", 1), "TRANSCRIPT_VERSION_UNSUPPORTED"),
        ("garbage.jsonl", "\u{0}\u{1}not json".to_owned(), "TRANSCRIPT_CORRUPT"),
    ];
    for (name, body, code) in cases {
        std::fs::write(dir.path().join(name), body).unwrap();
        let out = cmd(dir.path(), &cfg, &fakes).args(["replay", name]).assert().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(stderr.contains(code), "{name}: {stderr}");
    }
    // Another config than the run's.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&cfg).unwrap().replace("CrashDrill", "CrashDrill2")).unwrap();
    let out = cmd(dir.path(), &cfg, &fakes).arg("--config").arg(&other).args(["replay", "t.jsonl"]).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("REPLAY_CONFIG_MISMATCH"));
}

/// INV-07 end to end: an authorization over the rule's threshold pauses the
/// run before Stripe is called; `hitl approve` then `run --resume` moves the
/// money once; a denied one ends ABORTED and never reaches Stripe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv07_a_paused_run_resumes_after_approval_and_aborts_after_denial() {
    let fakes = Fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    setup(dir.path(), &cfg, &fakes);
    for (order, decision) in [("big1", "approve"), ("big2", "deny")] {
        let event = dir.path().join(format!("{order}.json"));
        // Over the example's `amount > 50000` rule for the authorization.
        let body = json!({"order_id": order, "amount": 90000, "currency": "usd", "email": "ann@example.com"});
        std::fs::write(&event, body.to_string()).unwrap();
        let run_id = format!("run-{order}");
        let out = cmd(dir.path(), &cfg, &fakes)
            .args(["--format", "json", "run", "WF08", "--event"])
            .arg(&event)
            .args(["--run-id", &run_id])
            .output()
            .unwrap();
        let paused = json_of(&out.stdout);
        assert_eq!(paused["status"], "WAITING_APPROVAL", "{paused}");
        assert!(
            fakes.stripe.payment_intents().iter().all(|pi| pi["metadata"]["order_id"] != order),
            "nothing sent yet"
        );
        // Authorization and capture each need a human over the threshold:
        // decide every request the run stops at, then resume it.
        let (mut done, mut out) = (paused, out);
        let mut decisions = 0;
        while done["status"] == "WAITING_APPROVAL" {
            let request = done["waiting_for"].as_str().unwrap().to_owned();
            let mut decide = cmd(dir.path(), &cfg, &fakes);
            decide.args(["hitl", decision, &request, "--approver", "ops-lead", "--reason", "checked"]);
            decide.assert().success();
            decisions += 1;
            out =
                cmd(dir.path(), &cfg, &fakes).args(["--format", "json", "run", "--resume", &run_id]).output().unwrap();
            done = json_of(&out.stdout);
        }
        assert_eq!(decisions, if decision == "approve" { 2 } else { 1 }, "{done}");
        let intents = fakes.stripe.payment_intents().iter().filter(|pi| pi["metadata"]["order_id"] == order).count();
        if decision == "approve" {
            assert_eq!(done["status"], "COMPLETED", "{done}");
            assert_eq!((intents, captures_of(&fakes, order)), (1, 1));
        } else {
            assert_eq!((done["status"].clone(), done["termination"].clone()), (json!("ABORTED"), json!("hitl_denied")));
            assert_eq!(intents, 0, "a denied authorization never reaches Stripe");
            assert_eq!(out.status.code(), Some(1));
        }
        let transcript = done["transcript"].as_str().unwrap().to_owned();
        cmd(dir.path(), &cfg, &fakes).args(["replay", &transcript]).assert().success();
    }
}
