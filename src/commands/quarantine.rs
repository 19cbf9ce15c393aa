//! `autobiz quarantine list | add | remove`: edits of the reviewed
//! quarantine file. `add` refuses P0 tests (by the catalogue's bindings) and
//! tests already quarantined; nothing here runs tests.

use std::process::ExitCode;

use chrono::Utc;

use crate::catalog::{Catalog, ListedTest};
use crate::cli::QuarantineCommand;
use crate::gate::Priority;
use crate::quarantine::{Quarantine, QuarantineEntry};
use crate::report::{CliError, Reporter, table};

pub fn run(cmd: QuarantineCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let today = Utc::now().date_naive();
    match cmd {
        QuarantineCommand::List { files } => {
            let q = Quarantine::load(&files.file)?;
            reporter.result(
                || {
                    if q.entries.is_empty() {
                        return "no quarantined tests".to_owned();
                    }
                    let mut t = table(&["test", "reason", "owner", "added", "expires", "state"]);
                    for e in &q.entries {
                        t.add_row(vec![
                            e.id.clone(),
                            e.reason.clone(),
                            e.owner.clone(),
                            e.added.to_string(),
                            e.expires.to_string(),
                            if e.expired(today) { "EXPIRED (fails the gate)" } else { "active" }.to_owned(),
                        ]);
                    }
                    t.to_string()
                },
                &q.entries,
            );
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Add { id, reason, owner, days, files } => {
            let catalog = Catalog::load(&files.catalog)?;
            let mut q = Quarantine::load(&files.file)?;
            let Some((binary_id, name)) = id.split_once(' ') else {
                return Err(CliError::input(
                    "QUARANTINE_INVALID",
                    format!(
                        "`{id}` is not a test id: use nextest's \"BINARY NAME\", as the gate's flake report prints it"
                    ),
                ));
            };
            let test = ListedTest { binary_id: binary_id.to_owned(), kind: String::new(), name: name.to_owned() };
            if catalog.priority_of(&test) == Priority::P0 {
                let entries: Vec<&str> = catalog.entries_for(&test).map(|e| e.id.as_str()).collect();
                return Err(CliError::refused(
                    "QUARANTINE_P0",
                    format!("{id} is a P0 test ({}) and cannot be quarantined: fix it", entries.join(", ")),
                ));
            }
            if q.get(&id).is_some() {
                return Err(CliError::input("QUARANTINE_INVALID", format!("{id} is already quarantined")));
            }
            let entry = QuarantineEntry {
                id: id.clone(),
                reason,
                owner,
                added: today,
                expires: today + chrono::Duration::days(i64::from(days)),
            };
            q.entries.push(entry.clone());
            // Re-parse to apply the file's own rules (reason, owner, dates).
            Quarantine::parse(&q.to_toml())?;
            q.save(&files.file)?;
            reporter.result(
                || format!("quarantined {id} until {} (commit {} for review)", entry.expires, files.file.display()),
                &entry,
            );
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Remove { id, files } => {
            let mut q = Quarantine::load(&files.file)?;
            let before = q.entries.len();
            q.entries.retain(|e| e.id != id);
            if q.entries.len() == before {
                return Err(CliError::input("QUARANTINE_NOT_FOUND", format!("{id} is not quarantined")));
            }
            q.save(&files.file)?;
            reporter.result(|| format!("released {id} from quarantine"), &serde_json::json!({ "removed": id }));
            Ok(ExitCode::SUCCESS)
        }
    }
}
