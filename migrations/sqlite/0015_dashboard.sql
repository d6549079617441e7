-- The dashboard: operator sessions, and the indexes its pages read runs through.

-- One row per signed-in browser. The cookie holds a random id; only its SHA-256 is kept, so the
-- table alone signs nobody in.
CREATE TABLE dashboard_sessions (
    id_hash              TEXT PRIMARY KEY,
    -- The form token every state-changing request of this session carries.
    csrf_token           TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    seen_at_ms           BIGINT NOT NULL,
    expires_at_ms        BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at_ms);

-- Recent failures and runs now, newest first, without walking every run.
CREATE INDEX runs_status_id ON runs (status, id);
-- Spend since a time (today, this month) read from the index alone (SQLite has no INCLUDE).
CREATE INDEX runs_created_cost ON runs (created_at_ms, cost_usd);
