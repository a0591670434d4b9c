-- The dashboard's last hour of each queue (issue 17): jobs finished per minute by outcome,
-- added by every daemon's pools every few seconds, and the queue's depth, sampled once a
-- minute by whichever daemon's alert evaluator gets there first. Pruned with
-- [retention] metrics.
create table penguin.queue_minutes (
    minute        timestamptz not null,
    queue         text not null,
    completed     bigint not null default 0,
    retried       bigint not null default 0,
    dead_lettered bigint not null default 0,
    available     bigint,
    scheduled     bigint,
    running       bigint,
    retryable     bigint,
    primary key (minute, queue)
);
