-- Reverts 0006_reconciliation_actions (PostgreSQL): the audit trail of
-- reconciliation actions is dropped; the cases in `reconciliation` stay.
DROP TABLE IF EXISTS reconciliation_actions;
DROP FUNCTION IF EXISTS autobiz_reconciliation_actions_immutable();
DROP INDEX IF EXISTS idx_reconciliation_tenant_status;
