-- Today's statements, one pool: a full claim of 500 (penguin.claim) and the outcome as an
-- update to completed. Two non-HOT versions per job.
select quote_literal(array_agg(id)::text) as ids from penguin.claim('default', 500, 'w1', 30, '{noop}') \gset
update penguin.jobs j set state = 'completed', finished_at = now(), result = null, started_at = coalesce(null, j.started_at), leased_by = null, lease_expires_at = null where j.id = any(:ids::bigint[]) and j.leased_by = 'w1';
