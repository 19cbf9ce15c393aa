//! What one planned delivery becomes: the provider state it needs (seeded
//! in the fakes through their APIs, as a shop's history would have left
//! it), the webhooks a provider would send for it (real bodies and
//! headers, signed by [`super::driver`] with the tenant's secrets), and
//! what counts as the workflow reaching its designed ending.
//!
//! Every id is derived from the soak's seed and the delivery's sequence
//! number, so a resumed soak sends a re-delivered event with the same
//! provider event id (the ingress deduplicates it) and never reuses an id
//! for another delivery.

use autobiz_fakes::Fakes;
use serde_json::{Value, json};

use super::plan::{Delivery, PlannedEvent};
use crate::golden::Setup;
use crate::golden::runner::setup_with;

/// A webhook as the provider sends it, before signing.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub provider: &'static str,
    /// Shopify's topic (`orders/paid`), else empty.
    pub topic: String,
    /// The provider's delivery id (`X-Shopify-Webhook-Id`; for the others
    /// it is inside the body).
    pub delivery_id: String,
    pub body: Vec<u8>,
}

/// One planned delivery, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Webhooks in the order they are sent (an out-of-order delivery sends
    /// the trigger before its predecessor; a duplicate sends it twice).
    pub webhooks: Vec<Webhook>,
    /// `(source, provider event id)` of the webhook that starts the run.
    pub trigger: Option<(String, String)>,
    /// A job the scheduler starts (WF07 at the end of the day): its event.
    pub scheduled: Option<Value>,
    /// Which fake the planned fault lands on (the run's first provider).
    pub fault_on: &'static str,
    /// The run needs a human: approve it unless the plan lets it time out.
    pub expects_approval: bool,
    /// Planted in a message body: redaction must keep it out of traces.
    pub planted_card: bool,
    /// What the model answers the agent step (the LLM fake is scripted).
    pub model_reply: Option<String>,
}

/// A card number the soak plants in customer messages: it must never reach
/// a persisted trace (the `secret_in_trace` monitor looks for it).
pub const PLANTED_CARD: &str = "4242424242424242";

fn order_number(seed: u64, seq: u64) -> u64 {
    // Shopify order ids are large integers; keep them unique per soak.
    4_000_000_000 + (seed % 1000) * 10_000_000 + seq
}

/// The amount of a delivery, in cents: 15.00 to 89.00, deterministic.
fn amount(seq: u64) -> i64 {
    1500 + ((seq * 7919) % 75) as i64 * 100
}

fn line_items() -> Value {
    json!([{ "variant_id": 4011, "quantity": 1, "title": "Mug", "price": "15.00" }])
}

/// Build delivery `event` of a soak seeded `seed`, seeding the fakes
/// through `http` (the driver's client, kept for the whole soak).
pub async fn prepare(
    event: &PlannedEvent,
    seed: u64,
    fakes: &Fakes,
    http: &reqwest::Client,
) -> Result<Prepared, String> {
    let seq = event.seq;
    let order = order_number(seed, seq);
    let order_id = order.to_string();
    let tag = format!("soak-{seed}-{seq}");
    let mut p = Prepared {
        webhooks: Vec::new(),
        trigger: None,
        scheduled: None,
        fault_on: "shopify",
        expects_approval: false,
        planted_card: false,
        model_reply: None,
    };
    let amount = amount(seq);
    let shopify_order = |total: i64, pm: &str| {
        json!({
            "id": order, "email": format!("customer+{seq}@example.com"), "currency": "USD",
            "total_price": format!("{}.{:02}", total / 100, total % 100), "financial_status": "paid",
            "line_items": line_items(),
            "note_attributes": [{ "name": "stripe_payment_method", "value": pm }],
        })
    };
    let support = |kind: &str, fields: Value| -> Webhook {
        let mut body = json!({ "id": format!("{tag}-{kind}"), "type": kind, "created": event.at.timestamp() });
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        Webhook {
            provider: "support",
            topic: String::new(),
            delivery_id: format!("{tag}-{kind}"),
            body: body.to_string().into_bytes(),
        }
    };
    match event.workflow.as_str() {
        "WF01" => {
            let body = shopify_order(amount, "pm_card_visa");
            fakes.shopify.seed_order(body.clone()).ok_or("WF01: the Shopify fake refused the order")?;
            let created = Webhook {
                provider: "shopify",
                topic: "orders/create".into(),
                delivery_id: format!("{tag}-create"),
                body: body.to_string().into_bytes(),
            };
            let paid = Webhook {
                provider: "shopify",
                topic: "orders/paid".into(),
                delivery_id: format!("{tag}-paid"),
                body: body.to_string().into_bytes(),
            };
            p.trigger = Some(("shopify".into(), paid.delivery_id.clone()));
            p.webhooks = in_order(created, paid, event.delivery);
        }
        "WF02" => {
            fakes.shopify.seed_order(shopify_order(amount, "pm_card_visa")).ok_or("WF02: order refused")?;
            // Every third failed payment stays declined: dunning, then the order is cancelled.
            let pm = if seq.is_multiple_of(3) { "pm_card_chargeDeclined" } else { "pm_card_visa" };
            let id = format!("evt_{}", tag.replace('-', "_"));
            let body = json!({
                "id": id, "object": "event", "type": "payment_intent.payment_failed", "created": event.at.timestamp(),
                "api_version": "2024-06-20", "livemode": false,
                "data": { "object": {
                    "id": format!("pi_failed_{seq}"), "object": "payment_intent", "amount": amount, "currency": "usd",
                    "status": "requires_payment_method", "metadata": { "order_id": order_id },
                    "last_payment_error": { "code": "card_declined", "payment_method": { "id": pm } },
                } },
            });
            let created = json!({
                "id": format!("{id}_created"), "object": "event", "type": "payment_intent.created",
                "created": event.at.timestamp() - 60, "api_version": "2024-06-20", "livemode": false,
                "data": { "object": body["data"]["object"].clone() },
            });
            let first = Webhook {
                provider: "stripe",
                topic: String::new(),
                delivery_id: format!("{id}_created"),
                body: created.to_string().into_bytes(),
            };
            let failed = Webhook {
                provider: "stripe",
                topic: String::new(),
                delivery_id: id.clone(),
                body: body.to_string().into_bytes(),
            };
            p.trigger = Some(("stripe".into(), id));
            p.webhooks = in_order(first, failed, event.delivery);
        }
        "WF03" => {
            // Refunds over $50 need a human; a planned timeout is one of those.
            let refund = if event.hitl_timeout || seq.is_multiple_of(4) { 7500 } else { 3000 };
            fakes.shopify.seed_order(shopify_order(refund, "pm_card_visa")).ok_or("WF03: order refused")?;
            setup_with(http, fakes, &Setup { captured_payments: vec![refund], ..Setup::default() }).await?;
            let pi = found(fakes.stripe.last_payment_intent_id())?;
            let hook = support(
                "refund_requested",
                json!({ "order_id": order_id, "payment_intent": pi, "amount": refund, "currency": "usd" }),
            );
            p.expects_approval = refund > 5000;
            p.trigger = Some(("support".into(), hook.delivery_id.clone()));
            p.webhooks = repeat(hook, event.delivery);
        }
        "WF04" => {
            fakes.shopify.seed_order(shopify_order(amount, "pm_card_visa")).ok_or("WF04: order refused")?;
            setup_with(
                http,
                fakes,
                &Setup {
                    authorized_payments: vec![amount],
                    printful_confirmed: vec![
                        json!({ "external_id": order_id, "items": [{ "variant_id": 4011, "quantity": 1 }] }),
                    ],
                    ..Setup::default()
                },
            )
            .await?;
            let pi = found(fakes.stripe.last_payment_intent_id())?;
            let printful = found(fakes.printful.last_order_id())?;
            // A suspected fraud is cancelled in Shopify only after a human looks.
            let fraud = event.hitl_timeout || seq.is_multiple_of(5);
            let hook = support(
                "cancel_requested",
                json!({ "order_id": order_id, "payment_intent": pi, "printful_order_id": printful, "amount": amount,
                        "currency": "usd", "reason": if fraud { "fraud" } else { "customer" } }),
            );
            p.expects_approval = fraud;
            p.trigger = Some(("support".into(), hook.delivery_id.clone()));
            p.webhooks = repeat(hook, event.delivery);
        }
        "WF05" => {
            setup_with(
                http,
                fakes,
                &Setup {
                    printful_confirmed: vec![
                        json!({ "external_id": order_id, "items": [{ "variant_id": 4011, "quantity": 1 }] }),
                    ],
                    ..Setup::default()
                },
            )
            .await?;
            p.planted_card = seq.is_multiple_of(2);
            let text = if p.planted_card {
                format!("Where is my order #{order_id}? I paid with card {PLANTED_CARD}.")
            } else {
                format!("Hi, where is my order #{order_id}? It has not arrived yet.")
            };
            let hook = support(
                "message",
                json!({ "order_id": order_id, "from": format!("customer+{seq}@example.com"), "body": text }),
            );
            p.fault_on = "printful";
            p.model_reply = Some(json!({ "final": { "intent": "wismo" } }).to_string());
            p.trigger = Some(("support".into(), hook.delivery_id.clone()));
            p.webhooks = repeat(hook, event.delivery);
        }
        "WF06" => {
            fakes.shopify.seed_order(shopify_order(amount, "pm_card_visa")).ok_or("WF06: order refused")?;
            // A stuck order (Printful already took it and refuses a second
            // confirm) is escalated: the reship needs a human.
            let stuck = event.hitl_timeout || seq.is_multiple_of(3);
            let order = json!({ "external_id": order_id, "items": [{ "variant_id": 4011, "quantity": 1 }] });
            let seeded = if stuck {
                Setup { printful_confirmed: vec![order], ..Setup::default() }
            } else {
                Setup { printful_orders: vec![order], ..Setup::default() }
            };
            setup_with(http, fakes, &seeded).await?;
            let printful = found(fakes.printful.last_order_id())?;
            let body = json!({
                "type": "order_failed", "created": event.at.timestamp(), "retries": 0, "store": 1,
                "event_id": format!("{tag}-failed"),
                "data": { "reason": "The order is stuck at the printer", "order": {
                    "id": printful, "external_id": order_id, "status": "failed",
                    "items": [{ "variant_id": 4011, "quantity": 1 }],
                } },
            });
            let mut created = body.clone();
            created["type"] = json!("order_created");
            created["event_id"] = json!(format!("{tag}-created"));
            created["data"]["order"]["status"] = json!("draft");
            let first = Webhook {
                provider: "printful",
                topic: String::new(),
                delivery_id: format!("{tag}-created"),
                body: created.to_string().into_bytes(),
            };
            let failed = Webhook {
                provider: "printful",
                topic: String::new(),
                delivery_id: format!("{tag}-failed"),
                body: body.to_string().into_bytes(),
            };
            p.expects_approval = stuck;
            p.fault_on = "printful";
            p.trigger = Some(("printful".into(), format!("{tag}-failed")));
            p.webhooks = in_order(first, failed, event.delivery);
        }
        "WF07" => {
            p.scheduled = Some(json!({ "day": event.at.format("%Y-%m-%d").to_string() }));
            p.fault_on = "stripe";
        }
        other => return Err(format!("the soak has no traffic for workflow {other}")),
    }
    Ok(p)
}

/// The predecessor, then the trigger: the trigger first for an
/// out-of-order delivery (held until its predecessor arrives), twice for a
/// duplicate one.
fn in_order(predecessor: Webhook, trigger: Webhook, delivery: Delivery) -> Vec<Webhook> {
    match delivery {
        Delivery::OutOfOrder => vec![trigger, predecessor],
        Delivery::Duplicate => vec![predecessor, trigger.clone(), trigger],
        Delivery::Once => vec![predecessor, trigger],
    }
}

/// The webhook once, or twice for a duplicate delivery (a source without a
/// predecessor has nothing to overtake: out of order is sent once).
fn repeat(hook: Webhook, delivery: Delivery) -> Vec<Webhook> {
    match delivery {
        Delivery::Duplicate => vec![hook.clone(), hook],
        _ => vec![hook],
    }
}

/// The id of the newest object the setup left in a fake.
fn found(id: Option<Value>) -> Result<Value, String> {
    id.ok_or_else(|| "setup: the fake holds no object".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_soak_ids_are_unique_per_delivery_and_stable_per_seed() {
        assert_ne!(order_number(7, 1), order_number(7, 2));
        assert_eq!(order_number(7, 1), order_number(7, 1));
        assert!((1500..=8900).contains(&amount(12345)));
    }
}
