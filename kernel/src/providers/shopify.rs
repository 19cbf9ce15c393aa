//! Shopify Admin REST API `2024-10`: fetch, update (tags, note) and cancel
//! an order, with `X-Shopify-Access-Token` auth.
//!
//! Retries: `GET` always. `PUT` of tags and note is idempotent (it sets the
//! full value, so sending it twice leaves the same order) and is retried
//! like a `GET`. `POST .../cancel.json` is not: Shopify answers a second
//! cancel with 422, so an ambiguous failure (timeout, 5xx) is returned for
//! the caller (or reconciliation) to check, and only a 429 is retried.

use serde_json::{Value, json};

use super::{Auth, Body, FailKind, Failure, Providers, Raw, Request, RetryRule, endpoint, field, with_request_id};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::CallContext;

const PROVIDER: &str = "shopify";
/// The Admin API version spoken.
pub const API_VERSION: &str = "2024-10";

fn order_id<'a>(input: &'a Value, what: &str) -> Result<&'a str> {
    let id = field(input, "order_id", what)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            format!("{what}: `order_id` must be a numeric Shopify order id"),
        ));
    }
    Ok(id)
}

async fn request(
    p: &Providers,
    call: &CallContext,
    what: &str,
    method: reqwest::Method,
    path: String,
    body: Body,
    retry: RetryRule,
) -> Result<(Value, u64)> {
    let req = Request {
        provider: PROVIDER,
        what,
        method,
        url: endpoint(&p.endpoints.shopify, &format!("/admin/api/{API_VERSION}{path}"))?,
        headers: Vec::new(),
        body,
        retry,
    };
    let auth = Auth::Header("X-Shopify-Access-Token");
    p.send(call, super::SHOPIFY_SECRET, auth, req, |raw| interpret(what, raw)).await
}

/// Shopify answers `{"order": {...}}`; errors are `{"errors": ...}` or
/// `{"error": "..."}`.
fn interpret(what: &str, raw: &Raw) -> std::result::Result<Value, Failure> {
    if let Some(f) = raw.common_failure(what, "") {
        return Err(f);
    }
    let Some(body) = raw.json().filter(Value::is_object) else { return Err(Failure::bad_response(what, raw)) };
    let id = raw.id_suffix();
    let has_error = body.get("errors").is_some() || body.get("error").is_some();
    if raw.status == 200 && has_error {
        return Err(Failure::new(
            ErrorCode::ProviderBadResponse,
            FailKind::Transient,
            format!("{what}: HTTP 200 carrying an error{id}"),
        ));
    }
    if !(200..300).contains(&raw.status) || has_error {
        return Err(Failure::new(
            ErrorCode::ProviderRejected,
            FailKind::Final,
            format!("{what}: rejected by Shopify (HTTP {}){id}", raw.status),
        ));
    }
    match body.get("order").filter(|o| o.get("id").is_some()) {
        Some(order) => Ok(with_request_id(order.clone(), raw)),
        None => Err(Failure::bad_response(what, raw)),
    }
}

/// `shopify.order.get`.
pub(super) async fn get(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "shopify.order.get";
    let id = order_id(input, what)?;
    request(p, call, what, reqwest::Method::GET, format!("/orders/{id}.json"), Body::None, RetryRule::Always).await
}

/// `shopify.order.update`: set tags (Shopify's comma-separated string) and
/// the note.
pub(super) async fn update(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "shopify.order.update";
    let id = order_id(input, what)?;
    let mut order = json!({ "id": id.parse::<u64>().unwrap_or_default() });
    if let Some(tags) = input.get("tags").and_then(Value::as_array) {
        let tags: Vec<&str> = tags.iter().filter_map(Value::as_str).collect();
        order["tags"] = json!(tags.join(", "));
    }
    if let Some(note) = input.get("note").and_then(Value::as_str) {
        order["note"] = json!(note);
    }
    let body = Body::Json(json!({ "order": order }));
    request(p, call, what, reqwest::Method::PUT, format!("/orders/{id}.json"), body, RetryRule::Always).await
}

/// `shopify.order.cancel`.
pub(super) async fn cancel(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "shopify.order.cancel";
    let id = order_id(input, what)?;
    let reason = field(input, "reason", what)?;
    let body = Body::Json(json!({ "reason": reason }));
    request(p, call, what, reqwest::Method::POST, format!("/orders/{id}/cancel.json"), body, RetryRule::OnlyRejected)
        .await
}
