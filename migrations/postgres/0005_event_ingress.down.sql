-- Reverts 0005_event_ingress (PostgreSQL): the ordering and worker columns
-- go; stored events stay.
DROP INDEX IF EXISTS idx_events_tenant_status_id;
DROP INDEX IF EXISTS idx_events_tenant_entity;
ALTER TABLE event_store
    DROP CONSTRAINT IF EXISTS event_store_status_check,
    DROP COLUMN IF EXISTS error,
    DROP COLUMN IF EXISTS run_id,
    DROP COLUMN IF EXISTS workflow,
    DROP COLUMN IF EXISTS attempts,
    DROP COLUMN IF EXISTS claimed_until,
    DROP COLUMN IF EXISTS claimed_by,
    DROP COLUMN IF EXISTS timeout_released,
    DROP COLUMN IF EXISTS hold_until,
    DROP COLUMN IF EXISTS waiting_for;
