//! Idempotency keys (INV-05): the same side effect, asked for twice, happens
//! once.
//!
//! The **internal key** is SHA-256 over the RFC 8785 (JCS) canonical JSON of
//! `{tenant, workflow, step, tool, tool_version, input}`: key order, spacing
//! and number spelling in the input cannot change it, and the tenant is part
//! of it, so two tenants never share a key. The **external key** sent to
//! providers (Stripe's `Idempotency-Key`, ...) is `autobiz:` followed by the
//! first 32 hex characters of SHA-256 of the internal key: fixed length (40
//! characters, within every provider's limit) and revealing nothing of the
//! input.
//!
//! The store side ([`crate::store::Store::idempotency_begin`]) decides, on
//! the primary key `(tenant_id, internal_key)` and never by read-then-write,
//! whether a call executes ([`Begin::Execute`]), replays the stored result
//! ([`Begin::Replay`]) or meets a claim held by another execution
//! ([`Begin::InProgress`]). [`IdempotencyStats`] counts the outcomes for the
//! `idempotency_hit_total` / `idempotency_miss_total` metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::canonical::sha256_hex_of;

use crate::error::{Error, ErrorCode, Result};
use crate::tenant::TenantId;

/// The default lookback window: a duplicate within 24 hours of the first
/// call replays its result (Stripe keeps keys for the same time).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Prefix of every external key.
pub const EXTERNAL_PREFIX: &str = "autobiz:";

/// What identifies one side effect. Everything here goes into the key.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub tenant: &'a TenantId,
    pub workflow: &'a str,
    pub step: &'a str,
    pub tool: &'a str,
    pub tool_version: &'a str,
    pub input: &'a Value,
}

/// An idempotency key: the internal key (64 hex characters) and the external
/// key derived from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    tenant: TenantId,
    internal: String,
    external: String,
}

impl IdempotencyKey {
    /// Derive the key of a tool call: SHA-256 over the JCS form of its parts
    /// (through [`crate::canonical`]: the maintained crate's form, never
    /// written by hand).
    ///
    /// The document is a borrowed struct rather than a `json!` map (no copy
    /// of the input); its canonical bytes are those of the whole object.
    pub fn derive(parts: &KeyParts<'_>) -> Result<IdempotencyKey> {
        let doc = KeyDocument {
            tenant: parts.tenant.as_str(),
            workflow: parts.workflow,
            step: parts.step,
            tool: parts.tool,
            tool_version: parts.tool_version,
            input: parts.input,
        };
        Ok(Self::from_internal(parts.tenant.clone(), crate::canonical::sha256_hex(&doc)?))
    }

    /// A key a caller supplied (an `Idempotency-Key` header, a webhook's event
    /// id), scoped by tenant and `scope` (e.g. the endpoint). The same
    /// supplied key with a different request is then `IDEMPOTENCY_KEY_REUSED`
    /// (see [`request_fingerprint`]).
    pub fn supplied(tenant: &TenantId, scope: &str, key: &str) -> Result<IdempotencyKey> {
        if key.is_empty() || key.len() > 255 {
            return Err(Error::new(ErrorCode::InvalidInput, "an idempotency key must be 1 to 255 characters"));
        }
        let doc = serde_json::json!({"tenant": tenant.as_str(), "scope": scope, "supplied_key": key});
        Ok(Self::from_internal(tenant.clone(), sha256_hex_of(canonical(&doc)?.as_bytes())))
    }

    fn from_internal(tenant: TenantId, internal: String) -> IdempotencyKey {
        let digest = sha256_hex_of(internal.as_bytes());
        let external = format!("{EXTERNAL_PREFIX}{}", &digest[..32]);
        IdempotencyKey { tenant, internal, external }
    }

    /// The tenant the key belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// 64 lowercase hex characters: what the store is keyed on.
    pub fn internal(&self) -> &str {
        &self.internal
    }

    /// `autobiz:` + 32 lowercase hex characters: what providers see.
    pub fn external(&self) -> &str {
        &self.external
    }
}

/// What the internal key hashes: the parts of a [`KeyParts`], borrowed.
///
/// The fields are declared in RFC 8785 order (sorted), so `serde_json`
/// writes them canonically and [`crate::canonical`] need not re-sort them;
/// it checks the order rather than trusting it.
#[derive(serde::Serialize)]
struct KeyDocument<'a> {
    input: &'a Value,
    step: &'a str,
    tenant: &'a str,
    tool: &'a str,
    tool_version: &'a str,
    workflow: &'a str,
}

/// SHA-256 (hex) of the JCS form of a request: two requests under one key
/// must have the same fingerprint, or the key was reused for something else.
pub fn request_fingerprint(request: &Value) -> Result<String> {
    crate::canonical::sha256_hex(request)
}

/// RFC 8785 canonical JSON text of `value`.
pub fn canonical(value: &Value) -> Result<String> {
    crate::canonical::to_string(value)
}

/// What [`crate::store::Store::idempotency_begin`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// Run the side effect now, under this claim, then complete or release
    /// it. The key was new, or its window had passed, or the claim was
    /// already this execution's (a resume after a crash: the same external
    /// key goes to the provider again, so the provider deduplicates).
    Execute(Claim),
    /// The same call completed within the window: here is its result. Do not
    /// execute.
    Replay(StoredResult),
    /// Another execution holds the claim and has not finished. Wait
    /// ([`crate::store::Store::idempotency_wait`]) or give up; never execute.
    InProgress,
}

/// The right to execute one side effect under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub key: IdempotencyKey,
    pub execution_id: String,
    pub request_fingerprint: String,
    /// When this claim's window started.
    pub first_seen_at: DateTime<Utc>,
    /// True when an earlier attempt of the same execution held the claim
    /// (crash resume): the provider may already have done the effect, and the
    /// external key lets it say so.
    pub resumed: bool,
}

/// The stored outcome of a completed call.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub internal_key: String,
    pub external_key: String,
    pub execution_id: String,
    pub response: Value,
    pub receipt_id: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
}

/// Counters of idempotency decisions, shared by every clone of a store.
/// `hits` are replays, `misses` fresh executions (new or expired keys).
#[derive(Debug, Default)]
pub struct IdempotencyStats {
    hits: AtomicU64,
    misses: AtomicU64,
    resumed: AtomicU64,
    in_progress: AtomicU64,
    reused: AtomicU64,
}

/// A point-in-time copy of [`IdempotencyStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IdempotencySnapshot {
    /// `idempotency_hit_total`
    pub hits: u64,
    /// `idempotency_miss_total`
    pub misses: u64,
    /// Claims handed back to the same execution (crash resume).
    pub resumed: u64,
    /// Calls that met another execution's claim.
    pub in_progress: u64,
    /// Keys reused with a different request (`IDEMPOTENCY_KEY_REUSED`).
    pub reused: u64,
}

impl IdempotencyStats {
    pub fn snapshot(&self) -> IdempotencySnapshot {
        IdempotencySnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            in_progress: self.in_progress.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count(&self, outcome: &Result<Begin>) {
        let counter = match outcome {
            Ok(Begin::Execute(c)) if c.resumed => &self.resumed,
            Ok(Begin::Execute(_)) => &self.misses,
            Ok(Begin::Replay(_)) => &self.hits,
            Ok(Begin::InProgress) => &self.in_progress,
            Err(e) if e.code() == ErrorCode::IdempotencyKeyReused => &self.reused,
            Err(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(input: &Value) -> IdempotencyKey {
        let tenant: TenantId = "acme".parse().unwrap();
        IdempotencyKey::derive(&KeyParts {
            tenant: &tenant,
            workflow: "wf01",
            step: "charge",
            tool: "stripe.charge.create",
            tool_version: "1",
            input,
        })
        .unwrap()
    }

    #[test]
    fn key_ignores_key_order_and_number_spelling() {
        let a = key(&json!({"amount": 1000, "currency": "usd"}));
        let b: Value = serde_json::from_str(r#"{ "currency":"usd", "amount":1.0e3 }"#).unwrap();
        assert_eq!(a, key(&b));
        assert_ne!(a, key(&json!({"amount": 1001, "currency": "usd"})));
    }

    #[test]
    fn inv05_the_composed_key_document_is_the_canonical_form_of_the_whole_object() {
        let tenant: TenantId = "acme".parse().unwrap();
        let inputs = [
            json!({"amount": 1000, "currency": "usd", "z": [1.5, -0.0, 1e21, "\u{7f}\u{1}"], "\u{e9}": {"b": 1, "a": null}}),
            json!({"\u{10000}": 1, "\u{ffff}": 2, "a\"b": "line\nbreak\t\\"}),
            json!([]),
            json!("just a string"),
        ];
        for (i, input) in inputs.iter().enumerate() {
            let step = ["charge", "ch\u{e9}rge#2", "a\"b", "\u{1f600}"][i];
            let parts =
                KeyParts { tenant: &tenant, workflow: "wf\n01", step, tool: "stripe.charge", tool_version: "1", input };
            let whole = serde_json::json!({
                "tenant": tenant.as_str(), "workflow": parts.workflow, "step": step,
                "tool": parts.tool, "tool_version": parts.tool_version, "input": input,
            });
            let expected =
                IdempotencyKey::from_internal(tenant.clone(), sha256_hex_of(canonical(&whole).unwrap().as_bytes()));
            assert_eq!(IdempotencyKey::derive(&parts).unwrap(), expected, "{input}");
        }
        // A plain input takes the checked serde_json path (fields declared sorted).
        let input = json!({"amount": 1000, "currency": "usd"});
        let doc = KeyDocument { input: &input, step: "s", tenant: "acme", tool: "t", tool_version: "1", workflow: "w" };
        assert!(crate::canonical::takes_checked_path(&doc));
    }
}
