-- Reverts 0003_approvals_breakers: breaker state is lost (breakers start
-- CLOSED again); HITL requests keep their rows but lose the decision columns
-- and the immutability triggers.
DROP TABLE IF EXISTS circuit_breakers;
DROP TRIGGER IF EXISTS hitl_requests_never_deleted;
DROP TRIGGER IF EXISTS hitl_requests_decided_once;
DROP TRIGGER IF EXISTS hitl_requests_born_pending;
DROP INDEX IF EXISTS idx_hitl_tenant_status;
ALTER TABLE hitl_requests DROP COLUMN on_timeout;
ALTER TABLE hitl_requests DROP COLUMN approvers;
ALTER TABLE hitl_requests DROP COLUMN rule_index;
ALTER TABLE hitl_requests DROP COLUMN side_effect;
