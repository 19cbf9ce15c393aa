-- Reverts 0008_check_indexes: the two indexes go; no data changes.
DROP INDEX IF EXISTS idx_traces_tenant_created;
DROP INDEX IF EXISTS idx_hitl_tenant_run;
