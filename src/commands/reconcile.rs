//! `autobiz reconcile run | list`: the kernel's drift detector
//! ([`autobiz_kernel::reconcile::Reconciler`]) for one tenant, and the
//! tenant's reconciliation cases (drift cases and the events the ordering
//! gate routed there).
//!
//! Exit codes of `run`: 0 the run completed, whatever it found (drift is
//! reported, not an error); 1 with `--fail-on-drift` when a case still needs
//! a human afterwards; 2 bad input (no tenant; no provider credentials
//! without `--skip-providers`); 3 the store or a provider unreachable.

use std::process::ExitCode;
use std::sync::Arc;

use autobiz_kernel::reconcile::{ReconcileReport, Reconciler, status};
use autobiz_kernel::store::{ReconciliationCase, Store};

use crate::cli::{GlobalArgs, ReconcileListArgs, ReconcileRunArgs};
use crate::report::{CliError, Reporter, exit, table};

pub async fn run(global: &GlobalArgs, args: &ReconcileRunArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let outcome = run_with(&store, &ctx, args).await;
    store.close().await;
    let report = outcome?;
    reporter.result(|| render_report(&report), &report);
    if args.fail_on_drift && report.needs_human() {
        return Ok(ExitCode::from(exit::SAID_NO));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_with(
    store: &Store,
    ctx: &autobiz_kernel::tenant::TenantContext,
    args: &ReconcileRunArgs,
) -> Result<ReconcileReport, CliError> {
    let providers = if args.skip_providers {
        None
    } else {
        match super::run::providers(store)? {
            Some(p) => Some(Arc::new(p)),
            None => {
                return Err(CliError::input(
                    "PROVIDERS_NOT_CONFIGURED",
                    "reconcile run compares with the providers and needs the tenant's credentials \
                     (AUTOBIZ_SECRETS_FILE, default .autobiz/secrets.json, and AUTOBIZ_MASTER_KEY); \
                     pass --skip-providers to check only the events routed to reconciliation",
                ));
            }
        }
    };
    Ok(Reconciler::new(store.clone(), providers).run(ctx).await?)
}

pub async fn list(global: &GlobalArgs, args: &ReconcileListArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let cases = store.reconciliation_cases(&ctx).await;
    store.close().await;
    let mut cases = cases?;
    if args.open {
        cases.retain(|c| status::needs_human(&c.status));
    }
    reporter.result(|| render(&cases), &cases);
    Ok(ExitCode::SUCCESS)
}

fn render_report(r: &ReconcileReport) -> String {
    let mut out = String::new();
    if r.findings.is_empty() {
        out.push_str("no drift\n");
    } else {
        let mut t = table(&["case", "kind", "entity", "financial", "action", "status", "hitl request"]);
        for f in &r.findings {
            t.add_row(vec![
                f.case_id.clone(),
                f.kind.clone(),
                f.entity.clone().unwrap_or_else(|| "-".into()),
                if f.financial { "yes" } else { "no" }.to_owned(),
                f.action.clone(),
                f.status.clone(),
                f.hitl_request.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    let checked: Vec<String> = r.checked.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!(
        "checked: {}; opened {}, repaired {}, sent to a human {}, decisions recorded {}; awaiting a human: {}",
        checked.join(", "),
        r.opened,
        r.repaired,
        r.escalated,
        r.decided,
        r.awaiting_human
    ));
    if !r.skipped.is_empty() {
        out.push_str(&format!("\nskipped (no provider clients): {}", r.skipped.join(", ")));
    }
    out
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
