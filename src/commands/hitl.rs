//! `autobiz hitl list | approve ID | deny ID`: the tenant's approval queue.
//!
//! Deciding is the kernel's `Store::hitl_decide`: final, audited, refused
//! for a decided or expired request (exit 1) and for an approver the rule
//! does not list (exit 1); an unknown id is bad input (exit 2).

use std::process::ExitCode;

use autobiz_kernel::hitl::{Approval, Decision, StatusFilter};
use autobiz_kernel::store::Store;

use crate::cli::{GlobalArgs, HitlCommand, HitlStatusFilter};
use crate::report::{CliError, Reporter, table};

pub async fn run(global: &GlobalArgs, cmd: HitlCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let ctx = super::tenant_context(global)?;
    let store = Store::open(&super::database_url(global)?).await?;
    let outcome = match cmd {
        HitlCommand::List { status } => {
            let filter = match status {
                HitlStatusFilter::Pending => StatusFilter::Pending,
                HitlStatusFilter::All => StatusFilter::All,
            };
            store.hitl_list(&ctx, filter).await.map(|list| {
                reporter.result(|| render(&list, status), &list);
            })
        }
        HitlCommand::Approve { id, approver, reason } => {
            decide(&store, reporter, &ctx, &id, Decision::Approve, &approver, reason.as_deref()).await
        }
        HitlCommand::Deny { id, approver, reason } => {
            decide(&store, reporter, &ctx, &id, Decision::Deny, &approver, Some(&reason)).await
        }
    };
    store.close().await;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    store: &Store,
    reporter: &Reporter,
    ctx: &autobiz_kernel::tenant::TenantContext,
    id: &str,
    decision: Decision,
    approver: &str,
    reason: Option<&str>,
) -> autobiz_kernel::Result<()> {
    let decided = store.hitl_decide(ctx, id, decision, approver, reason, store.now()).await?;
    reporter.result(
        || {
            let verb = if decision == Decision::Approve { "approved" } else { "denied" };
            let why = decided.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            format!(
                "{verb} {} (run {}, step {}, {}) by {}{why}",
                decided.request_id,
                decided.run_id,
                decided.step,
                decided.tool,
                decided.approver.as_deref().unwrap_or("-")
            )
        },
        &decided,
    );
    Ok(())
}

fn render(list: &[Approval], status: HitlStatusFilter) -> String {
    if list.is_empty() {
        return match status {
            HitlStatusFilter::Pending => "no pending approval requests".to_owned(),
            HitlStatusFilter::All => "no approval requests".to_owned(),
        };
    }
    let mut t = table(&["id", "run", "step", "tool", "status", "approvers", "expires", "decided by", "reason"]);
    for a in list {
        t.add_row(vec![
            a.request_id.clone(),
            a.run_id.clone(),
            a.step.clone(),
            format!("{} ({})", a.tool, a.side_effect.as_str()),
            a.status.as_str().to_owned(),
            if a.approvers.is_empty() { "anyone".to_owned() } else { a.approvers.join(", ") },
            a.expires_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            a.approver.clone().unwrap_or_else(|| "-".into()),
            a.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.to_string()
}
