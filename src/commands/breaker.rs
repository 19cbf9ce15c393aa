//! `autobiz breaker list | reset NAME --by WHO`: the tenant's circuit
//! breakers. A reset closes the breaker whatever its state and is audited.

use std::process::ExitCode;
use std::sync::Arc;

use autobiz_kernel::breaker::{BreakerPolicy, BreakerRecord, Breakers};
use autobiz_kernel::clock::SystemClock;
use autobiz_kernel::store::Store;

use crate::cli::{BreakerCommand, GlobalArgs};
use crate::report::{CliError, Reporter, table};

pub async fn run(global: &GlobalArgs, cmd: BreakerCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let outcome = match cmd {
        BreakerCommand::List => store.breakers(&ctx).await.map(|list| reporter.result(|| render(&list), &list)),
        BreakerCommand::Reset { name, by } => {
            // A reset does not depend on the policy: it closes the breaker.
            match Breakers::new(store.clone(), BreakerPolicy::default(), Arc::new(SystemClock)) {
                Ok(breakers) => breakers.reset(&ctx, &name, &by).await.map(|record| {
                    reporter.result(
                        || format!("breaker {} reset to {} by {by}", record.name, record.state.as_str()),
                        &record,
                    )
                }),
                Err(e) => Err(e),
            }
        }
    };
    store.close().await;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

fn render(list: &[BreakerRecord]) -> String {
    if list.is_empty() {
        return "no circuit breakers".to_owned();
    }
    let mut t = table(&["name", "state", "recent failures", "probes in flight", "last transition", "updated"]);
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
    };
    for b in list {
        t.add_row(vec![
            b.name.clone(),
            b.state.as_str().to_owned(),
            b.recent_failures.to_string(),
            b.probes_in_flight.to_string(),
            at(b.last_transition_at),
            at(Some(b.updated_at)),
        ]);
    }
    t.to_string()
}
