//! `autobiz check`: validate the business config (schema, then the compile
//! checks CC-01..CC-04), print each problem with its fix, and the hash.

use std::process::ExitCode;

use autobiz_kernel::config::BusinessConfig;

use crate::cli::GlobalArgs;
use crate::report::{CliError, Reporter, exit};

pub fn run(global: &GlobalArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let config = BusinessConfig::load(&global.config)?;
    let report = config.check();
    reporter.result(
        || {
            let mut out = String::new();
            for d in &report.diagnostics {
                let at = d.line.map(|l| format!(":{l}")).unwrap_or_default();
                out.push_str(&format!("error[{}] {}{at}: {}: {}\n", d.code, report.path, d.path, d.message));
                if let Some(fix) = &d.fix {
                    out.push_str(&format!("    fix: {fix}\n"));
                }
            }
            if report.is_ok() {
                out.push_str(&format!("ok: {}\n", report.path));
            } else {
                out.push_str(&format!("{}: {} problem(s)\n", report.path, report.diagnostics.len()));
            }
            out.push_str(&format!("config hash: {}", report.config_hash));
            out
        },
        &serde_json::json!({ "ok": report.is_ok(), "report": report }),
    );
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(exit::SAID_NO) })
}
