-- The projector's log read filters on aggregate_type and walks (txid, position).
-- With only (txid, position) indexed, a table without fresh statistics (autovacuum
-- off, or a burst of inserts since the last ANALYZE) gets a plan that ANDs in every
-- 'Tenant' entry of the primary key: work that grows with the log, paid after every
-- commit. This index matches the query exactly, so the plan no longer depends on
-- statistics. It replaces the old one, which nothing else reads.
CREATE INDEX IF NOT EXISTS events_log_order_by_type ON events (aggregate_type, txid, position);
DROP INDEX IF EXISTS events_log_order;
