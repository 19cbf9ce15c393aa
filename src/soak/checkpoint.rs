//! The soak's checkpoint: `progress.jsonl` in the soak's directory. The
//! first line records the configuration and start; each resume appends a
//! line; each delivery whose run ended appends one record. A resumed soak
//! must have the same configuration (`SOAK_CONFIG_CHANGED` otherwise), so
//! the plan it recomputes is the one the records count. A torn last line (a
//! kill mid-write) is cut off on open: that delivery is re-delivered, and
//! the ingress's dedup makes the second delivery a no-op.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{SoakConfig, Totals, Violation};
use crate::report::CliError;

pub const FILE: &str = "progress.jsonl";

/// One delivery whose run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub workflow: String,
    pub at: DateTime<Utc>,
    pub success: bool,
    pub status: String,
    /// Violations first found after this delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
enum Line {
    Start { config: SoakConfig, started_at: DateTime<Utc> },
    Resume { at: DateTime<Utc> },
    Delivery(Record),
}

pub struct Checkpoint {
    path: PathBuf,
    file: std::fs::File,
    started_at: DateTime<Utc>,
    /// What the deliveries the file held when opened add up to: each
    /// record is read, counted and dropped, so a long soak does not keep
    /// one record per delivery in memory, on a resume either.
    totals: Totals,
    /// When the last delivery counted at open ran.
    last_at: Option<DateTime<Utc>>,
    /// Deliveries recorded in all, those read at open included.
    count: u64,
    resumes: u32,
}

fn io(path: &Path, e: std::io::Error) -> CliError {
    CliError::infrastructure("SOAK_CHECKPOINT_IO", format!("{}: {e}", path.display()))
}

/// The parameters the soak in `dir` was started with (for `--resume`).
pub fn recorded_config(dir: &Path) -> Result<SoakConfig, CliError> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::input("SOAK_CHECKPOINT_MISSING", format!("{}: {e} (is it a soak's directory?)", path.display()))
    })?;
    match text.lines().next().map(serde_json::from_str::<Line>) {
        Some(Ok(Line::Start { config, .. })) => Ok(config),
        _ => Err(CliError::input(
            "SOAK_CHECKPOINT_CORRUPT",
            format!("{} does not start with the soak's parameters", path.display()),
        )),
    }
}

impl Checkpoint {
    /// Open the checkpoint in `dir`: a new one, or the one a killed soak
    /// left, which must be of the same `config`.
    pub fn open(dir: &Path, config: &SoakConfig) -> Result<Checkpoint, CliError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(FILE);
        let mut started_at = None;
        let mut totals = Totals::new(config);
        let mut resumes = 0;
        match std::fs::File::open(&path) {
            Ok(f) => {
                // A line at a time; a last line without its newline (a kill
                // mid-write) is cut off.
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                let (mut whole, mut n) = (0u64, 0usize);
                loop {
                    line.clear();
                    let read = reader.read_line(&mut line).map_err(|e| io(&path, e))?;
                    if read == 0 || !line.ends_with('\n') {
                        break;
                    }
                    n += 1;
                    whole += read as u64;
                    let parsed: Line = serde_json::from_str(&line).map_err(|e| {
                        CliError::input("SOAK_CHECKPOINT_CORRUPT", format!("{} line {n}: {e}", path.display()))
                    })?;
                    match parsed {
                        Line::Start { config: recorded, started_at: at } => {
                            if &recorded != config {
                                return Err(CliError::input(
                                    "SOAK_CONFIG_CHANGED",
                                    format!(
                                        "{} belongs to a soak with other parameters (days, events, seed, clock, mix, gate): resume it with the same, or use another --dir",
                                        dir.display()
                                    ),
                                ));
                            }
                            started_at = Some(at);
                        }
                        Line::Resume { .. } => resumes += 1,
                        Line::Delivery(r) => {
                            if r.seq != totals.count {
                                return Err(CliError::input(
                                    "SOAK_CHECKPOINT_CORRUPT",
                                    format!("{} line {n}: delivery {} out of sequence", path.display(), r.seq),
                                ));
                            }
                            totals.add(r);
                        }
                    }
                }
                let len = reader.get_ref().metadata().map_err(|e| io(&path, e))?.len();
                if whole != len {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, e))?;
                    f.set_len(whole).map_err(|e| io(&path, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io(&path, e))?;
        let count = totals.count;
        let last_at = totals.last_at;
        let mut cp =
            Checkpoint { path, file, started_at: started_at.unwrap_or_else(Utc::now), totals, last_at, count, resumes };
        if started_at.is_none() {
            cp.write(&Line::Start { config: config.clone(), started_at: cp.started_at })?;
        } else {
            cp.resumes += 1;
            cp.write(&Line::Resume { at: Utc::now() })?;
        }
        Ok(cp)
    }

    fn write(&mut self, line: &Line) -> Result<(), CliError> {
        let mut text = serde_json::to_string(line).expect("a checkpoint line serializes");
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(|e| io(&self.path, e))?;
        self.file.sync_data().map_err(|e| io(&self.path, e))
    }

    /// Record one delivery whose run ended (durably, before it is counted).
    pub fn append(&mut self, record: &Record) -> Result<(), CliError> {
        self.write(&Line::Delivery(record.clone()))?;
        self.count += 1;
        Ok(())
    }

    /// When the last delivery recorded before this open ran.
    pub fn last_at(&self) -> Option<DateTime<Utc>> {
        self.last_at
    }

    /// What the deliveries recorded before this open add up to, handed
    /// over once (then fresh totals of the same gate, counting none).
    pub fn take_totals(&mut self) -> Totals {
        let fresh = self.totals.fresh();
        std::mem::replace(&mut self.totals, fresh)
    }

    /// How many deliveries are recorded, those before this open included.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }
}
