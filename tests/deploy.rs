//! `autobiz keys generate` and `autobiz deploy` as a user meets them
//! (P1-T18 signed evidence, INV-08 no deploy without gate evidence). `autobiz
//! gate` does not exist yet, so the tests write the evidence it will write:
//! a statement built and signed with the library (`autobiz::evidence`) under
//! a key that `autobiz keys generate` made, about a commit of a temporary git
//! repository holding the example config.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use autobiz::evidence::{self, Envelope, Statement};
use autobiz_kernel::config::BusinessConfig;
use common::{EXAMPLE, autobiz, git, json_of};
use predicates::prelude::*;
use serde_json::json;
use tempfile::TempDir;

/// A git repository with one commit holding `autobiz.toml` (the example),
/// and, outside it, a key pair from `autobiz keys generate`.
struct Fixture {
    repo: TempDir,
    keys: TempDir,
    head: String,
}

impl Fixture {
    fn new() -> Fixture {
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "-q"]);
        std::fs::copy(EXAMPLE, repo.path().join("autobiz.toml")).unwrap();
        git(repo.path(), &["add", "autobiz.toml"]);
        git(repo.path(), &["commit", "-q", "-m", "config"]);
        let head = git(repo.path(), &["rev-parse", "HEAD"]);
        let keys = tempfile::tempdir().unwrap();
        autobiz(keys.path()).args(["keys", "generate", "--out", "k"]).assert().success();
        Fixture { repo, keys, head }
    }

    fn private_key(&self) -> PathBuf {
        self.keys.path().join("k/evidence.key")
    }

    fn public_key(&self) -> PathBuf {
        self.keys.path().join("k/evidence.pub")
    }

    fn config_digest(&self) -> String {
        evidence::config_digest(&BusinessConfig::load(&self.repo.path().join("autobiz.toml")).unwrap())
    }

    /// What `autobiz gate` will produce: a statement about `commit` and the
    /// config digest `config`, signed with the key in `key`.
    fn statement(&self, commit: &str, config: &str, verdict: &str) -> Statement {
        let binary = evidence::file_sha256(&assert_cmd::cargo::cargo_bin("autobiz")).unwrap();
        Statement::new(
            commit,
            config,
            &binary,
            json!({
                "schema_version": 1,
                "verdict": verdict,
                "finished_at": chrono::Utc::now().to_rfc3339(),
                "stages": [],
            }),
        )
    }

    fn write(&self, name: &str, envelope: &Envelope) -> PathBuf {
        let path = self.keys.path().join(name);
        std::fs::write(&path, envelope.to_json()).unwrap();
        path
    }

    fn signed(&self, statement: &Statement) -> Envelope {
        evidence::sign(statement, &evidence::load_signing_key(&self.private_key()).unwrap())
    }

    /// Evidence the gate would write for this commit and config.
    fn passing_evidence(&self) -> PathBuf {
        self.write("evidence.json", &self.signed(&self.statement(&self.head, &self.config_digest(), "pass")))
    }

    /// `autobiz deploy --evidence FILE` in the repository, with the public key.
    fn deploy(&self, evidence: &Path) -> Command {
        let mut cmd = autobiz(self.repo.path());
        cmd.env("AUTOBIZ_EVIDENCE_PUBKEY", self.public_key()).arg("deploy").arg("--evidence").arg(evidence);
        cmd
    }

    fn marker(&self) -> PathBuf {
        self.repo.path().join("deployed")
    }

    /// A deploy step that leaves a mark, to prove it ran or did not.
    fn deploy_step(&self) -> [&'static str; 4] {
        ["--", "sh", "-c", "touch deployed"]
    }
}

#[test]
fn p1_t18_keys_generate_writes_a_0600_private_key_and_prints_the_keyid_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = autobiz(dir.path())
        .args(["--format", "json", "keys", "generate", "--out", "keys"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let report = json_of(&out);
    let private = dir.path().join("keys/evidence.key");
    let public = dir.path().join("keys/evidence.pub");
    assert_eq!(report["private_key"], "keys/evidence.key");
    assert_eq!(report["public_key"], "keys/evidence.pub");
    let key = evidence::load_signing_key(&private).unwrap();
    assert_eq!(evidence::load_verifying_key(&public).unwrap(), key.verifying_key());
    assert_eq!(report["keyid"], evidence::keyid(&key.verifying_key()));
    let pem = std::fs::read_to_string(&private).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----") && !text.contains(pem.lines().nth(1).unwrap()));
    assert!(std::fs::read_to_string(&public).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path().join("keys")).unwrap().count(), 2);
    // Human output: keyid and paths.
    let human = autobiz(dir.path()).args(["keys", "generate", "--out", "other"]).assert().success();
    let human = String::from_utf8(human.get_output().stdout.clone()).unwrap();
    assert!(human.contains("keyid: ") && human.contains("other/evidence.key") && human.contains("other/evidence.pub"));
    assert!(!human.contains("PRIVATE KEY"));
}

#[test]
fn p1_t18_keys_generate_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path()).args(["keys", "generate", "--out", "k"]).assert().success();
    let private = std::fs::read(dir.path().join("k/evidence.key")).unwrap();
    let public = std::fs::read(dir.path().join("k/evidence.pub")).unwrap();
    autobiz(dir.path())
        .args(["keys", "generate", "--out", "k"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[KEY_EXISTS]").and(predicate::str::contains("--force")));
    assert_eq!(std::fs::read(dir.path().join("k/evidence.key")).unwrap(), private);
    assert_eq!(std::fs::read(dir.path().join("k/evidence.pub")).unwrap(), public);
    // Only the public key left: still refused, nothing written.
    std::fs::remove_file(dir.path().join("k/evidence.key")).unwrap();
    autobiz(dir.path()).args(["keys", "generate", "--out", "k"]).assert().code(2);
    assert!(!dir.path().join("k/evidence.key").exists());
    // --force replaces both.
    autobiz(dir.path()).args(["keys", "generate", "--out", "k", "--force"]).assert().success();
    assert_ne!(std::fs::read(dir.path().join("k/evidence.pub")).unwrap(), public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k/evidence.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn inv08_deploy_with_valid_evidence_runs_the_deploy_step_with_its_exit_code() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    f.deploy(&evidence).args(["--", "sh", "-c", "exit 7"]).assert().code(7);
    f.deploy(&evidence).args(["--", "true"]).assert().code(0);
    f.deploy(&evidence).args(f.deploy_step()).assert().success();
    assert!(f.marker().exists());
    // The deploy step's output is its own.
    f.deploy(&evidence).args(["--", "sh", "-c", "echo shipped"]).assert().success().stdout("shipped\n");
    // No step: the verification alone.
    f.deploy(&evidence).assert().success().stdout(predicate::str::contains("evidence verified"));
    let out = f.deploy(&evidence).args(["--format", "json"]).assert().success().get_output().stdout.clone();
    let report = json_of(&out);
    assert_eq!(report["verified"], true);
    assert_eq!(report["commit"], f.head.as_str());
    assert_eq!(report["config_hash"], format!("sha256:{}", f.config_digest()));
}

#[test]
fn inv08_deploy_refuses_evidence_for_another_commit() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    std::fs::write(f.repo.path().join("README"), "more").unwrap();
    git(f.repo.path(), &["add", "README"]);
    git(f.repo.path(), &["commit", "-q", "-m", "another"]);
    let new_head = git(f.repo.path(), &["rev-parse", "HEAD"]);
    f.deploy(&evidence)
        .args(f.deploy_step())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[EVIDENCE_SUBJECT_MISMATCH]"))
        .stderr(predicate::str::contains(&f.head[..12]))
        .stderr(predicate::str::contains(&new_head[..12]));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_refuses_evidence_for_another_config() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let other = f.keys.path().join("other.toml");
    std::fs::write(&other, text.replacen("max_identical_calls = 3", "max_identical_calls = 4", 1)).unwrap();
    let other_digest = evidence::config_digest(&BusinessConfig::load(&other).unwrap());
    assert_ne!(other_digest, f.config_digest());
    f.deploy(&evidence)
        .arg("--config")
        .arg(&other)
        .args(f.deploy_step())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[EVIDENCE_SUBJECT_MISMATCH]"))
        .stderr(predicate::str::contains(&other_digest[..12]))
        .stderr(predicate::str::contains(&f.config_digest()[..12]));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_refuses_a_fail_verdict() {
    let f = Fixture::new();
    let evidence = f.write("fail.json", &f.signed(&f.statement(&f.head, &f.config_digest(), "fail")));
    f.deploy(&evidence)
        .args(f.deploy_step())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[EVIDENCE_VERDICT_FAIL]"));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_refuses_evidence_signed_by_another_key() {
    let f = Fixture::new();
    let other = evidence::generate_key();
    let envelope = evidence::sign(&f.statement(&f.head, &f.config_digest(), "pass"), &other);
    let evidence = f.write("other-key.json", &envelope);
    f.deploy(&evidence)
        .args(f.deploy_step())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[EVIDENCE_SIGNATURE_INVALID]"));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_refuses_a_bad_signature_or_a_tampered_payload() {
    let f = Fixture::new();
    let good = f.signed(&f.statement(&f.head, &f.config_digest(), "pass"));
    let mut bad_sig = good.clone();
    let mut sig = bad_sig.signatures[0].sig.clone().into_bytes();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    bad_sig.signatures[0].sig = String::from_utf8(sig).unwrap();
    // A failing statement's signature on a passing statement.
    let failing = f.signed(&f.statement(&f.head, &f.config_digest(), "fail"));
    let swapped = Envelope { signatures: failing.signatures.clone(), ..good.clone() };
    let tampered = Envelope { payload: failing.payload.clone(), ..good.clone() };
    for (name, envelope) in [("bad-sig.json", bad_sig), ("swapped.json", swapped), ("tampered.json", tampered)] {
        let evidence = f.write(name, &envelope);
        f.deploy(&evidence)
            .args(f.deploy_step())
            .assert()
            .code(1)
            .stderr(predicate::str::contains("error[EVIDENCE_SIGNATURE_INVALID]"));
    }
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_refuses_malformed_evidence() {
    let f = Fixture::new();
    let evidence = f.keys.path().join("junk.json");
    std::fs::write(&evidence, "{\"payload\": ").unwrap();
    f.deploy(&evidence)
        .args(f.deploy_step())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[EVIDENCE_MALFORMED]"));
    // A missing evidence file is bad input.
    f.deploy(&f.keys.path().join("nowhere.json"))
        .args(f.deploy_step())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[EVIDENCE_IO]"));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_without_the_public_key_env_exits_2() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    autobiz(f.repo.path())
        .arg("deploy")
        .arg("--evidence")
        .arg(&evidence)
        .args(f.deploy_step())
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("error[EVIDENCE_PUBKEY_REQUIRED]")
                .and(predicate::str::contains("AUTOBIZ_EVIDENCE_PUBKEY")),
        );
    // A key file that is not a public key: bad input too.
    f.deploy(&evidence)
        .env("AUTOBIZ_EVIDENCE_PUBKEY", f.private_key())
        .args(f.deploy_step())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[EVIDENCE_KEY_INVALID]"));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_deploy_outside_a_git_checkout_exits_2() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(EXAMPLE, elsewhere.path().join("autobiz.toml")).unwrap();
    let mut cmd = autobiz(elsewhere.path());
    // Stop git from finding a repository above the temporary directory.
    cmd.env("GIT_CEILING_DIRECTORIES", elsewhere.path().parent().unwrap());
    cmd.env("AUTOBIZ_EVIDENCE_PUBKEY", f.public_key())
        .arg("deploy")
        .arg("--evidence")
        .arg(&evidence)
        .args(["--", "sh", "-c", "touch deployed"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error[GIT_CHECKOUT_REQUIRED]"));
    assert!(!elsewhere.path().join("deployed").exists(), "the deploy step ran");
}

#[test]
fn inv08_a_deploy_step_that_cannot_start_exits_3() {
    let f = Fixture::new();
    let evidence = f.passing_evidence();
    f.deploy(&evidence)
        .args(["--", "/nonexistent/deploy-step"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("error[DEPLOY_STEP_FAILED]"));
}

#[test]
fn p1_t18_deploy_help_names_the_checks_and_the_key_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = autobiz(dir.path()).args(["deploy", "--help"]).assert().success().get_output().stdout.clone();
    let help = String::from_utf8(out).unwrap();
    assert!(help.contains("--evidence") && help.contains("AUTOBIZ_EVIDENCE_PUBKEY") && help.contains("verdict"));
    let out = autobiz(dir.path()).args(["keys", "generate", "--help"]).assert().success().get_output().stdout.clone();
    let help = String::from_utf8(out).unwrap();
    assert!(help.contains("--out") && help.contains("--force") && help.contains("0600"));
}

/// Evidence with its predicate replaced (signed with the fixture's key).
fn evidence_with(f: &Fixture, name: &str, predicate: serde_json::Value) -> PathBuf {
    let mut statement = f.statement(&f.head, &f.config_digest(), "pass");
    statement.predicate = predicate;
    f.write(name, &f.signed(&statement))
}

#[test]
fn inv08_deploy_refuses_stale_evidence_an_unknown_schema_and_a_modified_tree() {
    let f = Fixture::new();
    let day_old = (chrono::Utc::now() - chrono::Duration::hours(25)).to_rfc3339();
    let stale =
        evidence_with(&f, "stale.json", json!({"schema_version": 1, "verdict": "pass", "finished_at": day_old}));
    f.deploy(&stale).args(f.deploy_step()).assert().code(1).stderr(predicate::str::contains("error[EVIDENCE_EXPIRED]"));
    f.deploy(&stale).args(["--max-age", "26h"]).assert().success();
    let undated = evidence_with(&f, "undated.json", json!({"schema_version": 1, "verdict": "pass"}));
    f.deploy(&undated).assert().code(1).stderr(predicate::str::contains("EVIDENCE_EXPIRED"));
    let now = chrono::Utc::now().to_rfc3339();
    let future = evidence_with(&f, "v2.json", json!({"schema_version": 2, "verdict": "pass", "finished_at": now}));
    f.deploy(&future).assert().code(1).stderr(predicate::str::contains("EVIDENCE_SCHEMA_UNSUPPORTED"));

    let evidence = f.passing_evidence();
    std::fs::write(f.repo.path().join("autobiz.toml"), std::fs::read_to_string(EXAMPLE).unwrap() + "\n# edited\n")
        .unwrap();
    // Same config hash (a comment), same commit, but a tracked file is modified.
    f.deploy(&evidence).args(f.deploy_step()).assert().code(1).stderr(predicate::str::contains("TREE_DIRTY"));
    assert!(!f.marker().exists(), "the deploy step ran");
}

#[test]
fn inv08_an_override_needs_two_distinct_approvers_and_is_recorded() {
    let f = Fixture::new();
    let failed = f.write("fail.json", &f.signed(&f.statement(&f.head, &f.config_digest(), "fail")));
    let over = |approvers: &[&str]| {
        let mut cmd = f.deploy(&failed);
        for a in approvers {
            cmd.args(["--override-approver", a]);
        }
        cmd.args(["--override-reason", "hotfix for an outage"]);
        cmd
    };
    over(&["alice"]).args(f.deploy_step()).assert().code(2).stderr(predicate::str::contains("OVERRIDE_INVALID"));
    over(&["alice", "ALICE "]).args(f.deploy_step()).assert().code(2);
    assert!(!f.marker().exists());
    over(&["alice", "bob"]).args(f.deploy_step()).assert().success();
    assert!(f.marker().exists());
    let log = std::fs::read_to_string(f.repo.path().join(".autobiz/deploys.jsonl")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(entry["override"]["approvers"], json!(["alice", "bob"]));
    assert_eq!(entry["override"]["bypassed"], json!(["EVIDENCE_VERDICT_FAIL"]));
    assert_eq!(entry["commit"], f.head.as_str());
    let sha = evidence::file_sha256(&failed).unwrap();
    assert_eq!(entry["evidence_sha256"], sha.as_str());

    // An override never excuses another commit.
    std::fs::write(f.repo.path().join("README"), "more").unwrap();
    git(f.repo.path(), &["add", "README"]);
    git(f.repo.path(), &["commit", "-q", "-m", "another"]);
    over(&["alice", "bob"]).assert().code(1).stderr(predicate::str::contains("EVIDENCE_SUBJECT_MISMATCH"));
    // A plain deploy is recorded without an override.
    let f = Fixture::new();
    f.deploy(&f.passing_evidence()).assert().success();
    let log = std::fs::read_to_string(f.repo.path().join(".autobiz/deploys.jsonl")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!((entry["verdict"].as_str(), entry["override"].is_null()), (Some("pass"), true));
}

#[test]
fn p1_or06_a_deploy_of_an_earlier_commit_is_recorded_and_counted_as_a_rollback() {
    let f = Fixture::new();
    let first = f.head.clone();
    let evidence_for =
        |commit: &str, name: &str| f.write(name, &f.signed(&f.statement(commit, &f.config_digest(), "pass")));
    let last_entry = || {
        let log = std::fs::read_to_string(f.repo.path().join(".autobiz/deploys.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(log.lines().last().unwrap()).unwrap()
    };
    let prom = || std::fs::read_to_string(f.repo.path().join(".autobiz/deploy.prom")).unwrap();

    // A first deploy, then a newer commit, then the newer one again: none is a rollback.
    f.deploy(&evidence_for(&first, "a.json")).assert().success();
    assert_eq!((last_entry()["rollback"].as_bool(), last_entry()["previous_commit"].is_null()), (Some(false), true));
    std::fs::write(f.repo.path().join("README"), "next").unwrap();
    git(f.repo.path(), &["add", "README"]);
    git(f.repo.path(), &["commit", "-q", "-m", "next"]);
    let second = git(f.repo.path(), &["rev-parse", "HEAD"]);
    let b = evidence_for(&second, "b.json");
    f.deploy(&b).assert().success();
    assert_eq!(last_entry()["rollback"], false, "a newer commit is a roll-forward");
    assert_eq!(last_entry()["previous_commit"], first.as_str());
    f.deploy(&b).assert().success();
    assert_eq!(last_entry()["rollback"], false, "a redeploy of the same commit");
    assert!(prom().contains("deploy_total 3\n") && prom().contains("deploy_rollback_total 0\n"), "{}", prom());

    // Back to the first commit: a rollback, said, recorded and counted.
    git(f.repo.path(), &["checkout", "-q", &first]);
    let out = f.deploy(&evidence_for(&first, "a2.json")).arg("--format").arg("json").assert().success();
    assert_eq!(json_of(&out.get_output().stdout)["rollback"], true);
    assert_eq!(
        (last_entry()["rollback"].as_bool(), last_entry()["previous_commit"].as_str()),
        (Some(true), Some(second.as_str()))
    );
    let text = prom();
    assert!(text.contains("# TYPE deploy_rollback_total counter\ndeploy_rollback_total 1\n"), "{text}");
    assert!(text.contains("deploy_total 4\n"), "{text}");
    // Every series ops/metrics.toml says `autobiz deploy` exports is in the file.
    let exported = common::exported_metrics("deploy");
    assert!(!exported.is_empty());
    for name in exported {
        assert!(text.contains(&format!("# TYPE {name} ")), "ops/metrics.toml: {name} is exported, but not in\n{text}");
    }
    // A plain-text deploy says so too.
    git(f.repo.path(), &["checkout", "-q", &second]);
    f.deploy(&b).assert().success();
    git(f.repo.path(), &["checkout", "-q", &first]);
    f.deploy(&evidence_for(&first, "a3.json"))
        .assert()
        .success()
        .stdout(predicate::str::contains("a rollback to an earlier commit"));
}
