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
use sha2::{Digest, Sha256};

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
    /// Derive the key of a tool call: SHA-256 over the JCS form of its parts.
    pub fn derive(parts: &KeyParts<'_>) -> Result<IdempotencyKey> {
        Self::derive_with_canonical_input(parts, &canonical(parts.input)?)
    }

    /// [`IdempotencyKey::derive`] given `canonical_input`, the RFC 8785 text
    /// of `parts.input` (which is not read), so a caller that also hashes the
    /// request canonicalizes it once. The JCS form of the key's object is
    /// composed from its members: keys in RFC 8785 order, each value in its
    /// own canonical form, which is exactly what canonicalizing the whole
    /// object gives (a test holds the two equal).
    pub fn derive_with_canonical_input(parts: &KeyParts<'_>, canonical_input: &str) -> Result<IdempotencyKey> {
        // Sorted by UTF-16 code units, as RFC 8785 sorts keys.
        let members = [
            ("step", parts.step),
            ("tenant", parts.tenant.as_str()),
            ("tool", parts.tool),
            ("tool_version", parts.tool_version),
            ("workflow", parts.workflow),
        ];
        let mut doc = String::with_capacity(canonical_input.len() + 160);
        doc.push_str("{\"input\":");
        doc.push_str(canonical_input);
        for (name, value) in members {
            doc.push_str(",\"");
            doc.push_str(name);
            doc.push_str("\":");
            doc.push_str(&canonical_str(value)?);
        }
        doc.push('}');
        Ok(Self::from_internal(parts.tenant.clone(), sha256_hex(doc.as_bytes())))
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
        Ok(Self::from_internal(tenant.clone(), sha256_hex(canonical(&doc)?.as_bytes())))
    }

    fn from_internal(tenant: TenantId, internal: String) -> IdempotencyKey {
        let digest = sha256_hex(internal.as_bytes());
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

/// SHA-256 (hex) of the JCS form of a request: two requests under one key
/// must have the same fingerprint, or the key was reused for something else.
pub fn request_fingerprint(request: &Value) -> Result<String> {
    Ok(sha256_hex(canonical(request)?.as_bytes()))
}

/// RFC 8785 canonical JSON text of `value`.
///
/// The common case is written directly: objects with their members sorted
/// by UTF-16 code units, strings with the escapes RFC 8785 3.2.2.2 names
/// (those of serde_json, which escapes exactly the same characters), and
/// integers of magnitude up to 2^53 as their digits (RFC 8785 3.2.2.3: the
/// ECMAScript form of such a number). Every other number is written by
/// `serde_json_canonicalizer`, the reference: a property test holds the two
/// byte-equal over generated values, and the RFC's examples run through
/// this function.
pub fn canonical(value: &Value) -> Result<String> {
    let mut out = String::with_capacity(128);
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut String) -> Result<()> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            const SAFE: u64 = 1 << 53;
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) if u <= SAFE => out.push_str(itoa_u64(u, &mut [0u8; 20])),
                (None, Some(i)) if i.unsigned_abs() <= SAFE => {
                    out.push('-');
                    out.push_str(itoa_u64(i.unsigned_abs(), &mut [0u8; 20]));
                }
                _ => out.push_str(&crate_canonical(n)?),
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map is sorted by UTF-8 bytes, which is UTF-16
            // order unless a key holds characters above U+FFFF: sort then.
            if members.iter().any(|(k, _)| k.chars().any(|c| c as u32 > 0xFFFF)) {
                members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            } else if !members.windows(2).all(|w| w[0].0 < w[1].0) {
                members.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_canonical(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A JSON string as RFC 8785 writes it.
fn write_str(s: &str, out: &mut String) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // serde_json escapes exactly RFC 8785's set, lowercase hex.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// A number as the reference crate writes it (floats, large integers).
fn crate_canonical(n: &serde_json::Number) -> Result<String> {
    serde_json_canonicalizer::to_string(n)
        .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("cannot canonicalize JSON (RFC 8785): {e}")))
}

/// RFC 8785 text of one string.
fn canonical_str(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(s, &mut out);
    Ok(out)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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

    /// Values with every shape the fast path takes and the ones it hands to
    /// the crate: floats, large integers, escapes, non-BMP keys.
    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-(1i64 << 54)..(1i64 << 54)).prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            "[a-z\\\\\"\\u{0}-\\u{1f}\\u{7f}\\u{e9}\\u{2028}\\u{ffff}\\u{10000}\\u{1f600}]{0,6}"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zA-Z\\u{e9}\\u{ffff}\\u{10000}\\u{1f600}_]{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        #[test]
        fn inv05_canonical_is_byte_equal_to_the_reference_crate(v in arb_value()) {
            proptest::prop_assert_eq!(canonical(&v).unwrap(), serde_json_canonicalizer::to_string(&v).unwrap());
        }
    }

    #[test]
    fn inv05_canonical_matches_rfc_8785_published_examples() {
        // RFC 8785 3.2.2.3 (numbers) and 3.2.3 (sorting).
        let numbers: Value = serde_json::from_str(
            "[333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, 9007199254740992, -0.0, 1e21, 1e-7]",
        )
        .unwrap();
        assert_eq!(
            canonical(&numbers).unwrap(),
            "[333333333.3333333,1e+30,4.5,0.002,1e-27,9007199254740992,0,1e+21,1e-7]"
        );
        let sorting: Value =
            serde_json::from_str(r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#).unwrap();
        let keys: Vec<String> = {
            let text = canonical(&sorting).unwrap();
            let back: Vec<(String, Value)> = text[1..text.len() - 1]
                .split(",\"")
                .map(|kv| serde_json::from_str::<Value>(&format!("{{\"{}}}", kv.trim_start_matches('"'))).unwrap())
                .flat_map(|o| o.as_object().unwrap().clone().into_iter().collect::<Vec<_>>())
                .collect();
            back.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(keys, ["\r", "1", "\u{80}", "\u{f6}", "\u{20ac}", "\u{1f600}", "\u{fb33}"]);
        let text = canonical(&json!({"a": "\u{7f}\u{1f}\"\\\n"})).unwrap();
        assert_eq!(text, "{\"a\":\"\u{7f}\\u001f\\\"\\\\\\n\"}");
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
                IdempotencyKey::from_internal(tenant.clone(), sha256_hex(canonical(&whole).unwrap().as_bytes()));
            assert_eq!(IdempotencyKey::derive(&parts).unwrap(), expected, "{input}");
        }
    }
}
