-- Prototype: the claim writes ONE row per batch (penguin.lab_batches: the ids, the worker,
-- the lease) and nothing in the job rows; a shared cursor row per queue serialises the
-- claims. The outcome is the job's only new version (an update to completed); the batch
-- row goes when its jobs are done.
begin;
select priority as cp, quote_literal(run_at::text) as cr, id as ci from penguin.lab_cursor where queue = 'default' for update \gset
with picked as (select c.id, c.priority, c.run_at from penguin.jobs c where c.queue = 'default' and c.state in ('available','scheduled','retryable') and c.run_at <= now() and c.kind = any('{noop}') and (c.priority, c.run_at, c.id) > (:cp::smallint, cast(:cr as timestamptz), :ci::bigint) order by c.priority, c.run_at, c.id limit 500),
 b as (insert into penguin.lab_batches (worker, ids, expires_at) select 'w1', array_agg(id), now() + interval '30s' from picked returning id, ids),
 cur as (update penguin.lab_cursor set (priority, run_at, id) = (select priority, run_at, id from picked order by priority desc, run_at desc, id desc limit 1) where queue = 'default' and exists (select 1 from picked))
select quote_literal(array_agg(j.id)::text) as ids, count(j.payload), (select id from b) as bid from penguin.jobs j where j.id = any(array(select unnest(ids) from b)) \gset
commit;
update penguin.jobs j set state = 'completed', finished_at = now(), attempt = attempt + 1, attempted_at = now() where j.id = any(:ids::bigint[]);
delete from penguin.lab_batches where id = :bid;
