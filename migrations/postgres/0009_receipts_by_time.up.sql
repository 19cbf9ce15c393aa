-- 0009_receipts_by_time: the daily closeout reads one tool's receipts made
-- since a time (`Store::receipt_results_since`): the day's captures and the
-- week before it. Through (tenant_id, tool) alone that read every receipt
-- the tool ever had, a cost that grew with the store's whole history.
CREATE INDEX IF NOT EXISTS idx_receipts_tenant_tool_created ON receipts (tenant_id, tool, created_at);
