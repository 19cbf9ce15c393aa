//! Showing results and errors: one line for people, one JSON document for
//! machines; and the one place where failures become exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use autobiz_kernel::ErrorClass;
use comfy_table::{Table, presets};
use serde::Serialize;

use crate::cli::Format;

/// The exit-code contract (see `autobiz --help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const SAID_NO: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const INFRASTRUCTURE: u8 = 3;
}

/// A failure as the CLI reports it: a stable code, a message, an exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CliError {
    pub code: String,
    pub message: String,
    #[serde(skip)]
    pub exit: u8,
}

impl CliError {
    /// A check, gate or verification that said no (exit 1).
    pub fn refused(code: &str, message: impl Into<String>) -> Self {
        CliError { code: code.to_owned(), message: message.into(), exit: exit::SAID_NO }
    }

    pub fn input(code: &str, message: impl Into<String>) -> Self {
        CliError { code: code.to_owned(), message: message.into(), exit: exit::BAD_INPUT }
    }

    pub fn infrastructure(code: &str, message: impl Into<String>) -> Self {
        CliError { code: code.to_owned(), message: message.into(), exit: exit::INFRASTRUCTURE }
    }
}

impl From<autobiz_kernel::Error> for CliError {
    fn from(e: autobiz_kernel::Error) -> Self {
        let exit = match e.class() {
            ErrorClass::Refused => exit::SAID_NO,
            ErrorClass::Input => exit::BAD_INPUT,
            ErrorClass::Infrastructure => exit::INFRASTRUCTURE,
        };
        let mut message = e.message().to_owned();
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
        }
        CliError { code: e.code().as_str().to_owned(), message, exit }
    }
}

/// Evidence failures: a verification that said no exits 1; an unusable key
/// is bad input and exits 2.
impl From<crate::evidence::EvidenceError> for CliError {
    fn from(e: crate::evidence::EvidenceError) -> Self {
        use crate::evidence::EvidenceCode;
        let exit = match e.code() {
            EvidenceCode::Malformed
            | EvidenceCode::SignatureInvalid
            | EvidenceCode::SubjectMismatch
            | EvidenceCode::VerdictFail => exit::SAID_NO,
            EvidenceCode::KeyInvalid => exit::BAD_INPUT,
        };
        CliError { code: e.code().as_str().to_owned(), message: e.message().to_owned(), exit }
    }
}

/// Writes results in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    format: Format,
    quiet: bool,
}

impl Reporter {
    pub fn new(format: Format, quiet: bool) -> Self {
        Reporter { format, quiet }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// `-q`: only errors are printed (and no progress bar).
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Print a result: `human` for people (unless --quiet), `value` as JSON.
    pub fn result<T: Serialize>(&self, human: impl FnOnce() -> String, value: &T) {
        match self.format {
            Format::Json => print_json(value),
            Format::Human if !self.quiet => {
                let text = human();
                if !text.is_empty() {
                    println!("{}", text.trim_end());
                }
            }
            Format::Human => {}
        }
    }

    /// Report an error and return its exit code.
    pub fn error(&self, e: &CliError) -> ExitCode {
        match self.format {
            Format::Json => print_json(&serde_json::json!({ "error": e })),
            Format::Human => {
                let _ = writeln!(std::io::stderr(), "error[{}]: {}", e.code, e.message);
            }
        }
        ExitCode::from(e.exit)
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// A table in the house style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(if std::io::stdout().is_terminal() { presets::UTF8_FULL_CONDENSED } else { presets::ASCII_MARKDOWN });
    t.set_header(header.iter().copied());
    t
}

/// Logs go to stderr; `AUTOBIZ_LOG` overrides the level chosen by -v / -q;
/// colour only on a terminal and never with `NO_COLOR`.
pub fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_env("AUTOBIZ_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(true)
        .try_init();
}
