//! `/metrics`: what `autobiz serve` exposes, in the Prometheus text format
//! (the series of `ops/metrics.toml` whose exporter is `serve`).
//!
//! Two kinds of figures, kept apart on purpose:
//!
//! * **This process's counters** (deliveries, responses, approvals decided
//!   here, runs this worker finished, drift cases this process's detector
//!   opened): they start at zero with the process, as Prometheus counters
//!   do, and several `autobiz serve` processes on one database are summed.
//! * **Gauges read from the store** (HITL backlog, breaker states, open
//!   drift cases): every process reports the same figure, so alert on `max`,
//!   never `sum`, across processes.
//!
//! Labels carry tenant ids, workflow ids and enumerations only, never PII.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use autobiz_kernel::hitl::StatusFilter;
use autobiz_kernel::reconcile::{CaseClass, ReconcileReport, status as case_status};
use autobiz_kernel::run::RunStatus;
use autobiz_kernel::trace::Cost;

use super::{App, context};

/// Upper bounds (USD) of `run_cost_histogram`'s buckets: a run of the
/// example shop costs fractions of a cent in tool prices and up to a few
/// cents with model turns; anything above 10 USD is an outlier to look at.
pub const COST_BUCKETS_USD: [f64; 10] = [0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Outcomes this process observed: runs that reached a terminal status and
/// their cost, and the drift cases its reconciliation detector opened.
#[derive(Debug, Default)]
pub struct Outcomes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (tenant, workflow, status) -> runs.
    completions: BTreeMap<(String, String, &'static str), u64>,
    /// (tenant, workflow) -> the cost histogram.
    costs: BTreeMap<(String, String), Histogram>,
    /// (tenant, class) -> cases opened.
    drift_opened: BTreeMap<(String, CaseClass), u64>,
}

/// A cumulative histogram over [`COST_BUCKETS_USD`] (micro-USD internally,
/// so sums are exact).
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket, the observations at or below its bound.
    buckets: [u64; COST_BUCKETS_USD.len()],
    count: u64,
    sum_micro_usd: u64,
}

impl Outcomes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run of `workflow` for `tenant` ended (or paused) with `status`:
    /// counted, with its cost, only when the status is terminal, so a run
    /// that pauses for an approval and then completes counts once.
    pub fn run_finished(&self, tenant: &str, workflow: &str, status: RunStatus, cost: Cost) {
        if !status.is_terminal() {
            return;
        }
        self.run_ended(tenant, workflow, status);
        let mut inner = self.lock();
        let h = inner.costs.entry((tenant.to_owned(), workflow.to_owned())).or_default();
        let usd = cost.micro_usd as f64 / 1_000_000.0;
        for (i, bound) in COST_BUCKETS_USD.iter().enumerate() {
            if usd <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum_micro_usd += cost.micro_usd;
    }

    /// A run ended with `status` (when terminal) and its cost is not known
    /// (the engine returned an error after the run's record said how it
    /// ended): counted as a completion, not in the cost histogram.
    pub fn run_ended(&self, tenant: &str, workflow: &str, status: RunStatus) {
        if status.is_terminal() {
            *self.lock().completions.entry((tenant.to_owned(), workflow.to_owned(), status.as_str())).or_default() += 1;
        }
    }

    /// Count the cases one reconciliation pass opened.
    pub fn reconciled(&self, report: &ReconcileReport) {
        let mut inner = self.lock();
        for (class, n) in &report.opened_by_class {
            *inner.drift_opened.entry((report.tenant.clone(), *class)).or_default() += n;
        }
    }

    fn render(&self, app: &App, out: &mut String) {
        let inner = self.lock();
        out.push_str("# HELP workflow_completion_total Runs that reached a terminal status\n");
        out.push_str("# TYPE workflow_completion_total counter\n");
        for ((tenant, workflow, status), n) in &inner.completions {
            let _ = writeln!(
                out,
                "workflow_completion_total{{tenant=\"{tenant}\",workflow=\"{workflow}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP run_cost_histogram Cost of one run in USD (tool prices and model tokens)\n");
        out.push_str("# TYPE run_cost_histogram histogram\n");
        for ((tenant, workflow), h) in &inner.costs {
            let labels = format!("tenant=\"{tenant}\",workflow=\"{workflow}\"");
            for (bound, n) in COST_BUCKETS_USD.iter().zip(h.buckets) {
                let _ = writeln!(out, "run_cost_histogram_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "run_cost_histogram_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "run_cost_histogram_sum{{{labels}}} {}", h.sum_micro_usd as f64 / 1_000_000.0);
            let _ = writeln!(out, "run_cost_histogram_count{{{labels}}} {}", h.count);
        }
        out.push_str("# HELP drift_case_opened_total Drift cases opened by this process's reconciliation detector\n");
        out.push_str("# TYPE drift_case_opened_total counter\n");
        // Every served tenant and class, zero included: `increase()` over a
        // series that appears only at its first case would miss that case.
        for tenant in &app.tenants {
            for class in [CaseClass::Financial, CaseClass::NonFinancial] {
                let n = inner.drift_opened.get(&(tenant.as_str().to_owned(), class)).copied().unwrap_or(0);
                let _ = writeln!(out, "drift_case_opened_total{{tenant=\"{tenant}\",kind=\"{}\"}} {n}", class.as_str());
            }
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n");
}

/// The Prometheus text exposition of this process's counters, the HITL and
/// idempotency counters, run outcomes, and every served tenant's HITL
/// backlog, breaker states and open drift cases.
pub async fn render(app: &App, out: &mut String) {
    for (name, value) in app.ingress.counters().snapshot() {
        counter(out, name, "event ingress", value);
    }
    out.push_str("# HELP event_rejected_total Deliveries refused, by code\n# TYPE event_rejected_total counter\n");
    let rejected = app.ingress.counters().rejected.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (code, n) in rejected {
        let _ = writeln!(out, "event_rejected_total{{code=\"{code}\"}} {n}");
    }
    out.push_str("# HELP http_responses_total Responses by class\n# TYPE http_responses_total counter\n");
    for (class, c) in [("2xx", &app.http.ok), ("4xx", &app.http.client_error), ("5xx", &app.http.server_error)] {
        let _ = writeln!(out, "http_responses_total{{class=\"{class}\"}} {}", c.load(Ordering::Relaxed));
    }
    for (name, value) in autobiz_kernel::hitl::counters().snapshot() {
        counter(out, name, "human approvals", value);
    }
    let idem = app.store.idempotency_stats().snapshot();
    counter(out, "idempotency_hit_total", "side effects replayed from their stored result", idem.hits);
    counter(out, "idempotency_miss_total", "side effects executed", idem.misses);
    app.outcomes.render(app, out);
    let now = app.store.now();
    let mut depth = String::from(
        "# HELP hitl_pending_requests Approval requests waiting for a decision\n# TYPE hitl_pending_requests gauge\n",
    );
    let mut age = String::from(
        "# HELP hitl_oldest_pending_age_seconds Age of the oldest pending approval request\n# TYPE hitl_oldest_pending_age_seconds gauge\n",
    );
    let mut cases = String::from(
        "# HELP reconciliation_open_cases Drift cases not yet repaired, resolved or dismissed\n# TYPE reconciliation_open_cases gauge\n",
    );
    for tenant in &app.tenants {
        let ctx = context(tenant.clone(), "metrics");
        if let Ok(pending) = app.store.hitl_list(&ctx, StatusFilter::Pending).await {
            let oldest = pending.iter().map(|a| a.created_at).min().map_or(0, |t| (now - t).num_seconds().max(0));
            let _ = writeln!(depth, "hitl_pending_requests{{tenant=\"{tenant}\"}} {}", pending.len());
            let _ = writeln!(age, "hitl_oldest_pending_age_seconds{{tenant=\"{tenant}\"}} {oldest}");
        }
        if let Ok(counts) = app.store.reconciliation_counts(&ctx).await {
            let mut open: BTreeMap<CaseClass, u64> =
                [(CaseClass::Financial, 0), (CaseClass::NonFinancial, 0)].into_iter().collect();
            for (kind, _, n) in counts.iter().filter(|(_, status, _)| case_status::needs_human(status)) {
                *open.entry(CaseClass::of_kind(kind)).or_default() += u64::try_from(*n).unwrap_or(0);
            }
            for (class, n) in open {
                let _ =
                    writeln!(cases, "reconciliation_open_cases{{tenant=\"{tenant}\",kind=\"{}\"}} {n}", class.as_str());
            }
        }
    }
    out.push_str(&depth);
    out.push_str(&age);
    out.push_str(&cases);
    out.push_str("# HELP circuit_breaker_state 0 closed, 1 half-open, 2 open\n# TYPE circuit_breaker_state gauge\n");
    for tenant in &app.tenants {
        let ctx = context(tenant.clone(), "metrics");
        if let Ok(list) = app.store.breakers(&ctx).await {
            for b in list {
                let _ = writeln!(
                    out,
                    "circuit_breaker_state{{tenant=\"{tenant}\",dependency=\"{}\"}} {}",
                    b.name,
                    b.state.gauge()
                );
            }
        }
    }
    if let Some(m) = &app.breaker_metrics {
        out.push_str("# HELP circuit_breaker_transition_total Breaker transitions\n# TYPE circuit_breaker_transition_total counter\n");
        for ((dep, from, to), n) in m.transitions() {
            let _ = writeln!(
                out,
                "circuit_breaker_transition_total{{dependency=\"{dep}\",from=\"{}\",to=\"{}\"}} {n}",
                from.as_str(),
                to.as_str()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(micro_usd: u64) -> Cost {
        Cost { micro_usd, ..Cost::default() }
    }

    #[test]
    fn p1_or06_only_terminal_runs_are_counted_with_their_cost() {
        let o = Outcomes::default();
        o.run_finished("acme", "WF01", RunStatus::WaitingApproval, cost(5_000));
        o.run_finished("acme", "WF01", RunStatus::Completed, cost(2_500)); // 0.0025 USD
        o.run_finished("acme", "WF01", RunStatus::Failed, cost(20_000_000)); // 20 USD: above every bound
        let inner = o.lock();
        assert_eq!(inner.completions.len(), 2, "the paused run is not a completion");
        assert_eq!(inner.completions[&("acme".into(), "WF01".into(), "COMPLETED")], 1);
        let h = &inner.costs[&("acme".into(), "WF01".into())];
        assert_eq!((h.count, h.sum_micro_usd), (2, 20_002_500));
        // Cumulative: 0.0025 is above 0.001, at or below 0.005 and every larger bound.
        assert_eq!(h.buckets[..3], [0, 0, 1]);
        assert_eq!(h.buckets[COST_BUCKETS_USD.len() - 1], 1, "20 USD is only in +Inf");
    }

    #[test]
    fn p1_t_rk02d_opened_cases_are_counted_by_tenant_and_class() {
        let o = Outcomes::default();
        let mut report = ReconcileReport { tenant: "acme".into(), ..Default::default() };
        report.opened_by_class.insert(CaseClass::Financial, 2);
        o.reconciled(&report);
        o.reconciled(&report);
        assert_eq!(o.lock().drift_opened[&("acme".into(), CaseClass::Financial)], 4);
    }
}
