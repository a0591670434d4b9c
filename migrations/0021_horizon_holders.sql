-- Who holds the xmin horizon, for the daemon's warning and `stats` (docs/storage.md).
-- pg_stat_activity shows any role a session's backend_xmin, but its xact_start and state only
-- to that session's role, to superusers and to members of pg_read_all_stats. Read directly by
-- the runtime role, a transaction of another role (a report, an operator's pg_dump: the very
-- transactions the warning is for) was seen with no time held, and the warning, which fires
-- on time held, never fired. This function runs as its owner (the role that migrates) and
-- returns no query text, so the runtime role learns who holds the horizon, since when, and
-- nothing else. It sees every session when its owner is a superuser or a member of
-- pg_read_all_stats (`roles print-sql` grants that where it may; the daemon warns otherwise).
create function penguin.horizon_holders()
returns table (holder text, pid int, name text, state text, held_secs float8, xmin_age int8)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select 'session', a.pid, coalesce(a.application_name, ''), a.state,
           extract(epoch from now() - a.xact_start)::float8, age(a.backend_xmin)::int8
      from pg_stat_activity a
     where a.backend_xmin is not null and a.pid <> pg_backend_pid()
    union all
    select 'replication slot', null, s.slot_name::text, null, null,
           greatest(age(s.xmin), age(s.catalog_xmin))::int8
      from pg_replication_slots s
     where s.xmin is not null or s.catalog_xmin is not null
    union all
    select 'prepared transaction', null, p.gid, null,
           extract(epoch from now() - p.prepared)::float8, age(p.transaction)::int8
      from pg_prepared_xacts p
$$;
revoke execute on function penguin.horizon_holders() from public;

-- Whether penguin.horizon_holders sees every role's sessions; when false, names the role to
-- grant pg_read_all_stats to.
create function penguin.horizon_blind_spot()
returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select case when r.rolsuper or pg_has_role(r.oid, 'pg_read_all_stats', 'member')
                then null else r.rolname::text end
      from pg_proc p join pg_roles r on r.oid = p.proowner
     where p.oid = 'penguin.horizon_holders()'::regprocedure
$$;
