//! The progress bar of `suite` and `gate` (indicatif, on stderr): shown only
//! on a terminal, never with `-q` or `--format json`, and without colour
//! when `NO_COLOR` is set.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::catalog::Stage;
use crate::cli::Format;
use crate::gate::harness::Progress;
use crate::nextest::RunStatus;
use crate::report::Reporter;

/// A spinner naming the stage and run in progress.
pub struct Spinner {
    bar: ProgressBar,
}

impl Spinner {
    pub fn new(reporter: &Reporter) -> Spinner {
        let visible = std::io::stderr().is_terminal() && !reporter.quiet() && reporter.format() == Format::Human;
        let bar = ProgressBar::with_draw_target(
            None,
            if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let template =
            if color { "{spinner:.cyan} [{elapsed_precise}] {msg}" } else { "{spinner} [{elapsed_precise}] {msg}" };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Spinner {
    fn stage_started(&self, stage: Stage, run: u32, runs: u32, tests: Option<usize>) {
        let count = tests.map(|n| format!(": {n} tests")).unwrap_or_default();
        self.bar.set_message(format!("{} run {run}/{runs}{count}", stage.as_str()));
    }

    fn stage_finished(&self, stage: Stage, run: u32, status: &RunStatus) {
        let what = match status {
            RunStatus::Completed { exit_code: 0 } => "passed".to_owned(),
            RunStatus::Completed { .. } => "had failures".to_owned(),
            RunStatus::Crashed { .. } => "crashed".to_owned(),
            RunStatus::TimedOut { .. } => "timed out".to_owned(),
        };
        self.bar.println(format!("{} run {run}: {what}", stage.as_str()));
    }
}
