-- Autopilot schema, PostgreSQL dialect. Times are milliseconds since the Unix epoch (UTC); ids are
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
    enabled              BOOLEAN NOT NULL,
    model                TEXT,
    allowed_tools        TEXT NOT NULL,
    disallowed_tools     TEXT NOT NULL,
    max_turns            BIGINT,
    timeout_secs         BIGINT NOT NULL,
    max_cost_usd         DOUBLE PRECISION,
    misfire_policy       TEXT NOT NULL,
    misfire_cap          BIGINT NOT NULL,
    overlap_policy       TEXT NOT NULL,
    retry_count          BIGINT NOT NULL,
    retry_backoff_secs   BIGINT NOT NULL,
    pool                 TEXT NOT NULL,
    fire_cursor_ms       BIGINT NOT NULL,         -- fires up to and including this time are handled
    missed_fires         BIGINT NOT NULL DEFAULT 0,
    overlap_skipped      BIGINT NOT NULL DEFAULT 0,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL
);

CREATE TABLE runs (
    id                   TEXT PRIMARY KEY,
    job_id               TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    job_name             TEXT,
    trigger              TEXT NOT NULL,
    status               TEXT NOT NULL,
    attempt              BIGINT NOT NULL,
    scheduled_for_ms     BIGINT,
    settings             TEXT NOT NULL,            -- snapshot of what to execute (JSON)
    created_at_ms        BIGINT NOT NULL,
    dispatched_at_ms     BIGINT,
    not_before_ms        BIGINT,
    started_at_ms        BIGINT,
    finished_at_ms       BIGINT,
    heartbeat_at_ms      BIGINT,
    worker_id            TEXT,
    exit_code            BIGINT,
    is_error             BOOLEAN NOT NULL DEFAULT FALSE,
    error                TEXT,
    result               TEXT,
    input_tokens         BIGINT NOT NULL DEFAULT 0,
    output_tokens        BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens    BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_usd             DOUBLE PRECISION,
    num_turns            BIGINT,
    models               TEXT NOT NULL DEFAULT '[]',
    permission_denials   BIGINT NOT NULL DEFAULT 0,
    event_seq            BIGINT NOT NULL DEFAULT 0 -- last sequence number handed to an event
);

-- One run per cron fire, whatever happens to leaders and restarts (NULLs never collide).
CREATE UNIQUE INDEX runs_fire ON runs (job_id, scheduled_for_ms);
CREATE INDEX runs_job_created ON runs (job_id, id);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE run_events (
    run_id               TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq                  BIGINT NOT NULL,
    attempt              BIGINT NOT NULL,
    origin               TEXT NOT NULL,
    origin_seq           BIGINT NOT NULL,
    at_ms                BIGINT NOT NULL,
    kind                 TEXT NOT NULL,
    data                 TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Redelivered batches are stored once.
CREATE UNIQUE INDEX run_events_origin ON run_events (run_id, attempt, origin, origin_seq);

CREATE TABLE leases (
    name                 TEXT PRIMARY KEY,
    holder               TEXT NOT NULL,
    token                BIGINT NOT NULL,         -- fencing token: raised whenever the holder changes
    expires_at_ms        BIGINT NOT NULL
);

CREATE TABLE settings (
    key                  TEXT PRIMARY KEY,
    value                TEXT NOT NULL
);
