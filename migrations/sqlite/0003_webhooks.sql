-- Webhooks: secret URLs whose deliveries start runs. A URL token is stored as a SHA-256 digest
-- only; a signing secret is sealed (XChaCha20-Poly1305, key outside the database).

CREATE TABLE webhooks (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    enabled              INTEGER NOT NULL,
    token_hash           TEXT NOT NULL UNIQUE,
    previous_token_hash  TEXT,                     -- still accepted until the time below
    previous_token_expires_at_ms INTEGER,
    job_id               TEXT REFERENCES jobs(id), -- runs take this job's settings; the job cannot be deleted meanwhile
    config               TEXT NOT NULL,            -- JSON: template, run settings, signature, limits
    signing_secret       TEXT,                     -- sealed
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL
);

CREATE INDEX webhooks_previous_token ON webhooks (previous_token_hash);
CREATE INDEX webhooks_job ON webhooks (job_id);

-- Delivery ids seen, each answered with the run it started until it expires. WITHOUT ROWID here
-- and below: the primary key is the table, one B-tree to write per delivery instead of two.
CREATE TABLE webhook_deliveries (
    webhook_id           TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    delivery_id          TEXT NOT NULL,
    run_id               TEXT NOT NULL,
    expires_at_ms        INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, delivery_id)
) WITHOUT ROWID;

CREATE INDEX webhook_deliveries_expiry ON webhook_deliveries (expires_at_ms);

-- The request a webhook run came from (body size-capped; no credential headers), for display
-- and replay.
CREATE TABLE run_payloads (
    run_id               TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    content_type         TEXT NOT NULL,
    headers              TEXT NOT NULL,            -- JSON [[name, value], …], names in lower case
    query                TEXT NOT NULL,            -- JSON [[name, value], …]
    body                 BLOB NOT NULL,
    body_bytes           INTEGER NOT NULL,         -- size as received
    truncated            INTEGER NOT NULL
) WITHOUT ROWID;

ALTER TABLE runs ADD COLUMN webhook_id TEXT;
ALTER TABLE runs ADD COLUMN delivery_id TEXT;
CREATE INDEX runs_webhook ON runs (webhook_id, id) WHERE webhook_id IS NOT NULL;

-- Every index a run row is in costs a page write per new run. Runs that are no cron fire, or of no
-- job, need no entry in the indexes that only look those up.
DROP INDEX runs_fire;
CREATE UNIQUE INDEX runs_fire ON runs (job_id, scheduled_for_ms) WHERE scheduled_for_ms IS NOT NULL;
DROP INDEX runs_job_created;
CREATE INDEX runs_job_created ON runs (job_id, id) WHERE job_id IS NOT NULL;
