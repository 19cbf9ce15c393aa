-- 0008_hitl_run_index: the approvals of one run (`Store::hitl_of_run`, read
-- by the soak's unapproved_financial_step monitor and the golden oracle) are
-- found through an index on (tenant_id, run_id) instead of a scan of every
-- request of the tenant, so a check's cost does not grow with the history.
CREATE INDEX IF NOT EXISTS idx_hitl_tenant_run ON hitl_requests (tenant_id, run_id);
