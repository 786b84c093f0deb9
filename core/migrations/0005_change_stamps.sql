-- The gateway keeps the items' facts in memory (gateway/item_table.py) and folds in what
-- changed since it last looked: items.updated_at is indexed already, the stats' and embeddings'
-- stamps are not. Without these, each look (every few seconds per gateway) scanned both tables.
CREATE INDEX IF NOT EXISTS item_stats_updated_at ON item_stats (updated_at);
CREATE INDEX IF NOT EXISTS item_embeddings_updated_at ON item_embeddings (model_version, updated_at);
