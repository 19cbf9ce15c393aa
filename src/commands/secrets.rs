//! `autobiz secrets set | rotate | list`.
//!
//! Values come from stdin, an environment variable or a file, never from the
//! command line, and are never printed. Every access is audited in the store
//! given by --database-url.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use autobiz_kernel::secrets::{FileSecrets, MasterKey, SecretInfo, SecretsProvider};
use autobiz_kernel::store::Store;
use secrecy::SecretString;

use crate::cli::{GlobalArgs, SecretsArgs, SecretsCommand, ValueSource};
use crate::report::{CliError, Reporter, table};

pub async fn run(global: &GlobalArgs, args: SecretsArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let key = MasterKey::from_env(&args.secrets_file)?;
    let url = super::database_url(global)?;
    let store = Store::open(&url).await?;
    let secrets = FileSecrets::open(&args.secrets_file, key, Arc::new(store.clone()))?;
    let outcome = match args.command {
        SecretsCommand::Set { name, source } => {
            let info = secrets.set(&ctx, &name, read_value(&source)?).await?;
            reporter.result(|| format!("set {}/{} (version {})", ctx.tenant(), info.name, info.version), &info);
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rotate { name, grace, source } => {
            let grace = chrono::Duration::from_std(grace)
                .map_err(|_| CliError::input("INVALID_INPUT", "the grace period is too long"))?;
            let info = secrets.rotate(&ctx, &name, read_value(&source)?, grace).await?;
            reporter.result(
                || {
                    let until = info
                        .previous
                        .iter()
                        .map(|p| format!("; version {} readable until {}", p.version, p.readable_until))
                        .collect::<String>();
                    format!("rotated {}/{} to version {}{until}", ctx.tenant(), info.name, info.version)
                },
                &info,
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::List => {
            let list = secrets.list(&ctx).await?;
            reporter.result(|| render(&list), &list);
            Ok(ExitCode::SUCCESS)
        }
    };
    store.close().await;
    outcome
}

fn render(list: &[SecretInfo]) -> String {
    if list.is_empty() {
        return "no secrets".to_owned();
    }
    let mut t = table(&["name", "version", "created", "age (days)", "previous versions readable until"]);
    for s in list {
        let previous = s
            .previous
            .iter()
            .map(|p| format!("v{} {}", p.version, p.readable_until.format("%Y-%m-%d %H:%M UTC")))
            .collect::<Vec<_>>();
        t.add_row(vec![
            s.name.clone(),
            s.version.to_string(),
            s.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            s.age_days.to_string(),
            if previous.is_empty() { "-".to_owned() } else { previous.join(", ") },
        ]);
    }
    t.to_string()
}

/// Read a secret value; one trailing newline is dropped (as `echo` adds one).
fn read_value(source: &ValueSource) -> Result<SecretString, CliError> {
    let mut value = if let Some(var) = &source.from_env {
        std::env::var(var)
            .map_err(|_| CliError::input("INVALID_INPUT", format!("environment variable {var} is not set")))?
    } else if let Some(path) = &source.from_file {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::input("INVALID_INPUT", format!("cannot read {}: {e}", path.display())))?
    } else {
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("enter the secret value, then Ctrl-D:");
        }
        let mut buf = String::new();
        stdin
            .read_to_string(&mut buf)
            .map_err(|e| CliError::input("INVALID_INPUT", format!("cannot read the value from stdin: {e}")))?;
        buf
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(SecretString::from(value))
}
