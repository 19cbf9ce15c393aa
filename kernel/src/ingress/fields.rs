//! The business fields a workflow reads from `$.event`, out of a provider's
//! webhook payload.
//!
//! Workflows are written against one flat shape (`order_id`, `amount` in
//! minor units, `currency` lower-case, `payment_method`, `items` as
//! `{variant_id, quantity}`, `email`), whichever provider announced the
//! event, so the same workflow runs from a golden scenario, `autobiz run
//! --event` and a webhook. This module is the only place that knows where
//! each provider keeps those values. A field the payload does not have is
//! left out (the step's input schema then refuses the call), never guessed.

use serde_json::{Map, Value};

/// The flat fields of a `source`/`event_type` payload.
pub fn business_fields(source: &str, event_type: &str, payload: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    match source {
        "shopify" if event_type.starts_with("orders/") => shopify_order(payload, &mut out),
        "stripe" => stripe_object(&payload["data"]["object"], &mut out),
        "printful" => printful_order(payload, &mut out),
        "support" => {
            // autobiz's own helpdesk shape: the fields are the workflow's.
            if let Some(obj) = payload.as_object() {
                for (k, v) in obj.iter().filter(|(k, _)| !matches!(k.as_str(), "id" | "type" | "created")) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        _ => {}
    }
    out
}

fn put(out: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        out.insert(key.to_owned(), v);
    }
}

fn id_string(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) if !s.is_empty() => Some(Value::String(s.clone())),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(Value::String(n.to_string())),
        _ => None,
    }
}

fn lower(v: &Value) -> Option<Value> {
    v.as_str().map(|s| Value::String(s.to_ascii_lowercase()))
}

/// A decimal amount as Shopify writes it ("25.00", "7.5", "12") in minor
/// units of a two-decimal currency, in integers only: `None` for anything
/// that is not a plain non-negative decimal with at most two places.
pub fn minor_units(decimal: &str) -> Option<i64> {
    let (whole, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    if whole.is_empty() || frac.len() > 2 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cents: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(cents)
}

fn items(list: &Value, variant: &str) -> Option<Value> {
    let list = list.as_array()?;
    Some(Value::Array(
        list.iter().map(|i| serde_json::json!({ "variant_id": i[variant], "quantity": i["quantity"] })).collect(),
    ))
}

/// `orders/*`: the order's id, total, currency, e-mail, line items, and the
/// Stripe payment method the checkout stored as the note attribute
/// `stripe_payment_method`.
fn shopify_order(p: &Value, out: &mut Map<String, Value>) {
    put(out, "order_id", id_string(&p["id"]));
    put(out, "amount", p["total_price"].as_str().and_then(minor_units).map(Value::from));
    put(out, "currency", lower(&p["currency"]));
    put(out, "email", p["email"].as_str().map(Value::from));
    put(out, "items", items(&p["line_items"], "variant_id"));
    let pm = p["note_attributes"].as_array().and_then(|attrs| {
        attrs.iter().find(|a| a["name"] == "stripe_payment_method").and_then(|a| a["value"].as_str())
    });
    put(out, "payment_method", pm.map(Value::from));
}

/// A Stripe event's object (a PaymentIntent, a charge, a refund): its id
/// under the object's kind, amount, currency, the shop order in
/// `metadata.order_id`, and the payment method (the failed one for a
/// `payment_intent.payment_failed`).
fn stripe_object(o: &Value, out: &mut Map<String, Value>) {
    if let Some(kind) = o["object"].as_str() {
        put(out, kind, id_string(&o["id"]));
    }
    put(out, "amount", o["amount"].as_i64().map(Value::from));
    put(out, "currency", lower(&o["currency"]));
    put(out, "order_id", id_string(&o["metadata"]["order_id"]));
    let pm = o["last_payment_error"]["payment_method"]["id"].as_str().or_else(|| o["payment_method"].as_str());
    put(out, "payment_method", pm.map(Value::from));
}

/// A Printful event about an order: the shop's order id (`external_id`),
/// Printful's id, the items, and the id a reship is created under.
fn printful_order(p: &Value, out: &mut Map<String, Value>) {
    let order = &p["data"]["order"];
    let external = id_string(&order["external_id"]);
    if let Some(Value::String(ext)) = &external {
        out.insert("reship_id".to_owned(), Value::String(format!("{ext}-reship")));
    }
    put(out, "order_id", external);
    put(out, "printful_order_id", order["id"].as_i64().map(Value::from));
    put(out, "items", items(&order["items"], "variant_id"));
    put(out, "reason", p["data"]["reason"].as_str().map(Value::from));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn p1_t36_minor_units_parses_decimals_without_floats() {
        assert_eq!(minor_units("25.00"), Some(2500));
        assert_eq!(minor_units("7.5"), Some(750));
        assert_eq!(minor_units("12"), Some(1200));
        assert_eq!(minor_units("0.07"), Some(7));
        for bad in ["", ".5", "1.234", "-3.00", "1e3", "12.a", "99999999999999999999"] {
            assert_eq!(minor_units(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn p1_t36_shopify_order_fields() {
        let p = json!({
            "id": 820982911946154508u64, "total_price": "25.00", "currency": "USD", "email": "c@example.com",
            "line_items": [{"variant_id": 4011, "quantity": 2, "title": "Mug"}],
            "note_attributes": [{"name": "gift", "value": "no"}, {"name": "stripe_payment_method", "value": "pm_card_visa"}]
        });
        let f = business_fields("shopify", "orders/paid", &p);
        assert_eq!(f["order_id"], "820982911946154508");
        assert_eq!(f["amount"], 2500);
        assert_eq!(f["currency"], "usd");
        assert_eq!(f["payment_method"], "pm_card_visa");
        assert_eq!(f["items"], json!([{"variant_id": 4011, "quantity": 2}]));
        assert!(business_fields("shopify", "products/update", &p).is_empty());
    }

    #[test]
    fn p1_t36_stripe_and_printful_and_support_fields() {
        let s = json!({"data": {"object": {"object": "payment_intent", "id": "pi_1", "amount": 900, "currency": "usd",
            "metadata": {"order_id": "1001"}, "last_payment_error": {"payment_method": {"id": "pm_card_chargeDeclined"}}}}});
        let f = business_fields("stripe", "payment_intent.payment_failed", &s);
        assert_eq!(
            (&f["payment_intent"], &f["amount"], &f["order_id"], &f["payment_method"]),
            (&json!("pi_1"), &json!(900), &json!("1001"), &json!("pm_card_chargeDeclined"))
        );
        let p = json!({"type": "order_failed", "data": {"reason": "stuck", "order": {"id": 13, "external_id": "1001",
            "items": [{"variant_id": 4011, "quantity": 1}]}}});
        let f = business_fields("printful", "order_failed", &p);
        assert_eq!(
            (&f["order_id"], &f["printful_order_id"], &f["reship_id"]),
            (&json!("1001"), &json!(13), &json!("1001-reship"))
        );
        let m = json!({"id": "msg_1", "type": "message", "created": 1, "order_id": "1001", "body": "where?", "from": "c@example.com"});
        let f = business_fields("support", "message", &m);
        assert_eq!(f.len(), 3, "id, type and created are the event's, not the workflow's: {f:?}");
        assert_eq!(f["body"], "where?");
    }
}
