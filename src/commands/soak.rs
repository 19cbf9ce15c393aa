//! `autobiz soak`: plan, drive ([`ServeDriver`]), judge, write evidence.

use std::path::PathBuf;
use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;
use chrono::{DurationRound, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::exit_criteria::{SOAK_ENVELOPE_FILE, SOAK_EVIDENCE_ROOT, SOAK_UNSIGNED_FILE};
use crate::cli::{Format, GlobalArgs, SoakArgs};
use crate::evidence::{self, SOAK_PREDICATE_TYPE, Statement};
use crate::report::{CliError, Reporter, table};
use crate::soak::checkpoint::{self, Checkpoint};
use crate::soak::driver::{DriverOptions, ServeDriver};
use crate::soak::plan::Mix;
use crate::soak::{GateNow, Invariant, Progress, SoakConfig, SoakOutcome, Violation};

/// The live summary: a bar over the planned deliveries with the rolling
/// lower bound and the violations so far (stderr, a terminal only), and the
/// soak's series in Prometheus text format in `DIR/soak.prom` (for the node
/// exporter's textfile collector), rewritten after every delivery.
struct Bar(ProgressBar, PathBuf);

/// The soak's series (ops/metrics.toml, exporter `soak`).
pub fn soak_metrics(gate: GateNow, violations: &[Violation]) -> String {
    let mut out = String::from(
        "# HELP gate_pass_rate Successes over outcomes in the gate's window\n# TYPE gate_pass_rate gauge\n",
    );
    out.push_str(&format!("gate_pass_rate{{gate=\"soak\"}} {}\n", gate.pass_rate));
    out.push_str("# HELP gate_lower_bound The rolling Wilson lower bound\n# TYPE gate_lower_bound gauge\n");
    if let Some(l) = gate.lower_bound {
        out.push_str(&format!("gate_lower_bound{{gate=\"soak\"}} {l}\n"));
    }
    out.push_str(
        "# HELP invariant_violation_total Invariant violations found\n# TYPE invariant_violation_total counter\n",
    );
    for i in Invariant::ALL {
        let n = violations.iter().filter(|v| v.invariant == i).count();
        out.push_str(&format!("invariant_violation_total{{invariant=\"{}\"}} {n}\n", i.as_str()));
    }
    out
}

impl Bar {
    fn new(reporter: &Reporter, prom: PathBuf) -> Bar {
        use std::io::IsTerminal;
        let visible = std::io::stderr().is_terminal() && !reporter.quiet() && reporter.format() == Format::Human;
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let template = if color {
            "{bar:30.cyan} {pos}/{len} deliveries [{elapsed_precise}, eta {eta}] {msg}"
        } else {
            "{bar:30} {pos}/{len} deliveries [{elapsed_precise}, eta {eta}] {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Bar(bar, prom)
    }
}

impl Progress for Bar {
    fn started(&self, planned: u64, already_done: u64) {
        self.0.set_length(planned);
        self.0.set_position(already_done);
    }
    fn delivered(&self, done: u64, gate: GateNow, violations: &[Violation]) {
        self.0.set_position(done);
        let lcb = gate.lower_bound.map_or("warming up".to_owned(), |l| format!("LCB {l:.4}"));
        self.0.set_message(format!("{lcb}, {} violation(s)", violations.len()));
        // Written whole, then renamed: a scraper never reads half a file.
        let tmp = self.1.with_extension("prom.tmp");
        if std::fs::write(&tmp, soak_metrics(gate, violations)).is_ok() {
            let _ = std::fs::rename(&tmp, &self.1);
        }
    }
}

pub async fn run(global: &GlobalArgs, args: SoakArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    // The key is checked before hours of traffic, not after.
    let key = super::gate::signing_key(args.unsigned)?;
    let (dir, soak_config) = match &args.resume {
        Some(dir) => (dir.clone(), checkpoint::recorded_config(dir)?),
        None => {
            if !(0.0..1.0).contains(&args.threshold) || !(0.5..1.0).contains(&args.confidence) {
                return Err(CliError::input(
                    "SOAK_BAD_GATE",
                    "--threshold must be in [0, 1) and --confidence in [0.5, 1)",
                ));
            }
            let now = Utc::now();
            let dir = args
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(SOAK_EVIDENCE_ROOT).join(now.format("%Y%m%dT%H%M%SZ").to_string()));
            let start = match args.clock {
                // Simulated days start at today's midnight (UTC).
                crate::soak::ClockMode::Virtual => now.duration_trunc(chrono::Duration::days(1)).unwrap_or(now),
                crate::soak::ClockMode::Wall => now,
            };
            let config = SoakConfig {
                days: args.days,
                events_per_day: args.events_per_day,
                seed: args.seed,
                clock: args.clock,
                mix: Mix::shop(),
                start,
                window: args.window.max(1),
                warmup: args.warmup,
                confidence: args.confidence,
                threshold: args.threshold,
                check_every: args.check_every.max(1),
            };
            (dir, config)
        }
    };
    let config = BusinessConfig::load(&global.config)?;
    let commit = super::deploy::git_head()?;
    let inject = args.inject_violation.map(|i| (i, args.inject_at.unwrap_or(soak_config.planned() / 2)));
    let database_url = if global.database_url == autobiz_kernel::store::DEFAULT_DATABASE_URL {
        None
    } else {
        Some(super::database_url(global)?)
    };
    let mut checkpoint = Checkpoint::open(&dir, &soak_config)?;
    // A resumed virtual soak's clock starts after the last counted delivery
    // and past the leases and holds the killed process left (the store's
    // time never runs backwards).
    let clock_start = match (soak_config.clock, checkpoint.last_at()) {
        (crate::soak::ClockMode::Virtual, Some(last)) => last + chrono::Duration::minutes(5),
        _ => soak_config.start,
    };
    let mut driver = ServeDriver::start(DriverOptions {
        config: &config,
        dir: &dir,
        database_url,
        clock: soak_config.clock,
        start: clock_start,
        seed: soak_config.seed,
        inject,
    })
    .await?;
    if args.resume.is_some() {
        driver.recover().await?;
    }
    let bar = Bar::new(reporter, dir.join("soak.prom"));
    let outcome = crate::soak::run(&soak_config, &mut driver, &mut checkpoint, &bar).await;
    bar.0.finish_and_clear();
    driver.shutdown().await;
    let outcome = outcome?;

    let predicate = serde_json::to_value(&outcome)
        .map_err(|e| CliError::infrastructure("EVIDENCE_IO", format!("cannot encode the soak's outcome: {e}")))?;
    let mut statement = Statement::for_current_binary(&commit, &config, predicate)
        .map_err(|e| CliError::infrastructure("EVIDENCE_IO", format!("cannot hash the autobiz binary: {e}")))?;
    statement.predicate_type = SOAK_PREDICATE_TYPE.to_owned();
    let evidence_file = match &key {
        Some(key) => {
            let path = dir.join(SOAK_ENVELOPE_FILE);
            write(&path, evidence::sign(&statement, key).to_json().as_bytes())?;
            path
        }
        None => {
            let path = dir.join(SOAK_UNSIGNED_FILE);
            write(&path, serde_json::to_string_pretty(&statement).unwrap_or_default().as_bytes())?;
            path
        }
    };
    reporter.result(
        || human(&outcome, &evidence_file, key.is_some()),
        &serde_json::json!({ "outcome": outcome, "evidence": evidence_file, "signed": key.is_some(), "dir": dir }),
    );
    Ok(if outcome.verdict == "pass" { ExitCode::SUCCESS } else { ExitCode::from(crate::report::exit::SAID_NO) })
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes)
        .map_err(|e| CliError::infrastructure("EVIDENCE_IO", format!("cannot write {}: {e}", path.display())))
}

fn human(o: &SoakOutcome, evidence: &std::path::Path, signed: bool) -> String {
    let mut t = table(&["workflow", "runs", "as designed", "rate"]);
    for (wf, tally) in &o.workflows {
        t.add_row(vec![
            wf.clone(),
            tally.runs.to_string(),
            tally.completed.to_string(),
            format!("{:.1} %", tally.success_rate * 100.0),
        ]);
    }
    let bound = |b: Option<f64>| b.map_or("-".to_owned(), |b| format!("{b:.4}"));
    let mut out = format!(
        "soak {}: {} of {} deliveries over {:.2} {} day(s), rolling lower bound {} (lowest {}, threshold {}), {} resume(s)\n{t}\n",
        o.verdict.to_uppercase(),
        o.events,
        o.planned_events,
        o.days,
        match o.clock {
            crate::soak::ClockMode::Virtual => "virtual",
            crate::soak::ClockMode::Wall => "wall",
        },
        bound(o.lower_bound),
        bound(o.min_lower_bound),
        o.threshold,
        o.resumes,
    );
    for v in &o.violations {
        out.push_str(&format!("violation after delivery {}: {}: {}\n", v.seq, v.invariant.as_str(), v.detail));
    }
    for r in &o.reasons {
        out.push_str(&format!("why it failed: {r}\n"));
    }
    out.push_str(&format!("evidence: {} ({})", evidence.display(), if signed { "signed" } else { "unsigned" }));
    out
}
