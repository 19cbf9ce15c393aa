//! The Shopify fake: Admin REST API `2024-10`, `X-Shopify-Access-Token`
//! auth, orders kept in memory (fetch, update tags/note, cancel), an
//! `X-Request-Id` on every answer, Shopify's `{"errors": ...}` shapes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::SHOPIFY_API_VERSION;
use crate::server::{Ages, Exchange, Provider, Reply};

/// The Shopify fake's state: orders by id.
#[derive(Default)]
pub struct ShopifyState {
    request_seq: u64,
    orders: BTreeMap<u64, Value>,
    /// Orders by seeding, oldest first.
    made: Ages<u64>,
}

const CANCEL_REASONS: [&str; 5] = ["customer", "fraud", "inventory", "declined", "other"];

impl ShopifyState {
    /// A state holding one open, paid order ([`crate::SEEDED_SHOPIFY_ORDER`]).
    pub fn seeded() -> ShopifyState {
        let mut s = ShopifyState::default();
        s.seed_order(json!({
            "id": crate::SEEDED_SHOPIFY_ORDER,
            "name": "#1001",
            "email": "customer@example.com",
            "currency": "USD",
            "total_price": "25.00",
            "financial_status": "paid",
            "line_items": [{ "id": 1, "variant_id": 4011, "quantity": 1, "price": "25.00", "title": "T-shirt" }],
        }));
        s
    }

    /// Add (or replace) an order. It needs a numeric `id`; fields a real
    /// order always has are filled in when absent. Returns the id, or `None`
    /// when `order` has no numeric id.
    pub fn seed_order(&mut self, mut order: Value) -> Option<u64> {
        let id = order.get("id")?.as_u64()?;
        let defaults = json!({
            "admin_graphql_api_id": format!("gid://shopify/Order/{id}"),
            "name": format!("#{id}"),
            "email": "customer@example.com",
            "currency": "USD",
            "total_price": "0.00",
            "financial_status": "paid",
            "fulfillment_status": Value::Null,
            "tags": "",
            "note": Value::Null,
            "cancelled_at": Value::Null,
            "cancel_reason": Value::Null,
            "closed_at": Value::Null,
            "created_at": "2024-10-01T12:00:00-04:00",
            "updated_at": "2024-10-01T12:00:00-04:00",
            "line_items": [],
        });
        if let (Some(o), Some(d)) = (order.as_object_mut(), defaults.as_object()) {
            for (k, v) in d {
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if self.orders.insert(id, order).is_none() {
            self.made.made(id);
        }
        Some(id)
    }

    pub fn order(&self, id: u64) -> Option<Value> {
        self.orders.get(&id).cloned()
    }

    pub fn orders(&self) -> Vec<Value> {
        self.orders.values().cloned().collect()
    }

    fn update(&mut self, id: u64, body: Option<Value>) -> Reply {
        let Some(order) = self.orders.get_mut(&id) else { return not_found() };
        let Some(changes) = body.as_ref().and_then(|b| b.get("order")).and_then(Value::as_object) else {
            return Reply::json(400, json!({ "errors": { "order": "Required parameter missing or invalid" } }));
        };
        for (k, v) in changes {
            match k.as_str() {
                "id" if v.as_u64() != Some(id) => {
                    return Reply::json(400, json!({ "errors": { "id": "does not match the order in the URL" } }));
                }
                "id" => {}
                // Shopify takes tags as one comma-separated string.
                "tags" | "note" | "email" | "phone" | "buyer_accepts_marketing" | "note_attributes" | "metafields" => {
                    order[k.as_str()] = v.clone();
                }
                other => {
                    return Reply::json(
                        422,
                        json!({ "errors": { other: ["is not an attribute that can be updated on an order"] } }),
                    );
                }
            }
        }
        order["updated_at"] = json!("2024-10-01T12:05:00-04:00");
        Reply::json(200, json!({ "order": order }))
    }

    fn cancel(&mut self, id: u64, body: Option<Value>) -> Reply {
        let Some(order) = self.orders.get_mut(&id) else { return not_found() };
        let reason = body.as_ref().and_then(|b| b.get("reason")).and_then(Value::as_str).unwrap_or("other").to_owned();
        if !CANCEL_REASONS.contains(&reason.as_str()) {
            return Reply::json(422, json!({ "errors": { "reason": ["is not included in the list"] } }));
        }
        if !order["cancelled_at"].is_null() {
            return Reply::json(422, json!({ "error": "Cannot cancel an order that has already been cancelled" }));
        }
        if order["fulfillment_status"] == "fulfilled" {
            return Reply::json(422, json!({ "error": "Cannot cancel a fulfilled order" }));
        }
        order["cancelled_at"] = json!("2024-10-01T12:10:00-04:00");
        order["cancel_reason"] = json!(reason);
        order["closed_at"] = json!("2024-10-01T12:10:00-04:00");
        Reply::json(200, json!({ "order": order }))
    }
}

fn not_found() -> Reply {
    Reply::json(404, json!({ "errors": "Not Found" }))
}

/// `orders/123.json` -> (123, false); `orders/123/cancel.json` -> (123, true).
fn order_path(rest: &str) -> Option<(u64, bool)> {
    let rest = rest.strip_prefix("orders/")?;
    if let Some(id) = rest.strip_suffix("/cancel.json") {
        return id.parse().ok().map(|id| (id, true));
    }
    rest.strip_suffix(".json")?.parse().ok().map(|id| (id, false))
}

impl Provider for ShopifyState {
    const NAME: &'static str = "shopify";
    const REQUEST_ID_HEADER: Option<&'static str> = Some("X-Request-Id");

    fn request_id(&mut self) -> String {
        self.request_seq += 1;
        // UUID-shaped and deterministic, with hex letters as real ones have:
        // an all-digit id reads as a card number to the trace's scanner.
        let mixed = self.request_seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
        format!("7c3e9f1a-5b2d-4e8f-a{:03x}-{mixed:012x}", self.request_seq % 0xfff)
    }

    /// Admin API access tokens (`shpat_`, custom apps `shpca_`, private apps
    /// `shppa_`).
    fn authorized(&self, ex: &Exchange<'_>) -> bool {
        ex.header("x-shopify-access-token")
            .is_some_and(|t| ["shpat_", "shpca_", "shppa_"].iter().any(|p| t.starts_with(p)))
    }

    fn unauthorized(&self) -> Reply {
        Reply::json(
            401,
            json!({ "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)" }),
        )
    }

    fn handle(&mut self, ex: &Exchange<'_>) -> Reply {
        let prefix = format!("/admin/api/{SHOPIFY_API_VERSION}/");
        let Some((id, cancel)) = ex.path().strip_prefix(prefix.as_str()).and_then(order_path) else {
            return not_found();
        };
        match (ex.method(), cancel) {
            ("GET", false) => match self.orders.get(&id) {
                Some(o) => Reply::json(200, json!({ "order": o })),
                None => not_found(),
            },
            ("PUT", false) => self.update(id, ex.json_body()),
            ("POST", true) => self.cancel(id, ex.json_body()),
            _ => Reply::json(406, json!({ "errors": "Not Acceptable" })),
        }
    }

    fn error_body(&self, status: u16, _message: &str) -> Value {
        if status == 429 {
            json!({ "errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service." })
        } else {
            json!({ "errors": "Internal Server Error" })
        }
    }

    fn error_in_200(&self) -> Value {
        json!({ "errors": "Internal Server Error" })
    }

    fn tick(&mut self, at: SystemTime) {
        self.made.tick(at);
    }

    fn forget_before(&mut self, cutoff: SystemTime) {
        self.made.expire_keys(cutoff, &mut self.orders);
    }
}
