-- Reverts 0006_reconciliation_actions (SQLite): the audit trail of
-- reconciliation actions is dropped; the cases in `reconciliation` stay.
DROP TRIGGER IF EXISTS reconciliation_actions_immutable_delete;
DROP TRIGGER IF EXISTS reconciliation_actions_immutable_update;
DROP TABLE IF EXISTS reconciliation_actions;
DROP INDEX IF EXISTS idx_reconciliation_tenant_status;
