-- Hardening the core (issue 13).
--
-- penguin.daemons: every running daemon with worker pools says which kinds it handles and
-- refreshes `seen_at` while it lives. A job whose kind no live daemon handles is not
-- claimed by anyone: it waits (a rolling deploy brings a daemon that knows it) and is
-- dead-lettered as unknown_kind only after [daemon] unknown_kind_grace. Logged, so a
-- database restart does not make every kind look orphaned at once.
create table penguin.daemons (
    id         text primary key,
    kinds      text[] not null,
    queues     text[] not null,
    started_at timestamptz not null default now(),
    seen_at    timestamptz not null default now()
);

-- When the current attempt's handler started (attempted_at is when it was claimed). Set
-- by a mark shortly after a start, and with the outcome; NULL while a claimed job waits in
-- a daemon's prefetch buffer. The rescuer refunds the attempt of an expired job that never
-- started, so jobs claimed ahead by a killed daemon are not charged for work never done.
alter table penguin.jobs add column started_at timestamptz;
