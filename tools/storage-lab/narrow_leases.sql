-- Prototype: the claim writes one narrow lease row per job (penguin.lab_leases) instead of a
-- new version of the job row; a shared cursor row per queue serialises the claims. The
-- outcome updates the job and deletes its leases.
begin;
select priority as cp, quote_literal(run_at::text) as cr, id as ci from penguin.lab_cursor where queue = 'default' for update \gset
with picked as (select c.id, c.priority, c.run_at from penguin.jobs c where c.queue = 'default' and c.state in ('available','scheduled','retryable') and c.run_at <= now() and c.kind = any('{noop}') and (c.priority, c.run_at, c.id) > (:cp::smallint, cast(:cr as timestamptz), :ci::bigint) order by c.priority, c.run_at, c.id limit 500),
 l as (insert into penguin.lab_leases (job_id, worker, expires_at) select id, 'w1', now() + interval '30s' from picked returning job_id),
 cur as (update penguin.lab_cursor set (priority, run_at, id) = (select priority, run_at, id from picked order by priority desc, run_at desc, id desc limit 1) where queue = 'default' and exists (select 1 from picked))
select quote_literal(array_agg(j.id)::text) as ids, count(j.payload) from penguin.jobs j where j.id = any(array(select job_id from l)) \gset
commit;
begin;
update penguin.jobs j set state = 'completed', finished_at = now(), attempt = attempt + 1, attempted_at = now() where j.id = any(:ids::bigint[]);
delete from penguin.lab_leases where job_id = any(:ids::bigint[]);
commit;
