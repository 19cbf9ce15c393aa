-- Durability (SQLite): state patches, idempotency claims, immutable receipts,
-- blocked tools. Keep version numbers in step with ../postgres.

-- Versioned state: each version keeps the RFC 6902 patch that produced it
-- beside the full state it led to.
ALTER TABLE state_versions ADD COLUMN patch TEXT NOT NULL DEFAULT '[]';

-- Idempotency claims: which execution holds (or completed) a key, and the
-- receipt its side effect wrote.
ALTER TABLE idempotency_keys ADD COLUMN execution_id TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ADD COLUMN receipt_id TEXT;

-- Receipts gain the side-effect class and the effect's own timestamps. SQLite
-- cannot add NOT NULL columns without a constant default, so the table is
-- rebuilt (rows kept; old rows take created_at as both timestamps).
CREATE TABLE receipts_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT NOT NULL,
    receipt_id      TEXT NOT NULL,
    execution_id    TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    tool            TEXT NOT NULL,
    tool_version    TEXT NOT NULL,
    side_effect     TEXT NOT NULL,
    internal_key    TEXT NOT NULL,
    external_key    TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT,
    status          TEXT NOT NULL,
    amount_minor    INTEGER,
    currency        TEXT,
    started_at      TEXT NOT NULL,
    completed_at    TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (tenant_id, receipt_id),
    CHECK (side_effect <> 'FINANCIAL' OR (amount_minor IS NOT NULL AND currency IS NOT NULL))
);
INSERT INTO receipts_new (id, tenant_id, receipt_id, execution_id, run_id, tool, tool_version, side_effect,
                          internal_key, external_key, request_sha256, response_sha256, status, amount_minor,
                          currency, started_at, completed_at, created_at, updated_at)
SELECT id, tenant_id, receipt_id, execution_id, run_id, tool, tool_version,
       CASE WHEN amount_minor IS NOT NULL AND currency IS NOT NULL THEN 'FINANCIAL' ELSE 'WRITE' END,
       internal_key, external_key, request_sha256, response_sha256, status, amount_minor,
       currency, created_at, created_at, created_at, updated_at
  FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_new RENAME TO receipts;
CREATE INDEX idx_receipts_tenant_run ON receipts (tenant_id, run_id);
CREATE INDEX idx_receipts_tenant_tool ON receipts (tenant_id, tool);

-- Receipts are append-only evidence: the database itself refuses to change
-- or remove one, whoever asks.
CREATE TRIGGER receipts_immutable_update BEFORE UPDATE ON receipts
BEGIN
    SELECT RAISE(ABORT, 'receipts are immutable');
END;
CREATE TRIGGER receipts_immutable_delete BEFORE DELETE ON receipts
BEGIN
    SELECT RAISE(ABORT, 'receipts are immutable');
END;

-- A tool whose side effect could not be receipted is blocked until someone
-- reconciles it; at most one open block per tool.
CREATE TABLE tool_blocks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    tool       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    blocked_by TEXT NOT NULL,
    blocked_at TEXT NOT NULL,
    cleared_at TEXT,
    cleared_by TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX idx_tool_blocks_open ON tool_blocks (tenant_id, tool) WHERE cleared_at IS NULL;
