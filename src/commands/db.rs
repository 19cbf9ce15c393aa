//! `autobiz db migrate | status | downgrade`.

use std::process::ExitCode;

use autobiz_kernel::store::{MigrationSummary, Store};

use crate::cli::{DbCommand, GlobalArgs};
use crate::report::{CliError, Reporter, table};

pub async fn run(global: &GlobalArgs, cmd: DbCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let url = super::database_url(global)?;
    let store = Store::open_admin(&url).await?;
    let outcome = match cmd {
        DbCommand::Migrate => {
            let summary = store.migrate().await?;
            reporter.result(|| describe(&url.to_string(), &summary, "applied"), &summary);
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Status => {
            let states = store.migration_status().await?;
            reporter.result(
                || {
                    let mut t = table(&["version", "description", "applied"]);
                    for s in &states {
                        t.add_row(vec![
                            s.version.to_string(),
                            s.description.clone(),
                            if s.applied { "yes" } else { "no" }.to_owned(),
                        ]);
                    }
                    format!("{url} ({})\n{t}", store.backend())
                },
                &states,
            );
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Downgrade { to, yes } => {
            if !yes {
                return Err(CliError::input(
                    "CONFIRMATION_REQUIRED",
                    format!(
                        "downgrading to version {to} drops the tables of later migrations and their data: back up, then add --yes"
                    ),
                ));
            }
            let summary = store.downgrade(to).await?;
            reporter.result(|| describe(&url.to_string(), &summary, "reverted"), &summary);
            Ok(ExitCode::SUCCESS)
        }
    };
    store.close().await;
    outcome
}

fn describe(url: &str, s: &MigrationSummary, verb: &str) -> String {
    if s.changed.is_empty() {
        format!("{url}: nothing to do, schema at version {}", s.current)
    } else {
        let list: Vec<String> = s.changed.iter().map(|v| format!("{v:04}")).collect();
        format!("{url}: {verb} {}; schema now at version {}", list.join(", "), s.current)
    }
}
