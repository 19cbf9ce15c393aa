-- Reverts 0009_receipts_by_time: the index goes; no data changes.
DROP INDEX IF EXISTS idx_receipts_tenant_tool_created;
