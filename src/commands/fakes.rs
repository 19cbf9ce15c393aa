//! `autobiz fakes serve`: the provider fakes (autobiz-fakes) on loopback
//! ports for people exploring by hand. Prints each fake's base URL (table or
//! JSON), then serves until Ctrl-C. Each fake answers
//! `GET /__fakes/health`.

use std::process::ExitCode;

use autobiz_fakes::{Fakes, HEALTH_PATH};

use crate::cli::{FakesCommand, FakesServeArgs};
use crate::report::{CliError, Reporter, table};

pub async fn run(cmd: FakesCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    match cmd {
        FakesCommand::Serve(args) => serve(args, reporter).await,
    }
}

async fn serve(args: FakesServeArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    // The fakes accept any test key and hold no real data, but they are not
    // hardened servers: keep them off the network.
    if !args.bind.is_loopback() {
        return Err(CliError::input(
            "FAKES_BIND_NOT_LOOPBACK",
            format!(
                "--bind {} is not a loopback address; the fakes listen on loopback only (127.0.0.1 or ::1)",
                args.bind
            ),
        ));
    }
    let fakes = Fakes::start_on(args.bind)
        .await
        .map_err(|e| CliError::infrastructure("FAKES_BIND_FAILED", format!("cannot listen on {}: {e}", args.bind)))?;
    let uris = fakes.uris();
    reporter.result(
        || {
            let mut t = table(&["provider", "base URL", "health"]);
            for (name, uri) in &uris {
                t.add_row(vec![name.to_string(), uri.clone(), format!("{uri}{HEALTH_PATH}")]);
            }
            format!("{t}\nServing until Ctrl-C. Test keys: sk_test_..., shpat_..., any Printful token, SG....")
        },
        &serde_json::json!({
            "fakes": uris.iter().map(|(name, uri)| serde_json::json!({ "provider": name, "url": uri })).collect::<Vec<_>>(),
            "health_path": HEALTH_PATH,
        }),
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| CliError::infrastructure("FAKES_SIGNAL", format!("cannot wait for Ctrl-C: {e}")))?;
    drop(fakes);
    Ok(ExitCode::SUCCESS)
}
