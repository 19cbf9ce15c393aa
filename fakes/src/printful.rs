//! The Printful fake: `Bearer` auth, the `{"code":200,"result":...}`
//! envelope, orders with status (draft -> pending -> fulfilled, or
//! canceled), `POST /orders/{id}/confirm`, `DELETE /orders/{id}` cancels,
//! orders addressed by id or `@external_id`, shipments with tracking.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::server::{Ages, Exchange, Provider, Reply};

/// The Printful fake's state: orders by id.
#[derive(Default)]
pub struct PrintfulState {
    seq: u64,
    request_seq: u64,
    orders: BTreeMap<u64, Value>,
    /// Orders by creation, oldest first.
    made: Ages<u64>,
}

fn ok(result: Value) -> Reply {
    Reply::json(200, json!({ "code": 200, "result": result }))
}

fn fail(status: u16, reason: &str, message: &str) -> Reply {
    Reply::json(status, json!({ "code": status, "result": message, "error": { "reason": reason, "message": message } }))
}

impl PrintfulState {
    pub fn orders(&self) -> Vec<Value> {
        self.orders.values().cloned().collect()
    }

    /// The same, borrowed, by id.
    pub fn orders_iter(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.orders.values()
    }

    pub fn order(&self, id: u64) -> Option<Value> {
        self.orders.get(&id).cloned()
    }

    /// Ship an order (what Printful's warehouse does): status `fulfilled`,
    /// one shipment with carrier and tracking. Returns false when there is no
    /// such order or it is not in production (`pending`/`inprocess`).
    pub fn ship(&mut self, id: u64, carrier: &str, tracking_number: &str) -> bool {
        self.seq += 1;
        let shipment_id = self.seq;
        let Some(order) = self.orders.get_mut(&id) else { return false };
        if !matches!(order["status"].as_str(), Some("pending" | "inprocess")) {
            return false;
        }
        order["status"] = json!("fulfilled");
        let shipment = json!({
            "id": shipment_id,
            "carrier": carrier,
            "service": format!("{carrier} Ground"),
            "tracking_number": tracking_number,
            "tracking_url": format!("https://tracking.example.invalid/{tracking_number}"),
            "created": 1_700_000_000,
            "ship_date": "2024-10-02",
            "shipped_at": 1_700_000_000,
            "reshipment": false,
            "items": order["items"].as_array().map(|items| {
                items.iter().map(|i| json!({ "item_id": i["id"], "quantity": i["quantity"] })).collect::<Vec<_>>()
            }),
        });
        if let Some(s) = order["shipments"].as_array_mut() {
            s.push(shipment);
        }
        true
    }

    /// `123` or `@external-id`.
    fn find(&self, key: &str) -> Option<u64> {
        match key.strip_prefix('@') {
            Some(ext) => self.orders.iter().find(|(_, o)| o["external_id"] == ext).map(|(id, _)| *id),
            None => key.parse().ok().filter(|id| self.orders.contains_key(id)),
        }
    }

    fn create(&mut self, body: Option<Value>, confirm: bool) -> Reply {
        let Some(body) = body.filter(Value::is_object) else {
            return fail(400, "BadRequest", "Invalid request body: JSON object expected");
        };
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return fail(400, "BadRequest", "Order must contain at least one item");
        }
        if items.iter().any(|i| i["quantity"].as_u64().is_none_or(|q| q == 0)) {
            return fail(400, "BadRequest", "Item quantity must be a positive integer");
        }
        let external_id = body["external_id"].as_str().map(str::to_owned);
        if let Some(ext) = &external_id
            && self.orders.values().any(|o| o["external_id"] == ext.as_str())
        {
            return fail(400, "BadRequest", &format!("Order with external ID {ext} already exists"));
        }
        self.seq += 1;
        let id = self.seq;
        let items: Vec<Value> = items
            .into_iter()
            .enumerate()
            .map(|(n, mut i)| {
                i["id"] = json!(id * 1000 + n as u64 + 1);
                i
            })
            .collect();
        let order = json!({
            "id": id,
            "external_id": external_id,
            "store": 1,
            "status": if confirm { "pending" } else { "draft" },
            "shipping": body.get("shipping").cloned().unwrap_or(json!("STANDARD")),
            "created": 1_700_000_000,
            "updated": 1_700_000_000,
            "recipient": body.get("recipient").cloned().unwrap_or(Value::Null),
            "items": items,
            "costs": { "currency": "USD", "subtotal": "10.00", "shipping": "4.00", "tax": "0.00", "total": "14.00" },
            "shipments": [],
        });
        self.orders.insert(id, order.clone());
        self.made.made(id);
        ok(order)
    }
}

impl Provider for PrintfulState {
    const NAME: &'static str = "printful";
    const REQUEST_ID_HEADER: Option<&'static str> = Some("X-Request-Id");

    fn request_id(&mut self) -> String {
        self.request_seq += 1;
        format!("pf-{:012}", self.request_seq)
    }

    fn authorized(&self, ex: &Exchange<'_>) -> bool {
        ex.bearer().is_some_and(|t| !t.trim().is_empty())
    }

    fn unauthorized(&self) -> Reply {
        fail(401, "Unauthorized", "Malformed or missing access token")
    }

    fn handle(&mut self, ex: &Exchange<'_>) -> Reply {
        let parts: Vec<&str> = ex.path().trim_end_matches('/').split('/').skip(1).collect();
        match (ex.method(), parts.as_slice()) {
            ("POST", ["orders"]) => self.create(ex.json_body(), ex.query_param("confirm").as_deref() == Some("true")),
            ("GET", ["orders", key]) => match self.find(key) {
                Some(id) => ok(self.orders[&id].clone()),
                None => fail(404, "NotFound", "Order not found"),
            },
            ("POST", ["orders", key, "confirm"]) => {
                let Some(id) = self.find(key) else { return fail(404, "NotFound", "Order not found") };
                let Some(order) = self.orders.get_mut(&id) else { return fail(404, "NotFound", "Order not found") };
                if order["status"] != "draft" && order["status"] != "failed" {
                    let status = order["status"].as_str().unwrap_or("unknown").to_owned();
                    return fail(400, "BadRequest", &format!("Order with status {status} cannot be confirmed"));
                }
                order["status"] = json!("pending");
                ok(order.clone())
            }
            ("DELETE", ["orders", key]) => {
                let Some(id) = self.find(key) else { return fail(404, "NotFound", "Order not found") };
                let Some(order) = self.orders.get_mut(&id) else { return fail(404, "NotFound", "Order not found") };
                match order["status"].as_str() {
                    Some("draft" | "pending" | "failed" | "onhold" | "canceled") => {
                        order["status"] = json!("canceled");
                        ok(order.clone())
                    }
                    other => fail(
                        400,
                        "BadRequest",
                        &format!("Order with status {} cannot be canceled", other.unwrap_or("unknown")),
                    ),
                }
            }
            _ => fail(404, "NotFound", "Not found"),
        }
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        let reason = if status == 429 { "TooManyRequests" } else { "InternalError" };
        json!({ "code": status, "result": message, "error": { "reason": reason, "message": message } })
    }

    fn error_in_200(&self) -> Value {
        json!({ "code": 500, "result": "Internal error", "error": { "reason": "InternalError", "message": "Internal error" } })
    }

    fn tick(&mut self, at: SystemTime) {
        self.made.tick(at);
    }

    fn forget_before(&mut self, cutoff: SystemTime) {
        self.made.expire_keys(cutoff, &mut self.orders);
    }
}
