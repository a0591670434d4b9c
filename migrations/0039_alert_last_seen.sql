-- When an evaluated alert's condition was last found to hold: it resolves only once clear
-- for [alerts] clear_after (no flapping at a threshold's edge). Null on alerts from before:
-- read as their opening time.
alter table penguin.alerts add column last_seen_at timestamptz;
