//! The kernel's one error type.
//!
//! Every failure carries a stable, machine-readable [`ErrorCode`] (what scripts
//! and dashboards match on) and an [`ErrorClass`] (what the CLI turns into an
//! exit code). Messages are for people and may change; codes may not.
//!
//! Messages never contain secret values: a secret is only ever named, and a
//! database URL is printed through [`crate::store::DatabaseUrl`]'s redacting
//! `Display`.

use std::fmt;

/// How a failure should be treated by whoever called the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The kernel refused on purpose (a tenant boundary, an expired
    /// credential version). The CLI exits 1.
    Refused,
    /// The caller's input or configuration is wrong. The CLI exits 2.
    Input,
    /// Something outside the caller's input failed: database, disk, network.
    /// The CLI exits 3.
    Infrastructure,
}

/// Stable error codes. Serialized as `SCREAMING_SNAKE_CASE`; never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    InvalidInput,
    DatabaseUrlInvalid,
    StoreUnavailable,
    StoreIo,
    StoreCorrupt,
    StoreNotMigrated,
    StoreRoleUnsafe,
    MigrationFailed,
    TenantForbidden,
    StateConflict,
    MasterKeyMissing,
    MasterKeyInvalid,
    SecretNotFound,
    SecretVersionExpired,
    SecretsFileCorrupt,
    SecretsIo,
    ConfigIo,
    ConfigParse,
    ConfigInvalid,
    ToolUnknown,
    ToolSchemaInvalid,
    SchemaInvalid,
    OutputSchemaInvalid,
    PermissionDenied,
    BoundExceeded,
    LoopDetected,
    ToolTimeout,
    ToolFailed,
    TraceWriteFailed,
    RunTerminated,
    ApprovalRequired,
    RunTransitionInvalid,
    TranscriptIo,
    TranscriptCorrupt,
    TranscriptTruncated,
    TranscriptVersionUnsupported,
    ReplayConfigMismatch,
    ReplayDiverged,
    StatePatchInvalid,
    IdempotencyKeyReused,
    InProgress,
    IdempotencyClaimLost,
    ReceiptInvalid,
    ReceiptImmutable,
    ToolBlocked,
    ReceiptWriteFailed,
    RunNotFound,
    HitlConditionInvalid,
    HitlNotFound,
    HitlAlreadyDecided,
    HitlApproverNotAllowed,
    HitlExpired,
    NotifyFailed,
    CircuitOpen,
    BreakerNotFound,
    ProviderDeclined,
    ProviderRejected,
    ProviderAuthFailed,
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderNotFound,
    ProviderBadResponse,
    ProviderIdempotencyConflict,
    SandboxLiveKeyRefused,
    SandboxHostRefused,
    SandboxRecipientRefused,
    LlmUnavailable,
    LlmBadResponse,
    LlmRejected,
    LlmCassetteMiss,
    AgentReplyInvalid,
    AgentToolNotAllowed,
    AgentLlmMissing,
    AgentPinMismatch,
}

impl ErrorCode {
    /// The code as printed and serialized, e.g. `TENANT_FORBIDDEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::DatabaseUrlInvalid => "DATABASE_URL_INVALID",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::StoreIo => "STORE_IO",
            ErrorCode::StoreCorrupt => "STORE_CORRUPT",
            ErrorCode::StoreNotMigrated => "STORE_NOT_MIGRATED",
            ErrorCode::StoreRoleUnsafe => "STORE_ROLE_UNSAFE",
            ErrorCode::MigrationFailed => "MIGRATION_FAILED",
            ErrorCode::TenantForbidden => "TENANT_FORBIDDEN",
            ErrorCode::StateConflict => "STATE_CONFLICT",
            ErrorCode::MasterKeyMissing => "MASTER_KEY_MISSING",
            ErrorCode::MasterKeyInvalid => "MASTER_KEY_INVALID",
            ErrorCode::SecretNotFound => "SECRET_NOT_FOUND",
            ErrorCode::SecretVersionExpired => "SECRET_VERSION_EXPIRED",
            ErrorCode::SecretsFileCorrupt => "SECRETS_FILE_CORRUPT",
            ErrorCode::SecretsIo => "SECRETS_IO",
            ErrorCode::ConfigIo => "CONFIG_IO",
            ErrorCode::ConfigParse => "CONFIG_PARSE",
            ErrorCode::ConfigInvalid => "CONFIG_INVALID",
            ErrorCode::ToolUnknown => "TOOL_UNKNOWN",
            ErrorCode::ToolSchemaInvalid => "TOOL_SCHEMA_INVALID",
            ErrorCode::SchemaInvalid => "SCHEMA_INVALID",
            ErrorCode::OutputSchemaInvalid => "OUTPUT_SCHEMA_INVALID",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::BoundExceeded => "BOUND_EXCEEDED",
            ErrorCode::LoopDetected => "LOOP_DETECTED",
            ErrorCode::ToolTimeout => "TOOL_TIMEOUT",
            ErrorCode::ToolFailed => "TOOL_FAILED",
            ErrorCode::TraceWriteFailed => "TRACE_WRITE_FAILED",
            ErrorCode::RunTerminated => "RUN_TERMINATED",
            ErrorCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ErrorCode::RunTransitionInvalid => "RUN_TRANSITION_INVALID",
            ErrorCode::TranscriptIo => "TRANSCRIPT_IO",
            ErrorCode::TranscriptCorrupt => "TRANSCRIPT_CORRUPT",
            ErrorCode::TranscriptTruncated => "TRANSCRIPT_TRUNCATED",
            ErrorCode::TranscriptVersionUnsupported => "TRANSCRIPT_VERSION_UNSUPPORTED",
            ErrorCode::ReplayConfigMismatch => "REPLAY_CONFIG_MISMATCH",
            ErrorCode::ReplayDiverged => "REPLAY_DIVERGED",
            ErrorCode::StatePatchInvalid => "STATE_PATCH_INVALID",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::InProgress => "IN_PROGRESS",
            ErrorCode::IdempotencyClaimLost => "IDEMPOTENCY_CLAIM_LOST",
            ErrorCode::ReceiptInvalid => "RECEIPT_INVALID",
            ErrorCode::ReceiptImmutable => "RECEIPT_IMMUTABLE",
            ErrorCode::ToolBlocked => "TOOL_BLOCKED",
            ErrorCode::ReceiptWriteFailed => "RECEIPT_WRITE_FAILED",
            ErrorCode::RunNotFound => "RUN_NOT_FOUND",
            ErrorCode::HitlConditionInvalid => "HITL_CONDITION_INVALID",
            ErrorCode::HitlNotFound => "HITL_NOT_FOUND",
            ErrorCode::HitlAlreadyDecided => "HITL_ALREADY_DECIDED",
            ErrorCode::HitlApproverNotAllowed => "HITL_APPROVER_NOT_ALLOWED",
            ErrorCode::HitlExpired => "HITL_EXPIRED",
            ErrorCode::NotifyFailed => "NOTIFY_FAILED",
            ErrorCode::CircuitOpen => "CIRCUIT_OPEN",
            ErrorCode::BreakerNotFound => "BREAKER_NOT_FOUND",
            ErrorCode::ProviderDeclined => "PROVIDER_DECLINED",
            ErrorCode::ProviderRejected => "PROVIDER_REJECTED",
            ErrorCode::ProviderAuthFailed => "PROVIDER_AUTH_FAILED",
            ErrorCode::ProviderRateLimited => "PROVIDER_RATE_LIMITED",
            ErrorCode::ProviderUnavailable => "PROVIDER_UNAVAILABLE",
            ErrorCode::ProviderNotFound => "PROVIDER_NOT_FOUND",
            ErrorCode::ProviderBadResponse => "PROVIDER_BAD_RESPONSE",
            ErrorCode::ProviderIdempotencyConflict => "PROVIDER_IDEMPOTENCY_CONFLICT",
            ErrorCode::SandboxLiveKeyRefused => "SANDBOX_LIVE_KEY_REFUSED",
            ErrorCode::SandboxHostRefused => "SANDBOX_HOST_REFUSED",
            ErrorCode::SandboxRecipientRefused => "SANDBOX_RECIPIENT_REFUSED",
            ErrorCode::LlmUnavailable => "LLM_UNAVAILABLE",
            ErrorCode::LlmBadResponse => "LLM_BAD_RESPONSE",
            ErrorCode::LlmRejected => "LLM_REJECTED",
            ErrorCode::LlmCassetteMiss => "LLM_CASSETTE_MISS",
            ErrorCode::AgentReplyInvalid => "AGENT_REPLY_INVALID",
            ErrorCode::AgentToolNotAllowed => "AGENT_TOOL_NOT_ALLOWED",
            ErrorCode::AgentLlmMissing => "AGENT_LLM_MISSING",
            ErrorCode::AgentPinMismatch => "AGENT_PIN_MISMATCH",
        }
    }

    /// The code named by its stable string (`"TOOL_TIMEOUT"`), as read back
    /// from a trace or transcript.
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(code.to_owned())).ok()
    }

    /// The class of every error with this code.
    pub fn class(self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            TenantForbidden
            | StateConflict
            | SecretVersionExpired
            | ToolUnknown
            | SchemaInvalid
            | OutputSchemaInvalid
            | PermissionDenied
            | BoundExceeded
            | LoopDetected
            | RunTerminated
            | ApprovalRequired
            | ReplayDiverged
            | IdempotencyKeyReused
            | InProgress
            | IdempotencyClaimLost
            | ReceiptImmutable
            | ToolBlocked
            | HitlAlreadyDecided
            | HitlApproverNotAllowed
            | HitlExpired
            | ProviderDeclined
            | ProviderRejected
            | ProviderIdempotencyConflict
            | SandboxLiveKeyRefused
            | SandboxHostRefused
            | SandboxRecipientRefused
            | LlmRejected
            | AgentToolNotAllowed => ErrorClass::Refused,
            InvalidInput
            | DatabaseUrlInvalid
            | StoreNotMigrated
            | StoreRoleUnsafe
            | MasterKeyMissing
            | MasterKeyInvalid
            | SecretNotFound
            | ConfigIo
            | ConfigParse
            | ConfigInvalid
            | ToolSchemaInvalid
            | TranscriptCorrupt
            | TranscriptTruncated
            | TranscriptVersionUnsupported
            | ReplayConfigMismatch
            | StatePatchInvalid
            | ReceiptInvalid
            | RunNotFound
            | HitlConditionInvalid
            | HitlNotFound
            | BreakerNotFound
            | ProviderNotFound
            | ProviderAuthFailed
            | LlmCassetteMiss
            | AgentLlmMissing
            | AgentPinMismatch => ErrorClass::Input,
            StoreUnavailable | StoreIo | StoreCorrupt | MigrationFailed | SecretsFileCorrupt | SecretsIo
            | ToolTimeout | ToolFailed | TraceWriteFailed | RunTransitionInvalid | TranscriptIo
            | ReceiptWriteFailed | NotifyFailed | CircuitOpen | ProviderRateLimited | ProviderUnavailable
            | ProviderBadResponse | LlmUnavailable | LlmBadResponse | AgentReplyInvalid => ErrorClass::Infrastructure,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kernel failure: a stable code and a one-line message for people.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: ErrorCode,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), source: None }
    }

    /// Attach the underlying cause (kept for `-v` diagnostics; never printed
    /// by default because drivers may echo connection details).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn class(&self) -> ErrorClass {
        self.code.class()
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_strings() {
        for code in [ErrorCode::TenantForbidden, ErrorCode::StoreRoleUnsafe, ErrorCode::ConfigInvalid] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(code));
        }
    }

    #[test]
    fn classes_follow_the_exit_code_contract() {
        assert_eq!(ErrorCode::TenantForbidden.class(), ErrorClass::Refused);
        assert_eq!(ErrorCode::DatabaseUrlInvalid.class(), ErrorClass::Input);
        assert_eq!(ErrorCode::MasterKeyInvalid.class(), ErrorClass::Input);
        assert_eq!(ErrorCode::StoreUnavailable.class(), ErrorClass::Infrastructure);
        assert_eq!(ErrorCode::StoreCorrupt.class(), ErrorClass::Infrastructure);
        assert_eq!(ErrorCode::LlmUnavailable.class(), ErrorClass::Infrastructure);
        assert_eq!(ErrorCode::LlmRejected.class(), ErrorClass::Refused);
        assert_eq!(ErrorCode::from_code("LLM_BAD_RESPONSE"), Some(ErrorCode::LlmBadResponse));
    }
}
