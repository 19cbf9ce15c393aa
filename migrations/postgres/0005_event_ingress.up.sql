-- Event ingress (PostgreSQL): the ordering gate's and the worker's columns
-- on event_store (created by 0001 with RLS FORCE'd and the tenant_isolation
-- policy, which cover the new columns). Keep in step with ../sqlite.
--   waiting_for       the predecessor event type a HELD event waits for
--   hold_until        when a HELD event's hold times out
--   timeout_released  released by the timeout (precondition re-checked), not by its predecessor
--   claimed_by / claimed_until  the worker holding a PROCESSING event, and its lease
--   attempts          claims so far
--   workflow, run_id  the run the event started (DONE)
--   error             why an event FAILED or went to RECONCILE (a code and a message, no payload)
ALTER TABLE event_store
    ADD COLUMN waiting_for      TEXT,
    ADD COLUMN hold_until       TIMESTAMPTZ,
    ADD COLUMN timeout_released BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN claimed_by       TEXT,
    ADD COLUMN claimed_until    TIMESTAMPTZ,
    ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN workflow         TEXT,
    ADD COLUMN run_id           TEXT,
    ADD COLUMN error            TEXT,
    ADD CONSTRAINT event_store_status_check
        CHECK (status IN ('HELD', 'READY', 'PROCESSING', 'DONE', 'SKIPPED', 'FAILED', 'RECONCILE'));
CREATE INDEX idx_events_tenant_entity ON event_store (tenant_id, source, entity_id, event_type);
CREATE INDEX idx_events_tenant_status_id ON event_store (tenant_id, status, id);
