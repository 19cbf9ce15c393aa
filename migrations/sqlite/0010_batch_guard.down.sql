-- Reverts 0010_batch_guard: the guard view and its trigger go; no data changes.
DROP TRIGGER IF EXISTS batch_guard_check;
DROP VIEW IF EXISTS batch_guard;
