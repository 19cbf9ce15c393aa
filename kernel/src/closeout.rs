//! The daily closeout's own tools (WF07): the kernel's receipts against a
//! provider's records, and drift cases opened for reconciliation.
//!
//! * `ledger.reconcile` (READ, input `day` and `provider`): the capture
//!   receipts written on `day` (UTC; each with the PaymentIntent its effect
//!   returned) against the PaymentIntents Stripe lists for that day
//!   (`stripe.payment_intent.list` with the same `day`: those made from
//!   [`CAPTURE_WINDOW_DAYS`] before it to its end). A receipt whose intent
//!   Stripe does not hold as captured for the receipted amount, and a
//!   captured intent without a receipt since the window began (money moved
//!   outside the kernel), are drift. What it reads is a week and a day of
//!   receipts, whatever the length of the store's history: before, every
//!   capture receipt ever written was read, one query each, and every one
//!   older than the provider's window came back as drift every day.
//! * `ledger.drift.open` (WRITE): each drift case becomes the versioned
//!   state of the entity `drift_case/<id>` (status `open`), created once: a
//!   case already open is left as it is. Runs under the executor's
//!   idempotency claim and receipt like any side effect.
//!
//! Both are bound with [`bind`] to an executor over the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde_json::{Value, json};

use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallContext, Executor, Tool, ToolOutput};
pub use crate::providers::CAPTURE_WINDOW_DAYS;
use crate::store::Store;
use crate::tenant::EntityId;

/// The receipted tool whose effects reconciliation checks.
pub const CAPTURE_TOOL: &str = "stripe.payment_intent.capture";
pub const RECONCILE: &str = "ledger.reconcile";
pub const DRIFT_OPEN: &str = "ledger.drift.open";

/// Bind the closeout tools the executor's registry declares (version `1`).
pub fn bind(exec: &mut Executor, store: Store) -> Result<Vec<&'static str>> {
    let mut bound = Vec::new();
    if exec.registry().lookup(RECONCILE, "1").is_ok() {
        exec.bind(RECONCILE, "1", Arc::new(Reconcile(store.clone())))?;
        bound.push(RECONCILE);
    }
    if exec.registry().lookup(DRIFT_OPEN, "1").is_ok() {
        exec.bind(DRIFT_OPEN, "1", Arc::new(OpenDrift(store)))?;
        bound.push(DRIFT_OPEN);
    }
    Ok(bound)
}

/// Compare receipted captures with the provider's PaymentIntents:
/// `{receipts, provider_captures, matched, drift: [{id, kind, payment_intent,
/// receipted_minor, provider_minor}], drift_count}`. `receipts` are the
/// captures checked (the day's); `receipted` holds every PaymentIntent with a
/// capture receipt over the provider's window and must hold those of
/// `receipts` too, so an intent captured on an earlier day is not missing a
/// receipt. Lookups are hashed: the cost is linear in the two lists.
pub fn reconcile(receipts: &[(String, Option<i64>)], receipted: &HashSet<&str>, provider: &[Value]) -> Value {
    let by_id: HashMap<&str, &Value> = provider.iter().filter_map(|p| Some((p["id"].as_str()?, p))).collect();
    let mut drift = Vec::new();
    let mut matched = 0u64;
    for (pi, amount) in receipts {
        let found = by_id.get(pi.as_str());
        let provider_minor = found.and_then(|p| p["amount_received"].as_i64());
        match found {
            Some(p) if p["status"] == "succeeded" && provider_minor == *amount => matched += 1,
            Some(_) => drift.push(case("amount_mismatch", pi, *amount, provider_minor)),
            None => drift.push(case("missing_at_provider", pi, *amount, None)),
        }
    }
    let captured: Vec<&Value> = provider.iter().filter(|p| p["amount_received"].as_i64().unwrap_or(0) > 0).collect();
    for p in &captured {
        let id = p["id"].as_str().unwrap_or_default();
        if !receipted.contains(id) {
            drift.push(case("missing_receipt", id, None, p["amount_received"].as_i64()));
        }
    }
    json!({
        "receipts": receipts.len(),
        "provider_captures": captured.len(),
        "matched": matched,
        "drift_count": drift.len(),
        "drift": drift,
    })
}

/// The start (00:00 UTC) of `day` (`YYYY-MM-DD`).
pub fn day_start(day: &str, what: &str) -> Result<DateTime<Utc>> {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
        .map_err(|_| Error::new(ErrorCode::InvalidInput, format!("{what}: `day` must be YYYY-MM-DD, not {day:?}")))
}

fn case(kind: &str, pi: &str, receipted: Option<i64>, provider: Option<i64>) -> Value {
    json!({
        "id": format!("{kind}-{pi}"),
        "kind": kind,
        "payment_intent": pi,
        "receipted_minor": receipted,
        "provider_minor": provider,
    })
}

struct Reconcile(Store);

#[async_trait::async_trait]
impl Tool for Reconcile {
    async fn call(&self, call: CallContext, input: Value) -> Result<ToolOutput> {
        let provider = input.get("provider").and_then(Value::as_array).ok_or_else(|| {
            Error::new(ErrorCode::InvalidInput, "ledger.reconcile: `provider` (the provider's records) is required")
        })?;
        let day = input.get("day").and_then(Value::as_str).ok_or_else(|| {
            Error::new(ErrorCode::InvalidInput, "ledger.reconcile: `day` (YYYY-MM-DD, the day closed) is required")
        })?;
        let start = day_start(day, RECONCILE)?;
        let end = start + Duration::days(1);
        let since = start - Duration::days(CAPTURE_WINDOW_DAYS);
        let window = self.0.receipt_results_since(&call.ctx, CAPTURE_TOOL, since).await?;
        let intent =
            |result: &Option<Value>| result.as_ref().and_then(|v| v["id"].as_str()).unwrap_or_default().to_owned();
        let receipts: Vec<(String, Option<i64>)> = window
            .iter()
            .filter(|(r, _)| r.created_at >= start && r.created_at < end)
            .map(|(r, result)| (intent(result), r.amount_minor))
            .collect();
        let receipted: HashSet<&str> =
            window.iter().filter_map(|(_, result)| result.as_ref()?["id"].as_str()).collect();
        Ok(ToolOutput::new(reconcile(&receipts, &receipted, provider)))
    }
}

struct OpenDrift(Store);

#[async_trait::async_trait]
impl Tool for OpenDrift {
    async fn call(&self, call: CallContext, input: Value) -> Result<ToolOutput> {
        let cases = input.get("cases").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut opened = Vec::new();
        let mut already = Vec::new();
        for c in &cases {
            let id = c["id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::new(ErrorCode::InvalidInput, "ledger.drift.open: every case needs an `id`"))?;
            let entity = EntityId::new(call.ctx.tenant().clone(), "drift_case", id)?;
            if self.0.state(&call.ctx, &entity).await?.is_some() {
                already.push(id.to_owned());
                continue;
            }
            let value = json!({"status": "open", "case": c});
            let patch: json_patch::Patch =
                serde_json::from_value(json!([{"op": "add", "path": "", "value": value}]))
                    .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("ledger.drift.open: {e}")))?;
            self.0.apply_patch(&call.ctx, &entity, 0, &patch).await?;
            opened.push(id.to_owned());
        }
        Ok(ToolOutput::new(json!({"id": "drift", "opened": opened, "already_open": already})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_t26_receipts_against_provider_records_find_each_kind_of_drift() {
        let provider = vec![
            json!({"id": "pi_1", "status": "succeeded", "amount_received": 2500}),
            json!({"id": "pi_2", "status": "succeeded", "amount_received": 900}),
            json!({"id": "pi_3", "status": "succeeded", "amount_received": 700}),
            json!({"id": "pi_4", "status": "requires_capture", "amount_received": 0}),
        ];
        let receipts =
            vec![("pi_1".to_owned(), Some(2500)), ("pi_2".to_owned(), Some(1000)), ("pi_9".to_owned(), Some(5))];
        let receipted: HashSet<&str> = receipts.iter().map(|(pi, _)| pi.as_str()).collect();
        let r = reconcile(&receipts, &receipted, &provider);
        assert_eq!((r["matched"].as_u64(), r["drift_count"].as_u64()), (Some(1), Some(3)));
        let kinds: Vec<&str> = r["drift"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["amount_mismatch", "missing_at_provider", "missing_receipt"]);
        assert_eq!(r["drift"][2]["payment_intent"], "pi_3");
        // A clean day has no drift.
        let clean = reconcile(&receipts[..1], &HashSet::from(["pi_1"]), &provider[..1]);
        assert_eq!((clean["matched"].as_u64(), clean["drift_count"].as_u64()), (Some(1), Some(0)));
        // pi_3 was captured, with its receipt, on an earlier day of the
        // window: not a missing receipt today, and not counted as matched.
        let earlier = reconcile(&receipts[..1], &HashSet::from(["pi_1", "pi_2", "pi_3"]), &provider);
        assert_eq!(earlier["drift_count"], 0);
        let today = reconcile(&[], &HashSet::from(["pi_3"]), &provider);
        assert_eq!((today["matched"].as_u64(), today["drift_count"].as_u64()), (Some(0), Some(2)));
    }
}
