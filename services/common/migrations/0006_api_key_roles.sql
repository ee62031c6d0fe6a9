-- Issue 15: the service role (our services call each other with it) and key expiry.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('user', 'admin', 'service'));
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;
