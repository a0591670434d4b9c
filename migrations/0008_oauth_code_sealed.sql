-- The authorization code a provider hands the OAuth callback is a credential for the few
-- seconds until the exchange job redeems it: it is now stored encrypted like every other
-- secret (envelope encryption, additional data "oauth_states.code_enc:<state id>"), so
-- nothing in penguin.* holds a credential in plaintext. Codes stored in plaintext before
-- this migration are dropped: they expire within minutes anyway, and the user connects
-- again.
update penguin.oauth_states set code = null where code is not null;
alter table penguin.oauth_states rename column code to code_enc;
