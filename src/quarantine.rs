//! The reviewed quarantine, `suites/quarantine.toml`: tests that still run
//! and are reported but do not count in the gate.
//!
//! ```toml
//! [[quarantine]]
//! id = "autobiz-kernel::executor p1_t08_repeated_sequence"   # nextest's `BINARY NAME`
//! reason = "flaky on a loaded machine (timing)"
//! owner = "alice"
//! added = "2026-11-20"
//! expires = "2026-12-04"
//! ```
//!
//! Rules the gate enforces: a P0 test cannot be quarantined; an entry whose
//! `expires` date has passed fails the gate (a quarantine is a loan, not a
//! gift). The file changes only through review: `autobiz quarantine add`
//! edits it for a commit, and the gate proposes entries for new flakes in
//! its evidence directory, never silently in this file.

use std::path::Path;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::report::CliError;

/// The quarantine file's default location.
pub const DEFAULT_PATH: &str = "suites/quarantine.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineEntry {
    /// The test, as nextest names it: `BINARY NAME`.
    pub id: String,
    pub reason: String,
    pub owner: String,
    pub added: NaiveDate,
    pub expires: NaiveDate,
}

impl QuarantineEntry {
    pub fn expired(&self, today: NaiveDate) -> bool {
        self.expires < today
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantine {
    #[serde(default, rename = "quarantine")]
    pub entries: Vec<QuarantineEntry>,
}

impl Quarantine {
    /// Read the file; a missing file is an empty quarantine.
    pub fn load(path: &Path) -> Result<Quarantine, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Quarantine::default()),
            Err(e) => {
                return Err(CliError::input(
                    "QUARANTINE_IO",
                    format!("cannot read the quarantine {}: {e}", path.display()),
                ));
            }
        };
        Quarantine::parse(&text).map_err(|mut e| {
            e.message = format!("{}: {}", path.display(), e.message);
            e
        })
    }

    pub fn parse(text: &str) -> Result<Quarantine, CliError> {
        let q: Quarantine =
            toml::from_str(text).map_err(|e| CliError::input("QUARANTINE_INVALID", e.to_string().trim().to_owned()))?;
        let mut seen = std::collections::BTreeSet::new();
        for entry in &q.entries {
            if !seen.insert(entry.id.as_str()) {
                return Err(CliError::input("QUARANTINE_INVALID", format!("{} is quarantined twice", entry.id)));
            }
            if entry.expires < entry.added {
                return Err(CliError::input("QUARANTINE_INVALID", format!("{} expires before it was added", entry.id)));
            }
            if entry.reason.trim().is_empty() || entry.owner.trim().is_empty() {
                return Err(CliError::input("QUARANTINE_INVALID", format!("{} needs a reason and an owner", entry.id)));
            }
        }
        Ok(q)
    }

    pub fn to_toml(&self) -> String {
        let header = "# Quarantined tests: they run and are reported but do not count in the gate.\n\
                      # Reviewed like code; P0 tests cannot be quarantined; an expired entry fails the gate.\n\n";
        format!("{header}{}", toml::to_string_pretty(self).unwrap_or_default())
    }

    /// Write atomically (temporary file beside it, then rename).
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let io = |e: std::io::Error| {
            CliError::infrastructure("QUARANTINE_IO", format!("cannot write {}: {e}", path.display()))
        };
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.to_toml()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn get(&self, id: &str) -> Option<&QuarantineEntry> {
        self.entries.iter().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn p1_t18_quarantine_round_trips_and_refuses_bad_entries() {
        let text = "[[quarantine]]\nid = \"autobiz x\"\nreason = \"flaky\"\nowner = \"al\"\nadded = \"2026-11-01\"\nexpires = \"2026-11-15\"\n";
        let q = Quarantine::parse(text).unwrap();
        assert_eq!(q.entries[0].expires, date("2026-11-15"));
        assert!(q.entries[0].expired(date("2026-11-16")) && !q.entries[0].expired(date("2026-11-15")));
        assert_eq!(Quarantine::parse(&q.to_toml()).unwrap(), q);

        let twice = format!("{text}{text}");
        assert!(Quarantine::parse(&twice).unwrap_err().message.contains("twice"));
        let backwards = text.replace("2026-11-15", "2026-10-01");
        assert!(Quarantine::parse(&backwards).unwrap_err().message.contains("expires before"));
        let unknown = format!("{text}colour = \"red\"\n");
        assert_eq!(Quarantine::parse(&unknown).unwrap_err().code, "QUARANTINE_INVALID");
    }
}
