-- Reverts 0004_runs (PostgreSQL). Run states stay in state_versions.
DROP TABLE IF EXISTS runs;
