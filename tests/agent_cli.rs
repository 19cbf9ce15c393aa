//! `autobiz run` drives an agent step against the LLM fake (settings from
//! the environment, the key never printed or recorded), and `autobiz
//! replay` re-executes it from the transcript without asking the model
//! (P1-T15, INV-06); without an endpoint the step fails with
//! `AGENT_LLM_MISSING`.

mod common;

use std::path::Path;

use autobiz_fakes::LlmFake;
use common::{EXAMPLE, autobiz, json_of};

const KEY: &str = "sk-test-agent-cli-7f3a9c";

/// The example business plus a one-step agent workflow.
fn config(dir: &Path) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(EXAMPLE).unwrap();
    text.push_str(
        r#"
[[workflows]]
id = "WF09"
name = "Triage"
principal = "agent:support"
steps = [
  { id = "triage", agent = { model = "gpt-4o-mini", prompt = "Tools: {{tools}}. Message: {{message}}. Reply with one JSON object.", tools = ["shopify.order.get"], max_turns = 3 }, input = { message = "$.event.message" } },
]
"#,
    );
    let path = dir.join("autobiz.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_t15_autobiz_run_drives_an_agent_step_and_replay_needs_no_model() {
    let fake = LlmFake::start_loopback().await;
    fake.script(r#"{"final": {"intent": "wismo"}}"#);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::write(dir.path().join("e.json"), r#"{"message": "Where is my order 1001?"}"#).unwrap();
    autobiz(dir.path()).args(["db", "migrate"]).assert().success();
    let out = autobiz(dir.path())
        .env("AUTOBIZ_TENANT", "acme")
        .env("AUTOBIZ_LLM_URL", fake.base_url())
        .env("AUTOBIZ_LLM_API_KEY", KEY)
        .arg("--config")
        .arg(&cfg)
        .args(["--format", "json", "run", "WF09", "--event", "e.json", "--run-id", "r1", "--transcript", "t.jsonl"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report = json_of(&out.stdout);
    assert_eq!(report["status"], "COMPLETED", "{report}");
    assert_eq!(report["outputs"]["triage"]["final"]["intent"], "wismo");
    assert_eq!(fake.requests().len(), 1);
    let transcript = std::fs::read_to_string(dir.path().join("t.jsonl")).unwrap();
    assert!(transcript.contains("\"model_turn\""), "{transcript}");
    for (what, text) in [("stdout", &*stdout), ("stderr", &*stderr), ("transcript", &*transcript)] {
        assert!(!text.contains(KEY), "the API key leaked into {what}");
    }

    // Replay: no endpoint configured, nothing asked, identical.
    let out = autobiz(dir.path()).arg("--config").arg(&cfg).args(["replay", "t.jsonl"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.starts_with("identical:"), "{text}");
    assert_eq!(fake.requests().len(), 1, "replay asked the model nothing");

    // A changed reply in the transcript is refused (the chain), never a panic.
    let tampered = transcript.replacen("wismo", "other", 1);
    std::fs::write(dir.path().join("tampered.jsonl"), tampered).unwrap();
    let out = autobiz(dir.path()).arg("--config").arg(&cfg).args(["replay", "tampered.jsonl"]).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("TRANSCRIPT_CORRUPT"));
}

#[test]
fn p1_t15_an_agent_step_without_an_llm_endpoint_fails_with_agent_llm_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::write(dir.path().join("e.json"), r#"{"message": "hi"}"#).unwrap();
    autobiz(dir.path()).args(["db", "migrate"]).assert().success();
    let out = autobiz(dir.path())
        .env("AUTOBIZ_TENANT", "acme")
        .arg("--config")
        .arg(&cfg)
        .args(["--format", "json", "run", "WF09", "--event", "e.json", "--run-id", "r2", "--transcript", "t.jsonl"])
        .assert()
        .code(1);
    let report = json_of(&out.get_output().stdout);
    assert_eq!(report["status"], "FAILED", "{report}");
    assert!(report["error"].as_str().unwrap().starts_with("AGENT_LLM_MISSING"), "{report}");
    // The failed run replays too.
    autobiz(dir.path()).arg("--config").arg(&cfg).args(["replay", "t.jsonl"]).assert().success();
}
