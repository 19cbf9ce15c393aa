-- Reverts 0002_durability (PostgreSQL). Blocks and the extra receipt and
-- idempotency columns are lost; take a pg_dump first.
DROP TABLE IF EXISTS tool_blocks;
DROP TRIGGER IF EXISTS receipts_immutable_row ON receipts;
DROP TRIGGER IF EXISTS receipts_immutable_truncate ON receipts;
DROP FUNCTION IF EXISTS autobiz_receipts_immutable();
GRANT UPDATE, DELETE ON receipts TO autobiz_kernel;
DROP INDEX IF EXISTS idx_receipts_tenant_tool;
ALTER TABLE receipts DROP CONSTRAINT IF EXISTS receipts_financial_amount;
ALTER TABLE receipts DROP COLUMN IF EXISTS completed_at;
ALTER TABLE receipts DROP COLUMN IF EXISTS started_at;
ALTER TABLE receipts DROP COLUMN IF EXISTS side_effect;
ALTER TABLE idempotency_keys DROP COLUMN IF EXISTS receipt_id;
ALTER TABLE idempotency_keys DROP COLUMN IF EXISTS execution_id;
ALTER TABLE state_versions DROP COLUMN IF EXISTS patch;
