//! The Stripe fake: form-encoded requests, `Bearer sk_test_...` auth,
//! PaymentIntents (create/confirm with manual capture, capture, cancel),
//! refunds, tax calculations, `Request-Id` on every answer, and Stripe's
//! idempotency rules: the same `Idempotency-Key` with the same parameters
//! replays the stored answer with `Idempotent-Replayed: true`; with other
//! parameters it is a 400 `idempotency_error`; while the first request is
//! still in progress it is a 409 `idempotency_error`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{Value, json};

use crate::server::{Exchange, Provider, Reply, form};

struct StoredAnswer {
    fingerprint: String,
    reply: Reply,
    /// The first request counts as in progress until then.
    ready_at: Instant,
}

/// The Stripe fake's state.
#[derive(Default)]
pub struct StripeState {
    seq: u64,
    request_seq: u64,
    intents: BTreeMap<String, Value>,
    refunds: Vec<Value>,
    captures: Vec<Value>,
    idempotency: HashMap<String, StoredAnswer>,
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Reply {
    let mut e = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        e["code"] = json!(code);
    }
    Reply::json(status, json!({ "error": e }))
}

fn missing(param: &str) -> Reply {
    let mut r =
        error(400, "invalid_request_error", Some("parameter_missing"), &format!("Missing required param: {param}."));
    if let Some(b) = r.body.as_mut() {
        b["error"]["param"] = json!(param);
    }
    r
}

fn unexpected_state(pi: &Value, action: &str) -> Reply {
    let status = pi["status"].as_str().unwrap_or("unknown");
    let mut r = error(
        400,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        &format!("You cannot {action} this PaymentIntent because it has a status of {status}."),
    );
    if let Some(b) = r.body.as_mut() {
        b["error"]["payment_intent"] = pi.clone();
    }
    r
}

/// What a test payment method does on confirmation: `None` succeeds,
/// `Some(decline_code)` declines. Mirrors Stripe's documented test
/// PaymentMethods.
fn decline_of(payment_method: &str) -> Option<&'static str> {
    match payment_method {
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => Some("generic_decline"),
        "pm_card_chargeDeclinedInsufficientFunds" | "pm_card_visa_chargeDeclinedInsufficientFunds" => {
            Some("insufficient_funds")
        }
        "pm_card_chargeDeclinedExpiredCard" => Some("expired_card"),
        "pm_card_chargeDeclinedFraudulent" => Some("fraudulent"),
        _ => None,
    }
}

/// Tax rates the fake applies, by customer country (basis points). Real
/// Stripe Tax depends on registrations, product tax codes and addresses.
fn tax_rate_bp(country: &str) -> i64 {
    match country {
        "GB" | "FR" => 2000,
        "DE" => 1900,
        "NL" => 2100,
        _ => 0,
    }
}

impl StripeState {
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_{:014}", self.seq)
    }

    /// PaymentIntents by id.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.intents.values().cloned().collect()
    }

    pub fn payment_intent(&self, id: &str) -> Option<Value> {
        self.intents.get(id).cloned()
    }

    /// Every successful capture (PaymentIntent objects after capture).
    pub fn captures(&self) -> Vec<Value> {
        self.captures.clone()
    }

    /// Every refund created.
    pub fn refunds(&self) -> Vec<Value> {
        self.refunds.clone()
    }

    fn route(&mut self, ex: &Exchange<'_>, params: &BTreeMap<String, String>) -> Reply {
        let path = ex.path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (ex.method(), parts.as_slice()) {
            ("POST", ["v1", "payment_intents"]) => self.create_intent(params),
            // Oldest first (Stripe lists newest first and paginates; the
            // fake returns every intent on one page).
            ("GET", ["v1", "payment_intents"]) => Reply::json(
                200,
                json!({ "object": "list", "url": "/v1/payment_intents", "has_more": false, "data": self.intents.values().cloned().collect::<Vec<_>>() }),
            ),
            ("GET", ["v1", "payment_intents", id]) => match self.intents.get(*id) {
                Some(pi) => Reply::json(200, pi.clone()),
                None => not_found("payment_intent", id),
            },
            ("POST", ["v1", "payment_intents", id, "confirm"]) => self.confirm(id, params.get("payment_method")),
            ("POST", ["v1", "payment_intents", id, "capture"]) => self.capture(id, params),
            ("POST", ["v1", "payment_intents", id, "cancel"]) => self.cancel(id, params),
            ("POST", ["v1", "refunds"]) => self.refund(params),
            ("POST", ["v1", "tax", "calculations"]) => self.tax(params),
            _ => error(
                404,
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL ({} {path}).", ex.method()),
            ),
        }
    }

    fn create_intent(&mut self, p: &BTreeMap<String, String>) -> Reply {
        let Some(amount) = p.get("amount") else { return missing("amount") };
        let Ok(amount) = amount.parse::<i64>() else {
            return error(400, "invalid_request_error", Some("parameter_invalid_integer"), "Invalid integer: amount");
        };
        if amount < 1 {
            return error(400, "invalid_request_error", Some("amount_too_small"), "Amount must be at least 1.");
        }
        let Some(currency) = p.get("currency") else { return missing("currency") };
        let capture_method = p.get("capture_method").map(String::as_str).unwrap_or("automatic");
        if !matches!(capture_method, "automatic" | "automatic_async" | "manual") {
            return error(400, "invalid_request_error", Some("parameter_invalid_string"), "Invalid capture_method");
        }
        let metadata: serde_json::Map<String, Value> = p
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')).map(|k| (k.to_owned(), json!(v)))
            })
            .collect();
        let id = self.next_id("pi");
        let pm = p.get("payment_method").cloned();
        let pi = json!({
            "id": id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "amount_refunded": 0,
            "currency": currency.to_ascii_lowercase(),
            "capture_method": capture_method,
            "client_secret": format!("{id}_secret_fake"),
            "livemode": false,
            "metadata": metadata,
            "payment_method": pm,
            "latest_charge": Value::Null,
            "cancellation_reason": Value::Null,
            "status": if pm.is_some() { "requires_confirmation" } else { "requires_payment_method" },
        });
        self.intents.insert(id.clone(), pi);
        if p.get("confirm").map(String::as_str) == Some("true") {
            return self.confirm(&id, pm.as_ref());
        }
        Reply::json(200, self.intents[&id].clone())
    }

    fn confirm(&mut self, id: &str, payment_method: Option<&String>) -> Reply {
        let charge_id = self.next_id("ch");
        let Some(pi) = self.intents.get_mut(id) else { return not_found("payment_intent", id) };
        if let Some(pm) = payment_method {
            pi["payment_method"] = json!(pm);
        }
        let status = pi["status"].as_str().unwrap_or_default().to_owned();
        if !matches!(status.as_str(), "requires_payment_method" | "requires_confirmation") {
            return unexpected_state(pi, "confirm");
        }
        let Some(pm) = pi["payment_method"].as_str().map(str::to_owned) else {
            return error(
                400,
                "invalid_request_error",
                Some("payment_intent_unexpected_state"),
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
            );
        };
        if let Some(decline) = decline_of(&pm) {
            pi["status"] = json!("requires_payment_method");
            pi["last_payment_error"] =
                json!({ "type": "card_error", "code": "card_declined", "decline_code": decline });
            let mut r = error(402, "card_error", Some("card_declined"), "Your card was declined.");
            if let Some(b) = r.body.as_mut() {
                b["error"]["decline_code"] = json!(decline);
                b["error"]["payment_intent"] = pi.clone();
            }
            return r;
        }
        let amount = pi["amount"].as_i64().unwrap_or(0);
        pi["latest_charge"] = json!(charge_id);
        if pi["capture_method"] == "manual" {
            pi["status"] = json!("requires_capture");
            pi["amount_capturable"] = json!(amount);
        } else {
            pi["status"] = json!("succeeded");
            pi["amount_received"] = json!(amount);
        }
        Reply::json(200, pi.clone())
    }

    fn capture(&mut self, id: &str, p: &BTreeMap<String, String>) -> Reply {
        let Some(pi) = self.intents.get_mut(id) else { return not_found("payment_intent", id) };
        if pi["status"] != "requires_capture" {
            return unexpected_state(pi, "capture");
        }
        let capturable = pi["amount_capturable"].as_i64().unwrap_or(0);
        let amount = match p.get("amount_to_capture").map(|a| a.parse::<i64>()) {
            None => capturable,
            Some(Ok(a)) if (1..=capturable).contains(&a) => a,
            Some(_) => {
                return error(
                    400,
                    "invalid_request_error",
                    Some("amount_too_large"),
                    "amount_to_capture must be a positive integer no greater than amount_capturable.",
                );
            }
        };
        pi["status"] = json!("succeeded");
        pi["amount_capturable"] = json!(0);
        pi["amount_received"] = json!(amount);
        let pi = pi.clone();
        self.captures.push(pi.clone());
        Reply::json(200, pi)
    }

    fn cancel(&mut self, id: &str, p: &BTreeMap<String, String>) -> Reply {
        let Some(pi) = self.intents.get_mut(id) else { return not_found("payment_intent", id) };
        let cancellable = matches!(
            pi["status"].as_str(),
            Some(
                "requires_payment_method"
                    | "requires_capture"
                    | "requires_confirmation"
                    | "requires_action"
                    | "processing"
            )
        );
        if !cancellable {
            return unexpected_state(pi, "cancel");
        }
        pi["status"] = json!("canceled");
        pi["amount_capturable"] = json!(0);
        pi["cancellation_reason"] = p.get("cancellation_reason").map_or(Value::Null, |r| json!(r));
        Reply::json(200, pi.clone())
    }

    fn refund(&mut self, p: &BTreeMap<String, String>) -> Reply {
        let Some(pi_id) = p.get("payment_intent").or(p.get("charge")) else { return missing("payment_intent") };
        let id = self.next_id("re");
        let Some(pi) = self.intents.get_mut(pi_id) else { return not_found("payment_intent", pi_id) };
        if pi["status"] != "succeeded" {
            return error(
                400,
                "invalid_request_error",
                Some("charge_not_refundable"),
                "This PaymentIntent does not have a successful charge to refund.",
            );
        }
        let received = pi["amount_received"].as_i64().unwrap_or(0);
        let refunded = pi["amount_refunded"].as_i64().unwrap_or(0);
        let left = received - refunded;
        if left <= 0 {
            return error(
                400,
                "invalid_request_error",
                Some("charge_already_refunded"),
                "Charge has already been refunded.",
            );
        }
        let amount = match p.get("amount").map(|a| a.parse::<i64>()) {
            None => left,
            Some(Ok(a)) if a >= 1 && a <= left => a,
            Some(Ok(a)) if a > left => {
                return error(
                    400,
                    "invalid_request_error",
                    Some("amount_too_large"),
                    &format!("Refund amount ({a}) is greater than unrefunded amount on charge ({left})."),
                );
            }
            Some(_) => {
                return error(
                    400,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    "Invalid integer: amount",
                );
            }
        };
        pi["amount_refunded"] = json!(refunded + amount);
        let refund = json!({
            "id": id,
            "object": "refund",
            "amount": amount,
            "currency": pi["currency"],
            "payment_intent": pi_id,
            "charge": pi["latest_charge"],
            "reason": p.get("reason"),
            "status": "succeeded",
        });
        self.refunds.push(refund.clone());
        Reply::json(200, refund)
    }

    fn tax(&mut self, p: &BTreeMap<String, String>) -> Reply {
        let Some(currency) = p.get("currency") else { return missing("currency") };
        let country = p.get("customer_details[address][country]").cloned().unwrap_or_default();
        if country.is_empty() {
            return missing("customer_details[address][country]");
        }
        let mut lines = Vec::new();
        let mut total = 0i64;
        let mut tax = 0i64;
        for i in 0.. {
            let Some(amount) = p.get(&format!("line_items[{i}][amount]")) else { break };
            let Ok(amount) = amount.parse::<i64>() else {
                return error(
                    400,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    "Invalid integer: amount",
                );
            };
            let line_tax = amount * tax_rate_bp(&country) / 10_000;
            total += amount;
            tax += line_tax;
            lines.push(json!({
                "object": "tax.calculation_line_item",
                "amount": amount,
                "amount_tax": line_tax,
                "reference": p.get(&format!("line_items[{i}][reference]")),
            }));
        }
        if lines.is_empty() {
            return missing("line_items");
        }
        let id = self.next_id("taxcalc");
        Reply::json(
            200,
            json!({
                "id": id,
                "object": "tax.calculation",
                "currency": currency.to_ascii_lowercase(),
                "amount_total": total + tax,
                "tax_amount_exclusive": tax,
                "tax_amount_inclusive": 0,
                "customer_details": { "address": { "country": country } },
                "line_items": { "object": "list", "data": lines },
                "livemode": false,
            }),
        )
    }
}

fn not_found(kind: &str, id: &str) -> Reply {
    let mut r = error(404, "invalid_request_error", Some("resource_missing"), &format!("No such {kind}: '{id}'"));
    if let Some(b) = r.body.as_mut() {
        b["error"]["param"] = json!("id");
    }
    r
}

impl Provider for StripeState {
    const NAME: &'static str = "stripe";
    const REQUEST_ID_HEADER: Option<&'static str> = Some("Request-Id");

    fn request_id(&mut self) -> String {
        self.request_seq += 1;
        format!("req_{:014}", self.request_seq)
    }

    /// Test-mode secret and restricted keys only: a fake never accepts a live
    /// key, so a test that reaches it with one fails loudly.
    fn authorized(&self, ex: &Exchange<'_>) -> bool {
        ex.bearer().is_some_and(|k| k.starts_with("sk_test_") || k.starts_with("rk_test_"))
    }

    fn unauthorized(&self) -> Reply {
        error(
            401,
            "invalid_request_error",
            None,
            "Invalid API Key provided (this fake accepts sk_test_/rk_test_ keys).",
        )
    }

    fn handle(&mut self, ex: &Exchange<'_>) -> Reply {
        let params = form(&ex.request.body);
        let key = ex.header("idempotency-key").map(str::to_owned);
        let Some(key) = key.filter(|_| ex.method() == "POST") else { return self.route(ex, &params) };
        let fingerprint = format!(
            "{} {}?{}",
            ex.method(),
            ex.path(),
            params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
        );
        if let Some(stored) = self.idempotency.get(&key) {
            if stored.fingerprint != fingerprint {
                return error(
                    400,
                    "idempotency_error",
                    None,
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ),
                );
            }
            if ex.now < stored.ready_at {
                return error(
                    409,
                    "idempotency_error",
                    None,
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through). Please try again later.",
                );
            }
            return stored.reply.clone().header("Idempotent-Replayed", "true");
        }
        let reply = self.route(ex, &params);
        // Stripe saves the result of any request that started executing,
        // errors included, but not server errors.
        if reply.status < 500 {
            self.idempotency
                .insert(key.clone(), StoredAnswer { fingerprint, reply: reply.clone(), ready_at: ex.now + ex.delay });
        }
        reply.header("Idempotency-Key", key)
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        let kind = if status == 429 { "rate_limit_error" } else { "api_error" };
        let mut e = json!({ "type": kind, "message": message });
        if status == 429 {
            e["code"] = json!("rate_limit");
        }
        json!({ "error": e })
    }

    fn error_in_200(&self) -> Value {
        json!({ "error": { "type": "api_error", "message": "An unexpected error occurred." } })
    }
}
