//! The LLM client: OpenAI-compatible chat completions, pinned, guarded,
//! audited, priced, with a fallback endpoint and cassettes.
//!
//! Why a client of its own rather than a provider tool: a model call is not
//! a tool the agent chooses; it is how an agent step decides. Its cost and
//! tokens still count against the run (the executor traces each call as a
//! `model_call` record, [`crate::executor::Executor::record_model_call`]),
//! and every request takes the providers' path: the [`SandboxGuard`]
//! allowlist first (loopback fakes only, outside production), an audit
//! entry per attempt (method, host, path), then the request.
//!
//! One call ([`LlmClient::complete`]):
//!
//! 1. both endpoints pass the guard before anything is sent
//!    (`SANDBOX_HOST_REFUSED` otherwise), and their keys are not live keys;
//! 2. in rounds of at most [`RetryPolicy::max_attempts`]: the primary, and
//!    on a timeout, a connection failure, a 5xx, a 408 or a 429 the fallback
//!    at once (a slow primary is not waited on twice); when both failed, the
//!    round's backoff (exponential, seeded jitter) and the next round;
//! 3. any other 4xx is final (`LLM_REJECTED`): the same request would be
//!    refused again, by either endpoint; a 2xx that is not a chat.completion
//!    with choices, content and usage is final too (`LLM_BAD_RESPONSE`): a
//!    pinned model answers the same prompt the same way;
//! 4. both endpoints down after every round: `LLM_UNAVAILABLE`, naming both
//!    hosts and how each failed;
//! 5. the answer's tokens (`usage.prompt_tokens + completion_tokens`) and
//!    cost ([`PriceTable`], integer micro-USD per 1k tokens) come back with
//!    the [`ModelPin`] in a [`Completion`].
//!
//! API keys live in [`SecretString`]s: they are sent as `Authorization:
//! Bearer`, never put in a message, a trace detail or a cassette.

pub mod agent;
pub mod cassette;
pub mod pin;
pub mod price;
pub mod wire;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

use crate::error::{Error, ErrorCode, Result};
use crate::providers::{Jitter, RetryPolicy, SandboxGuard};
use crate::secrets::AuditSink;
use crate::store::AuditEvent;
use crate::tenant::TenantContext;

pub use agent::{AgentOutcome, AgentStep, AllowedTool, ExecutedCall};
pub use cassette::{CASSETTE_MODE_ENV, Cassette, CassetteMode};
pub use pin::{ModelPin, PromptTemplate};
pub use price::{ModelPrice, PriceTable};
pub use wire::{Message, TokenUsage};

/// The endpoint and key a cassette is recorded against
/// (`AUTOBIZ_CASSETTE_MODE=record`); no CLI command runs a model yet.
pub const LLM_URL_ENV: &str = "AUTOBIZ_LLM_URL";
pub const LLM_API_KEY_ENV: &str = "AUTOBIZ_LLM_API_KEY";

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The API base, `/v1` included (`https://api.openai.com/v1`, a fake's
    /// `http://127.0.0.1:PORT/v1`); requests go to `BASE/chat/completions`.
    pub base_url: Url,
    pub api_key: Option<SecretString>,
}

impl Endpoint {
    pub fn new(base_url: &str, api_key: Option<SecretString>) -> Result<Endpoint> {
        let base_url = Url::parse(base_url)
            .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("bad LLM endpoint URL: {e}")))?;
        Ok(Endpoint { base_url, api_key })
    }

    fn completions_url(&self) -> Result<Url> {
        crate::providers::endpoint(&self.base_url, "/chat/completions")
    }

    fn host(&self) -> String {
        let host = self.base_url.host_str().unwrap_or_default();
        match self.base_url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }
}

/// Timeouts, retries and sampling.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Per attempt: past it the attempt counts as a timeout and the
    /// fallback is tried.
    pub request_timeout: Duration,
    /// Rounds (primary then fallback) and the backoff between them.
    pub retry: RetryPolicy,
    pub temperature: f32,
    pub max_tokens: Option<u32>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            temperature: 0.0,
            max_tokens: None,
        }
    }
}

/// Everything a client is built from.
pub struct LlmConfig {
    /// The model, pinned for every call of this client.
    pub model: String,
    /// The prompt template, pinned by its content hash.
    pub template: PromptTemplate,
    pub primary: Endpoint,
    pub fallback: Option<Endpoint>,
    pub prices: PriceTable,
    pub settings: LlmSettings,
    /// Replay from (or record to) this cassette instead of plain HTTP.
    pub cassette: Option<Cassette>,
}

/// `llm_request_total` (attempts sent) and `llm_fallback_triggered_total`.
#[derive(Debug, Default)]
pub struct LlmCounters {
    pub llm_request_total: AtomicU64,
    pub llm_fallback_triggered_total: AtomicU64,
}

impl LlmCounters {
    pub fn requests(&self) -> u64 {
        self.llm_request_total.load(Ordering::Relaxed)
    }

    pub fn fallbacks(&self) -> u64 {
        self.llm_fallback_triggered_total.load(Ordering::Relaxed)
    }
}

/// One answered call.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    pub pin: ModelPin,
    /// The model the endpoint reported (may carry a dated suffix), else the
    /// pinned one.
    pub model: String,
    /// `primary` or `fallback`.
    pub endpoint: &'static str,
    /// Requests sent for this call, the answered one included.
    pub attempts: u32,
    pub usage: TokenUsage,
    pub cost_micro_usd: u64,
    /// False when neither the reported nor the pinned model has a price.
    pub priced: bool,
    pub response_id: Option<String>,
    pub finish_reason: Option<String>,
}

impl Completion {
    /// What the trace keeps of the call (no prompt, no content, no key).
    pub fn trace_detail(&self) -> Value {
        json!({ "llm": {
            "pin": self.pin,
            "model": self.model,
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "usage": self.usage,
            "priced": self.priced,
            "response_id": self.response_id,
            "finish_reason": self.finish_reason,
        }})
    }
}

/// How one attempt failed.
enum Attempt {
    /// Try the other endpoint, then the next round (timeout, connection,
    /// 5xx, 408, 429).
    Transient(String),
    /// Return this error at once.
    Final(Error),
}

/// The client. Build one per run (its pin is the run's pin).
pub struct LlmClient {
    http: reqwest_middleware::ClientWithMiddleware,
    pin: ModelPin,
    template: PromptTemplate,
    primary: Endpoint,
    fallback: Option<Endpoint>,
    prices: PriceTable,
    settings: LlmSettings,
    cassette: Option<Cassette>,
    guard: SandboxGuard,
    audit: Arc<dyn AuditSink>,
    jitter: Mutex<Jitter>,
    counters: LlmCounters,
}

impl LlmClient {
    pub fn new(config: LlmConfig, guard: SandboxGuard, audit: Arc<dyn AuditSink>) -> Result<LlmClient> {
        let client = reqwest::Client::builder()
            .timeout(config.settings.request_timeout)
            // A redirect could lead off the allowlist.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("autobiz/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::new(ErrorCode::LlmUnavailable, format!("cannot build the HTTP client: {e}")))?;
        let mut builder = reqwest_middleware::ClientBuilder::new(client);
        if let Some(cassette) = &config.cassette {
            let mut eps = vec![("primary", config.primary.base_url.clone())];
            if let Some(f) = &config.fallback {
                eps.push(("fallback", f.base_url.clone()));
            }
            builder = builder.with(cassette.middleware(eps)?);
        }
        let pin = ModelPin::new(&config.model, &config.template);
        Ok(LlmClient {
            http: builder.build(),
            pin,
            template: config.template,
            primary: config.primary,
            fallback: config.fallback,
            prices: config.prices,
            jitter: Mutex::new(Jitter(config.settings.retry.jitter_seed)),
            settings: config.settings,
            cassette: config.cassette,
            guard,
            audit,
            counters: LlmCounters::default(),
        })
    }

    /// The pin every call of this client is made under.
    pub fn pin(&self) -> &ModelPin {
        &self.pin
    }

    pub fn template(&self) -> &PromptTemplate {
        &self.template
    }

    pub fn counters(&self) -> &LlmCounters {
        &self.counters
    }

    /// One chat completion. See the module docs for the order of things.
    pub async fn complete(&self, ctx: &TenantContext, messages: &[Message]) -> Result<Completion> {
        let mut endpoints: Vec<(&'static str, &Endpoint)> = vec![("primary", &self.primary)];
        if let Some(f) = &self.fallback {
            endpoints.push(("fallback", f));
        }
        for (label, ep) in &endpoints {
            let url = ep.completions_url()?;
            if let Err(e) = self.guard.check_destination("llm", &url) {
                self.audit_request(ctx, label, &url, "refused").await?;
                return Err(e);
            }
            if let Some(key) = &ep.api_key {
                self.guard.check_key("llm", key)?;
            }
        }
        let body = wire::ChatRequest {
            model: &self.pin.model,
            messages,
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
        };
        let mut attempts: u32 = 0;
        let mut round: u32 = 0;
        let mut fell_back = false;
        loop {
            round += 1;
            let mut failures = Vec::new();
            for (label, ep) in &endpoints {
                attempts += 1;
                if *label == "fallback" && !fell_back {
                    fell_back = true;
                    self.counters.llm_fallback_triggered_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "autobiz::llm", primary = %self.primary.host(), "primary LLM endpoint failed; falling back");
                }
                match self.attempt(ctx, label, ep, &body).await {
                    Ok(resp) => return Ok(self.completion(resp, label, attempts)),
                    Err(Attempt::Final(e)) => return Err(e),
                    Err(Attempt::Transient(why)) => failures.push(format!("{label} ({}): {why}", ep.host())),
                }
            }
            let max = self.settings.retry.max_attempts.max(1);
            let wait = if round < max {
                let random = self.jitter.lock().unwrap_or_else(|p| p.into_inner()).next();
                self.settings.retry.backoff(round, None, random)
            } else {
                None
            };
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    let what =
                        if endpoints.len() > 1 { "both LLM endpoints are down" } else { "the LLM endpoint is down" };
                    return Err(Error::new(
                        ErrorCode::LlmUnavailable,
                        format!("{what}: {} (after {attempts} attempts in {round} rounds)", failures.join("; ")),
                    ));
                }
            }
        }
    }

    fn completion(&self, resp: wire::ChatResponse, endpoint: &'static str, attempts: u32) -> Completion {
        let model = resp.model.clone().unwrap_or_else(|| self.pin.model.clone());
        let price = self.prices.get(&model).or_else(|| self.prices.get(&self.pin.model));
        let cost = price.map_or(0, |p| p.cost(resp.usage.prompt_tokens, resp.usage.completion_tokens));
        Completion {
            content: resp.content,
            pin: self.pin.clone(),
            model,
            endpoint,
            attempts,
            usage: resp.usage,
            cost_micro_usd: cost,
            priced: price.is_some(),
            response_id: resp.id,
            finish_reason: resp.finish_reason,
        }
    }

    async fn attempt(
        &self,
        ctx: &TenantContext,
        label: &'static str,
        ep: &Endpoint,
        body: &wire::ChatRequest<'_>,
    ) -> std::result::Result<wire::ChatResponse, Attempt> {
        let url = ep.completions_url().map_err(Attempt::Final)?;
        self.audit_request(ctx, label, &url, "sent").await.map_err(Attempt::Final)?;
        self.counters.llm_request_total.fetch_add(1, Ordering::Relaxed);
        // Serialized by hand (not `.json`): the same bytes every time, which
        // is what a cassette matches on.
        let payload = serde_json::to_vec(body).map_err(|e| {
            Attempt::Final(Error::new(ErrorCode::InvalidInput, format!("cannot serialize the LLM request: {e}")))
        })?;
        let mut req =
            self.http.post(url.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(payload);
        if let Some(key) = &ep.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(reqwest_middleware::Error::Middleware(_)) => {
                // The only middleware is the cassette: this request is not in it.
                let path = self.cassette.as_ref().map(|c| c.path().display().to_string()).unwrap_or_default();
                return Err(Attempt::Final(Error::new(
                    ErrorCode::LlmCassetteMiss,
                    format!(
                        "LLM request ({label} POST {}) is not in cassette {path}; re-record it with {}=record (see cassettes/README.md)",
                        url.path(),
                        CASSETTE_MODE_ENV
                    ),
                )));
            }
            Err(reqwest_middleware::Error::Reqwest(e)) => return Err(Attempt::Transient(transport(&e).to_owned())),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(Attempt::Transient(transport(&e).to_owned())),
        };
        match status {
            200..=299 => wire::parse_response(&bytes).map_err(|why| {
                Attempt::Final(Error::new(
                    ErrorCode::LlmBadResponse,
                    format!("LLM {label} endpoint ({}) answered HTTP {status} but {why}", ep.host()),
                ))
            }),
            408 | 429 | 500..=599 => Err(Attempt::Transient(format!("HTTP {status}"))),
            _ => Err(Attempt::Final(Error::new(
                ErrorCode::LlmRejected,
                format!(
                    "LLM {label} endpoint ({}) rejected the request: HTTP {status}{}",
                    ep.host(),
                    error_kind(&bytes)
                ),
            ))),
        }
    }

    /// Audit one outbound request: method, host, path only.
    async fn audit_request(&self, ctx: &TenantContext, label: &str, url: &Url, outcome: &str) -> Result<()> {
        let host = url.host_str().unwrap_or_default();
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let event = AuditEvent {
            action: format!("provider.llm.{label}.request"),
            resource: format!("POST {host}{port}{}", url.path()),
            outcome: outcome.to_owned(),
        };
        self.audit.audit(ctx, &event).await
    }
}

/// The kind of a transport failure, without reqwest's text (it may carry
/// the URL).
fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    }
}

/// ` (invalid_api_key)`: the OpenAI error's `code` or `type`, short
/// identifiers only. Never its `message`: a 401's message quotes part of the
/// key.
fn error_kind(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let pick = |k: &str| v.pointer(&format!("/error/{k}")).and_then(Value::as_str).map(str::to_owned);
    match pick("code").or_else(|| pick("type")) {
        Some(kind) if kind.len() <= 64 && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            format!(" ({kind})")
        }
        _ => String::new(),
    }
}
