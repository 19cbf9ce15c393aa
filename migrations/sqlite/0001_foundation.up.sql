-- autobiz foundation schema (SQLite). Keep version numbers in step with ../postgres.
-- SQLite has no row-level security: the store layer adds `tenant_id = $1` to
-- every statement it issues (see kernel/src/store/). Every tenant table still
-- carries tenant_id NOT NULL so the filter always has something to match.

CREATE TABLE tenants (
    tenant_id    TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE state_versions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    state          TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (tenant_id, entity_id, version)
);

CREATE TABLE receipts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT NOT NULL,
    receipt_id      TEXT NOT NULL,
    execution_id    TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    tool            TEXT NOT NULL,
    tool_version    TEXT NOT NULL,
    internal_key    TEXT NOT NULL,
    external_key    TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT,
    status          TEXT NOT NULL,
    amount_minor    INTEGER,
    currency        TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (tenant_id, receipt_id)
);
CREATE INDEX idx_receipts_tenant_run ON receipts (tenant_id, run_id);

CREATE TABLE traces (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT NOT NULL,
    run_id         TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    record         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (tenant_id, run_id, seq)
);

CREATE TABLE event_store (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id         TEXT NOT NULL,
    source            TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    entity_id         TEXT,
    occurred_at       TEXT,
    payload           TEXT NOT NULL,
    payload_sha256    TEXT NOT NULL,
    signature_valid   INTEGER NOT NULL CHECK (signature_valid IN (0, 1)),
    status            TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    UNIQUE (tenant_id, source, provider_event_id)
);
CREATE INDEX idx_events_tenant_source ON event_store (tenant_id, source);
CREATE INDEX idx_events_tenant_status ON event_store (tenant_id, status);

CREATE TABLE reconciliation (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    entity_id  TEXT,
    status     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (tenant_id, case_id)
);

CREATE TABLE hitl_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    request_id TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    step       TEXT NOT NULL,
    tool       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    status     TEXT NOT NULL,
    approver   TEXT,
    reason     TEXT,
    decided_at TEXT,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (tenant_id, request_id)
);

CREATE TABLE idempotency_keys (
    tenant_id           TEXT NOT NULL,
    internal_key        TEXT NOT NULL,
    external_key        TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    status              TEXT NOT NULL,
    response            TEXT,
    first_seen_at       TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (tenant_id, internal_key)
);

CREATE TABLE security_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT NOT NULL,
    principal      TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    kind           TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    target_tenant  TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX idx_security_events_tenant ON security_events (tenant_id, created_at);

CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT NOT NULL,
    principal      TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX idx_audit_events_tenant ON audit_events (tenant_id, created_at);
