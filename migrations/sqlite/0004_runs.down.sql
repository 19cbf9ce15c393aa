-- Reverts 0004_runs (SQLite). Run states stay in state_versions.
DROP TABLE IF EXISTS runs;
