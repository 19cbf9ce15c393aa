-- Runs (PostgreSQL): the index of workflow runs, so unfinished ones can be
-- found and resumed. The run's state itself is the versioned entity
-- `<tenant>/run/<run_id>` in state_versions. Keep in step with ../sqlite.
CREATE TABLE runs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    workflow      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('RUNNING', 'WAITING_APPROVAL', 'COMPLETED', 'FAILED', 'ABORTED')),
    principal     TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    event         JSONB NOT NULL,
    pins          JSONB NOT NULL,
    transcript    TEXT,
    waiting_for   TEXT,
    termination   TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, run_id)
);
CREATE INDEX idx_runs_tenant_status ON runs (tenant_id, status);
ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON runs
    USING (tenant_id = autobiz_current_tenant())
    WITH CHECK (tenant_id = autobiz_current_tenant());
GRANT SELECT, INSERT, UPDATE ON runs TO autobiz_kernel;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO autobiz_kernel;
