//! The `autobiz` binary as a user meets it: help, exit codes, output formats,
//! and the bad-input cases of the foundation (malformed URL, unreachable
//! server, corrupted file, wrong master key).

mod common;

use std::path::Path;

use autobiz_testkit::TestDatabase;
use common::{EXAMPLE, autobiz, json_of};
use predicates::prelude::*;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn help_lists_the_whole_command_surface_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = autobiz(dir.path()).arg("--help").assert().success().get_output().stdout.clone();
    let help = String::from_utf8(out).unwrap();
    for cmd in [
        "db",
        "check",
        "run",
        "replay",
        "trace",
        "suite",
        "gate",
        "keys",
        "deploy",
        "quarantine",
        "trace-matrix",
        "soak",
        "exit-criteria",
        "serve",
        "fakes",
        "hitl",
        "breaker",
        "secrets",
        "reconcile",
    ] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{cmd} "))), "--help lacks {cmd}:\n{help}");
    }
    for flag in ["--database-url", "--config", "--tenant", "--format", "--quiet", "--verbose"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("Exit codes:") && help.contains("3  infrastructure failure"));
}

#[test]
fn serve_without_tenants_or_secrets_says_what_it_needs_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path()).arg("serve").assert().code(2).stderr(predicate::str::contains("error[TENANT_REQUIRED]"));
    autobiz(dir.path())
        .args(["serve", "--tenants", "acme"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[SECRETS_FILE_MISSING]"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path()).arg("frobnicate").assert().code(2);
    autobiz(dir.path()).args(["db", "downgrade"]).assert().code(2);
}

#[test]
fn db_migrate_on_the_embedded_default_creates_the_file_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path()).args(["db", "migrate"]).assert().success().stdout(predicate::str::contains("applied 0001"));
    assert!(dir.path().join(".autobiz/autobiz.db").exists());
    let out =
        autobiz(dir.path()).args(["--format", "json", "db", "migrate"]).assert().success().get_output().stdout.clone();
    let v = json_of(&out);
    assert_eq!(v["changed"], serde_json::json!([]));
    let latest = autobiz_kernel::store::migrator(autobiz_kernel::store::Backend::Sqlite)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    assert_eq!(v["current"], latest);
    assert_eq!(v["backend"], "sqlite");
    autobiz(dir.path()).args(["db", "status"]).assert().success().stdout(predicate::str::contains("foundation"));
}

#[test]
fn db_downgrade_needs_confirmation_then_reverts() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path()).args(["db", "migrate"]).assert().success();
    autobiz(dir.path())
        .args(["db", "downgrade", "--to", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("CONFIRMATION_REQUIRED"));
    autobiz(dir.path())
        .args(["db", "downgrade", "--to", "0", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("reverted ").and(predicate::str::contains("0001; schema now at version 0")));
    autobiz(dir.path()).args(["db", "migrate"]).assert().success().stdout(predicate::str::contains("applied 0001"));
}

#[test]
fn check_accepts_the_shipped_example_and_prints_a_stable_hash() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = autobiz(dir.path())
            .args(["--format", "json", "check", "--config", EXAMPLE])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        json_of(&out)
    };
    let a = run();
    assert_eq!(a["ok"], true);
    let hash = a["report"]["config_hash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("sha256:") && hash.len() == 71);
    assert_eq!(run()["report"]["config_hash"], hash.as_str());
    autobiz(dir.path())
        .args(["check", "--config", EXAMPLE])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("config hash: {hash}")));
}

#[test]
fn check_reports_schema_problems_with_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad =
        std::fs::read_to_string(EXAMPLE).unwrap().replacen("side_effect = \"READ\"", "side_effect = \"SOMETIMES\"", 1);
    std::fs::write(dir.path().join("autobiz.toml"), bad).unwrap();
    autobiz(dir.path()).arg("check").assert().code(1).stdout(
        predicate::str::contains("error[CONFIG_INVALID] autobiz.toml:")
            .and(predicate::str::contains("/tools/0/side_effect")),
    );
}

/// The shipped example with `from` replaced by `to` (once), written to
/// `dir/autobiz.toml`; returns the text.
fn example_with(dir: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(text.contains(from), "the example lacks {from:?}");
    let text = text.replacen(from, to, 1);
    std::fs::write(dir.join("autobiz.toml"), &text).unwrap();
    text
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?}")) + 1
}

#[test]
fn p1_t_cc01_check_names_the_undeclared_tool_with_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_with(dir.path(), "tool = \"printful.order.confirm\"", "tool = \"printful.order.confrim\"");
    let line = line_of(&text, "printful.order.confrim");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(
        predicate::str::contains(format!(
            "error[CC-01] autobiz.toml:{line}: /workflows/0/steps/4/tool: step \"confirm_fulfilment\" of WF01: tool \"printful.order.confrim\" names no declared tool\n    fix: did you mean \"printful.order.confirm\"?\n"
        ))
        .and(predicate::str::contains("autobiz.toml: 1 problem(s)")),
    );
    let out = autobiz(dir.path()).args(["--format", "json", "check"]).assert().code(1).get_output().stdout.clone();
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    let d = &v["report"]["diagnostics"][0];
    assert_eq!(d["code"], "CC-01");
    assert_eq!(d["line"], line);
    assert_eq!(d["fix"], "did you mean \"printful.order.confirm\"?");
}

#[test]
fn p1_t29_p1_t_cc02_check_refuses_a_workflow_that_loosens_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_with(
        dir.path(),
        "trigger = \"schedule:daily\"\nprincipal = \"job:closeout\"\n",
        "trigger = \"schedule:daily\"\nprincipal = \"job:closeout\"\nbounds = { max_steps = 400, max_wall_time_ms = 1000, max_tokens = 1, max_tool_calls = 2 }\n",
    );
    let line = line_of(&text, "max_steps = 400");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[CC-02] autobiz.toml:{line}: /workflows/6/bounds/max_steps: WF07: bounds.max_steps = 400 is looser than the top-level bounds.max_steps = 40; a workflow may only tighten the bounds\n    fix: lower it to at most 40, or raise the top-level bounds.max_steps\n"
    )));
    example_with(dir.path(), "max_tokens = 20000", "max_tokens = 0");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains("/bounds/max_tokens"));
}

#[test]
fn p1_t30_p1_t_cc03_check_refuses_a_tool_the_principal_has_no_scope_for() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_with(
        dir.path(),
        "\"printful.order.get\", \"sendgrid.mail.send\", \"stripe.payment_intent.list\"",
        "\"printful.order.get\", \"stripe.payment_intent.list\"",
    );
    let line = line_of(&text, "id = \"closeout_report\"");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[CC-03] autobiz.toml:{line}: /workflows/6/steps/2/tool: WF07: step \"closeout_report\" calls \"sendgrid.mail.send\", which no scope allows for principal \"job:closeout\"\n    fix: add \"sendgrid.mail.send\" to the tools of a [[scopes]] entry for principal \"job:closeout\"\n"
    )));
}

#[test]
fn p1_t41_p1_t_cc04_check_refuses_auto_approve_on_a_financial_tool() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_with(
        dir.path(),
        "tool = \"stripe.refund.create\"\nwhen = \"amount > 5000\"\n",
        "tool = \"stripe.refund.create\"\nwhen = \"amount > 5000\"\npolicy = \"AUTO_APPROVE\"\n",
    );
    let line = line_of(&text, "policy = \"AUTO_APPROVE\"");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[CC-04] autobiz.toml:{line}: /hitl/0/policy: HITL rule for FINANCIAL tool stripe.refund.create@1 has policy = \"AUTO_APPROVE\"; FINANCIAL calls always need a human\n    fix: remove the policy line (REQUIRE_APPROVAL is the default)\n"
    )));
}

#[test]
fn p1_t41_p1_t_cc04_check_refuses_a_financial_tool_without_hitl() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_with(
        dir.path(),
        "[[hitl]]\ntool = \"stripe.payment_intent.cancel\"\nwhen = \"reason == \\\"fraudulent\\\"\"\ntimeout_s = 3600\non_timeout = \"FAIL\"\napprovers = [\"ops-lead\"]\n",
        "",
    );
    let side_effect_line = line_of(&text, "name = \"stripe.payment_intent.cancel\"") + 2;
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[CC-04] autobiz.toml:{side_effect_line}: /tools/5/side_effect: FINANCIAL tool \"stripe.payment_intent.cancel@1\" has no [[hitl]] rule"
    )));
}

#[test]
fn p1_t28_check_refuses_an_invalid_tool_schema_and_duplicate_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        example_with(dir.path(), "output_schema = { type = \"object\" }", "output_schema = { type = \"record\" }");
    let line = line_of(&text, "\"record\"");
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[TOOL_SCHEMA_INVALID] autobiz.toml:{line}: /tools/0/output_schema/type: output_schema of tool \"shopify.order.get@1\" is not a valid JSON Schema"
    )));
    let text = example_with(dir.path(), "id = \"WF07\"", "id = \"WF06\"");
    let line = line_of(&text, "name = \"DailyCloseoutJob\"") - 1;
    autobiz(dir.path()).arg("check").assert().code(1).stdout(predicate::str::contains(format!(
        "error[CONFIG_INVALID] autobiz.toml:{line}: /workflows/6/id: workflow id \"WF06\" is used twice (first at /workflows/5)"
    )));
}

#[test]
fn p1_t_cc_check_output_is_identical_across_runs_with_several_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replacen("tool = \"sendgrid.mail.send\"", "tool = \"sendgrid.mail.sned\"", 1)
        .replacen("on_timeout = \"FAIL\"", "on_timeout = \"PROCEED\"", 1)
        .replacen("\"stripe.refund.create\",\n", "", 1);
    std::fs::write(dir.path().join("autobiz.toml"), text).unwrap();
    let run = |format: &str| {
        autobiz(dir.path()).args(["--format", format, "check"]).assert().code(1).get_output().stdout.clone()
    };
    let (a, b) = (run("human"), run("human"));
    assert_eq!(a, b);
    let v = json_of(&run("json"));
    assert_eq!(v, json_of(&run("json")));
    let diags = v["report"]["diagnostics"].as_array().unwrap();
    let keys: Vec<(u64, String)> =
        diags.iter().map(|d| (d["line"].as_u64().unwrap(), d["code"].as_str().unwrap().to_owned())).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let codes: std::collections::BTreeSet<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes.into_iter().collect::<Vec<_>>(), ["CC-01", "CC-03", "CC-04"], "{diags:#?}");
}

#[test]
fn check_on_malformed_or_missing_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("autobiz.toml"), "[business\nname = 1").unwrap();
    autobiz(dir.path())
        .arg("check")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[CONFIG_PARSE]: autobiz.toml:1:"));
    autobiz(dir.path())
        .args(["check", "--config", "nope.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("CONFIG_IO"));
}

#[test]
fn malformed_database_url_exits_2_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["mysql://root:hunter2@h/db", "postgres://root:hunter2@/db", "sqlite://"] {
        let out = autobiz(dir.path())
            .args(["--database-url", bad, "db", "migrate"])
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8(out).unwrap();
        assert!(err.starts_with("error[DATABASE_URL_INVALID]"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
}

#[test]
fn unreachable_postgres_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path())
        .args(["--database-url", "postgres://postgres@127.0.0.1:1/x", "db", "migrate"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("error[STORE_UNAVAILABLE]"));
}

#[test]
fn corrupted_sqlite_file_exits_3_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".autobiz")).unwrap();
    let db = dir.path().join(".autobiz/autobiz.db");
    std::fs::write(&db, "garbage, not a database".repeat(200)).unwrap();
    autobiz(dir.path())
        .args(["db", "migrate"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("error[STORE_CORRUPT]"));
    assert_eq!(std::fs::read_to_string(&db).unwrap(), "garbage, not a database".repeat(200));
}

#[test]
fn unwritable_directory_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    autobiz(dir.path())
        .args(["--database-url", "sqlite://file/sub/autobiz.db", "db", "migrate"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("error[STORE_IO]"));
}

#[test]
fn json_errors_are_one_document_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = autobiz(dir.path())
        .args(["--format", "json", "--database-url", "nope://", "db", "migrate"])
        .assert()
        .code(2)
        .get_output()
        .stdout
        .clone();
    let v = json_of(&out);
    assert_eq!(v["error"]["code"], "DATABASE_URL_INVALID");
    assert!(v["error"]["message"].as_str().unwrap().contains("unsupported scheme"));
}

#[test]
fn secrets_set_rotate_list_never_print_values() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| {
        autobiz(dir.path())
            .env("AUTOBIZ_MASTER_KEY", KEY)
            .args(["--tenant", "acme", "secrets"])
            .args(args)
            .write_stdin(stdin)
            .assert()
    };
    run(&["set", "STRIPE_KEY"], "sk_test_value_one\n")
        .success()
        .stdout(predicate::str::contains("set acme/STRIPE_KEY (version 1)"));
    run(&["rotate", "STRIPE_KEY", "--grace", "2h"], "sk_test_value_two")
        .success()
        .stdout(predicate::str::contains("version 2"));
    let out = run(&["list"], "").success().get_output().stdout.clone();
    let listing = String::from_utf8(out).unwrap();
    assert!(listing.contains("STRIPE_KEY") && listing.contains("v1 "), "{listing}");
    let out = run(&["--format", "json", "list"], "").success().get_output().stdout.clone();
    let v = json_of(&out);
    assert_eq!(v[0]["version"], 2);
    assert_eq!(v[0]["previous"][0]["version"], 1);
    let file = std::fs::read_to_string(dir.path().join(".autobiz/secrets.json")).unwrap();
    for text in [listing.as_str(), file.as_str(), &v.to_string()] {
        assert!(!text.contains("sk_test_value"), "a value leaked: {text}");
    }
}

#[test]
fn secrets_without_tenant_or_key_or_with_a_wrong_key_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", KEY)
        .args(["secrets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("TENANT_REQUIRED"));
    autobiz(dir.path())
        .args(["--tenant", "acme", "secrets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("MASTER_KEY_MISSING"));
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", "too-short")
        .args(["--tenant", "acme", "secrets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("MASTER_KEY_INVALID"));
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", KEY)
        .args(["--tenant", "acme", "secrets", "set", "K"])
        .write_stdin("v")
        .assert()
        .success();
    let before = std::fs::read(dir.path().join(".autobiz/secrets.json")).unwrap();
    let other_key = "HwEdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", other_key)
        .args(["--tenant", "acme", "secrets", "set", "K"])
        .write_stdin("v2")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("MASTER_KEY_INVALID"));
    assert_eq!(std::fs::read(dir.path().join(".autobiz/secrets.json")).unwrap(), before, "no partial write");
}

#[test]
fn a_master_key_file_beside_the_secrets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".autobiz")).unwrap();
    std::fs::write(dir.path().join(".autobiz/master.key"), KEY).unwrap();
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY_FILE", dir.path().join(".autobiz/master.key"))
        .args(["--tenant", "acme", "secrets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("beside the secrets"));
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("master.key"), KEY).unwrap();
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY_FILE", elsewhere.path().join("master.key"))
        .args(["--tenant", "acme", "secrets", "list"])
        .assert()
        .success();
}

#[tokio::test]
async fn postgres_migrate_as_owner_then_run_as_the_kernel_role() {
    let db = TestDatabase::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path())
        .args(["--database-url", db.admin_url(), "db", "migrate"])
        .assert()
        .success()
        .stdout(predicate::str::contains("applied 0001"));
    autobiz(dir.path())
        .args(["--database-url", db.admin_url(), "db", "migrate"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to do"));
    // Tenant work as the superuser is refused: RLS would not apply.
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", KEY)
        .args(["--database-url", db.admin_url(), "--tenant", "acme", "secrets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("STORE_ROLE_UNSAFE"));
    autobiz(dir.path())
        .env("AUTOBIZ_MASTER_KEY", KEY)
        .args(["--database-url", db.kernel_url(), "--tenant", "acme", "secrets", "set", "K"])
        .write_stdin("v")
        .assert()
        .success();
}

/// Write a small trace for tenant acme into the SQLite store of `dir`.
async fn seed_trace(dir: &Path) {
    use autobiz_kernel::bounds::Termination;
    use autobiz_kernel::store::Store;
    use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
    use autobiz_kernel::trace::{Cost, RecordKind, TraceRecord};
    let url = format!("sqlite://{}", dir.join(".autobiz/autobiz.db").display());
    let store = Store::open(&url.parse().unwrap()).await.unwrap();
    let ctx = TenantContext::new("acme".parse().unwrap(), Principal::new("agent:a"), CorrelationId::new("corr-7"));
    let now = chrono::Utc::now();
    let mut call = TraceRecord::new(&ctx, "run-7", 2, RecordKind::ToolCall, now);
    call.tool = Some("shopify.order.get@1".into());
    call.cost = Cost { tokens: 0, provider_calls: 1, micro_usd: 250 };
    let mut end = TraceRecord::new(&ctx, "run-7", 3, RecordKind::RunEnd, now);
    end.termination = Some(Termination::Completed);
    for r in [TraceRecord::new(&ctx, "run-7", 1, RecordKind::RunStart, now), call, end] {
        store.append_trace(&ctx, &r).await.unwrap();
    }
    store.close().await;
}

#[tokio::test]
async fn p1_t09_trace_show_prints_a_runs_trace_for_its_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    seed_trace(dir.path()).await;
    autobiz(dir.path()).args(["--tenant", "acme", "trace", "show", "run-7"]).assert().success().stdout(
        predicate::str::contains("ended: completed")
            .and(predicate::str::contains("shopify.order.get@1"))
            .and(predicate::str::contains("0.000250")),
    );
    let out = autobiz(dir.path())
        .args(["--tenant", "acme", "--format", "json", "trace", "show", "run-7"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&out).as_array().unwrap().len(), 3);
    // Another tenant cannot see it: the run does not exist for them.
    autobiz(dir.path())
        .args(["--tenant", "globex", "trace", "show", "run-7"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("RUN_NOT_FOUND"));
    autobiz(dir.path())
        .args(["trace", "show", "run-7"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("TENANT_REQUIRED"));
}
