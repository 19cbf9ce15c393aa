//! The Stripe fake: form-encoded requests, `Bearer sk_test_...` auth,
//! PaymentIntents (create/confirm with manual capture, capture, cancel),
//! refunds, tax calculations, `Request-Id` on every answer, and Stripe's
//! idempotency rules: the same `Idempotency-Key` with the same parameters
//! replays the stored answer with `Idempotent-Replayed: true`; with other
//! parameters it is a 400 `idempotency_error`; while the first request is
//! still in progress it is a 409 `idempotency_error`. As at Stripe, a key
//! is kept 24 hours (on the fake's clock, which a soak makes its virtual
//! one): after that the same key executes anew.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::server::{Ages, Exchange, Provider, Reply, form};

/// How long Stripe keeps an idempotency key ("keys are eligible to be
/// removed from the system automatically after they're at least 24 hours
/// old").
pub const IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

struct StoredAnswer {
    fingerprint: String,
    reply: Reply,
    /// The first request counts as in progress until then.
    ready_at: Instant,
    /// On the fake's clock: the key expires [`IDEMPOTENCY_KEY_TTL`] later.
    stored_at: SystemTime,
}

/// What an entry of [`StripeState`]'s ages stands for.
enum Made {
    Intent(String),
    Capture,
    Refund,
}

/// The Stripe fake's state.
#[derive(Default)]
pub struct StripeState {
    seq: u64,
    request_seq: u64,
    intents: BTreeMap<String, Value>,
    refunds: VecDeque<Value>,
    captures: VecDeque<Value>,
    idempotency: HashMap<String, StoredAnswer>,
    /// Idempotency keys by first use, oldest first.
    keys: Ages<String>,
    /// Objects by making, oldest first.
    made: Ages<Made>,
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
    /// `pi_fake0000000001`, `ch_fake0000000002`, ...: real ids are random
    /// base62 with no long digit runs, and so are these. A counter of 13 or
    /// more digits is a card number to the kernel's redaction scanner when
    /// it passes Luhn (about one in ten), which masks the id in the trace and
    /// raises a `redaction_alert`: a fake whose ids did that would be
    /// unfaithful, and would bury a real alert under false ones.
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_fake{:010}", self.seq)
    }

    /// PaymentIntents by id.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.intents.values().cloned().collect()
    }

    /// The same, borrowed: a caller that needs one field of each (or only
    /// the last) clones nothing.
    pub fn payment_intents_iter(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.intents.values()
    }

    pub fn payment_intent(&self, id: &str) -> Option<Value> {
        self.intents.get(id).cloned()
    }

    /// Every successful capture (PaymentIntent objects after capture).
    pub fn captures(&self) -> Vec<Value> {
        self.captures.iter().cloned().collect()
    }

    /// The same, borrowed.
    pub fn captures_iter(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.captures.iter()
    }

    /// Every refund created.
    pub fn refunds(&self) -> Vec<Value> {
        self.refunds.iter().cloned().collect()
    }

    /// The same, borrowed.
    pub fn refunds_iter(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.refunds.iter()
    }

    /// Idempotency keys held (none older than [`IDEMPOTENCY_KEY_TTL`]).
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }

    fn route(&mut self, ex: &Exchange<'_>, params: &BTreeMap<String, String>) -> Reply {
        let path = ex.path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (ex.method(), parts.as_slice()) {
            ("POST", ["v1", "payment_intents"]) => self.create_intent(params, ex.at),
            ("GET", ["v1", "payment_intents"]) => self.list_intents(ex),
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

    /// `GET /v1/payment_intents` as Stripe pages it: newest first, `limit`
    /// (1 to 100, default 10) a page, `has_more`, the next page after
    /// `starting_after` (an id of the previous page), filtered on `created`
    /// (`created[gte]`, `[gt]`, `[lte]`, `[lt]`, Unix seconds).
    fn list_intents(&self, ex: &Exchange<'_>) -> Reply {
        let int = |name: &str| match ex.query_param(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                error(400, "invalid_request_error", Some("parameter_invalid_integer"), &format!("Invalid integer: {v}"))
            }),
        };
        let params = || -> Result<_, Reply> {
            let limit = int("limit")?.unwrap_or(10);
            Ok((limit, int("created[gte]")?, int("created[gt]")?, int("created[lte]")?, int("created[lt]")?))
        };
        let (limit, gte, gt, lte, lt) = match params() {
            Ok(p) => p,
            Err(reply) => return reply,
        };
        if !(1..=100).contains(&limit) {
            return error(
                400,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                "This value must be greater than or equal to 1 and less than or equal to 100.",
            );
        }
        let after = ex.query_param("starting_after");
        if let Some(id) = after.as_deref().filter(|id| !self.intents.contains_key(*id)) {
            return not_found("payment_intent", id);
        }
        let in_range = |pi: &&Value| {
            let c = pi["created"].as_i64().unwrap_or_default();
            gte.is_none_or(|b| c >= b)
                && gt.is_none_or(|b| c > b)
                && lte.is_none_or(|b| c <= b)
                && lt.is_none_or(|b| c < b)
        };
        // Ids count up, so the map's order is the order of making.
        let newer_first = self.intents.iter().rev();
        let mut page = newer_first
            .skip_while(|(id, _)| after.as_ref().is_some_and(|a| *id != a))
            .skip(usize::from(after.is_some()))
            .map(|(_, pi)| pi)
            .filter(in_range);
        let data: Vec<Value> = page.by_ref().take(limit as usize).cloned().collect();
        let has_more = page.next().is_some();
        Reply::json(200, json!({ "object": "list", "url": "/v1/payment_intents", "has_more": has_more, "data": data }))
    }

    fn create_intent(&mut self, p: &BTreeMap<String, String>, at: SystemTime) -> Reply {
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
            "created": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
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
        self.made.made(Made::Intent(id.clone()));
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
        self.captures.push_back(pi.clone());
        self.made.made(Made::Capture);
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
        self.refunds.push_back(refund.clone());
        self.made.made(Made::Refund);
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
        format!("req_fake{:010}", self.request_seq) // as `next_id`
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
            let stored =
                StoredAnswer { fingerprint, reply: reply.clone(), ready_at: ex.now + ex.delay, stored_at: ex.at };
            self.idempotency.insert(key.clone(), stored);
            self.keys.made(key.clone());
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

    fn tick(&mut self, at: SystemTime) {
        self.keys.tick(at);
        self.made.tick(at);
        let Some(cutoff) = at.checked_sub(IDEMPOTENCY_KEY_TTL) else { return };
        let idempotency = &mut self.idempotency;
        self.keys.expire(cutoff, |_, key| {
            // A key used again after it expired is kept from that use on.
            if idempotency.get(&key).is_some_and(|s| s.stored_at < cutoff) {
                idempotency.remove(&key);
            }
        });
    }

    fn forget_before(&mut self, cutoff: SystemTime) {
        let (intents, captures, refunds) = (&mut self.intents, &mut self.captures, &mut self.refunds);
        self.made.expire(cutoff, |_, made| match made {
            Made::Intent(id) => {
                intents.remove(&id);
            }
            Made::Capture => {
                captures.pop_front();
            }
            Made::Refund => {
                refunds.pop_front();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::StripeFake;
    use crate::server::FakeServer;

    /// A Stripe fake on a clock the test moves.
    async fn fake_on_clock() -> (StripeFake, Arc<Mutex<SystemTime>>) {
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let fake = FakeServer::start(bind, StripeState::default()).await.expect("a loopback port");
        let clock = Arc::new(Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)));
        let read = clock.clone();
        fake.set_clock(move || *read.lock().unwrap());
        (fake, clock)
    }

    fn advance(clock: &Mutex<SystemTime>, by: Duration) {
        let mut t = clock.lock().unwrap();
        *t += by;
    }

    async fn create(fake: &StripeFake, key: &str, amount: u32) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/payment_intents", fake.uri()))
            .bearer_auth("sk_test_fake")
            .header("Idempotency-Key", key)
            .form(&[("amount", amount.to_string()), ("currency", "usd".to_owned())])
            .send()
            .await
            .expect("the fake answers")
    }

    #[tokio::test]
    async fn p1_h10_idempotency_key_expires_after_24_hours_on_the_fake_clock() {
        let (fake, clock) = fake_on_clock().await;
        let first = create(&fake, "key-1", 500).await;
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();

        // Within 24 hours: the stored answer is replayed, nothing executes.
        advance(&clock, Duration::from_secs(23 * 3600));
        let replay = create(&fake, "key-1", 500).await;
        assert_eq!(replay.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
        let replay: Value = replay.json().await.unwrap();
        assert_eq!(replay["id"], first["id"]);
        assert_eq!(fake.payment_intents().len(), 1);
        // Other parameters under the live key: still a conflict.
        assert_eq!(create(&fake, "key-1", 900).await.status(), 400);

        // Past 24 hours the key is gone: the same request executes anew, as
        // at Stripe, and other parameters are no longer a conflict.
        advance(&clock, Duration::from_secs(3600 + 1));
        assert_eq!(fake.with_state(|s| s.idempotency_keys()), 0, "the expired key is dropped");
        let again = create(&fake, "key-1", 500).await;
        assert_eq!(again.status(), 200);
        assert!(again.headers().get("idempotent-replayed").is_none());
        let again: Value = again.json().await.unwrap();
        assert_ne!(again["id"], first["id"], "a new PaymentIntent");
        assert_eq!(fake.payment_intents().len(), 2);
        // And the key is held again, from this use on.
        advance(&clock, Duration::from_secs(3600));
        assert_eq!(create(&fake, "key-1", 900).await.status(), 400);
        assert_eq!(fake.with_state(|s| s.idempotency_keys()), 1);
    }

    #[tokio::test]
    async fn p1_h10_keys_held_stay_bounded_by_time_not_by_run_length() {
        let (fake, clock) = fake_on_clock().await;
        // Two keys an hour for three days: at most a day's worth is held.
        for i in 0..144 {
            assert_eq!(create(&fake, &format!("key-{i}"), 100 + i).await.status(), 200);
            advance(&clock, Duration::from_secs(1800));
        }
        let held = fake.with_state(|s| s.idempotency_keys());
        assert!((48..=49).contains(&held), "{held} keys held");
    }

    #[tokio::test]
    async fn the_last_payment_intent_id_is_the_newest_past_ten() {
        let (fake, _clock) = fake_on_clock().await;
        assert_eq!(fake.last_payment_intent_id(), None);
        let mut newest = Value::Null;
        for i in 0..12 {
            let created: Value = create(&fake, &format!("key-{i}"), 100 + i).await.json().await.unwrap();
            newest = created["id"].clone();
        }
        assert_eq!(fake.last_payment_intent_id(), Some(newest));
    }

    #[tokio::test]
    async fn forget_before_drops_older_objects_and_keeps_newer_ones() {
        let (fake, clock) = fake_on_clock().await;
        let old = create(&fake, "old", 100).await.json::<Value>().await.unwrap();
        advance(&clock, Duration::from_secs(3600));
        let cutoff = fake.now();
        let new = create(&fake, "new", 200).await.json::<Value>().await.unwrap();
        fake.forget_before(cutoff);
        let ids: Vec<Value> = fake.payment_intents().iter().map(|p| p["id"].clone()).collect();
        assert_eq!(ids, vec![new["id"].clone()]);
        assert_ne!(old["id"], new["id"]);
        // A forgotten object is gone for the API too.
        let id = old["id"].as_str().unwrap();
        let got = reqwest::Client::new()
            .get(format!("{}/v1/payment_intents/{id}", fake.uri()))
            .bearer_auth("sk_test_fake")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 404);
    }

    #[tokio::test]
    async fn forget_requests_empties_the_log_and_the_fake_still_answers() {
        let (fake, _clock) = fake_on_clock().await;
        create(&fake, "a", 100).await;
        assert_eq!(fake.requests().len(), 1);
        fake.forget_requests().await;
        assert!(fake.requests().is_empty());
        // The mock was mounted afresh: the next request is served, not 404.
        assert_eq!(create(&fake, "b", 100).await.status(), 200);
        assert_eq!(fake.requests().len(), 1);
        assert_eq!(fake.payment_intents().len(), 2, "the provider's state is kept");
    }

    /// Stripe's list: newest first, pages of `limit` with `has_more` and
    /// `starting_after`, `created` filters; a bad `limit` or an unknown
    /// cursor is a 400 or 404 as at Stripe.
    #[tokio::test]
    async fn payment_intent_list_pages_newest_first_and_filters_on_created() {
        let (fake, clock) = fake_on_clock().await;
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            create(&fake, key, 100 + i as u32).await;
            advance(&clock, Duration::from_secs(60));
        }
        let get = |query: &str| {
            let url = format!("{}/v1/payment_intents?{query}", fake.uri());
            async move {
                let r = reqwest::Client::new().get(url).bearer_auth("sk_test_fake").send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let ids = |v: &Value| v["data"].as_array().unwrap().iter().map(|p| p["id"].clone()).collect::<Vec<_>>();
        let (status, first) = get("limit=2").await;
        assert_eq!((status, first["has_more"].clone()), (200, json!(true)));
        assert_eq!(ids(&first), [json!("pi_fake0000000003"), json!("pi_fake0000000002")]);
        let (_, rest) = get("limit=2&starting_after=pi_fake0000000002").await;
        assert_eq!((ids(&rest), rest["has_more"].clone()), (vec![json!("pi_fake0000000001")], json!(false)));
        let created = first["data"][1]["created"].as_i64().unwrap();
        let (_, since) = get(&format!("created%5Bgte%5D={created}")).await;
        assert_eq!(ids(&since), [json!("pi_fake0000000003"), json!("pi_fake0000000002")]);
        let (_, before) = get(&format!("created%5Blt%5D={created}")).await;
        assert_eq!(ids(&before), [json!("pi_fake0000000001")]);
        assert_eq!(get("limit=0").await.0, 400);
        assert_eq!(get("limit=101").await.0, 400);
        assert_eq!(get("created%5Bgte%5D=soon").await.0, 400);
        assert_eq!(get("starting_after=pi_nope").await.0, 404);
    }
}
