//! Versioned entity state (orders, payments, runs).
//!
//! State changes only by RFC 6902 JSON Patch ([`json_patch::Patch`]): version
//! 1 is the patch applied to the empty object `{}`, each later version the
//! patch applied to the one before. Every version stores the patch beside
//! the full state it produced, with the correlation id of the writer, so the
//! history both replays and explains itself.
//!
//! Writes are optimistic: [`crate::store::Store::apply_patch`] names the
//! version it read; if another writer got there first the write fails with
//! `STATE_CONFLICT` and changes nothing (the insert is guarded by the latest
//! version and by the unique key `(tenant_id, entity_id, version)`, never by
//! a read-then-write). A patch that does not apply (a failed `test`, a path
//! that does not exist) is `STATE_PATCH_INVALID`, and nothing is written.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

pub use json_patch::Patch;

/// One version of an entity's state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StateVersion {
    pub entity_id: String,
    pub version: i64,
    pub state: Value,
    /// The RFC 6902 patch that turned the previous version into this one.
    pub patch: Value,
    pub correlation_id: String,
    pub created_at: DateTime<Utc>,
}

/// The state before version 1.
pub fn initial_state() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Apply `patch` to a copy of `state`. All or nothing.
pub fn apply(state: &Value, patch: &Patch) -> Result<Value> {
    let mut next = state.clone();
    json_patch::patch(&mut next, patch)
        .map_err(|e| Error::new(ErrorCode::StatePatchInvalid, format!("the state patch does not apply: {e}")))?;
    Ok(next)
}

/// Parse a patch from its JSON form (an array of operations).
pub fn parse_patch(value: &Value) -> Result<Patch> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::new(ErrorCode::StatePatchInvalid, format!("not an RFC 6902 JSON Patch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_is_all_or_nothing() {
        let state = json!({"status": "paid"});
        let patch = parse_patch(&json!([
            {"op": "replace", "path": "/status", "value": "refunded"},
            {"op": "test", "path": "/status", "value": "paid"}
        ]))
        .unwrap();
        assert_eq!(apply(&state, &patch).unwrap_err().code(), ErrorCode::StatePatchInvalid);
        assert_eq!(state, json!({"status": "paid"}));
    }
}
