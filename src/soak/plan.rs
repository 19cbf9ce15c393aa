//! The soak's traffic: a deterministic plan of deliveries over N days.
//!
//! A plan is a pure function of its [`Mix`], the number of days, the events
//! per day and the seed, so a resumed soak replans exactly the deliveries it
//! had planned and skips those its checkpoint already counted. Each day has
//! every workflow at least once (WF07, the daily closeout, exactly once, at
//! the end of the day), then the mix's weights; faults, duplicate and
//! out-of-order deliveries and approval timeouts are drawn per delivery.

use chrono::{DateTime, Duration, Utc};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

/// A fault the fakes inject into one delivery's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlannedFault {
    /// A provider answers 500 once (retried: the run still completes).
    Provider5xx,
    /// A provider answers 429 with `Retry-After` once.
    RateLimited,
    /// A provider call times out once.
    Timeout,
}

/// How a delivery reaches the ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Once,
    /// Delivered twice with the same provider event id: one run.
    Duplicate,
    /// Delivered before its predecessor: held, then released.
    OutOfOrder,
}

/// One planned delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedEvent {
    /// 0-based position in the plan; the checkpoint counts by it.
    pub seq: u64,
    pub day: u32,
    pub at: DateTime<Utc>,
    pub workflow: String,
    pub fault: Option<PlannedFault>,
    pub delivery: Delivery,
    /// An approval that nobody decides: the run ends by the rule's timeout.
    pub hitl_timeout: bool,
}

/// The traffic mix: workflows with relative weights, fault and delivery
/// rates (each a probability per delivery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    /// `(workflow, weight)`; the daily workflow is not drawn, it runs once a day.
    pub weights: Vec<(String, u32)>,
    /// The once-a-day workflow (the closeout), if any.
    pub daily: Option<String>,
    pub provider_5xx: f64,
    pub rate_limited: f64,
    pub timeout: f64,
    pub duplicate: f64,
    pub out_of_order: f64,
    /// Of the workflows that ask a human, how many requests time out.
    pub hitl_timeout: f64,
    pub hitl_workflows: Vec<String>,
}

impl Mix {
    /// A realistic shop: mostly paid orders and "where is my order?", some
    /// payment failures, refunds and cancellations, a few fulfilment
    /// exceptions, the closeout once a day; 3 % 5xx, 3 % 429, 2 % timeouts,
    /// 5 % duplicates, 3 % out of order, 10 % of approvals left to time out.
    pub fn shop() -> Mix {
        let w = |id: &str, n| (id.to_owned(), n);
        Mix {
            weights: vec![w("WF01", 40), w("WF02", 8), w("WF03", 10), w("WF04", 7), w("WF05", 28), w("WF06", 7)],
            daily: Some("WF07".to_owned()),
            provider_5xx: 0.03,
            rate_limited: 0.03,
            timeout: 0.02,
            duplicate: 0.05,
            out_of_order: 0.03,
            hitl_timeout: 0.10,
            hitl_workflows: vec!["WF03".to_owned(), "WF04".to_owned(), "WF06".to_owned()],
        }
    }

    /// Every workflow the mix can produce.
    pub fn workflows(&self) -> Vec<String> {
        let mut all: Vec<String> = self.weights.iter().map(|(w, _)| w.clone()).chain(self.daily.clone()).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The deliveries of `days` days from `start`, `per_day` a day (at least
/// one per workflow of the mix), ordered by time: [`Plan`] collected (for
/// tests and short soaks; a soak walks the plan a day at a time).
pub fn plan(mix: &Mix, days: u32, per_day: u32, seed: u64, start: DateTime<Utc>) -> Vec<PlannedEvent> {
    Plan::new(mix, days, per_day, seed, start).collect()
}

/// A plan, drawn a day at a time: only one day's deliveries are in memory,
/// however many days the soak has (a million-event soak does not hold a
/// million planned deliveries). The same draws in the same order as ever,
/// so a plan is a function of its seed whichever way it is walked.
pub struct Plan<'m> {
    mix: &'m Mix,
    rng: Pcg64,
    days: u32,
    per_day: u32,
    start: DateTime<Utc>,
    day: u32,
    seq: u64,
    today: std::vec::IntoIter<PlannedEvent>,
}

impl<'m> Plan<'m> {
    pub fn new(mix: &'m Mix, days: u32, per_day: u32, seed: u64, start: DateTime<Utc>) -> Plan<'m> {
        Plan {
            mix,
            rng: Pcg64::seed_from_u64(seed),
            days,
            per_day: per_day.max(mix.workflows().len() as u32),
            start,
            day: 0,
            seq: 0,
            today: Vec::new().into_iter(),
        }
    }

    /// How many deliveries the plan has in all (without drawing them).
    pub fn len(&self) -> u64 {
        u64::from(self.days) * self.of_a_day() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deliveries a day: the drawn workflows (each once, then by weight, up
    /// to the day's share), and the daily one.
    fn of_a_day(&self) -> usize {
        let daily = usize::from(self.mix.daily.is_some());
        self.mix.weights.len().max(self.per_day as usize - daily) + daily
    }

    /// Draw day `self.day`'s deliveries.
    fn draw_day(&mut self) -> Vec<PlannedEvent> {
        let mix = self.mix;
        let rng = &mut self.rng;
        let total_weight: u32 = mix.weights.iter().map(|(_, w)| w).sum();
        let drawn: Vec<&str> = mix.weights.iter().map(|(w, _)| w.as_str()).collect();
        let day_start = self.start + Duration::days(i64::from(self.day));
        let daily = u32::from(mix.daily.is_some());
        // Every drawn workflow once, then by weight.
        let mut workflows: Vec<&str> = drawn.clone();
        while (workflows.len() as u32) < self.per_day - daily {
            let mut pick = rng.random_range(0..total_weight.max(1));
            let chosen = mix.weights.iter().find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            });
            workflows.push(chosen.map_or(drawn[0], |(id, _)| id.as_str()));
        }
        // Spread over the day before the closeout (23:00).
        let mut times: Vec<i64> = workflows.iter().map(|_| rng.random_range(0..23 * 3600)).collect();
        times.sort_unstable();
        let mut day_events: Vec<(i64, &str)> = times.into_iter().zip(workflows).collect();
        // The fixed "every workflow once" prefix was drawn in order; shuffle by time only.
        day_events.sort_by_key(|(t, _)| *t);
        if let Some(daily) = &mix.daily {
            day_events.push((23 * 3600 + 30 * 60, daily.as_str()));
        }
        let mut out = Vec::with_capacity(day_events.len());
        for (secs, workflow) in day_events {
            let r: f64 = rng.random();
            let fault = if r < mix.provider_5xx {
                Some(PlannedFault::Provider5xx)
            } else if r < mix.provider_5xx + mix.rate_limited {
                Some(PlannedFault::RateLimited)
            } else if r < mix.provider_5xx + mix.rate_limited + mix.timeout {
                Some(PlannedFault::Timeout)
            } else {
                None
            };
            let d: f64 = rng.random();
            let delivery = if d < mix.duplicate {
                Delivery::Duplicate
            } else if d < mix.duplicate + mix.out_of_order {
                Delivery::OutOfOrder
            } else {
                Delivery::Once
            };
            let hitl_timeout = mix.hitl_workflows.iter().any(|w| w == workflow) && rng.random_bool(mix.hitl_timeout);
            out.push(PlannedEvent {
                seq: self.seq,
                day: self.day,
                at: day_start + Duration::seconds(secs),
                workflow: workflow.to_owned(),
                fault,
                delivery,
                hitl_timeout,
            });
            self.seq += 1;
        }
        out
    }
}

impl Iterator for Plan<'_> {
    type Item = PlannedEvent;

    fn next(&mut self) -> Option<PlannedEvent> {
        loop {
            if let Some(e) = self.today.next() {
                return Some(e);
            }
            if self.day >= self.days {
                return None;
            }
            self.today = self.draw_day().into_iter();
            self.day += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn start() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        let mix = Mix::shop();
        assert_eq!(plan(&mix, 3, 300, 7, start()), plan(&mix, 3, 300, 7, start()));
        assert_ne!(plan(&mix, 3, 300, 7, start()), plan(&mix, 3, 300, 8, start()));
    }

    #[test]
    fn every_day_has_every_workflow_the_closeout_last_and_times_in_order() {
        let mix = Mix::shop();
        let events = plan(&mix, 7, 300, 1, start());
        assert_eq!(events.len(), 7 * 300);
        for day in 0..7 {
            let of_day: Vec<&PlannedEvent> = events.iter().filter(|e| e.day == day).collect();
            let seen: std::collections::BTreeSet<&str> = of_day.iter().map(|e| e.workflow.as_str()).collect();
            assert_eq!(seen.len(), 7, "day {day}: {seen:?}");
            assert_eq!(of_day.last().unwrap().workflow, "WF07");
            assert_eq!(of_day.iter().filter(|e| e.workflow == "WF07").count(), 1);
        }
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at && w[0].seq + 1 == w[1].seq));
    }

    #[test]
    fn the_mix_draws_faults_duplicates_out_of_order_and_timeouts_near_their_rates() {
        let mix = Mix::shop();
        let events = plan(&mix, 7, 1000, 3, start());
        let n = events.len() as f64;
        let rate = |f: &dyn Fn(&PlannedEvent) -> bool| events.iter().filter(|e| f(e)).count() as f64 / n;
        assert!((rate(&|e| e.fault == Some(PlannedFault::Provider5xx)) - 0.03).abs() < 0.01);
        assert!((rate(&|e| e.fault == Some(PlannedFault::RateLimited)) - 0.03).abs() < 0.01);
        assert!((rate(&|e| e.fault == Some(PlannedFault::Timeout)) - 0.02).abs() < 0.01);
        assert!((rate(&|e| e.delivery == Delivery::Duplicate) - 0.05).abs() < 0.01);
        assert!((rate(&|e| e.delivery == Delivery::OutOfOrder) - 0.03).abs() < 0.01);
        assert!(events.iter().any(|e| e.hitl_timeout));
        assert!(events.iter().filter(|e| e.hitl_timeout).all(|e| mix.hitl_workflows.contains(&e.workflow)));
        let mut by_wf: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &events {
            *by_wf.entry(&e.workflow).or_default() += 1;
        }
        assert!(by_wf["WF01"] > by_wf["WF06"] * 3, "{by_wf:?}");
    }

    #[test]
    fn p1_soak_a_plan_walked_a_day_at_a_time_has_the_length_it_announces() {
        let mix = Mix::shop();
        for (days, per_day) in [(3, 300), (2, 2), (1, 7), (0, 300), (5, 8)] {
            let plan = Plan::new(&mix, days, per_day, 5, start());
            let announced = plan.len();
            let events: Vec<PlannedEvent> = plan.collect();
            assert_eq!(events.len() as u64, announced, "{days} days of {per_day}");
            assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        }
        // Skipping what a checkpoint counted yields the same deliveries.
        let all = plan(&mix, 3, 300, 5, start());
        let rest: Vec<PlannedEvent> = Plan::new(&mix, 3, 300, 5, start()).skip(450).collect();
        assert_eq!(rest, all[450..]);
    }

    #[test]
    fn fewer_events_than_workflows_still_runs_each_once() {
        let events = plan(&Mix::shop(), 1, 2, 1, start());
        assert_eq!(events.len(), 7);
    }
}
