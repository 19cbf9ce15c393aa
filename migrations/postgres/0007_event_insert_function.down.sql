-- Reverts 0007_event_insert_function (PostgreSQL): the kernel of 0006 and
-- earlier inserts events in its own transaction; no data changes.
DROP FUNCTION IF EXISTS autobiz_event_insert(TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ);
