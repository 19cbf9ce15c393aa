//! Printful: create a fulfilment order (draft), confirm it, cancel it, and
//! read it (status and shipments with tracking), with `Bearer` auth and the
//! `{"code": 200, "result": ...}` envelope.
//!
//! Retries: `GET` and `DELETE` (cancel: a canceled order stays canceled)
//! always. `POST /orders` is made safe by the unique `external_id`: Printful
//! refuses a second order with the same one, so a retry cannot create a
//! duplicate, and a retry refused that way after an ambiguous first attempt
//! (also by a process killed before its receipt was written, then resumed)
//! is resolved by reading the order back and comparing its items.
//! `POST .../confirm` is retried only on 429 (a second confirm of a
//! confirmed order is refused).

use serde_json::{Value, json};

use super::{Auth, Body, FailKind, Failure, Providers, Raw, Request, RetryRule, endpoint, field, with_request_id};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::CallContext;

const PROVIDER: &str = "printful";

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
        url: endpoint(&p.endpoints.printful, &path)?,
        headers: Vec::new(),
        body,
        retry,
    };
    p.send(call, super::PRINTFUL_SECRET, Auth::Bearer, req, |raw| interpret(what, raw)).await
}

/// Printful's envelope: `code` mirrors the HTTP status; errors carry
/// `error.reason` and `error.message`.
fn interpret(what: &str, raw: &Raw) -> std::result::Result<Value, Failure> {
    let body = raw.json().filter(Value::is_object);
    let message = body.as_ref().and_then(|b| b["error"]["message"].as_str()).unwrap_or_default().to_owned();
    if let Some(f) = raw.common_failure(what, "") {
        return Err(f);
    }
    let Some(body) = body else { return Err(Failure::bad_response(what, raw)) };
    let id = raw.id_suffix();
    let code = body["code"].as_u64();
    if raw.status == 200 && code != Some(200) {
        return Err(Failure::new(
            ErrorCode::ProviderBadResponse,
            FailKind::Transient,
            format!("{what}: HTTP 200 carrying error code {}{id}", code.map_or("none".to_owned(), |c| c.to_string())),
        ));
    }
    if !(200..300).contains(&raw.status) {
        // Printful's message describes the request (statuses, external
        // ids), never customer data.
        return Err(Failure::new(
            ErrorCode::ProviderRejected,
            FailKind::Final,
            format!("{what}: rejected by Printful (HTTP {}): {message}{id}", raw.status),
        ));
    }
    match body.get("result").filter(|r| r.get("id").is_some()) {
        Some(result) => Ok(with_request_id(result.clone(), raw)),
        None => Err(Failure::bad_response(what, raw)),
    }
}

fn order_id(input: &Value, what: &str) -> Result<u64> {
    input.get("printful_order_id").and_then(Value::as_u64).ok_or_else(|| {
        Error::new(ErrorCode::InvalidInput, format!("{what}: `printful_order_id` (integer) is required"))
    })
}

/// An `external_id` as a path segment (`@ext`): only URL-safe characters.
fn external_id<'a>(input: &'a Value, what: &str) -> Result<&'a str> {
    let ext = field(input, "external_id", what)?;
    if ext.is_empty() || !ext.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            format!("{what}: `external_id` must be 1+ characters of A-Z a-z 0-9 - _ ."),
        ));
    }
    Ok(ext)
}

/// `printful.order.create`: a draft order (or confirmed at once with
/// `confirm: true`).
pub(super) async fn create(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "printful.order.create";
    let ext = external_id(input, what)?;
    let mut body = json!({ "external_id": ext, "items": input.get("items").cloned().unwrap_or(json!([])) });
    if let Some(recipient) = input.get("recipient") {
        body["recipient"] = recipient.clone();
    }
    let confirm = input.get("confirm").and_then(Value::as_bool).unwrap_or(false);
    let path = if confirm { "/orders?confirm=true".to_owned() } else { "/orders".to_owned() };
    match request(p, call, what, reqwest::Method::POST, path, Body::Json(body.clone()), RetryRule::Always).await {
        Ok(v) => Ok(v),
        // Refused because an order with this `external_id` exists: an
        // earlier attempt (a retry in this process, or the attempt of a
        // process killed before it could record the receipt) did create it.
        // Read it back; it is ours only if it holds the same items, else
        // the key was reused for another order.
        Err(e) if e.code() == ErrorCode::ProviderRejected && e.message().contains("already exists") => {
            let (existing, n) = get(p, call, &json!({ "external_id": ext })).await?;
            if same_items(&body["items"], &existing["items"]) {
                Ok((existing, n + 1))
            } else {
                Err(Error::new(
                    ErrorCode::ProviderIdempotencyConflict,
                    format!("{what}: an order with external id {ext} already exists with other items"),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether the items Printful holds are the ones requested: same count,
/// and every requested field (variant, quantity, files...) equal in order.
fn same_items(requested: &Value, held: &Value) -> bool {
    match (requested.as_array(), held.as_array()) {
        (Some(r), Some(h)) if r.len() == h.len() => r
            .iter()
            .zip(h)
            .all(|(want, have)| want.as_object().is_some_and(|w| w.iter().all(|(k, v)| have.get(k) == Some(v)))),
        _ => false,
    }
}

/// `printful.order.confirm`: draft -> pending (sent to production).
pub(super) async fn confirm(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "printful.order.confirm";
    let id = order_id(input, what)?;
    request(p, call, what, reqwest::Method::POST, format!("/orders/{id}/confirm"), Body::None, RetryRule::OnlyRejected)
        .await
}

/// `printful.order.cancel`: `DELETE /orders/{id}`.
pub(super) async fn cancel(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "printful.order.cancel";
    let id = order_id(input, what)?;
    request(p, call, what, reqwest::Method::DELETE, format!("/orders/{id}"), Body::None, RetryRule::Always).await
}

/// `printful.order.get`: by `external_id` (`GET /orders/@ext`); the answer
/// has `status` and `shipments` (carrier, tracking number and URL).
pub(super) async fn get(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "printful.order.get";
    let ext = external_id(input, what)?;
    request(p, call, what, reqwest::Method::GET, format!("/orders/@{ext}"), Body::None, RetryRule::Always).await
}
