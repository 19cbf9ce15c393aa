-- Durability (PostgreSQL): state patches, idempotency claims, immutable
-- receipts, blocked tools. Keep version numbers in step with ../sqlite.

-- Versioned state: each version keeps the RFC 6902 patch that produced it
-- beside the full state it led to.
ALTER TABLE state_versions ADD COLUMN patch JSONB NOT NULL DEFAULT '[]'::jsonb;

-- Idempotency claims: which execution holds (or completed) a key, and the
-- receipt its side effect wrote.
ALTER TABLE idempotency_keys ADD COLUMN execution_id TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ADD COLUMN receipt_id TEXT;

-- Receipts gain the side-effect class and the effect's own timestamps (old
-- rows take created_at as both).
ALTER TABLE receipts ADD COLUMN side_effect TEXT;
ALTER TABLE receipts ADD COLUMN started_at TIMESTAMPTZ;
ALTER TABLE receipts ADD COLUMN completed_at TIMESTAMPTZ;
UPDATE receipts
   SET side_effect = CASE WHEN amount_minor IS NOT NULL AND currency IS NOT NULL THEN 'FINANCIAL' ELSE 'WRITE' END,
       started_at = created_at,
       completed_at = created_at;
ALTER TABLE receipts ALTER COLUMN side_effect SET NOT NULL;
ALTER TABLE receipts ALTER COLUMN started_at SET NOT NULL;
ALTER TABLE receipts ALTER COLUMN completed_at SET NOT NULL;
ALTER TABLE receipts ADD CONSTRAINT receipts_financial_amount
    CHECK (side_effect <> 'FINANCIAL' OR (amount_minor IS NOT NULL AND currency IS NOT NULL));
CREATE INDEX idx_receipts_tenant_tool ON receipts (tenant_id, tool);

-- Receipts are append-only evidence: the database itself refuses to change
-- or remove one, whoever asks (the owner included), and the kernel role is
-- not even granted the privilege.
CREATE FUNCTION autobiz_receipts_immutable() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'receipts are immutable' USING ERRCODE = 'AB001';
END
$$;
CREATE TRIGGER receipts_immutable_row BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION autobiz_receipts_immutable();
CREATE TRIGGER receipts_immutable_truncate BEFORE TRUNCATE ON receipts
    FOR EACH STATEMENT EXECUTE FUNCTION autobiz_receipts_immutable();
REVOKE UPDATE, DELETE, TRUNCATE ON receipts FROM autobiz_kernel;

-- A tool whose side effect could not be receipted is blocked until someone
-- reconciles it; at most one open block per tool.
CREATE TABLE tool_blocks (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    tool       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    blocked_by TEXT NOT NULL,
    blocked_at TIMESTAMPTZ NOT NULL,
    cleared_at TIMESTAMPTZ,
    cleared_by TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX idx_tool_blocks_open ON tool_blocks (tenant_id, tool) WHERE cleared_at IS NULL;
ALTER TABLE tool_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_blocks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_blocks
    USING (tenant_id = autobiz_current_tenant())
    WITH CHECK (tenant_id = autobiz_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON tool_blocks TO autobiz_kernel;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO autobiz_kernel;
