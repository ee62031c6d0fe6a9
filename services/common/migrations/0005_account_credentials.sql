-- Each broker account's current access token once it has been rotated here (issue 14 §2):
-- the one owner of "which token is current", so every shard of the account follows it and a
-- shard that restarts uses it too. An account without a row uses its configuration's token
-- (version 0). The token is never logged or reported; only the version and who rotated it.
CREATE TABLE account_credentials (
    account_id    text PRIMARY KEY,
    access_token  text NOT NULL CHECK (access_token <> ''),
    version       bigint NOT NULL CHECK (version > 0),
    rotated_at    timestamptz NOT NULL DEFAULT now(),
    rotated_by    text NOT NULL
);
