-- Reverts 0003_approvals_breakers: breaker state is lost (breakers start
-- CLOSED again); HITL requests keep their rows but lose the decision columns
-- and the immutability trigger.
DROP TABLE IF EXISTS circuit_breakers;
DROP TRIGGER IF EXISTS hitl_requests_immutable ON hitl_requests;
DROP FUNCTION IF EXISTS autobiz_hitl_immutable();
DROP INDEX IF EXISTS idx_hitl_tenant_status;
ALTER TABLE hitl_requests DROP CONSTRAINT IF EXISTS hitl_requests_status_known;
ALTER TABLE hitl_requests DROP COLUMN IF EXISTS on_timeout;
ALTER TABLE hitl_requests DROP COLUMN IF EXISTS approvers;
ALTER TABLE hitl_requests DROP COLUMN IF EXISTS rule_index;
ALTER TABLE hitl_requests DROP COLUMN IF EXISTS side_effect;
