-- OAuth 2.1 authorization server state. Secrets (client secrets, codes, refresh tokens) are
-- stored as SHA-256 hex digests only.

CREATE TABLE oauth_clients (
    client_id            TEXT PRIMARY KEY,
    secret_hash          TEXT,                     -- NULL for public clients (`none`)
    auth_method          TEXT NOT NULL,            -- none | client_secret_post | client_secret_basic
    redirect_uris        TEXT NOT NULL,            -- JSON array, matched exactly
    client_name          TEXT,
    scope                TEXT NOT NULL,
    created_at_ms        INTEGER NOT NULL
);

CREATE TABLE oauth_codes (
    code_hash            TEXT PRIMARY KEY,
    client_id            TEXT NOT NULL,
    redirect_uri         TEXT NOT NULL,
    code_challenge       TEXT NOT NULL,            -- S256 only
    resource             TEXT NOT NULL,
    scope                TEXT NOT NULL,
    expires_at_ms        INTEGER NOT NULL
);

CREATE TABLE oauth_refresh_tokens (
    token_hash           TEXT PRIMARY KEY,
    family_id            TEXT NOT NULL,            -- every rotation of one grant shares it
    client_id            TEXT NOT NULL,
    resource             TEXT NOT NULL,
    scope                TEXT NOT NULL,
    expires_at_ms        INTEGER NOT NULL,
    used                 INTEGER NOT NULL DEFAULT 0,
    revoked              INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX oauth_refresh_family ON oauth_refresh_tokens (family_id);
