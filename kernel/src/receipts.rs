//! Receipts: the durable evidence that a side effect happened.
//!
//! Every side effect writes one [`Receipt`]: the hashes of the request and
//! response payloads (not the payloads, which may hold personal data), when
//! it started and completed, the execution that did it, and the internal and
//! external idempotency keys that link it to its claim and to the provider's
//! record. A FINANCIAL effect also records amount (integer minor units) and
//! currency; a FINANCIAL receipt without them is refused (`RECEIPT_INVALID`)
//! before anything is written, and the database's CHECK constraint refuses it
//! too.
//!
//! Receipts are immutable in the database itself: SQLite triggers and a
//! PostgreSQL trigger refuse every UPDATE and DELETE (`RECEIPT_IMMUTABLE`),
//! and the PostgreSQL kernel role is not granted either privilege.
//!
//! A side effect whose receipt cannot be written is reported as failed and
//! its tool is blocked ([`ToolBlock`], `TOOL_BLOCKED`) until someone
//! reconciles it and clears the block.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::canonical::sha256_hex_of;
use crate::contract::SideEffect;
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::canonical;

/// A receipt to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReceipt {
    pub execution_id: String,
    pub run_id: String,
    pub tool: String,
    pub tool_version: String,
    pub side_effect: SideEffect,
    /// [`payload_sha256`] of the request sent to the provider.
    pub request_sha256: String,
    /// [`payload_sha256`] of the response, when there was one.
    pub response_sha256: Option<String>,
    /// `succeeded`, `failed`, ... as the provider reported it.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    /// Integer minor units (cents); required for FINANCIAL effects.
    pub amount_minor: Option<i64>,
    /// ISO 4217 code, lowercase or uppercase; required for FINANCIAL effects.
    pub currency: Option<String>,
}

impl NewReceipt {
    /// Refuse a receipt that could not serve as evidence: a FINANCIAL effect
    /// without amount and currency, a malformed hash or currency, an effect
    /// that completed before it started, or empty ids.
    pub fn validate(&self) -> Result<()> {
        let invalid = |why: String| Err(Error::new(ErrorCode::ReceiptInvalid, why));
        for (name, value) in [
            ("execution_id", &self.execution_id),
            ("run_id", &self.run_id),
            ("tool", &self.tool),
            ("status", &self.status),
        ] {
            if value.is_empty() {
                return invalid(format!("a receipt needs a non-empty {name}"));
            }
        }
        let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hash(&self.request_sha256) || self.response_sha256.as_deref().is_some_and(|h| !is_hash(h)) {
            return invalid("request_sha256 and response_sha256 must be 64 lowercase hex characters".to_owned());
        }
        if self.completed_at < self.started_at {
            return invalid("a receipt's completed_at precedes its started_at".to_owned());
        }
        if let Some(c) = &self.currency
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return invalid("currency must be a three-letter ISO 4217 code".to_owned());
        }
        if self.side_effect == SideEffect::Financial {
            match (self.amount_minor, &self.currency) {
                (Some(a), Some(_)) if a >= 0 => {}
                (Some(_), Some(_)) => return invalid("a FINANCIAL receipt's amount must not be negative".to_owned()),
                _ => {
                    return invalid(format!(
                        "tool {} is FINANCIAL: its receipt needs amount_minor and currency",
                        self.tool
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Receipt {
    pub receipt_id: String,
    pub execution_id: String,
    pub run_id: String,
    pub tool: String,
    pub tool_version: String,
    /// `READ`, `WRITE`, `FINANCIAL`, `NOTIFY`.
    pub side_effect: String,
    pub internal_key: String,
    pub external_key: String,
    pub request_sha256: String,
    pub response_sha256: Option<String>,
    pub status: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl Receipt {
    /// The financial part of a FINANCIAL receipt: amount and currency.
    pub fn financial(&self) -> Option<FinancialReceipt<'_>> {
        match (self.side_effect.as_str(), self.amount_minor, self.currency.as_deref()) {
            ("FINANCIAL", Some(amount_minor), Some(currency)) => {
                Some(FinancialReceipt { receipt: self, amount_minor, currency })
            }
            _ => None,
        }
    }
}

/// A receipt of a FINANCIAL effect, with its money fields guaranteed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinancialReceipt<'a> {
    pub receipt: &'a Receipt,
    pub amount_minor: i64,
    pub currency: &'a str,
}

/// A tool blocked from running until its unreceipted side effect is
/// reconciled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolBlock {
    pub tool: String,
    pub reason: String,
    pub blocked_by: String,
    pub blocked_at: DateTime<Utc>,
}

/// SHA-256 (hex) of a payload's RFC 8785 canonical form, so the same payload
/// hashes the same whatever its key order.
pub fn payload_sha256(payload: &Value) -> Result<String> {
    Ok(sha256_hex_of(canonical(payload)?.as_bytes()))
}

/// The receipt id of an execution's effect under a key: deterministic, so a
/// replayed run produces the same receipts and a second receipt for the same
/// execution and key is refused by the unique constraint.
pub(crate) fn receipt_id(tenant: &str, internal_key: &str, execution_id: &str) -> String {
    let digest = sha256_hex_of(format!("{tenant}\n{internal_key}\n{execution_id}").as_bytes());
    format!("rcpt_{}", &digest[..32])
}
