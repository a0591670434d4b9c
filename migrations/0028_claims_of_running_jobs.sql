-- HOT claims 5/10: a claims row for every job running now that has none, one row per
-- worker. The lock waits for the claims in flight to commit (a claim of a daemon of the
-- release before that began before 0027 committed ran penguin.claim_after's old body and
-- wrote no row) and keeps new ones out until this commits. Runs while
-- jobs_running_since_idx still exists (0032 drops it).
lock table penguin.jobs in share mode;
insert into penguin.claims (worker, claim, claimed_at, ids)
select coalesce(j.leased_by, 'unknown worker'), nextval('penguin.claims_legacy_seq'),
       min(j.attempted_at), array_agg(j.id order by j.id)
  from penguin.jobs j
 where j.state = 'running'
   and not exists (select 1 from penguin.claims c where j.id = any(c.ids))
 group by j.leased_by;
