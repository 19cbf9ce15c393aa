-- Reverts 0008_hitl_run_index: the index goes; no data changes.
DROP INDEX IF EXISTS idx_hitl_tenant_run;
