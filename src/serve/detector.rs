//! The reconciliation detector on a schedule (P1-TASK-25): every
//! `--reconcile-every` (default 15 min), one [`Reconciler`] pass per served
//! tenant, the same pass as `autobiz reconcile run`, with the cases it opens
//! counted in `drift_case_opened_total` (the `AutobizDriftDetected` alert).
//!
//! Why a schedule and not a trigger: drift is what no event announced (a
//! refund made in the Stripe dashboard, a tag removed by hand), so only
//! asking the providers finds it. A pass is idempotent (case ids derive from
//! the drift, status changes are compare-and-set), so two `autobiz serve`
//! processes on one database may both run it: the second opens, repairs and
//! asks nothing the first already did.

use std::sync::Arc;
use std::time::Duration;

use autobiz_kernel::reconcile::{ReconcileReport, Reconciler};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext};
use tokio::sync::watch;

use super::App;

/// The principal reconciliation actions are recorded under.
pub const PRINCIPAL: &str = "reconciler";

/// A reconciler and how often it runs.
pub struct Detector {
    pub reconciler: Reconciler,
    pub every: Duration,
}

impl Detector {
    /// A pass every `every` (the first one `every` after the start) until
    /// `stop` turns true. A pass in progress is finished first.
    pub async fn run(self, app: Arc<App>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            self.pass(&app).await;
        }
    }

    /// One pass over the served tenants. A tenant whose pass fails (a
    /// provider or the store unreachable) is logged and the next tenant
    /// still runs; the reports of the passes that completed are returned.
    pub async fn pass(&self, app: &App) -> Vec<ReconcileReport> {
        let mut reports = Vec::new();
        for tenant in &app.tenants {
            let ctx = TenantContext::new(tenant.clone(), Principal::new(PRINCIPAL), CorrelationId::random());
            match self.reconciler.run(&ctx).await {
                Ok(report) => {
                    app.outcomes.reconciled(&report);
                    tracing::info!(
                        tenant = %tenant,
                        opened = report.opened,
                        repaired = report.repaired,
                        escalated = report.escalated,
                        awaiting_human = report.awaiting_human,
                        "reconciliation pass"
                    );
                    reports.push(report);
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, code = e.code().as_str(), "reconciliation pass failed: {e}");
                }
            }
        }
        reports
    }
}
