-- One round trip per verified webhook (PostgreSQL): `autobiz_event_insert`
-- does what `Store::event_insert` did in five statements (BEGIN, the tenant
-- context, the insert with the ordering gate's decision, the release of the
-- entity's held successors, COMMIT), called as one autocommit statement.
-- Same semantics, same constraint: the unique (tenant_id, source,
-- provider_event_id) decides duplicates, also concurrent ones.
--
-- SECURITY INVOKER (the default, stated): it runs as the caller, so the
-- tenant_isolation policies and FORCE ROW LEVEL SECURITY apply to every row
-- it reads or writes. The tenant context is set transaction-locally (the
-- statement's own transaction), exactly as `Store::begin` sets it, and a
-- tenant id that is not the row's fails the policy's WITH CHECK.
--
-- Two indexes become redundant and go: (tenant_id, source) is the prefix of
-- the unique (tenant_id, source, provider_event_id), and (tenant_id, status)
-- the prefix of idx_events_tenant_status_id (0005); each cost an index
-- insert per event and served no query the longer ones do not.
--
-- Returns one row: the new event's id and status and how many held events
-- it released, or (NULL, NULL, 0) for a duplicate.
CREATE FUNCTION autobiz_event_insert(
    p_tenant            TEXT,
    p_source            TEXT,
    p_event_type        TEXT,
    p_provider_event_id TEXT,
    p_entity_id         TEXT,
    p_occurred_at       TIMESTAMPTZ,
    p_payload           JSONB,
    p_payload_sha256    TEXT,
    p_waiting_for       TEXT,
    p_hold_until        TIMESTAMPTZ,
    p_now               TIMESTAMPTZ
) RETURNS TABLE (o_id BIGINT, o_status TEXT, o_released BIGINT)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
-- The statements' parameters never change their best plan (index lookups
-- by tenant, source and entity): plan them once per session, not per call.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    n BIGINT;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant, true);
    o_released := 0;
    INSERT INTO event_store (tenant_id, source, event_type, provider_event_id, entity_id, occurred_at, payload,
                             payload_sha256, signature_valid, status, waiting_for, hold_until,
                             created_at, updated_at)
    VALUES (p_tenant, p_source, p_event_type, p_provider_event_id, p_entity_id, p_occurred_at, p_payload,
            p_payload_sha256, TRUE,
            CASE WHEN p_waiting_for IS NULL OR EXISTS (
                     SELECT 1 FROM event_store p
                      WHERE p.tenant_id = p_tenant AND p.source = p_source AND p.entity_id = p_entity_id
                        AND p.event_type = p_waiting_for AND p.status <> 'HELD')
                 THEN 'READY' ELSE 'HELD' END,
            p_waiting_for, p_hold_until, p_now, p_now)
    ON CONFLICT (tenant_id, source, provider_event_id) DO NOTHING
    RETURNING id, status INTO o_id, o_status;
    IF o_id IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- Release the entity's events that waited for this one, and those that
    -- waited for them (a chain is as long as the precedence table).
    IF p_entity_id IS NOT NULL AND o_status = 'READY' THEN
        FOR i IN 1..8 LOOP
            UPDATE event_store SET status = 'READY', updated_at = p_now
             WHERE tenant_id = p_tenant AND source = p_source AND entity_id = p_entity_id AND status = 'HELD'
               AND EXISTS (
                   SELECT 1 FROM event_store p
                    WHERE p.tenant_id = p_tenant AND p.source = p_source AND p.entity_id = p_entity_id
                      AND p.event_type = event_store.waiting_for AND p.status <> 'HELD');
            GET DIAGNOSTICS n = ROW_COUNT;
            o_released := o_released + n;
            EXIT WHEN n = 0;
        END LOOP;
    END IF;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION autobiz_event_insert(TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION autobiz_event_insert(TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ) TO autobiz_kernel;
DROP INDEX IF EXISTS idx_events_tenant_source;
DROP INDEX IF EXISTS idx_events_tenant_status;
