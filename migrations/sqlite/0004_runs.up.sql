-- Runs (SQLite): the index of workflow runs, so unfinished ones can be found
-- and resumed. The run's state itself is the versioned entity
-- `<tenant>/run/<run_id>` in state_versions. Keep in step with ../postgres.
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id     TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    workflow      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('RUNNING', 'WAITING_APPROVAL', 'COMPLETED', 'FAILED', 'ABORTED')),
    principal     TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    event         TEXT NOT NULL,
    pins          TEXT NOT NULL,
    transcript    TEXT,
    waiting_for   TEXT,
    termination   TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (tenant_id, run_id)
);
CREATE INDEX idx_runs_tenant_status ON runs (tenant_id, status);
