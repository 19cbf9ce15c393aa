//! The daily closeout's own tools (WF07): the kernel's receipts against a
//! provider's records, and drift cases opened for reconciliation.
//!
//! * `ledger.reconcile` (READ): every capture receipt of the tenant (with the
//!   PaymentIntent its effect returned) against the PaymentIntents Stripe
//!   lists. A receipt whose intent Stripe does not hold as captured for the
//!   receipted amount, and a captured intent without a receipt (money moved
//!   outside the kernel), are drift.
//! * `ledger.drift.open` (WRITE): each drift case becomes the versioned
//!   state of the entity `drift_case/<id>` (status `open`), created once: a
//!   case already open is left as it is. Runs under the executor's
//!   idempotency claim and receipt like any side effect.
//!
//! Both are bound with [`bind`] to an executor over the store.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallContext, Executor, Tool, ToolOutput};
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
/// receipted_minor, provider_minor}], drift_count}`.
pub fn reconcile(receipts: &[(String, Option<i64>)], provider: &[Value]) -> Value {
    let mut drift = Vec::new();
    let mut matched = 0u64;
    for (pi, amount) in receipts {
        let found = provider.iter().find(|p| p["id"].as_str() == Some(pi.as_str()));
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
        if !receipts.iter().any(|(pi, _)| pi == id) {
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
        let mut receipts = Vec::new();
        for r in self.0.receipts_for_tool(&call.ctx, CAPTURE_TOOL).await? {
            let result = self.0.receipt_result(&call.ctx, &r).await?;
            let pi = result.as_ref().and_then(|v| v["id"].as_str()).map(str::to_owned).unwrap_or_default();
            receipts.push((pi, r.amount_minor));
        }
        Ok(ToolOutput::new(reconcile(&receipts, provider)))
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
        let r = reconcile(&receipts, &provider);
        assert_eq!((r["matched"].as_u64(), r["drift_count"].as_u64()), (Some(1), Some(3)));
        let kinds: Vec<&str> = r["drift"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["amount_mismatch", "missing_at_provider", "missing_receipt"]);
        assert_eq!(r["drift"][2]["payment_intent"], "pi_3");
        // A clean day has no drift.
        let clean = reconcile(&receipts[..1], &provider[..1]);
        assert_eq!((clean["matched"].as_u64(), clean["drift_count"].as_u64()), (Some(1), Some(0)));
    }
}
