-- 0007_event_insert_function: PostgreSQL only (one round trip per verified
-- webhook through a PL/pgSQL function). SQLite is in the process: the
-- kernel's statements cost no round trip, so nothing changes here; the
-- version exists to keep both backends in step.
SELECT 1;
