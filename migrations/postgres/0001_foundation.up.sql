-- autobiz foundation schema (PostgreSQL). Keep version numbers in step with ../sqlite.
--
-- Isolation model:
--   * Migrations run as the schema owner. The kernel connects at run time as
--     the role `autobiz_kernel`, created here: LOGIN, not superuser, no
--     BYPASSRLS, owner of nothing. `Store::connect` refuses any other kind of
--     role (STORE_ROLE_UNSAFE).
--   * Every tenant table has ENABLE and FORCE ROW LEVEL SECURITY and one
--     policy whose USING and WITH CHECK compare tenant_id with
--     autobiz_current_tenant(): the transaction-local setting app.tenant_id
--     (set_config(..., true)). Unset reads as NULL and, on a pooled
--     connection after an earlier transaction set it, as ''. NULLIF maps both
--     to NULL, `tenant_id = NULL` is never true: such a transaction sees zero
--     rows and every write fails WITH CHECK. The policy never casts, so it
--     cannot raise an error of its own.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'autobiz_kernel') THEN
        CREATE ROLE autobiz_kernel LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION;
    END IF;
EXCEPTION
    -- Another database on the same cluster created it concurrently.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

CREATE FUNCTION autobiz_current_tenant() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '') $$;

CREATE TABLE tenants (
    tenant_id    TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE state_versions (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    version        BIGINT NOT NULL CHECK (version >= 1),
    state          JSONB NOT NULL,
    correlation_id TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, entity_id, version)
);

CREATE TABLE receipts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    receipt_id      TEXT NOT NULL,
    execution_id    TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    tool            TEXT NOT NULL,
    tool_version    TEXT NOT NULL,
    internal_key    TEXT NOT NULL,
    external_key    TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT,
    status          TEXT NOT NULL,
    amount_minor    BIGINT,
    currency        TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, receipt_id)
);
CREATE INDEX idx_receipts_tenant_run ON receipts (tenant_id, run_id);

CREATE TABLE traces (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    run_id         TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    record         JSONB NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, run_id, seq)
);

CREATE TABLE event_store (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    source            TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    entity_id         TEXT,
    occurred_at       TIMESTAMPTZ,
    payload           JSONB NOT NULL,
    payload_sha256    TEXT NOT NULL,
    signature_valid   BOOLEAN NOT NULL,
    status            TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, source, provider_event_id)
);
CREATE INDEX idx_events_tenant_source ON event_store (tenant_id, source);
CREATE INDEX idx_events_tenant_status ON event_store (tenant_id, status);

CREATE TABLE reconciliation (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    entity_id  TEXT,
    status     TEXT NOT NULL,
    detail     JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, case_id)
);

CREATE TABLE hitl_requests (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    request_id TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    step       TEXT NOT NULL,
    tool       TEXT NOT NULL,
    payload    JSONB NOT NULL,
    status     TEXT NOT NULL,
    approver   TEXT,
    reason     TEXT,
    decided_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, request_id)
);

CREATE TABLE idempotency_keys (
    tenant_id           TEXT NOT NULL,
    internal_key        TEXT NOT NULL,
    external_key        TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    status              TEXT NOT NULL,
    response            JSONB,
    first_seen_at       TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, internal_key)
);

CREATE TABLE security_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    principal      TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    kind           TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    target_tenant  TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_security_events_tenant ON security_events (tenant_id, created_at);

CREATE TABLE audit_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    principal      TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_events_tenant ON audit_events (tenant_id, created_at);

-- Row-level security and grants, the same for every tenant table.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'state_versions', 'receipts', 'traces', 'event_store',
                             'reconciliation', 'hitl_requests', 'idempotency_keys',
                             'security_events', 'audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
                            USING (tenant_id = autobiz_current_tenant())
                            WITH CHECK (tenant_id = autobiz_current_tenant())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO autobiz_kernel', t);
    END LOOP;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO autobiz_kernel', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO autobiz_kernel;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO autobiz_kernel;
GRANT EXECUTE ON FUNCTION autobiz_current_tenant() TO autobiz_kernel;
-- The kernel checks at connect time that the schema is current.
GRANT SELECT ON _sqlx_migrations TO autobiz_kernel;
