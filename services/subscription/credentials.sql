-- Broker account credentials (services/subscription/credentials.py runs every query here).

-- name: rotate
-- A new token bumps the version; the token already current changes nothing (and returns no
-- row: the caller then reads the current one), so every shard of an account seeing the same
-- new Secret may rotate it without the version running away.
INSERT INTO account_credentials AS c (account_id, access_token, version, rotated_at, rotated_by)
VALUES (%(account_id)s, %(token)s, 1, clock_timestamp(), %(actor)s)
ON CONFLICT (account_id) DO UPDATE SET
    access_token = EXCLUDED.access_token,
    version = c.version + 1,
    rotated_at = EXCLUDED.rotated_at,
    rotated_by = EXCLUDED.rotated_by
WHERE c.access_token <> EXCLUDED.access_token
RETURNING c.version, c.rotated_at;

-- name: current
SELECT access_token, version, rotated_at FROM account_credentials WHERE account_id = %(account_id)s;

-- name: versions
SELECT account_id, version, rotated_at FROM account_credentials;

-- name: version
SELECT version FROM account_credentials WHERE account_id = %(account_id)s;
