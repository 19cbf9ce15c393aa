//! The golden suite (P1-T19..T27): every scenario under `golden/scenarios/`,
//! on SQLite and on a fresh PostgreSQL database, each a test of its own
//! (`p1_t19_wf01_happy_path_sqlite`), run in-process by
//! `autobiz::golden` against fresh provider fakes and a fresh store, judged
//! by its oracles. A failing scenario prints which oracles failed, expected
//! against actual.
//!
//! The binary is a `libtest-mimic` harness (`harness = false`): nextest lists
//! and runs its trials like any test, one process each.

use std::path::PathBuf;
use std::sync::Arc;

/// The allocator of the `autobiz` binary, so that a scenario runs the
/// kernel as it runs in production (and as the golden bench measures it);
/// `--features system-allocator` leaves glibc's.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use autobiz::golden::{self, Backend, ScenarioFile, runner};
use autobiz_kernel::config::BusinessConfig;
use autobiz_kernel::store::SqliteDurability;
use autobiz_testkit::TestDatabase;
use libtest_mimic::{Arguments, Failed, Trial};

/// The catalogue id of each workflow's scenarios.
const IDS: &[(&str, &str)] = &[
    ("WF01", "p1_t19"),
    ("WF02", "p1_t20"),
    ("WF03", "p1_t21"),
    ("WF04", "p1_t22"),
    ("WF05", "p1_t24"),
    ("WF06", "p1_t25"),
    ("WF07", "p1_t26"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match (golden::load_dir(&root().join("golden/scenarios")), config()) {
        (Ok(files), Ok(config)) => {
            let config = Arc::new(config);
            for file in files {
                let Some((_, id)) = IDS.iter().find(|(wf, _)| *wf == file.scenario.workflow) else {
                    let name = format!("golden_scenario_of_unknown_workflow_{}", file.stem());
                    let wf = file.scenario.workflow.clone();
                    trials.push(Trial::test(name, move || Err(format!("no catalogue id for workflow {wf}").into())));
                    continue;
                };
                for backend in [Backend::Sqlite, Backend::Postgres] {
                    let name = format!("{id}_{}_{}", file.stem(), backend.as_str());
                    let (file, config) = (file.clone(), config.clone());
                    trials.push(Trial::test(name, move || scenario_trial(&file, &config, backend)));
                }
            }
            for backend in [Backend::Sqlite, Backend::Postgres] {
                let config = config.clone();
                let name = format!("p1_t27_golden_a_wrong_expectation_fails_with_a_readable_diff_{}", backend.as_str());
                trials.push(Trial::test(name, move || wrong_expectation_trial(&config, backend)));
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            trials.push(Trial::test("p1_t27_golden_scenarios_load", move || Err(e.into())));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn config() -> Result<BusinessConfig, String> {
    let path = root().join("examples/shop/autobiz.toml");
    BusinessConfig::load(&path).map_err(|e| format!("{}: {}", path.display(), e.message()))
}

/// Run one scenario on a fresh database of `backend`.
fn observe(scenario: &golden::Scenario, config: &BusinessConfig, backend: Backend) -> Result<golden::Observed, Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let db = match backend {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres().await,
        };
        let dir = tempfile::tempdir()?;
        let cassettes = root().join("cassettes");
        let env = runner::Env {
            config,
            admin_url: db.admin_url(),
            kernel_url: db.kernel_url(),
            work_dir: dir.path(),
            cassette_dir: &cassettes,
            sqlite_durability: SqliteDurability::ProcessCrash,
        };
        Ok(golden::run(scenario, &env).await?)
    })
}

fn scenario_trial(file: &ScenarioFile, config: &BusinessConfig, backend: Backend) -> Result<(), Failed> {
    let observed = observe(&file.scenario, config, backend)?;
    let mismatches = golden::check(&file.scenario.expect, &observed);
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(golden::render(&file.name, &mismatches).into())
}

/// A scenario whose expectation is wrong must fail, naming the oracle with
/// expected and actual values.
fn wrong_expectation_trial(config: &BusinessConfig, backend: Backend) -> Result<(), Failed> {
    let path = root().join("golden/scenarios/WF01/happy_path.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut scenario = golden::parse("WF01/happy_path", &text)?;
    // The truth: one capture, COMPLETED. The expectation: two, FAILED.
    scenario.expect.side_effects.insert("stripe_captures".into(), 2);
    scenario.expect.status = "FAILED".into();
    let observed = observe(&scenario, config, backend)?;
    let mismatches = golden::check(&scenario.expect, &observed);
    let diff = golden::render("WF01/happy_path", &mismatches);
    let want = [
        "golden scenario WF01/happy_path: 2 oracle(s) failed",
        "  Status oracle, status:\n    - expected: \"FAILED\"\n    + actual:   \"COMPLETED\"",
        "  SideEffect oracle, stripe_captures:\n    - expected: 2\n    + actual:   1",
    ];
    for w in want {
        if !diff.contains(w) {
            return Err(format!("the diff lacks {w:?}:\n{diff}").into());
        }
    }
    // And the true expectation passes on the same run.
    let truth = golden::parse("WF01/happy_path", &text)?;
    let left = golden::check(&truth.expect, &observed);
    if !left.is_empty() {
        return Err(golden::render("WF01/happy_path (true expectation)", &left).into());
    }
    Ok(())
}
