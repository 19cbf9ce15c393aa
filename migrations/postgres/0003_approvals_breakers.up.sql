-- Human approvals and circuit breakers (PostgreSQL). Keep in step with ../sqlite.
--
-- hitl_requests (created empty by 0001) gains what a decision needs: the
-- tool's side-effect class, the rule that matched, who may decide, and the
-- rule's timeout policy. The defaults are the safe ones for a row written
-- before this migration: treated as FINANCIAL, failing on timeout.
-- Decisions are immutable in the database too: a request is born PENDING,
-- leaves PENDING once (to APPROVED, DENIED or EXPIRED), is never changed
-- again and never deleted, whoever connects. The store's conditional
-- UPDATE ... WHERE status = 'PENDING' decides races; the trigger stops
-- anything else (SQLSTATE 23000, integrity_constraint_violation).

ALTER TABLE hitl_requests ADD COLUMN side_effect TEXT NOT NULL DEFAULT 'FINANCIAL';
ALTER TABLE hitl_requests ADD COLUMN rule_index BIGINT;
ALTER TABLE hitl_requests ADD COLUMN approvers JSONB NOT NULL DEFAULT '[]';
ALTER TABLE hitl_requests ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'FAIL';
ALTER TABLE hitl_requests ADD CONSTRAINT hitl_requests_status_known
    CHECK (status IN ('PENDING', 'APPROVED', 'DENIED', 'EXPIRED'));
CREATE INDEX idx_hitl_tenant_status ON hitl_requests (tenant_id, status);

CREATE FUNCTION autobiz_hitl_immutable() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'PENDING' THEN
            RAISE EXCEPTION 'a HITL request is created PENDING' USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status <> 'PENDING' THEN
            RAISE EXCEPTION 'HITL request % is decided (%) and immutable', OLD.request_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'HITL requests are never deleted' USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER hitl_requests_immutable
    BEFORE INSERT OR UPDATE OR DELETE ON hitl_requests
    FOR EACH ROW EXECUTE FUNCTION autobiz_hitl_immutable();

-- One row per (tenant, dependency). `version` makes every transition a
-- compare-and-set, so two processes agree on one outcome. `failures` holds
-- the timestamps of recent failures (pruned to the window).
CREATE TABLE circuit_breakers (
    tenant_id          TEXT NOT NULL,
    name               TEXT NOT NULL,
    state              TEXT NOT NULL DEFAULT 'CLOSED' CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    version            BIGINT NOT NULL DEFAULT 0,
    failures           JSONB NOT NULL DEFAULT '[]',
    opened_at          TIMESTAMPTZ,
    half_open_at       TIMESTAMPTZ,
    probes_in_flight   BIGINT NOT NULL DEFAULT 0 CHECK (probes_in_flight >= 0),
    last_transition_at TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

ALTER TABLE circuit_breakers ENABLE ROW LEVEL SECURITY;
ALTER TABLE circuit_breakers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON circuit_breakers
    USING (tenant_id = autobiz_current_tenant())
    WITH CHECK (tenant_id = autobiz_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON circuit_breakers TO autobiz_kernel;
