-- Reconciliation (PostgreSQL): the audit trail of what the detector did
-- with each drift case. Keep in step with ../sqlite.
--
-- Drift cases themselves are rows of `reconciliation` (0001), one per
-- (tenant, case_id): the case id is derived from the drift (kind and
-- entity), so a rerun that finds the same drift opens no second case.
-- Case statuses: OPEN (found), AWAITING_HUMAN (financial drift or an
-- escalated event: a hitl_requests row is pending), REPAIRED (non-financial
-- drift repaired automatically), RESOLVED (a human approved), DISMISSED (a
-- human denied).
--
-- reconciliation_actions is append-only evidence, like receipts: what was
-- wrong, what was done, by which principal, when. The database refuses to
-- change or remove a row, whoever asks, and the kernel role is granted
-- SELECT and INSERT only.
CREATE TABLE reconciliation_actions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    action      TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    wrong       JSONB NOT NULL,
    done        JSONB NOT NULL,
    principal   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, case_id) REFERENCES reconciliation (tenant_id, case_id)
);
CREATE INDEX idx_reconciliation_actions_case ON reconciliation_actions (tenant_id, case_id, id);
CREATE INDEX idx_reconciliation_tenant_status ON reconciliation (tenant_id, status);

CREATE FUNCTION autobiz_reconciliation_actions_immutable() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'reconciliation actions are immutable' USING ERRCODE = 'AB001';
END
$$;
CREATE TRIGGER reconciliation_actions_immutable_row BEFORE UPDATE OR DELETE ON reconciliation_actions
    FOR EACH ROW EXECUTE FUNCTION autobiz_reconciliation_actions_immutable();
CREATE TRIGGER reconciliation_actions_immutable_truncate BEFORE TRUNCATE ON reconciliation_actions
    FOR EACH STATEMENT EXECUTE FUNCTION autobiz_reconciliation_actions_immutable();

ALTER TABLE reconciliation_actions ENABLE ROW LEVEL SECURITY;
ALTER TABLE reconciliation_actions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON reconciliation_actions
    USING (tenant_id = autobiz_current_tenant())
    WITH CHECK (tenant_id = autobiz_current_tenant());
GRANT SELECT, INSERT ON reconciliation_actions TO autobiz_kernel;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO autobiz_kernel;
