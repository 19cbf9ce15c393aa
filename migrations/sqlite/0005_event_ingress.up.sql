-- Event ingress (SQLite): the ordering gate's and the worker's columns on
-- event_store (created by 0001). Keep in step with ../postgres.
--   waiting_for       the predecessor event type a HELD event waits for
--   hold_until        when a HELD event's hold times out
--   timeout_released  released by the timeout (precondition re-checked), not by its predecessor
--   claimed_by / claimed_until  the worker holding a PROCESSING event, and its lease
--   attempts          claims so far
--   workflow, run_id  the run the event started (DONE)
--   error             why an event FAILED or went to RECONCILE (a code and a message, no payload)
ALTER TABLE event_store ADD COLUMN waiting_for TEXT;
ALTER TABLE event_store ADD COLUMN hold_until TEXT;
ALTER TABLE event_store ADD COLUMN timeout_released INTEGER NOT NULL DEFAULT 0 CHECK (timeout_released IN (0, 1));
ALTER TABLE event_store ADD COLUMN claimed_by TEXT;
ALTER TABLE event_store ADD COLUMN claimed_until TEXT;
ALTER TABLE event_store ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE event_store ADD COLUMN workflow TEXT;
ALTER TABLE event_store ADD COLUMN run_id TEXT;
ALTER TABLE event_store ADD COLUMN error TEXT;
CREATE INDEX idx_events_tenant_entity ON event_store (tenant_id, source, entity_id, event_type);
CREATE INDEX idx_events_tenant_status_id ON event_store (tenant_id, status, id);
