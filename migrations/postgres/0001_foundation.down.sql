-- Reverts 0001_foundation: drops every foundation table and the tenant
-- function. Data is lost; take a pg_dump first (see README, "Downgrading").
-- The role autobiz_kernel is cluster-wide and may serve other databases, so it
-- is left in place; drop it by hand with DROP ROLE once nothing uses it.
REVOKE SELECT ON _sqlx_migrations FROM autobiz_kernel;
DROP TABLE IF EXISTS audit_events;
DROP TABLE IF EXISTS security_events;
DROP TABLE IF EXISTS idempotency_keys;
DROP TABLE IF EXISTS hitl_requests;
DROP TABLE IF EXISTS reconciliation;
DROP TABLE IF EXISTS event_store;
DROP TABLE IF EXISTS traces;
DROP TABLE IF EXISTS receipts;
DROP TABLE IF EXISTS state_versions;
DROP TABLE IF EXISTS tenants;
DROP FUNCTION IF EXISTS autobiz_current_tenant();
