-- Alerts raised by jobs take the names the operators' documentation uses (issue 17), and
-- are resolved by the evaluator once their cause is gone (src/credentials/alerts.rs,
-- resolve_raised_alerts):
--   oauth_reauth_required -> reauth_required
--   apikey_test_failed    -> key_test_failed
update penguin.alerts set kind = 'reauth_required' where kind = 'oauth_reauth_required';
update penguin.alerts set kind = 'key_test_failed' where kind = 'apikey_test_failed';

-- `text` as a uuid, or null when it is not one: an alert's subject id is text (a provider's
-- name for some subjects), and comparing it with a uuid column must neither fail the
-- statement nor cast every row of the other side.
create function penguin.uuid_or_null(text) returns uuid
language sql immutable parallel safe as $$
    select case
           when $1 ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
           then $1::uuid
           end
$$;
