-- A job may ask for lost attempts (the worker stopped answering) to be run again.
ALTER TABLE jobs ADD COLUMN retry_lost INTEGER NOT NULL DEFAULT 0;

-- Workers as they last announced themselves (pools, capacity, runs); listed while they announce.
CREATE TABLE workers (
    worker_id            TEXT PRIMARY KEY,
    status               TEXT NOT NULL,            -- JSON: pools, capacity, running, executor, version, draining
    seen_at_ms           INTEGER NOT NULL
);
