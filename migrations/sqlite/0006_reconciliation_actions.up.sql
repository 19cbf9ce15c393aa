-- Reconciliation (SQLite): the audit trail of what the detector did with
-- each drift case. Keep in step with ../postgres (which documents the case
-- statuses). reconciliation_actions is append-only evidence, like
-- receipts: what was wrong, what was done, by which principal, when; the
-- database refuses to change or remove a row.
CREATE TABLE reconciliation_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    action      TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    wrong       TEXT NOT NULL,
    done        TEXT NOT NULL,
    principal   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    FOREIGN KEY (tenant_id, case_id) REFERENCES reconciliation (tenant_id, case_id)
);
CREATE INDEX idx_reconciliation_actions_case ON reconciliation_actions (tenant_id, case_id, id);
CREATE INDEX idx_reconciliation_tenant_status ON reconciliation (tenant_id, status);

CREATE TRIGGER reconciliation_actions_immutable_update BEFORE UPDATE ON reconciliation_actions
BEGIN
    SELECT RAISE(ABORT, 'reconciliation actions are immutable');
END;
CREATE TRIGGER reconciliation_actions_immutable_delete BEFORE DELETE ON reconciliation_actions
BEGIN
    SELECT RAISE(ABORT, 'reconciliation actions are immutable');
END;
