-- 0010_batch_guard: the check of a batched transaction's statement
-- (kernel/src/store/batch.rs). A batch is sent to SQLite as one query,
-- `BEGIN; s1; ...; COMMIT`; a statement that must change exactly one row is
-- followed by `INSERT INTO batch_guard (ok) VALUES (changes() = 1)`, which
-- stores nothing (the view has no table behind it) and, when the statement
-- before changed another number of rows, aborts with an error: the rest of
-- the batch, its COMMIT included, does not run, and the store rolls back.
CREATE VIEW IF NOT EXISTS batch_guard (ok) AS SELECT 1;
CREATE TRIGGER IF NOT EXISTS batch_guard_check INSTEAD OF INSERT ON batch_guard
BEGIN
    SELECT RAISE(ABORT, 'a batch guard failed') WHERE NEW.ok IS NOT 1;
END;
