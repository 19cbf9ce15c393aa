//! Provider clients: Stripe, Shopify, Printful and SendGrid over HTTP, each
//! operation a [`Tool`] the executor runs.
//!
//! This module is the plumbing they share, so that every outbound request
//! takes the same path ([`Providers::send`]):
//!
//! 1. the [`SandboxGuard`] checks the destination host (allowlist) before
//!    the credential is read, and the credential (no live keys outside
//!    production) before anything is sent: a refusal is an error with its
//!    own code, never a silent skip;
//! 2. the request is audited (method, host, path; no query, no body, no
//!    credential) through the [`AuditSink`], in one write with the
//!    credential's read; a request that cannot be audited is not sent;
//! 3. the answer is interpreted by the provider's client into JSON or a
//!    typed failure (declined, rate limited, not found, unavailable, bad
//!    response...), with the provider's request id in the message;
//! 4. a failure is retried, with exponential backoff and seeded jitter,
//!    honouring `Retry-After`, only when the operation's [`RetryRule`] says
//!    it is safe.
//!
//! The circuit breaker wraps each tool call in the executor; the clients do
//! not know of it.

mod printful;
mod sendgrid;
mod shopify;
mod stripe;
pub use stripe::CAPTURE_WINDOW_DAYS;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::error::{Error, ErrorCode, Result};
use crate::executor::{CallContext, Executor, Tool, ToolOutput};
use crate::secrets::{AuditSink, SecretsProvider};
use crate::store::AuditEvent;
use crate::tenant::TenantContext;

pub use sendgrid::SendgridSettings;

/// Secret names (per tenant, in the [`SecretsProvider`]) of each provider's
/// credential.
pub const STRIPE_SECRET: &str = "STRIPE_SECRET_KEY";
pub const SHOPIFY_SECRET: &str = "SHOPIFY_ACCESS_TOKEN";
pub const PRINTFUL_SECRET: &str = "PRINTFUL_API_TOKEN";
pub const SENDGRID_SECRET: &str = "SENDGRID_API_KEY";

/// Every provider tool this module implements (all at version `1`).
pub const TOOLS: [&str; 14] = [
    "shopify.order.get",
    "shopify.order.update",
    "shopify.order.cancel",
    "stripe.payment_intent.authorize",
    "stripe.payment_intent.capture",
    "stripe.payment_intent.cancel",
    "stripe.refund.create",
    "stripe.tax.calculate",
    "stripe.payment_intent.list",
    "printful.order.create",
    "printful.order.confirm",
    "printful.order.cancel",
    "printful.order.get",
    "sendgrid.mail.send",
];

/// Base URLs of the four providers (the fakes' in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEndpoints {
    pub stripe: Url,
    /// The shop's own base URL (`https://SHOP.myshopify.com`).
    pub shopify: Url,
    pub printful: Url,
    pub sendgrid: Url,
}

impl ProviderEndpoints {
    /// The providers' public API hosts, for the shop at `shop_url`.
    pub fn public(shop_url: Url) -> Result<ProviderEndpoints> {
        let parse =
            |s: &str| Url::parse(s).map_err(|e| Error::new(ErrorCode::InvalidInput, format!("bad URL {s}: {e}")));
        Ok(ProviderEndpoints {
            stripe: parse("https://api.stripe.com")?,
            shopify: shop_url,
            printful: parse("https://api.printful.com")?,
            sendgrid: parse("https://api.sendgrid.com")?,
        })
    }

    /// Parse four base URLs (e.g. the ones `autobiz fakes serve` prints).
    pub fn parse(stripe: &str, shopify: &str, printful: &str, sendgrid: &str) -> Result<ProviderEndpoints> {
        let parse =
            |s: &str| Url::parse(s).map_err(|e| Error::new(ErrorCode::InvalidInput, format!("bad URL {s}: {e}")));
        Ok(ProviderEndpoints {
            stripe: parse(stripe)?,
            shopify: parse(shopify)?,
            printful: parse(printful)?,
            sendgrid: parse(sendgrid)?,
        })
    }
}

/// Which world the clients may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Tests, CI, staging, people exploring: no live keys, allowlisted hosts
    /// only, SendGrid in sandbox mode to allowlisted recipient domains.
    Sandbox,
    /// The explicit production profile: real keys, real hosts, real mail.
    Production,
}

/// Credential prefixes that mean real money or real customers. Shopify
/// access tokens carry no live/test marker; a Shopify token counts as a
/// production token when it would be sent to a shop host that is not
/// allowlisted (see [`SandboxGuard::check_destination`]).
pub const LIVE_KEY_PREFIXES: [&str; 3] = ["sk_live_", "rk_live_", "pk_live_"];

/// Checked before every outbound request (P1-TASK-19, P1-H01..H06): outside
/// [`Profile::Production`], live keys are refused before any request, only
/// allowlisted hosts can be reached, and mail goes only to allowlisted
/// recipient domains, in SendGrid's sandbox mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxGuard {
    profile: Profile,
    /// Host names (lower case) reachable outside production, besides
    /// loopback addresses and `localhost`, which always are.
    allowed_hosts: BTreeSet<String>,
    /// Recipient e-mail domains (lower case) allowed outside production.
    recipient_domains: BTreeSet<String>,
}

impl SandboxGuard {
    /// Loopback only; mail only to the reserved example domains
    /// (`example.com`, `example.org`, `example.net`, RFC 2606).
    pub fn sandbox() -> SandboxGuard {
        SandboxGuard {
            profile: Profile::Sandbox,
            allowed_hosts: BTreeSet::new(),
            recipient_domains: ["example.com", "example.org", "example.net"].map(str::to_owned).into(),
        }
    }

    /// The explicit production profile: no key, host or recipient limits.
    pub fn production() -> SandboxGuard {
        SandboxGuard {
            profile: Profile::Production,
            allowed_hosts: BTreeSet::new(),
            recipient_domains: BTreeSet::new(),
        }
    }

    /// Allow a host outside production (a provider's sandbox host, e.g.
    /// `api.stripe.com` with test keys, or a Shopify development store).
    pub fn allow_host(mut self, host: &str) -> SandboxGuard {
        self.allowed_hosts.insert(host.to_ascii_lowercase());
        self
    }

    /// Allow mail to `domain` outside production.
    pub fn allow_recipient_domain(mut self, domain: &str) -> SandboxGuard {
        self.recipient_domains.insert(domain.to_ascii_lowercase());
        self
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Whether SendGrid must run in sandbox mode (everywhere but production).
    pub fn sendgrid_sandbox_mode(&self) -> bool {
        self.profile != Profile::Production
    }

    /// Refuse a live credential outside production
    /// (`SANDBOX_LIVE_KEY_REFUSED`). The message names the provider and the
    /// prefix, never the key.
    pub fn check_key(&self, provider: &str, key: &SecretString) -> Result<()> {
        if self.profile == Profile::Production {
            return Ok(());
        }
        let key = key.expose_secret().trim();
        if let Some(prefix) = LIVE_KEY_PREFIXES.iter().find(|p| key.starts_with(*p)) {
            return Err(Error::new(
                ErrorCode::SandboxLiveKeyRefused,
                format!(
                    "{provider}: a live key ({prefix}...) is refused outside the production profile; use a test key"
                ),
            ));
        }
        Ok(())
    }

    /// Refuse a destination outside the allowlist (`SANDBOX_HOST_REFUSED`),
    /// or a Shopify shop that is not allowlisted (its token is then a
    /// production token: `SANDBOX_LIVE_KEY_REFUSED`).
    pub fn check_destination(&self, provider: &str, url: &Url) -> Result<()> {
        if self.profile == Profile::Production {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_ascii_lowercase();
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback || self.allowed_hosts.contains(&host) {
            return Ok(());
        }
        if provider == "shopify" && host.ends_with(".myshopify.com") {
            return Err(Error::new(
                ErrorCode::SandboxLiveKeyRefused,
                format!(
                    "shopify: {host} is not an allowlisted development store, so its access token counts as a production token outside the production profile"
                ),
            ));
        }
        Err(Error::new(
            ErrorCode::SandboxHostRefused,
            format!(
                "{provider}: host {host} is not on the sandbox allowlist (loopback fakes and allowlisted sandbox hosts only)"
            ),
        ))
    }

    /// Refuse a recipient outside the allowlisted domains
    /// (`SANDBOX_RECIPIENT_REFUSED`). The message names the domain only.
    pub fn check_recipient(&self, email: &str) -> Result<()> {
        if self.profile == Profile::Production {
            return Ok(());
        }
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        if !domain.is_empty() && self.recipient_domains.contains(&domain) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::SandboxRecipientRefused,
            format!("sendgrid: recipient domain {domain:?} is not allowlisted outside the production profile"),
        ))
    }
}

/// Retries: how many attempts, how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: u32,
    /// The first backoff; each further one doubles.
    pub base_delay: Duration,
    /// No wait is longer. A `Retry-After` asking for more ends the retries
    /// at once (the provider will not take the request in time).
    pub max_delay: Duration,
    /// Seed of the jitter, so that a replayed transcript waits the same.
    pub jitter_seed: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            jitter_seed: 0,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based)
    /// failed: "equal jitter" backoff, `d/2 + rand(0..d/2)` with
    /// `d = min(max_delay, base_delay * 2^(attempt-1))`, and at least the
    /// provider's `Retry-After`. `None` when `Retry-After` exceeds
    /// `max_delay`. `random` is a uniform `u64` from the seeded generator.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, random: u64) -> Option<Duration> {
        if retry_after.is_some_and(|r| r > self.max_delay) {
            return None;
        }
        let exp = self.base_delay.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
        let d = exp.min(self.max_delay);
        let half = d / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 { Duration::ZERO } else { Duration::from_nanos(random % (jitter_nanos + 1)) };
        Some((half + jitter).max(retry_after.unwrap_or_default()))
    }
}

/// SplitMix64: a tiny, seedable generator for jitter. Not for secrets.
#[derive(Debug)]
pub(crate) struct Jitter(pub(crate) u64);

impl Jitter {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Settings of the HTTP plumbing.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Per attempt. The tool's contract timeout bounds the whole call.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { request_timeout: Duration::from_secs(10), retry: RetryPolicy::default() }
    }
}

/// When an operation may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryRule {
    /// Idempotent (GET, DELETE-as-cancel, PUT of a full value, Stripe POST
    /// with an Idempotency-Key): retry rate limits, server errors, timeouts
    /// and bad bodies.
    Always,
    /// Not idempotent: retry only when the provider certainly did not
    /// process the request (429, connection refused); an ambiguous failure
    /// (timeout, 5xx, garbage) is returned.
    OnlyRejected,
    /// Never sent twice (SendGrid mail: a duplicate reaches a person).
    Never,
}

/// How a failed attempt may be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// The provider refused before processing (429, connection refused).
    Rejected,
    /// Ambiguous or transient: 5xx, timeout, a body that cannot be read,
    /// Stripe's 409 for a key in progress.
    Transient,
    /// Final: the answer is the answer (declined, not found, invalid...).
    Final,
}

/// A failed attempt: the error to return and whether a retry may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: Error,
    pub kind: FailKind,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(code: ErrorCode, kind: FailKind, message: String) -> Failure {
        Failure { error: Error::new(code, message), kind, retry_after: None }
    }

    pub fn bad_response(what: &str, raw: &Raw) -> Failure {
        Failure::new(
            ErrorCode::ProviderBadResponse,
            FailKind::Transient,
            format!("{what}: unreadable answer (HTTP {}, {}){}", raw.status, raw.content_type, raw.id_suffix()),
        )
    }
}

/// An answer as received.
#[derive(Debug)]
pub(crate) struct Raw {
    pub status: u16,
    pub content_type: String,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Raw {
    /// ` [request req_...]` for messages, or nothing.
    pub fn id_suffix(&self) -> String {
        self.request_id.as_deref().map(|id| format!(" [request {id}]")).unwrap_or_default()
    }

    /// The body as JSON, only when it is JSON.
    pub fn json(&self) -> Option<Value> {
        if !self.content_type.contains("json") && !self.body.starts_with(b"{") {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The failure for the statuses every provider shares (429, 5xx, auth).
    pub fn common_failure(&self, what: &str, detail: &str) -> Option<Failure> {
        let id = self.id_suffix();
        let f = match self.status {
            429 => Failure {
                error: Error::new(ErrorCode::ProviderRateLimited, format!("{what}: rate limited{id}")),
                kind: FailKind::Rejected,
                retry_after: self.retry_after,
            },
            500..=599 => Failure::new(
                ErrorCode::ProviderUnavailable,
                FailKind::Transient,
                format!("{what}: provider error HTTP {}{id}", self.status),
            ),
            401 | 403 => Failure::new(
                ErrorCode::ProviderAuthFailed,
                FailKind::Final,
                format!("{what}: credential refused (HTTP {}){id}", self.status),
            ),
            404 => Failure::new(ErrorCode::ProviderNotFound, FailKind::Final, format!("{what}: not found{detail}{id}")),
            _ => return None,
        };
        Some(f)
    }
}

/// The body of a request.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    None,
    /// `application/x-www-form-urlencoded` (Stripe).
    Form(String),
    Json(Value),
}

/// How a provider takes its credential.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>` (Stripe, Printful, SendGrid).
    Bearer,
    /// The key as this header's value (Shopify's `X-Shopify-Access-Token`).
    Header(&'static str),
}

/// One request to send, with its rule and interpreter.
pub(crate) struct Request<'a> {
    pub provider: &'static str,
    /// `stripe.refund.create`: named in messages and the audit.
    pub what: &'a str,
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    pub retry: RetryRule,
}

/// The shared HTTP plumbing: client, guard, audit, retries.
pub struct Http {
    client: reqwest::Client,
    guard: SandboxGuard,
    audit: Arc<dyn AuditSink>,
    settings: HttpSettings,
    jitter: Mutex<Jitter>,
}

impl Http {
    pub fn new(guard: SandboxGuard, audit: Arc<dyn AuditSink>, settings: HttpSettings) -> Result<Http> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            // A redirect could lead off the allowlist; providers' APIs do not
            // redirect.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("autobiz/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::new(ErrorCode::ProviderUnavailable, format!("cannot build the HTTP client: {e}")))?;
        let jitter = Mutex::new(Jitter(settings.retry.jitter_seed));
        Ok(Http { client, guard, audit, settings, jitter })
    }

    pub fn guard(&self) -> &SandboxGuard {
        &self.guard
    }

    /// Refuse (and audit as refused) a request to a destination the guard
    /// does not allow.
    async fn check_destination(&self, ctx: &TenantContext, req: &Request<'_>) -> Result<()> {
        if let Err(e) = self.guard.check_destination(req.provider, &req.url) {
            self.audit_request(ctx, req, "refused").await?;
            return Err(e);
        }
        Ok(())
    }

    /// Send `req`, whose destination [`Http::check_destination`] allowed
    /// (retrying as its rule allows), and interpret each answer with
    /// `interpret`. Returns the value and the number of attempts. Every
    /// attempt is audited as sent before it is made; `first_audited` when
    /// the first one's entry is already on record (written with the
    /// credential's read, see [`Providers::send`]).
    async fn send(
        &self,
        ctx: &TenantContext,
        req: Request<'_>,
        interpret: impl Fn(&Raw) -> std::result::Result<Value, Failure>,
        first_audited: bool,
    ) -> Result<(Value, u64)> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if attempt > 1 || !first_audited {
                self.audit_request(ctx, &req, "sent").await?;
            }
            let failure = match self.attempt(&req).await {
                Ok(raw) => match interpret(&raw) {
                    Ok(v) => return Ok((v, u64::from(attempt))),
                    Err(f) => f,
                },
                Err(f) => f,
            };
            let may_retry = match (req.retry, failure.kind) {
                (_, FailKind::Final) | (RetryRule::Never, _) => false,
                (RetryRule::Always, _) | (RetryRule::OnlyRejected, FailKind::Rejected) => true,
                (RetryRule::OnlyRejected, FailKind::Transient) => false,
            };
            if !may_retry || attempt >= self.settings.retry.max_attempts {
                return Err(with_attempts(failure.error, attempt));
            }
            let random = self.jitter.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some(wait) = self.settings.retry.backoff(attempt, failure.retry_after, random) else {
                return Err(with_attempts(failure.error, attempt));
            };
            tracing::debug!(target: "autobiz::providers", what = req.what, attempt, wait_ms = wait.as_millis() as u64, code = %failure.error.code(), "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, req: &Request<'_>) -> std::result::Result<Raw, Failure> {
        let mut builder = self.client.request(req.method.clone(), req.url.clone());
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        builder = match &req.body {
            Body::None => builder,
            Body::Form(f) => builder.header("Content-Type", "application/x-www-form-urlencoded").body(f.clone()),
            Body::Json(v) => builder.json(v),
        };
        let response = builder.send().await.map_err(|e| transport_failure(req.what, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_id = text("request-id").or_else(|| text("x-request-id")).or_else(|| text("x-message-id"));
        let retry_after = text("retry-after").and_then(|s| s.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let content_type = text("content-type").unwrap_or_default();
        let body = response.bytes().await.map_err(|e| transport_failure(req.what, &e))?.to_vec();
        Ok(Raw { status, content_type, request_id, retry_after, headers, body })
    }

    /// Audit one outbound request: method, host and path only (a query may
    /// carry identifiers, a body customer data, a header the credential).
    async fn audit_request(&self, ctx: &TenantContext, req: &Request<'_>, outcome: &str) -> Result<()> {
        self.audit.audit(ctx, &request_event(req, outcome)).await
    }
}

/// The audit entry of one outbound request.
fn request_event(req: &Request<'_>, outcome: &str) -> AuditEvent {
    let host = req.url.host_str().unwrap_or_default();
    let port = req.url.port().map(|p| format!(":{p}")).unwrap_or_default();
    AuditEvent {
        action: format!("provider.{}.request", req.provider),
        resource: format!("{} {host}{port}{}", req.method, req.url.path()),
        outcome: outcome.to_owned(),
    }
}

fn with_attempts(e: Error, attempts: u32) -> Error {
    if attempts <= 1 {
        return e;
    }
    Error::new(e.code(), format!("{} (after {attempts} attempts)", e.message()))
}

/// A transport failure: refused connection (nothing was processed) or an
/// ambiguous one (timeout, reset after sending).
fn transport_failure(what: &str, e: &reqwest::Error) -> Failure {
    let kind = if e.is_connect() { FailKind::Rejected } else { FailKind::Transient };
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // reqwest's Display may include the URL; ours has no secrets in URLs,
    // but keep the message to the kind.
    Failure::new(ErrorCode::ProviderUnavailable, kind, format!("{what}: {why}"))
}

/// Everything the provider tools share: endpoints, credentials, the HTTP
/// plumbing, SendGrid's sender and templates.
pub struct Providers {
    pub(crate) endpoints: ProviderEndpoints,
    pub(crate) secrets: Arc<dyn SecretsProvider>,
    pub(crate) http: Http,
    pub(crate) sendgrid: SendgridSettings,
}

impl Providers {
    pub fn new(
        endpoints: ProviderEndpoints,
        secrets: Arc<dyn SecretsProvider>,
        guard: SandboxGuard,
        audit: Arc<dyn AuditSink>,
        settings: HttpSettings,
        sendgrid: SendgridSettings,
    ) -> Result<Providers> {
        Ok(Providers { endpoints, secrets, http: Http::new(guard, audit, settings)?, sendgrid })
    }

    /// Read the tenant's credential `secret` (refused when live outside
    /// production), put it in the request as `auth` says, and send.
    ///
    /// The destination is checked before the credential is read (a refused
    /// request reads no secret). The read and the first attempt's "sent"
    /// entry are audited in one write, both before the request leaves
    /// (one commit instead of two per provider call).
    pub(crate) async fn send(
        &self,
        call: &CallContext,
        secret: &str,
        auth: Auth,
        mut req: Request<'_>,
        interpret: impl Fn(&Raw) -> std::result::Result<Value, Failure>,
    ) -> Result<(Value, u64)> {
        self.http.check_destination(&call.ctx, &req).await?;
        let provider = req.provider;
        let check = |key: &SecretString| self.http.guard.check_key(provider, key);
        let sent = [request_event(&req, "sent")];
        let key = self.secrets.get_then(&call.ctx, secret, &check, &sent, self.http.audit.as_ref()).await?;
        let header = match auth {
            Auth::Bearer => ("Authorization", format!("Bearer {}", key.expose_secret())),
            Auth::Header(name) => (name, key.expose_secret().to_owned()),
        };
        req.headers.insert(0, header);
        self.http.send(&call.ctx, req, interpret, true).await
    }

    /// Run one provider tool directly (the executor does this through
    /// [`bind_all`]; tests and the CLI may call it without an executor).
    pub async fn call(&self, tool: &str, call: &CallContext, input: &Value) -> Result<ToolOutput> {
        let (value, attempts) = match tool {
            "stripe.payment_intent.authorize" => stripe::authorize(self, call, input).await?,
            "stripe.payment_intent.capture" => stripe::capture(self, call, input).await?,
            "stripe.payment_intent.cancel" => stripe::cancel(self, call, input).await?,
            "stripe.refund.create" => stripe::refund(self, call, input).await?,
            "stripe.tax.calculate" => stripe::tax(self, call, input).await?,
            "stripe.payment_intent.list" => stripe::list(self, call, input).await?,
            "shopify.order.get" => shopify::get(self, call, input).await?,
            "shopify.order.update" => shopify::update(self, call, input).await?,
            "shopify.order.cancel" => shopify::cancel(self, call, input).await?,
            "printful.order.create" => printful::create(self, call, input).await?,
            "printful.order.confirm" => printful::confirm(self, call, input).await?,
            "printful.order.cancel" => printful::cancel(self, call, input).await?,
            "printful.order.get" => printful::get(self, call, input).await?,
            "sendgrid.mail.send" => sendgrid::send(self, call, input).await?,
            other => return Err(Error::new(ErrorCode::ToolUnknown, format!("no provider client implements {other}"))),
        };
        Ok(ToolOutput { value, tokens: 0, provider_calls: attempts })
    }
}

/// One provider operation as an executor [`Tool`].
struct ProviderTool {
    name: &'static str,
    providers: Arc<Providers>,
}

#[async_trait::async_trait]
impl Tool for ProviderTool {
    async fn call(&self, call: CallContext, input: Value) -> Result<ToolOutput> {
        self.providers.call(self.name, &call, &input).await
    }
}

/// Bind every provider tool the executor's registry declares (at version
/// `1`); tools the config does not declare are skipped. Returns the names
/// bound.
pub fn bind_all(executor: &mut Executor, providers: Arc<Providers>) -> Result<Vec<&'static str>> {
    let mut bound = Vec::new();
    for name in TOOLS {
        if executor.registry().lookup(name, "1").is_err() {
            continue;
        }
        executor.bind(name, "1", Arc::new(ProviderTool { name, providers: providers.clone() }))?;
        bound.push(name);
    }
    Ok(bound)
}

/// A required string field of a tool input (the executor validated the
/// schema; this is defence for direct callers).
pub(crate) fn field<'a>(input: &'a Value, name: &str, what: &str) -> Result<&'a str> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new(ErrorCode::InvalidInput, format!("{what}: `{name}` (string) is required")))
}

/// A required integer field.
pub(crate) fn int_field(input: &Value, name: &str, what: &str) -> Result<i64> {
    input
        .get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::new(ErrorCode::InvalidInput, format!("{what}: `{name}` (integer) is required")))
}

/// Join a base URL and a path (the base may carry a path prefix).
pub(crate) fn endpoint(base: &Url, path: &str) -> Result<Url> {
    let joined = format!("{}{}", base.as_str().trim_end_matches('/'), path);
    Url::parse(&joined).map_err(|e| Error::new(ErrorCode::InvalidInput, format!("bad provider URL: {e}")))
}

/// Put `request_id` into an object answer (what the trace keeps).
pub(crate) fn with_request_id(mut v: Value, raw: &Raw) -> Value {
    if let (Some(o), Some(id)) = (v.as_object_mut(), raw.request_id.as_ref()) {
        o.insert("request_id".to_owned(), Value::String(id.clone()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter_seed: 7,
        };
        // Without jitter (random = 0) the wait is half the exponential step.
        assert_eq!(p.backoff(1, None, 0), Some(Duration::from_millis(50)));
        assert_eq!(p.backoff(2, None, 0), Some(Duration::from_millis(100)));
        assert_eq!(p.backoff(10, None, 0), Some(Duration::from_millis(500)));
        // Jitter adds at most half the step.
        let max = p.backoff(1, None, u64::MAX).unwrap();
        assert!(max >= Duration::from_millis(50) && max <= Duration::from_millis(100), "{max:?}");
        // Retry-After is a floor; beyond max_delay the retries end.
        assert_eq!(p.backoff(1, Some(Duration::from_millis(700)), 0), Some(Duration::from_millis(700)));
        assert_eq!(p.backoff(1, Some(Duration::from_secs(2)), 0), None);
    }

    #[test]
    fn jitter_replays_from_its_seed() {
        let (mut a, mut b, mut c) = (Jitter(42), Jitter(42), Jitter(43));
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next());
    }

    #[test]
    fn guard_refuses_live_keys_foreign_hosts_and_recipients_outside_production() {
        let g = SandboxGuard::sandbox().allow_host("api.stripe.com");
        let live = SecretString::from("sk_live_abc".to_owned());
        let test = SecretString::from("sk_test_abc".to_owned());
        let e = g.check_key("stripe", &live).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SandboxLiveKeyRefused);
        assert!(!e.message().contains("abc"), "the key must not be echoed");
        assert!(g.check_key("stripe", &test).is_ok());
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(g.check_destination("stripe", &url("http://127.0.0.1:9/v1")).is_ok());
        assert!(g.check_destination("stripe", &url("http://[::1]:9/v1")).is_ok());
        assert!(g.check_destination("stripe", &url("https://api.stripe.com/v1")).is_ok());
        assert_eq!(
            g.check_destination("printful", &url("https://api.printful.com/orders")).unwrap_err().code(),
            ErrorCode::SandboxHostRefused
        );
        assert_eq!(
            g.check_destination("shopify", &url("https://real-shop.myshopify.com/admin")).unwrap_err().code(),
            ErrorCode::SandboxLiveKeyRefused
        );
        assert_eq!(g.check_recipient("someone@gmail.com").unwrap_err().code(), ErrorCode::SandboxRecipientRefused);
        assert!(g.check_recipient("Ops@Example.com").is_ok());
        assert!(g.sendgrid_sandbox_mode());
        let p = SandboxGuard::production();
        assert!(p.check_key("stripe", &live).is_ok());
        assert!(p.check_recipient("someone@gmail.com").is_ok());
        assert!(!p.sendgrid_sandbox_mode());
    }
}
