-- 0008_check_indexes: two lookups that scanned a tenant's whole history get
-- an index, so their cost does not grow with it (the soak's invariant
-- monitors make both after every few deliveries):
-- * the approvals of one run (`Store::hitl_of_run`): (tenant_id, run_id);
-- * the runs with traces written since a time (`Store::trace_run_ids_since`),
--   which read every trace row of the tenant through the (tenant_id, run_id,
--   seq) unique index: (tenant_id, created_at).
CREATE INDEX IF NOT EXISTS idx_hitl_tenant_run ON hitl_requests (tenant_id, run_id);
CREATE INDEX IF NOT EXISTS idx_traces_tenant_created ON traces (tenant_id, created_at);
