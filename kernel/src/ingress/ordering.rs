//! The ordering gate: the lifecycle of a stored event as a state machine,
//! and which event type must precede which for one entity.
//!
//! An event whose predecessor type (for the same tenant, source and
//! entity) has not been stored is `HELD`; it is released to `READY` when
//! the predecessor arrives, or, once its hold times out
//! ([`DEFAULT_HOLD`]), after its precondition is re-checked: released with
//! `timeout_released = true` when it holds, routed to `RECONCILE` (and a
//! reconciliation case) when it does not; `autobiz reconcile run`
//! ([`crate::reconcile`]) releases such an event to `READY` once its
//! precondition holds or a human approved it. Held events are rows, so
//! they survive a restart.

use crate::error::{Error, ErrorCode, Result};

/// How long an event waits for its predecessor before its precondition is
/// re-checked.
pub const DEFAULT_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a stored event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventStatus {
    /// Verified and parsed, not yet stored (never a row's status).
    Received,
    Held,
    Ready,
    Processing,
    Done,
    Skipped,
    Failed,
    Reconcile,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "RECEIVED",
            EventStatus::Held => "HELD",
            EventStatus::Ready => "READY",
            EventStatus::Processing => "PROCESSING",
            EventStatus::Done => "DONE",
            EventStatus::Skipped => "SKIPPED",
            EventStatus::Failed => "FAILED",
            EventStatus::Reconcile => "RECONCILE",
        }
    }

    pub fn parse(s: &str) -> Result<EventStatus> {
        Ok(match s {
            "HELD" => EventStatus::Held,
            "READY" => EventStatus::Ready,
            "PROCESSING" => EventStatus::Processing,
            "DONE" => EventStatus::Done,
            "SKIPPED" => EventStatus::Skipped,
            "FAILED" => EventStatus::Failed,
            "RECONCILE" => EventStatus::Reconcile,
            other => return Err(Error::new(ErrorCode::StoreCorrupt, format!("unknown event status {other:?}"))),
        })
    }
}

/// What can happen to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventTransition {
    /// Stored with its predecessor present (or none required).
    Admit,
    /// Stored before its predecessor.
    Hold,
    PredecessorArrived,
    /// Hold timed out, precondition re-checked and true.
    TimeoutRelease,
    /// Hold timed out, precondition still false.
    TimeoutReconcile,
    /// Released from reconciliation by `autobiz reconcile run`: its
    /// precondition holds by now, or a human approved processing it.
    Reconciled,
    /// A worker claims it (also a PROCESSING event whose lease ran out).
    Claim,
    /// Its workflow started (or had already started: the run id is the event's).
    Start,
    /// No workflow is triggered by its type.
    NoWorkflow,
    Fail,
}

/// Every allowed transition, and nothing else.
pub const EVENT_TRANSITIONS: &[(EventStatus, EventTransition, EventStatus)] = &[
    (EventStatus::Received, EventTransition::Admit, EventStatus::Ready),
    (EventStatus::Received, EventTransition::Hold, EventStatus::Held),
    (EventStatus::Held, EventTransition::PredecessorArrived, EventStatus::Ready),
    (EventStatus::Held, EventTransition::TimeoutRelease, EventStatus::Ready),
    (EventStatus::Held, EventTransition::TimeoutReconcile, EventStatus::Reconcile),
    (EventStatus::Reconcile, EventTransition::Reconciled, EventStatus::Ready),
    (EventStatus::Ready, EventTransition::Claim, EventStatus::Processing),
    (EventStatus::Processing, EventTransition::Claim, EventStatus::Processing),
    (EventStatus::Processing, EventTransition::Start, EventStatus::Done),
    (EventStatus::Processing, EventTransition::NoWorkflow, EventStatus::Skipped),
    (EventStatus::Processing, EventTransition::Fail, EventStatus::Failed),
];

/// The state `event` leads to from `from`, or `EVENT_TRANSITION_INVALID`.
pub fn transition(from: EventStatus, event: EventTransition) -> Result<EventStatus> {
    EVENT_TRANSITIONS.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to).ok_or_else(|| {
        Error::new(ErrorCode::EventTransitionInvalid, format!("an event in {} cannot {:?}", from.as_str(), event))
    })
}

/// `(source, event type, the type that must have been stored first for the
/// same entity)`. Paid before created, fulfilled before paid, and the
/// like; an event type not listed has no predecessor.
pub const PRECEDENCE: &[(&str, &str, &str)] = &[
    ("shopify", "orders/paid", "orders/create"),
    ("shopify", "orders/fulfilled", "orders/paid"),
    ("shopify", "orders/cancelled", "orders/create"),
    ("shopify", "refunds/create", "orders/paid"),
    ("stripe", "payment_intent.succeeded", "payment_intent.created"),
    ("stripe", "payment_intent.payment_failed", "payment_intent.created"),
    ("stripe", "charge.refunded", "charge.succeeded"),
    ("printful", "package_shipped", "order_created"),
    ("printful", "order_failed", "order_created"),
];

/// The predecessor type of `event_type` from `source`, if it has one.
pub fn predecessor(source: &str, event_type: &str) -> Option<&'static str> {
    PRECEDENCE.iter().find(|(s, t, _)| *s == source && *t == event_type).map(|(_, _, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_t37_transitions_table_allows_only_listed_moves() {
        use EventStatus::*;
        use EventTransition::*;
        let all_status = [Received, Held, Ready, Processing, Done, Skipped, Failed, Reconcile];
        let all_events = [
            Admit,
            Hold,
            PredecessorArrived,
            TimeoutRelease,
            TimeoutReconcile,
            Reconciled,
            Claim,
            Start,
            NoWorkflow,
            Fail,
        ];
        let mut allowed = 0;
        for s in all_status {
            for e in all_events {
                let listed = EVENT_TRANSITIONS.iter().any(|(f, ev, _)| *f == s && *ev == e);
                match transition(s, e) {
                    Ok(_) => {
                        assert!(listed);
                        allowed += 1
                    }
                    Err(err) => {
                        assert!(!listed);
                        assert_eq!(err.code(), ErrorCode::EventTransitionInvalid);
                    }
                }
            }
        }
        assert_eq!(allowed, EVENT_TRANSITIONS.len());
        // Terminal states have no way out; a held event is never claimed; an
        // event in reconciliation leaves only when reconciliation releases it.
        for s in [Done, Skipped, Failed] {
            assert!(EVENT_TRANSITIONS.iter().all(|(f, _, _)| *f != s), "{s:?} is terminal");
        }
        assert!(EVENT_TRANSITIONS.iter().all(|(f, e, _)| *f != Reconcile || *e == Reconciled));
        assert_eq!(transition(Reconcile, Reconciled).unwrap(), Ready);
        assert!(transition(Reconcile, Claim).is_err());
        assert!(transition(Held, Claim).is_err());
        assert_eq!(transition(Held, TimeoutReconcile).unwrap(), Reconcile);
    }

    #[test]
    fn p1_t37_status_strings_round_trip() {
        for (from, _, to) in EVENT_TRANSITIONS {
            for s in [from, to] {
                if *s != EventStatus::Received {
                    assert_eq!(EventStatus::parse(s.as_str()).unwrap(), *s);
                }
            }
        }
        assert_eq!(EventStatus::parse("RECEIVED").unwrap_err().code(), ErrorCode::StoreCorrupt);
    }

    #[test]
    fn p1_t37_precedence_names_paid_after_created_and_fulfilled_after_paid() {
        assert_eq!(predecessor("shopify", "orders/paid"), Some("orders/create"));
        assert_eq!(predecessor("shopify", "orders/fulfilled"), Some("orders/paid"));
        assert_eq!(predecessor("shopify", "orders/create"), None);
        assert_eq!(predecessor("stripe", "orders/paid"), None, "per source");
    }
}
