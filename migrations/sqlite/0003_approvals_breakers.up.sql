-- Human approvals and circuit breakers (SQLite). Keep in step with ../postgres.
--
-- hitl_requests (created empty by 0001) gains what a decision needs: the
-- tool's side-effect class, the rule that matched, who may decide, and the
-- rule's timeout policy. The defaults are the safe ones for a row written
-- before this migration: treated as FINANCIAL, failing on timeout.
-- Decisions are immutable in the database too: a request is born PENDING,
-- leaves PENDING once (to APPROVED, DENIED or EXPIRED), is never changed
-- again and never deleted. The store's conditional UPDATE ... WHERE status =
-- 'PENDING' decides races; the triggers stop anything else.

ALTER TABLE hitl_requests ADD COLUMN side_effect TEXT NOT NULL DEFAULT 'FINANCIAL';
ALTER TABLE hitl_requests ADD COLUMN rule_index INTEGER;
ALTER TABLE hitl_requests ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE hitl_requests ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'FAIL';
CREATE INDEX idx_hitl_tenant_status ON hitl_requests (tenant_id, status);

CREATE TRIGGER hitl_requests_born_pending BEFORE INSERT ON hitl_requests
WHEN NEW.status <> 'PENDING'
BEGIN
    SELECT RAISE(ABORT, 'a HITL request is created PENDING');
END;

CREATE TRIGGER hitl_requests_decided_once BEFORE UPDATE ON hitl_requests
WHEN OLD.status <> 'PENDING' OR NEW.status NOT IN ('PENDING', 'APPROVED', 'DENIED', 'EXPIRED')
BEGIN
    SELECT RAISE(ABORT, 'a decided HITL request is immutable');
END;

CREATE TRIGGER hitl_requests_never_deleted BEFORE DELETE ON hitl_requests
BEGIN
    SELECT RAISE(ABORT, 'HITL requests are never deleted');
END;

-- One row per (tenant, dependency). `version` makes every transition a
-- compare-and-set, so two processes agree on one outcome. `failures` holds
-- the timestamps of recent failures (JSON array, pruned to the window).
CREATE TABLE circuit_breakers (
    tenant_id          TEXT NOT NULL,
    name               TEXT NOT NULL,
    state              TEXT NOT NULL DEFAULT 'CLOSED' CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    version            INTEGER NOT NULL DEFAULT 0,
    failures           TEXT NOT NULL DEFAULT '[]',
    opened_at          TEXT,
    half_open_at       TEXT,
    probes_in_flight   INTEGER NOT NULL DEFAULT 0 CHECK (probes_in_flight >= 0),
    last_transition_at TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
