//! Event ingress: verified, normalized, deduplicated provider webhooks, the
//! ordering gate, and the claims a worker processes them by.
//!
//! [`Ingress::receive`] is the one path a delivery takes:
//!
//! 1. the tenant's webhook secrets ([`WebhookKeys`]: current version and
//!    those in their rotation grace period) and [`signature`] verification
//!    of the raw body; nothing is parsed or stored before it succeeds;
//! 2. JSON parsing and normalization ([`normalize`]): source, type,
//!    provider event id (Stripe `id`, `X-Shopify-Webhook-Id`, ...), entity,
//!    occurred_at, `payload_sha256`; a body that is not what the provider
//!    sends is `EVENT_MALFORMED` and not stored;
//! 3. one insert, deduplicated by the unique `(tenant, source, provider
//!    event id)`, whose status the [`ordering`] gate decides in the same
//!    statement (`HELD` before its predecessor, else `READY`), and which
//!    releases the entity's events that waited for it.
//!
//! The worker's side is in the store (`Store::event_claim`, `event_finish`,
//! `event_release_due`); `autobiz serve` drives both.

pub mod fields;
pub mod ordering;
pub mod signature;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;

use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::secrets::SecretsProvider;
use crate::store::Store;
use crate::tenant::TenantContext;

pub use crate::store::{Admitted, NewEvent, StoredEvent};
pub use ordering::{DEFAULT_HOLD, EVENT_TRANSITIONS, EventStatus, EventTransition};

/// A webhook source with a signature scheme of its own, or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Stripe,
    Shopify,
    Printful,
    /// The shop's helpdesk: customer messages, refund and cancellation
    /// requests (`support:message`, ...), authenticated by a per-tenant
    /// token like Printful. The body is autobiz's own shape:
    /// `{"id", "type", "created"?, "order_id"?, ...fields}`.
    Support,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Shopify => "shopify",
            Provider::Printful => "printful",
            Provider::Support => "support",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "stripe" => Some(Provider::Stripe),
            "shopify" => Some(Provider::Shopify),
            "printful" => Some(Provider::Printful),
            "support" => Some(Provider::Support),
            _ => None,
        }
    }

    /// The tenant secret holding this provider's webhook secret or token
    /// (`autobiz secrets set NAME`).
    pub fn secret_name(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe_webhook_secret",
            Provider::Shopify => "shopify_webhook_secret",
            Provider::Printful => "printful_webhook_token",
            Provider::Support => "support_webhook_token",
        }
    }
}

/// Request headers, names lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Headers {
        Headers(pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One delivery as received: the raw body, its headers, and a token given
/// in the URL (for token-authenticated sources).
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub provider: Provider,
    pub headers: &'a Headers,
    pub body: &'a [u8],
    pub url_token: Option<&'a str>,
}

/// The outcome of a delivery that verified and parsed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Received {
    Stored {
        event_id: i64,
        status: EventStatus,
        released: u64,
    },
    /// Same (tenant, source, provider event id) as a stored event:
    /// acknowledged, not stored again.
    Duplicate,
}

/// Where the tenant's webhook secrets come from.
#[async_trait::async_trait]
pub trait WebhookKeys: Send + Sync {
    /// Every secret a delivery from `provider` may be signed with (current
    /// first). `WEBHOOK_NOT_CONFIGURED` when the tenant has none.
    async fn keys(&self, ctx: &TenantContext, provider: Provider) -> Result<Arc<Vec<SecretString>>>;
}

/// [`WebhookKeys`] over a [`SecretsProvider`]: the current version of
/// [`Provider::secret_name`] and every earlier version still in its grace
/// period (rotation), cached for `ttl` so an ingest does not read and audit
/// the secrets file per request. Reads that fill the cache are audited by
/// the provider.
pub struct SecretKeys {
    secrets: Arc<dyn SecretsProvider>,
    clock: Arc<dyn Clock>,
    ttl: chrono::Duration,
    cache: Mutex<BTreeMap<(String, Provider), Cached>>,
}

/// When a tenant's keys were read, and the keys.
type Cached = (DateTime<Utc>, Arc<Vec<SecretString>>);

impl SecretKeys {
    pub fn new(secrets: Arc<dyn SecretsProvider>, clock: Arc<dyn Clock>, ttl: chrono::Duration) -> SecretKeys {
        SecretKeys { secrets, clock, ttl, cache: Mutex::default() }
    }
}

#[async_trait::async_trait]
impl WebhookKeys for SecretKeys {
    async fn keys(&self, ctx: &TenantContext, provider: Provider) -> Result<Arc<Vec<SecretString>>> {
        let now = self.clock.now();
        let key = (ctx.tenant().to_string(), provider);
        if let Some((at, keys)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && now - *at < self.ttl
        {
            return Ok(keys.clone());
        }
        let name = provider.secret_name();
        let list = self.secrets.list(ctx).await?;
        let Some(info) = list.iter().find(|s| s.name == name) else {
            return Err(Error::new(
                ErrorCode::WebhookNotConfigured,
                format!("tenant {} has no {name} secret: `autobiz secrets set {name}`", ctx.tenant()),
            ));
        };
        let mut keys = vec![self.secrets.get(ctx, name).await?];
        for prev in info.previous.iter().filter(|p| p.readable_until > now) {
            match self.secrets.get_version(ctx, name, prev.version).await {
                Ok(v) => keys.push(v),
                Err(e) if e.code() == ErrorCode::SecretVersionExpired => {}
                Err(e) => return Err(e),
            }
        }
        let keys = Arc::new(keys);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (now, keys.clone()));
        Ok(keys)
    }
}

/// Fixed keys per provider, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct StaticKeys(pub BTreeMap<Provider, Arc<Vec<SecretString>>>);

#[async_trait::async_trait]
impl WebhookKeys for StaticKeys {
    async fn keys(&self, _ctx: &TenantContext, provider: Provider) -> Result<Arc<Vec<SecretString>>> {
        self.0
            .get(&provider)
            .cloned()
            .ok_or_else(|| Error::new(ErrorCode::WebhookNotConfigured, format!("no {} secret", provider.secret_name())))
    }
}

/// Process-wide ingress counters (exported by `autobiz serve` as
/// `event_received_total`, ...).
#[derive(Debug, Default)]
pub struct IngressCounters {
    /// Deliveries verified, parsed and stored (duplicates excluded).
    pub event_received_total: AtomicU64,
    pub event_duplicate_total: AtomicU64,
    pub event_held_total: AtomicU64,
    /// Held events released by their predecessor.
    pub event_released_total: AtomicU64,
    pub event_timeout_released_total: AtomicU64,
    pub event_reconcile_total: AtomicU64,
    pub event_processed_total: AtomicU64,
    pub workflow_started_total: AtomicU64,
    /// Rejected deliveries by error code (`SIGNATURE_INVALID`, ...).
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngressCounters {
    /// Count a refused delivery by its code.
    pub fn reject(&self, code: &'static str) {
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()).entry(code).or_default() += 1;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// Name and value of every plain counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("event_received_total", get(&self.event_received_total)),
            ("event_duplicate_total", get(&self.event_duplicate_total)),
            ("event_held_total", get(&self.event_held_total)),
            ("event_released_total", get(&self.event_released_total)),
            ("event_timeout_released_total", get(&self.event_timeout_released_total)),
            ("event_reconcile_total", get(&self.event_reconcile_total)),
            ("event_processed_total", get(&self.event_processed_total)),
            ("workflow_started_total", get(&self.workflow_started_total)),
        ]
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Whether a timed-out held event may go ahead without its predecessor.
#[async_trait::async_trait]
pub trait Precondition: Send + Sync {
    async fn holds(&self, ctx: &TenantContext, event: &StoredEvent) -> Result<bool>;
}

/// The default re-check: the predecessor has been stored by now (a
/// delivery that raced the hold), or the entity has versioned state in the
/// store (`<tenant>/<entity>`, written by a run or a repair).
#[derive(Debug, Clone)]
pub struct StorePrecondition(pub Store);

#[async_trait::async_trait]
impl Precondition for StorePrecondition {
    async fn holds(&self, ctx: &TenantContext, event: &StoredEvent) -> Result<bool> {
        let (Some(entity), Some(pred)) = (&event.entity_id, &event.waiting_for) else { return Ok(true) };
        if self.0.event_has_type(ctx, &event.source, entity, pred).await? {
            return Ok(true);
        }
        let Ok(id) = format!("{}/{}", ctx.tenant(), entity.replace(':', "/")).parse::<crate::tenant::EntityId>() else {
            return Ok(false);
        };
        Ok(self.0.state(ctx, &id).await?.is_some())
    }
}

/// What the sweep of held events did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sweep {
    pub released: u64,
    pub timeout_released: u64,
    pub reconcile: u64,
}

/// The ingress pipeline of one process.
pub struct Ingress {
    store: Store,
    keys: Arc<dyn WebhookKeys>,
    clock: Arc<dyn Clock>,
    counters: Arc<IngressCounters>,
    hold: chrono::Duration,
    tolerance_secs: i64,
}

impl Ingress {
    pub fn new(store: Store, keys: Arc<dyn WebhookKeys>, clock: Arc<dyn Clock>) -> Ingress {
        Ingress {
            store,
            keys,
            clock,
            counters: Arc::default(),
            hold: chrono::Duration::from_std(DEFAULT_HOLD).unwrap_or_else(|_| chrono::Duration::seconds(60)),
            tolerance_secs: signature::STRIPE_TOLERANCE_SECS,
        }
    }

    pub fn with_hold(mut self, hold: std::time::Duration) -> Ingress {
        self.hold = chrono::Duration::from_std(hold).unwrap_or(self.hold);
        self
    }

    pub fn counters(&self) -> &Arc<IngressCounters> {
        &self.counters
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Verify, normalize and store one delivery for `ctx`'s tenant. A
    /// refusal is counted by code; nothing is stored unless this returns
    /// `Ok(Stored)`.
    pub async fn receive(&self, ctx: &TenantContext, d: Delivery<'_>) -> Result<Received> {
        let out = self.receive_inner(ctx, d).await;
        if let Err(e) = &out {
            self.counters.reject(e.code().as_str());
        }
        out
    }

    async fn receive_inner(&self, ctx: &TenantContext, d: Delivery<'_>) -> Result<Received> {
        let keys = self.keys.keys(ctx, d.provider).await?;
        match d.provider {
            Provider::Stripe => {
                signature::verify_stripe(
                    d.headers.get("stripe-signature"),
                    d.body,
                    &keys,
                    self.clock.now(),
                    self.tolerance_secs,
                )?;
            }
            Provider::Shopify => signature::verify_shopify(d.headers.get("x-shopify-hmac-sha256"), d.body, &keys)?,
            Provider::Printful | Provider::Support => {
                signature::verify_token(d.url_token.or_else(|| d.headers.get("x-autobiz-webhook-token")), &keys)?
            }
        }
        let event = normalize(d.provider, d.headers, d.body)?;
        let new = NewEvent {
            source: d.provider.as_str(),
            event_type: &event.event_type,
            provider_event_id: &event.provider_event_id,
            entity_id: event.entity_id.as_deref(),
            occurred_at: event.occurred_at,
            payload: &event.payload,
            payload_sha256: &event.payload_sha256,
            waiting_for: event
                .entity_id
                .as_ref()
                .and_then(|_| ordering::predecessor(d.provider.as_str(), &event.event_type)),
            hold_until: self.store.now() + self.hold,
        };
        match self.store.event_insert(ctx, &new).await? {
            Admitted::Duplicate => {
                add(&self.counters.event_duplicate_total, 1);
                Ok(Received::Duplicate)
            }
            Admitted::Stored { event_id, status, released } => {
                add(&self.counters.event_received_total, 1);
                add(&self.counters.event_released_total, released);
                if status == EventStatus::Held {
                    add(&self.counters.event_held_total, 1);
                }
                Ok(Received::Stored { event_id, status, released })
            }
        }
    }

    /// Release `ctx`'s held events whose predecessor is stored by now, and
    /// decide those whose hold ran out: released with the timeout flag when
    /// `pre` holds, else routed to reconciliation (an open
    /// `event_precondition_failed` case).
    pub async fn sweep(&self, ctx: &TenantContext, pre: &dyn Precondition) -> Result<Sweep> {
        let mut sweep = Sweep { released: self.store.event_release_arrived(ctx).await?, ..Sweep::default() };
        for event in self.store.event_held_due(ctx, self.store.now(), 100).await? {
            if pre.holds(ctx, &event).await? {
                if self.store.event_timeout_release(ctx, event.id).await? {
                    sweep.timeout_released += 1;
                }
            } else if self.store.event_route_to_reconciliation(ctx, &event).await? {
                sweep.reconcile += 1;
            }
        }
        add(&self.counters.event_released_total, sweep.released);
        add(&self.counters.event_timeout_released_total, sweep.timeout_released);
        add(&self.counters.event_reconcile_total, sweep.reconcile);
        Ok(sweep)
    }
}

/// A delivery's normalized fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub event_type: String,
    pub provider_event_id: String,
    /// `KIND:ID` of the entity the event is about (`order:820982911946154508`).
    pub entity_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: Value,
    pub payload_sha256: String,
}

const MAX_ID_LEN: usize = 255;

fn malformed(what: impl Into<String>) -> Error {
    Error::new(ErrorCode::EventMalformed, what.into())
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn safe_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Parse and normalize a verified body. `EVENT_MALFORMED` when it is not a
/// JSON object of the provider's shape.
pub fn normalize(provider: Provider, headers: &Headers, body: &[u8]) -> Result<Normalized> {
    let payload: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("the body is not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(malformed("the body is not a JSON object"));
    }
    let payload_sha256 = crate::canonical::sha256_hex_of(body);
    let text = |v: &Value| v.as_str().filter(|s| safe_token(s)).map(str::to_owned);
    let (event_type, provider_event_id, entity_id, occurred_at) = match provider {
        Provider::Stripe => {
            let id = text(&payload["id"]).ok_or_else(|| malformed("a Stripe event needs a string `id`"))?;
            let ty = text(&payload["type"]).ok_or_else(|| malformed("a Stripe event needs a string `type`"))?;
            let object = &payload["data"]["object"];
            let entity = match (text(&object["object"]), id_text(&object["id"])) {
                (Some(kind), Some(oid)) => Some(format!("{kind}:{oid}")),
                _ => None,
            };
            let at = payload["created"].as_i64().and_then(|t| DateTime::from_timestamp(t, 0));
            (ty, id, entity, at)
        }
        Provider::Shopify => {
            let id = headers
                .get("x-shopify-webhook-id")
                .filter(|s| safe_token(s))
                .ok_or_else(|| malformed("a Shopify delivery needs X-Shopify-Webhook-Id"))?;
            let topic = headers
                .get("x-shopify-topic")
                .filter(|s| safe_token(s))
                .ok_or_else(|| malformed("a Shopify delivery needs X-Shopify-Topic"))?;
            let kind = topic.split('/').next().unwrap_or(topic).trim_end_matches('s');
            let entity = id_text(&payload["id"]).map(|oid| format!("{kind}:{oid}"));
            let at = headers
                .get("x-shopify-triggered-at")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            (topic.to_owned(), id.to_owned(), entity, at)
        }
        Provider::Printful => {
            let ty = text(&payload["type"]).ok_or_else(|| malformed("a Printful event needs a string `type`"))?;
            let entity = id_text(&payload["data"]["order"]["id"]).map(|oid| format!("order:{oid}"));
            // Printful sends no event id: the body's digest identifies a
            // redelivery (the same bytes).
            let id = text(&payload["event_id"]).unwrap_or_else(|| format!("sha256:{payload_sha256}"));
            let at = payload["created"].as_i64().and_then(|t| DateTime::from_timestamp(t, 0));
            (ty, id, entity, at)
        }
        Provider::Support => {
            let id = text(&payload["id"]).ok_or_else(|| malformed("a support event needs a string `id`"))?;
            let ty = text(&payload["type"]).ok_or_else(|| malformed("a support event needs a string `type`"))?;
            let entity = id_text(&payload["order_id"]).map(|oid| format!("order:{oid}"));
            let at = payload["created"].as_i64().and_then(|t| DateTime::from_timestamp(t, 0));
            (ty, id, entity, at)
        }
    };
    Ok(Normalized { event_type, provider_event_id, entity_id, occurred_at, payload, payload_sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        Headers::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn p1_t36_normalizes_each_provider() {
        let s = normalize(
            Provider::Stripe,
            &h(&[]),
            br#"{"id":"evt_1","type":"payment_intent.succeeded","created":1700000000,"data":{"object":{"id":"pi_9","object":"payment_intent"}}}"#,
        )
        .unwrap();
        assert_eq!(
            (s.event_type.as_str(), s.provider_event_id.as_str(), s.entity_id.as_deref()),
            ("payment_intent.succeeded", "evt_1", Some("payment_intent:pi_9"))
        );
        assert_eq!(s.occurred_at.unwrap().timestamp(), 1_700_000_000);
        assert_eq!(s.payload_sha256.len(), 64);
        let sh = normalize(
            Provider::Shopify,
            &h(&[("X-Shopify-Webhook-Id", "wh-1"), ("X-Shopify-Topic", "orders/paid")]),
            br#"{"id":820982911946154508}"#,
        )
        .unwrap();
        assert_eq!(sh.entity_id.as_deref(), Some("order:820982911946154508"));
        assert_eq!(sh.provider_event_id, "wh-1");
        let p = normalize(Provider::Printful, &h(&[]), br#"{"type":"package_shipped","data":{"order":{"id":13}}}"#)
            .unwrap();
        assert!(p.provider_event_id.starts_with("sha256:"));
        assert_eq!(p.entity_id.as_deref(), Some("order:13"));
        let sup = normalize(
            Provider::Support,
            &h(&[]),
            br#"{"id":"msg_1","type":"message","created":1700000000,"order_id":"1001","body":"where is it?"}"#,
        )
        .unwrap();
        assert_eq!(
            (sup.event_type.as_str(), sup.provider_event_id.as_str(), sup.entity_id.as_deref()),
            ("message", "msg_1", Some("order:1001"))
        );
        assert!(normalize(Provider::Support, &h(&[]), br#"{"type":"message"}"#).is_err(), "no id");
    }

    #[test]
    fn p1_t36_malformed_bodies_are_refused() {
        let sh = h(&[("X-Shopify-Webhook-Id", "wh-1"), ("X-Shopify-Topic", "orders/paid")]);
        for (provider, headers, body) in [
            (Provider::Stripe, h(&[]), &b"{not json"[..]),
            (Provider::Stripe, h(&[]), b"[1,2]"),
            (Provider::Stripe, h(&[]), br#"{"type":"x"}"#),
            (Provider::Stripe, h(&[]), br#"{"id":"","type":"x"}"#),
            (Provider::Stripe, h(&[]), br#"{"id":"a b","type":"x"}"#),
            (Provider::Shopify, h(&[]), b"{}"),
            (Provider::Shopify, sh.clone(), b"\xff\xfe"),
            (Provider::Printful, h(&[]), br#"{"type":5}"#),
        ] {
            assert_eq!(normalize(provider, &headers, body).unwrap_err().code(), ErrorCode::EventMalformed);
        }
    }
}
