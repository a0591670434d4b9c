-- A single-event request (Stripe, Mailgun) is its own event: keep only its raw bytes and
-- let readers parse them, instead of storing the same kilobyte twice (raw and jsonb).
-- Batches (SendGrid) keep each element as jsonb as well.
alter table penguin.inbound_events alter column payload drop not null;
