-- no-transaction
-- Rescue reads running jobs from where the last rescue left off, by claim time
-- (docs/storage.md, section 3.4): while a long transaction elsewhere holds the xmin horizon,
-- every job claimed since left an entry in the running index that VACUUM may not remove,
-- and a rescue that reads them all every 15 s walks millions. attempted_at is set by the
-- claim and never by a heartbeat, so lease extensions stay HOT updates.
create index concurrently if not exists jobs_running_since_idx on penguin.jobs (attempted_at)
    where state = 'running';
