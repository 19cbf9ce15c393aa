//! Turning driver errors into kernel errors with stable codes.
//!
//! SQLite reports (extended) result codes, PostgreSQL SQLSTATEs; both are
//! mapped here and nowhere else, so the rest of the store reasons in kernel
//! codes only.

use crate::error::{Error, ErrorCode};

/// Whether the error is a unique-constraint violation (PostgreSQL 23505,
/// SQLite SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("23505") | Some("2067") | Some("1555")),
        _ => false,
    }
}

/// Map a driver error met while trying to `doing` something. Public (as
/// `store::driver_error`) for code and tests that run their own SQL and want
/// the kernel's codes for what the database refused.
pub fn map(e: sqlx::Error, doing: &str) -> Error {
    let (code, why) = match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let kind = if is_receipt_refusal(&code, db.message()) {
                ErrorCode::ReceiptImmutable
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_code(&code)
            } else {
                postgres_code(&code)
            };
            (kind, db.message().to_owned())
        }
        sqlx::Error::Configuration(_) => (ErrorCode::DatabaseUrlInvalid, e.to_string()),
        sqlx::Error::Io(io) => (ErrorCode::StoreUnavailable, io.to_string()),
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => (ErrorCode::StoreUnavailable, e.to_string()),
        sqlx::Error::PoolTimedOut => (ErrorCode::StoreUnavailable, "timed out waiting for a connection".to_owned()),
        sqlx::Error::PoolClosed => (ErrorCode::StoreUnavailable, "the connection pool is closed".to_owned()),
        sqlx::Error::Migrate(m) => (ErrorCode::MigrationFailed, m.to_string()),
        _ => (ErrorCode::StoreUnavailable, e.to_string()),
    };
    Error::new(code, format!("cannot {doing}: {why}")).with_source(e)
}

/// The database refused to change a receipt: the immutability trigger (both
/// backends raise `receipts are immutable`; PostgreSQL with SQLSTATE AB001),
/// or on PostgreSQL the missing UPDATE/DELETE privilege of the kernel role.
fn is_receipt_refusal(code: &str, message: &str) -> bool {
    code == "AB001"
        || message.contains("receipts are immutable")
        || (code == "42501" && message.contains("table receipts"))
}

/// SQLite reports extended result codes; the primary code is the low byte.
fn sqlite_code(code: &str) -> ErrorCode {
    match code.parse::<u32>().map(|n| n & 0xff) {
        Ok(11 | 26) => ErrorCode::StoreCorrupt,              // CORRUPT, NOTADB
        Ok(3 | 8 | 10 | 13 | 14 | 23) => ErrorCode::StoreIo, // PERM, READONLY, IOERR, FULL, CANTOPEN, AUTH
        Ok(19) => ErrorCode::StateConflict,                  // CONSTRAINT
        _ => ErrorCode::StoreUnavailable,                    // BUSY, LOCKED and the rest
    }
}

/// PostgreSQL SQLSTATEs, by code and by class.
fn postgres_code(code: &str) -> ErrorCode {
    match code {
        "42501" => ErrorCode::TenantForbidden, // insufficient privilege, incl. RLS WITH CHECK
        "42P01" => ErrorCode::StoreNotMigrated, // undefined table
        "3D000" | "28000" | "28P01" => ErrorCode::DatabaseUrlInvalid, // no such database, auth
        c if c.starts_with("23") => ErrorCode::StateConflict, // integrity violations
        _ => ErrorCode::StoreUnavailable,      // connection (08), shutdown (57), resources (53), ...
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes() {
        assert_eq!(sqlite_code("26"), ErrorCode::StoreCorrupt);
        assert_eq!(sqlite_code("11"), ErrorCode::StoreCorrupt);
        assert_eq!(sqlite_code("8"), ErrorCode::StoreIo);
        assert_eq!(sqlite_code("1032"), ErrorCode::StoreIo);
        assert_eq!(sqlite_code("2067"), ErrorCode::StateConflict);
        assert_eq!(sqlite_code("5"), ErrorCode::StoreUnavailable);
    }

    #[test]
    fn receipt_refusals() {
        assert!(is_receipt_refusal("AB001", "anything"));
        assert!(is_receipt_refusal("1811", "receipts are immutable"));
        assert!(is_receipt_refusal("42501", "permission denied for table receipts"));
        assert!(!is_receipt_refusal("42501", "permission denied for table traces"));
        assert!(!is_receipt_refusal("2067", "UNIQUE constraint failed"));
    }

    #[test]
    fn postgres_codes() {
        assert_eq!(postgres_code("42501"), ErrorCode::TenantForbidden);
        assert_eq!(postgres_code("42P01"), ErrorCode::StoreNotMigrated);
        assert_eq!(postgres_code("3D000"), ErrorCode::DatabaseUrlInvalid);
        assert_eq!(postgres_code("23505"), ErrorCode::StateConflict);
        assert_eq!(postgres_code("08006"), ErrorCode::StoreUnavailable);
        assert_eq!(postgres_code("57P01"), ErrorCode::StoreUnavailable);
    }
}
