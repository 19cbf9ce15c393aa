//! Stripe: PaymentIntent authorize (create + confirm with manual capture),
//! capture, cancel (void), refund, tax calculation.
//!
//! Requests are form-encoded with `Bearer sk_test_...` auth. Every mutating
//! call sends the external `Idempotency-Key` from [`CallContext`], so Stripe
//! answers a repeat with the stored result: that is why every Stripe call is
//! retried ([`RetryRule::Always`]) on rate limits, server errors, timeouts
//! and unreadable answers. Without a key (a direct call outside the
//! executor) a POST is retried only when Stripe certainly did not process it.

use serde_json::Value;

use super::{
    Auth, Body, FailKind, Failure, Providers, Raw, Request, RetryRule, endpoint, field, int_field, with_request_id,
};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::CallContext;

const PROVIDER: &str = "stripe";

/// The test PaymentMethod used when the input names none.
pub const DEFAULT_PAYMENT_METHOD: &str = "pm_card_visa";

async fn post(p: &Providers, call: &CallContext, what: &str, path: &str, form: String) -> Result<(Value, u64)> {
    let mut headers = Vec::new();
    let retry = match &call.idempotency_key {
        Some(k) => {
            headers.push(("Idempotency-Key", k.clone()));
            RetryRule::Always
        }
        None => RetryRule::OnlyRejected,
    };
    let req = Request {
        provider: PROVIDER,
        what,
        method: reqwest::Method::POST,
        url: endpoint(&p.endpoints.stripe, path)?,
        headers,
        body: Body::Form(form),
        retry,
    };
    p.send(call, super::STRIPE_SECRET, Auth::Bearer, req, |raw| interpret(what, raw)).await
}

/// Stripe's answer: an object, or `{"error": {type, code, decline_code,
/// message}}` with the `Request-Id` header.
fn interpret(what: &str, raw: &Raw) -> std::result::Result<Value, Failure> {
    let Some(body) = raw.json().filter(Value::is_object) else {
        if let Some(f) = raw.common_failure(what, "") {
            return Err(f);
        }
        return Err(Failure::bad_response(what, raw));
    };
    let id = raw.id_suffix();
    if let Some(err) = body.get("error") {
        let kind = err["type"].as_str().unwrap_or_default();
        let code = err["code"].as_str().unwrap_or_default();
        if raw.status == 200 {
            return Err(Failure::new(
                ErrorCode::ProviderBadResponse,
                FailKind::Transient,
                format!("{what}: HTTP 200 carrying an error ({kind}){id}"),
            ));
        }
        if kind == "card_error" {
            let decline = err["decline_code"].as_str().unwrap_or(code);
            return Err(Failure::new(
                ErrorCode::ProviderDeclined,
                FailKind::Final,
                format!("{what}: card declined ({decline}){id}"),
            ));
        }
        if kind == "idempotency_error" {
            // 409: the first request with this key is still in progress (a
            // retry will get its answer); 400: the key was used with other
            // parameters (never retried).
            let kind = if raw.status == 409 { FailKind::Transient } else { FailKind::Final };
            return Err(Failure::new(
                ErrorCode::ProviderIdempotencyConflict,
                kind,
                format!("{what}: idempotency conflict (HTTP {}){id}", raw.status),
            ));
        }
        let detail = if code.is_empty() { String::new() } else { format!(" ({code})") };
        if let Some(f) = raw.common_failure(what, &detail) {
            return Err(f);
        }
        return Err(Failure::new(
            ErrorCode::ProviderRejected,
            FailKind::Final,
            format!("{what}: rejected by Stripe: {kind}{detail}{id}"),
        ));
    }
    if let Some(f) = raw.common_failure(what, "") {
        return Err(f);
    }
    let is_list = body.get("object").and_then(Value::as_str) == Some("list");
    if !(200..300).contains(&raw.status) || (body.get("id").and_then(Value::as_str).is_none() && !is_list) {
        return Err(Failure::bad_response(what, raw));
    }
    let mut v = with_request_id(body, raw);
    if raw.header("idempotent-replayed") == Some("true") {
        v["idempotent_replayed"] = Value::Bool(true);
    }
    Ok(v)
}

/// Form parameters in order (Stripe's bracket keys included), encoded as
/// `application/x-www-form-urlencoded`. Kept as plain strings so that no
/// encoder is held across an await.
#[derive(Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn append_pair(&mut self, k: &str, v: &str) {
        self.0.push((k.to_owned(), v.to_owned()));
    }

    fn encode(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&self.0).finish()
    }
}

fn optional_str<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

/// `stripe.payment_intent.authorize`: create and confirm a PaymentIntent
/// with `capture_method=manual` (status `requires_capture`).
pub(super) async fn authorize(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.payment_intent.authorize";
    let amount = int_field(input, "amount", what)?;
    let currency = field(input, "currency", what)?;
    let order_id = field(input, "order_id", what)?;
    let pm = optional_str(input, "payment_method").unwrap_or(DEFAULT_PAYMENT_METHOD);
    let mut form = Form::default();
    form.append_pair("amount", &amount.to_string());
    form.append_pair("currency", currency);
    form.append_pair("capture_method", "manual");
    form.append_pair("confirm", "true");
    form.append_pair("payment_method", pm);
    form.append_pair("payment_method_types[]", "card");
    form.append_pair("metadata[order_id]", order_id);
    post(p, call, what, "/v1/payment_intents", form.encode()).await
}

/// `stripe.payment_intent.capture`: capture an authorized PaymentIntent
/// (all of it, or `amount`).
pub(super) async fn capture(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.payment_intent.capture";
    let pi = payment_intent(input, what)?;
    let mut form = Form::default();
    if let Some(amount) = input.get("amount").and_then(Value::as_i64) {
        form.append_pair("amount_to_capture", &amount.to_string());
    }
    post(p, call, what, &format!("/v1/payment_intents/{pi}/capture"), form.encode()).await
}

/// `stripe.payment_intent.cancel`: void an uncaptured PaymentIntent.
pub(super) async fn cancel(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.payment_intent.cancel";
    let pi = payment_intent(input, what)?;
    let mut form = Form::default();
    if let Some(reason) = optional_str(input, "reason") {
        form.append_pair("cancellation_reason", reason);
    }
    post(p, call, what, &format!("/v1/payment_intents/{pi}/cancel"), form.encode()).await
}

/// `stripe.refund.create`: refund `amount` of a captured PaymentIntent.
/// Stripe refunds in the PaymentIntent's currency; the input's `currency`
/// (kept for approval rules and receipts) must match the refund's, or the
/// answer is refused as unexpected.
pub(super) async fn refund(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.refund.create";
    let pi = payment_intent(input, what)?;
    let amount = int_field(input, "amount", what)?;
    let currency = field(input, "currency", what)?.to_ascii_lowercase();
    let mut form = Form::default();
    form.append_pair("payment_intent", pi);
    form.append_pair("amount", &amount.to_string());
    if let Some(reason) = optional_str(input, "reason") {
        form.append_pair("reason", reason);
    }
    let (v, attempts) = post(p, call, what, "/v1/refunds", form.encode()).await?;
    if v["currency"].as_str().is_some_and(|c| c != currency) {
        return Err(crate::Error::new(
            ErrorCode::ProviderBadResponse,
            format!("{what}: refund {} is in {}, not the requested {currency}", v["id"], v["currency"]),
        ));
    }
    Ok((v, attempts))
}

/// How long before a capture its PaymentIntent can have been made: Stripe
/// cancels an uncaptured card authorization after 7 days.
pub const CAPTURE_WINDOW_DAYS: i64 = 7;

/// The most pages one list follows (a million PaymentIntents): a provider
/// that kept answering `has_more` with new ids must not page forever.
const MAX_LIST_PAGES: u32 = 10_000;

/// `stripe.payment_intent.list`: `GET /v1/payment_intents`, every page (100
/// a page, `starting_after` the last id while `has_more`), what daily
/// reconciliation compares the receipts with. With `day` (`YYYY-MM-DD`,
/// UTC) only the PaymentIntents made from [`CAPTURE_WINDOW_DAYS`] before
/// that day to its end (`created[gte]`, `created[lt]`): every one a capture
/// on that day can belong to, and no more however long the account's
/// history. A read: retried freely. The answer is one Stripe list object
/// whose `data` holds the pages' PaymentIntents, newest first.
pub(super) async fn list(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.payment_intent.list";
    let mut base = endpoint(&p.endpoints.stripe, "/v1/payment_intents")?;
    base.query_pairs_mut().append_pair("limit", "100");
    if let Some(day) = optional_str(input, "day") {
        let start = crate::closeout::day_start(day, what)?;
        let from = start - chrono::Duration::days(CAPTURE_WINDOW_DAYS);
        let to = start + chrono::Duration::days(1);
        base.query_pairs_mut()
            .append_pair("created[gte]", &from.timestamp().to_string())
            .append_pair("created[lt]", &to.timestamp().to_string());
    }
    let (mut data, mut attempts, mut after): (Vec<Value>, u64, Option<String>) = (Vec::new(), 0, None);
    let mut request_id = Value::Null;
    for page_number in 1.. {
        if page_number > MAX_LIST_PAGES {
            return Err(Error::new(
                ErrorCode::ProviderBadResponse,
                format!("{what}: more than {MAX_LIST_PAGES} pages of 100; narrow the list with `day`"),
            ));
        }
        let mut url = base.clone();
        if let Some(id) = &after {
            url.query_pairs_mut().append_pair("starting_after", id);
        }
        let req = Request {
            provider: PROVIDER,
            what,
            method: reqwest::Method::GET,
            url,
            headers: Vec::new(),
            body: Body::None,
            retry: RetryRule::Always,
        };
        let (page, tries) = p
            .send(call, super::STRIPE_SECRET, Auth::Bearer, req, |raw| {
                let v = interpret(what, raw)?;
                if v.get("data").is_some_and(Value::is_array) { Ok(v) } else { Err(Failure::bad_response(what, raw)) }
            })
            .await?;
        attempts += tries;
        request_id = page.get("request_id").cloned().unwrap_or(request_id);
        let items = page["data"].as_array().cloned().unwrap_or_default();
        let last = items.last().and_then(|pi| pi["id"].as_str()).map(str::to_owned);
        data.extend(items);
        if page["has_more"] != Value::Bool(true) {
            break;
        }
        // A provider that says "more" but gives no new last id would page
        // forever: refuse the answer rather than loop.
        match last {
            Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
            _ => {
                return Err(Error::new(
                    ErrorCode::ProviderBadResponse,
                    format!(
                        "{what}: `has_more` without a next page (after {})",
                        after.as_deref().unwrap_or("the first page")
                    ),
                ));
            }
        }
    }
    let mut list =
        serde_json::json!({ "object": "list", "url": "/v1/payment_intents", "has_more": false, "data": data });
    if !request_id.is_null() {
        list["request_id"] = request_id; // the last page's, as a single answer carries its own
    }
    Ok((list, attempts))
}

/// `stripe.tax.calculate`: `POST /v1/tax/calculations` for line items
/// shipped to `country`. Creates no money movement; Stripe keeps the
/// calculation 90 days.
pub(super) async fn tax(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "stripe.tax.calculate";
    let currency = field(input, "currency", what)?;
    let country = field(input, "country", what)?;
    let mut form = Form::default();
    form.append_pair("currency", currency);
    form.append_pair("customer_details[address][country]", country);
    form.append_pair("customer_details[address_source]", "shipping");
    if let Some(postal) = optional_str(input, "postal_code") {
        form.append_pair("customer_details[address][postal_code]", postal);
    }
    let lines = input.get("line_items").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, line) in lines.iter().enumerate() {
        let amount = int_field(line, "amount", what)?;
        form.append_pair(&format!("line_items[{i}][amount]"), &amount.to_string());
        form.append_pair(&format!("line_items[{i}][reference]"), field(line, "reference", what)?);
    }
    post(p, call, what, "/v1/tax/calculations", form.encode()).await
}

/// The PaymentIntent id, checked to be one (it goes into the URL path).
fn payment_intent<'a>(input: &'a Value, what: &str) -> Result<&'a str> {
    let pi = field(input, "payment_intent", what)?;
    if !pi.starts_with("pi_") || !pi.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(crate::Error::new(
            ErrorCode::InvalidInput,
            format!("{what}: `payment_intent` is not a PaymentIntent id"),
        ));
    }
    Ok(pi)
}
