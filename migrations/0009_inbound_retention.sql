-- Stored webhooks are pruned after `[retention] inbound_events` (30 days by default) by the
-- maintenance.prune job. A BRIN index finds the old rows (the table is append-only, so
-- received_at follows the physical order) at almost no cost to the shim's inserts, and the
-- rows pointing at a pruned event (set to null) are found by index, not by a scan.
create index inbound_events_received_brin on penguin.inbound_events using brin (received_at);
create index suppressions_inbound_event_idx on penguin.suppressions (inbound_event_id)
    where inbound_event_id is not null;
