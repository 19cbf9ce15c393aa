-- Reverts 0002_durability (SQLite). Blocks and the extra receipt and
-- idempotency columns are lost; take a copy of the file first.
DROP TABLE IF EXISTS tool_blocks;
DROP TRIGGER IF EXISTS receipts_immutable_update;
DROP TRIGGER IF EXISTS receipts_immutable_delete;

CREATE TABLE receipts_old (
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
INSERT INTO receipts_old (id, tenant_id, receipt_id, execution_id, run_id, tool, tool_version, internal_key,
                          external_key, request_sha256, response_sha256, status, amount_minor, currency,
                          created_at, updated_at)
SELECT id, tenant_id, receipt_id, execution_id, run_id, tool, tool_version, internal_key,
       external_key, request_sha256, response_sha256, status, amount_minor, currency, created_at, updated_at
  FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_old RENAME TO receipts;
CREATE INDEX idx_receipts_tenant_run ON receipts (tenant_id, run_id);

ALTER TABLE idempotency_keys DROP COLUMN receipt_id;
ALTER TABLE idempotency_keys DROP COLUMN execution_id;
ALTER TABLE state_versions DROP COLUMN patch;
