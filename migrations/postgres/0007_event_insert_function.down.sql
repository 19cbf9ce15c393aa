-- Reverts 0007_event_insert_function (PostgreSQL): the kernel of 0006 and
-- earlier inserts events in its own transaction, and the two prefix indexes
-- come back; no data changes.
DROP FUNCTION IF EXISTS autobiz_event_insert(TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ);
CREATE INDEX IF NOT EXISTS idx_events_tenant_source ON event_store (tenant_id, source);
CREATE INDEX IF NOT EXISTS idx_events_tenant_status ON event_store (tenant_id, status);
