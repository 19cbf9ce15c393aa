-- Reverts 0001_foundation: drops every foundation table. Data is lost; take a
-- copy of the database file first (see README, "Downgrading").
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
