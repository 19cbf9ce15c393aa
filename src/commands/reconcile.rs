//! `autobiz reconcile list`: the tenant's reconciliation cases, such as the
//! events the ordering gate routed there (`event_precondition_failed`: the
//! predecessor never arrived and the precondition re-check failed).
//! `reconcile run` (the drift detector against the providers) is not in
//! this version.

use std::process::ExitCode;

use autobiz_kernel::store::{ReconciliationCase, Store};

use crate::cli::GlobalArgs;
use crate::report::{CliError, Reporter, table};

pub async fn list(global: &GlobalArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let cases = store.reconciliation_cases(&ctx).await;
    store.close().await;
    let cases = cases?;
    reporter.result(|| render(&cases), &cases);
    Ok(ExitCode::SUCCESS)
}

fn render(cases: &[ReconciliationCase]) -> String {
    if cases.is_empty() {
        return "no reconciliation cases".to_owned();
    }
    let mut t = table(&["case", "kind", "entity", "status", "opened", "detail"]);
    for c in cases {
        t.add_row(vec![
            c.case_id.clone(),
            c.kind.clone(),
            c.entity_id.clone().unwrap_or_else(|| "-".into()),
            c.status.clone(),
            c.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            c.detail.to_string().chars().take(80).collect(),
        ]);
    }
    t.to_string()
}
