-- no-transaction
-- Checks the rows written before migration 0022 against its constraint: finished_at is set
-- exactly when a job is completed or cancelled. VALIDATE takes a lock that lets inserts and
-- updates go on while it reads the table.
alter table penguin.jobs validate constraint jobs_finished_only_when_final;
