-- Autopilot schema, SQLite dialect. Times are milliseconds since the Unix epoch (UTC); ids are
-- UUIDv7 text; lists and settings snapshots are JSON text.

CREATE TABLE jobs (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    description          TEXT,
    kind                 TEXT NOT NULL,            -- claude | shell
    prompt               TEXT NOT NULL,            -- the prompt, or the shell command
    schedule_kind        TEXT NOT NULL,            -- cron | at | none
    schedule_expr        TEXT,                     -- cron expression, or RFC 3339 time for `at`
    timezone             TEXT NOT NULL,
    enabled              INTEGER NOT NULL,
    model                TEXT,
    allowed_tools        TEXT NOT NULL,
    disallowed_tools     TEXT NOT NULL,
    max_turns            INTEGER,
    timeout_secs         INTEGER NOT NULL,
    max_cost_usd         REAL,
    misfire_policy       TEXT NOT NULL,
    misfire_cap          INTEGER NOT NULL,
    overlap_policy       TEXT NOT NULL,
    retry_count          INTEGER NOT NULL,
    retry_backoff_secs   INTEGER NOT NULL,
    pool                 TEXT NOT NULL,
    fire_cursor_ms       INTEGER NOT NULL,         -- fires up to and including this time are handled
    missed_fires         INTEGER NOT NULL DEFAULT 0,
    overlap_skipped      INTEGER NOT NULL DEFAULT 0,
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL
);

CREATE TABLE runs (
    id                   TEXT PRIMARY KEY,
    job_id               TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    job_name             TEXT,
    trigger              TEXT NOT NULL,
    status               TEXT NOT NULL,
    attempt              INTEGER NOT NULL,
    scheduled_for_ms     INTEGER,
    settings             TEXT NOT NULL,            -- snapshot of what to execute (JSON)
    created_at_ms        INTEGER NOT NULL,
    dispatched_at_ms     INTEGER,
    not_before_ms        INTEGER,
    started_at_ms        INTEGER,
    finished_at_ms       INTEGER,
    heartbeat_at_ms      INTEGER,
    worker_id            TEXT,
    exit_code            INTEGER,
    is_error             INTEGER NOT NULL DEFAULT 0,
    error                TEXT,
    result               TEXT,
    input_tokens         INTEGER NOT NULL DEFAULT 0,
    output_tokens        INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens    INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_usd             REAL,
    num_turns            INTEGER,
    models               TEXT NOT NULL DEFAULT '[]',
    permission_denials   INTEGER NOT NULL DEFAULT 0,
    event_seq            INTEGER NOT NULL DEFAULT 0 -- last sequence number handed to an event
);

-- One run per cron fire, whatever happens to leaders and restarts (NULLs never collide).
CREATE UNIQUE INDEX runs_fire ON runs (job_id, scheduled_for_ms);
CREATE INDEX runs_job_created ON runs (job_id, id);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE run_events (
    run_id               TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq                  INTEGER NOT NULL,
    attempt              INTEGER NOT NULL,
    origin               TEXT NOT NULL,
    origin_seq           INTEGER NOT NULL,
    at_ms                INTEGER NOT NULL,
    kind                 TEXT NOT NULL,
    data                 TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Redelivered batches are stored once.
CREATE UNIQUE INDEX run_events_origin ON run_events (run_id, attempt, origin, origin_seq);

CREATE TABLE leases (
    name                 TEXT PRIMARY KEY,
    holder               TEXT NOT NULL,
    token                INTEGER NOT NULL,         -- fencing token: raised whenever the holder changes
    expires_at_ms        INTEGER NOT NULL
);

CREATE TABLE settings (
    key                  TEXT PRIMARY KEY,
    value                TEXT NOT NULL
);
