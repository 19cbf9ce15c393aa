-- Reverts 0010_batch_guard: nothing to revert on PostgreSQL.
SELECT 1;
