-- 0010_batch_guard: nothing on PostgreSQL. On SQLite this migration adds the
-- check of a batched transaction's statement (kernel/src/store/batch.rs);
-- PostgreSQL runs each statement at once in its transaction and the store
-- checks its rows there. Kept so both backends share one version sequence.
SELECT 1;
