-- Reverts 0005_event_ingress (SQLite): the ordering and worker columns go;
-- stored events stay.
DROP INDEX IF EXISTS idx_events_tenant_status_id;
DROP INDEX IF EXISTS idx_events_tenant_entity;
ALTER TABLE event_store DROP COLUMN error;
ALTER TABLE event_store DROP COLUMN run_id;
ALTER TABLE event_store DROP COLUMN workflow;
ALTER TABLE event_store DROP COLUMN attempts;
ALTER TABLE event_store DROP COLUMN claimed_until;
ALTER TABLE event_store DROP COLUMN claimed_by;
ALTER TABLE event_store DROP COLUMN timeout_released;
ALTER TABLE event_store DROP COLUMN hold_until;
ALTER TABLE event_store DROP COLUMN waiting_for;
