-- Reverts 0007_event_insert_function (SQLite): nothing to revert.
SELECT 1;
