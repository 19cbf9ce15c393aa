-- Reverts 0007_event_insert_function (SQLite): the two prefix indexes come
-- back; no data changes.
CREATE INDEX IF NOT EXISTS idx_events_tenant_source ON event_store (tenant_id, source);
CREATE INDEX IF NOT EXISTS idx_events_tenant_status ON event_store (tenant_id, status);
