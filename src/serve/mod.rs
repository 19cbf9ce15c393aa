//! `autobiz serve`: the HTTP side of event ingress and approvals (axum).
//!
//! Routes (all JSON but `/metrics`):
//!
//! * `POST /webhooks/{tenant}/{provider}` (`stripe`, `shopify`, `printful`):
//!   one delivery through [`Ingress::receive`]; 200 `{"outcome": "stored" |
//!   "duplicate"}`, 4xx with `{"error": {"code", "message"}}` otherwise.
//!   The body limit applies before anything is read; the tenant must be one
//!   this server serves (404 `TENANT_UNKNOWN` otherwise, fail closed).
//! * `GET /hitl` and `POST /hitl/{id}/approve|deny`: the approval API.
//!   `Authorization: Bearer TOKEN` and `X-Autobiz-Tenant: TENANT`; the token
//!   names the approver (tenant secret `approver_token_<approver>`),
//!   compared in constant time; decisions go through `Store::hitl_decide`,
//!   which audits them.
//! * `/healthz` (the process answers), `/readyz` (the store answers and its
//!   migrations are exactly this binary's), `/metrics` (Prometheus text).

pub mod detector;
pub mod metrics;
pub mod worker;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use autobiz_kernel::hitl::{Decision, StatusFilter};
use autobiz_kernel::ingress::signature::verify_token;
use autobiz_kernel::ingress::{Delivery, Headers, Ingress, Provider, Received};
use autobiz_kernel::secrets::SecretsProvider;
use autobiz_kernel::store::{SecurityEvent, Store};
use autobiz_kernel::tenant::{CorrelationId, Principal, TenantContext, TenantId};
use autobiz_kernel::{Error, ErrorClass, ErrorCode};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Notify;

/// Default limit of a webhook body (Shopify's largest payloads are well
/// below it).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// Secret-name prefix of approver tokens: `approver_token_alice` is Alice's.
pub const APPROVER_TOKEN_PREFIX: &str = "approver_token_";

/// Everything a request handler needs.
pub struct App {
    pub ingress: Ingress,
    pub store: Store,
    pub tenants: BTreeSet<TenantId>,
    /// Approver tokens (`approver_token_*`) are read from here.
    pub secrets: Arc<dyn SecretsProvider>,
    /// Woken after an event is stored, so the worker does not wait a poll.
    pub stored: Arc<Notify>,
    pub http: HttpCounters,
    pub breaker_metrics: Option<Arc<autobiz_kernel::breaker::BreakerMetrics>>,
    /// Runs finished and drift cases opened by this process (`/metrics`).
    pub outcomes: metrics::Outcomes,
}

/// Responses by class, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub ok: AtomicU64,
    pub client_error: AtomicU64,
    pub server_error: AtomicU64,
}

/// The router of `app`, with the body limit.
pub fn router(app: Arc<App>, max_body: usize) -> Router {
    Router::new()
        .route("/webhooks/{tenant}/{provider}", post(webhook))
        .route("/hitl", get(hitl_list))
        .route("/hitl/{id}/{decision}", post(hitl_decide))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), count_responses))
        .with_state(app)
}

/// Count every response by class (the body limit's 413 included, which no
/// handler sees), and a 413 as a refused delivery.
async fn count_responses(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let counter = if status.is_server_error() {
        &app.http.server_error
    } else if status.is_client_error() {
        &app.http.client_error
    } else {
        &app.http.ok
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        app.ingress.counters().reject("PAYLOAD_TOO_LARGE");
    }
    resp
}

/// A refusal as an HTTP response: the status from the code, the body
/// `{"error": {"code", "message"}}` (messages never hold secrets).
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

fn status_of(e: &Error) -> StatusCode {
    match e.code() {
        ErrorCode::SignatureMissing | ErrorCode::SignatureInvalid | ErrorCode::SignatureExpired => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::WebhookNotConfigured | ErrorCode::HitlNotFound => StatusCode::NOT_FOUND,
        ErrorCode::EventMalformed | ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorCode::HitlAlreadyDecided | ErrorCode::HitlExpired => StatusCode::CONFLICT,
        ErrorCode::HitlApproverNotAllowed | ErrorCode::TenantForbidden => StatusCode::FORBIDDEN,
        _ => match e.class() {
            ErrorClass::Input => StatusCode::BAD_REQUEST,
            ErrorClass::Refused => StatusCode::FORBIDDEN,
            ErrorClass::Infrastructure => StatusCode::SERVICE_UNAVAILABLE,
        },
    }
}

fn error_response(e: &Error) -> Response {
    let status = status_of(e);
    if status.is_server_error() {
        tracing::warn!(code = e.code().as_str(), "{e}");
    }
    refusal(status, e.code().as_str(), e.message())
}

fn ok(body: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The served tenant named by `raw`, or `None` (unknown and malformed alike).
fn served_tenant(app: &App, raw: &str) -> Option<TenantId> {
    raw.parse::<TenantId>().ok().filter(|t| app.tenants.contains(t))
}

fn context(tenant: TenantId, principal: &str) -> TenantContext {
    TenantContext::new(tenant, Principal::new(principal), CorrelationId::random())
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn webhook(
    State(app): State<Arc<App>>,
    Path((tenant, provider)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(provider) = Provider::parse(&provider) else {
        app.ingress.counters().reject("PROVIDER_UNKNOWN");
        return refusal(StatusCode::NOT_FOUND, "PROVIDER_UNKNOWN", "no such webhook provider");
    };
    let Some(tenant) = served_tenant(&app, &tenant) else {
        app.ingress.counters().reject("TENANT_UNKNOWN");
        return refusal(StatusCode::NOT_FOUND, "TENANT_UNKNOWN", "this server serves no such tenant");
    };
    let headers = Headers::new(
        headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))),
    );
    let ctx = context(tenant, &format!("webhook:{}", provider.as_str()));
    let delivery = Delivery { provider, headers: &headers, body: &body, url_token: query.token.as_deref() };
    match app.ingress.receive(&ctx, delivery).await {
        Ok(Received::Stored { event_id, status, .. }) => {
            app.stored.notify_one();
            ok(json!({ "outcome": "stored", "event_id": event_id, "status": status }))
        }
        Ok(Received::Duplicate) => ok(json!({ "outcome": "duplicate" })),
        Err(e) => error_response(&e),
    }
}

/// The approver `Authorization: Bearer` names for the tenant in
/// `X-Autobiz-Tenant`, or a refusal (401, recorded as a security event).
async fn approver(app: &App, headers: &HeaderMap) -> Result<(TenantContext, String), Response> {
    let unauthorized =
        || refusal(StatusCode::UNAUTHORIZED, "APPROVER_UNAUTHORIZED", "a valid approver token is required");
    let Some(tenant) =
        headers.get("x-autobiz-tenant").and_then(|v| v.to_str().ok()).and_then(|t| served_tenant(app, t))
    else {
        return Err(unauthorized());
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let lookup = context(tenant.clone(), "hitl-api");
    let names = match app.secrets.list(&lookup).await {
        Ok(list) => list.into_iter().filter_map(|s| s.name.strip_prefix(APPROVER_TOKEN_PREFIX).map(str::to_owned)),
        Err(e) => return Err(error_response(&e)),
    };
    let mut found = None;
    for name in names.collect::<Vec<_>>() {
        let secret = match app.secrets.get(&lookup, &format!("{APPROVER_TOKEN_PREFIX}{name}")).await {
            Ok(s) => s,
            Err(e) => return Err(error_response(&e)),
        };
        // Every token is compared, whichever matches.
        if verify_token(token, std::slice::from_ref(&secret)).is_ok() && found.is_none() {
            found = Some(name);
        }
    }
    match found {
        Some(name) => Ok((context(tenant, &format!("approver:{name}")), name)),
        None => {
            let event = SecurityEvent {
                kind: "approver_auth_failed".to_owned(),
                action: "hitl_api".to_owned(),
                resource: "hitl".to_owned(),
                target_tenant: None,
            };
            if let Err(e) = app.store.record_security_event(&lookup, &event).await {
                return Err(error_response(&e));
            }
            Err(unauthorized())
        }
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn hitl_list(State(app): State<Arc<App>>, Query(q): Query<ListQuery>, headers: HeaderMap) -> Response {
    let (ctx, _who) = match approver(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let filter = match q.status.as_deref() {
        None | Some("pending") => StatusFilter::Pending,
        Some("all") => StatusFilter::All,
        Some(_) => return refusal(StatusCode::BAD_REQUEST, "INVALID_INPUT", "status is pending or all"),
    };
    match app.store.hitl_list(&ctx, filter).await {
        Ok(list) => ok(json!({ "requests": list })),
        Err(e) => error_response(&e),
    }
}

#[derive(serde::Deserialize, Default)]
struct DecisionBody {
    reason: Option<String>,
}

async fn hitl_decide(
    State(app): State<Arc<App>>,
    Path((id, decision)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let decision = match decision.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        _ => return refusal(StatusCode::NOT_FOUND, "NOT_FOUND", "POST /hitl/{id}/approve or /deny"),
    };
    let (ctx, who) = match approver(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let body: DecisionBody = if body.is_empty() {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(_) => return refusal(StatusCode::BAD_REQUEST, "INVALID_INPUT", "the body is {\"reason\": TEXT}"),
        }
    };
    let now = app.store.now();
    match app.store.hitl_decide(&ctx, &id, decision, &who, body.reason.as_deref(), now).await {
        Ok(decided) => ok(json!({ "request": decided })),
        Err(e) => error_response(&e),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.check_schema_current().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", e.code())).into_response(),
    }
}

async fn scrape(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    metrics::render(&app, &mut out).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
