-- 0007_event_insert_function (SQLite): PostgreSQL gets a PL/pgSQL function
-- for one round trip per verified webhook; SQLite is in the process, so its
-- statements cost no round trip and stay in the kernel. Both drop the two
-- redundant event_store indexes: (tenant_id, source) is the prefix of the
-- unique (tenant_id, source, provider_event_id), and (tenant_id, status) the
-- prefix of idx_events_tenant_status_id (0005); each cost an index insert
-- per event and served no query the longer ones do not.
DROP INDEX IF EXISTS idx_events_tenant_source;
DROP INDEX IF EXISTS idx_events_tenant_status;
