-- More ways to start and govern runs: a job's chain, conditions and budget (JSON), the fires
-- those skipped, and the fires made once by key (chained runs, debounced hook events).

ALTER TABLE jobs ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';

-- A fire that started no run, and why. Repeats of one reason from one trigger in a row are
-- counted on one record (`fires`), so a per-second job outside its window adds no row a second.
CREATE TABLE skipped_fires (
    job_id               TEXT NOT NULL,
    first_at_ms          BIGINT NOT NULL,
    last_at_ms           BIGINT NOT NULL,
    fires                BIGINT NOT NULL,
    trigger              TEXT NOT NULL,
    reason               TEXT NOT NULL,
    PRIMARY KEY (job_id, first_at_ms)
);

-- One row per fire that must happen once: the job and what the fire answers (for a chain, the
-- parent runs' sorted ids; for a hook event, its debounce window). Written with the fire's run,
-- so a run's end starts its followers once, whichever replica sees it and however often.
CREATE TABLE fire_keys (
    job_id               TEXT NOT NULL,
    fire_key             TEXT NOT NULL,
    run_id               TEXT,
    created_at_ms        BIGINT NOT NULL,
    PRIMARY KEY (job_id, fire_key)
);
CREATE INDEX fire_keys_created ON fire_keys (created_at_ms);

-- Runs that ended since a time: what the chainer reads.
CREATE INDEX runs_finished ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

-- Tokens `autopilot hook` sends Claude Code's hook events with, each good for that alone. Only
-- the SHA-256 of a token is kept.
CREATE TABLE hook_tokens (
    name                 TEXT PRIMARY KEY,
    token_hash           TEXT NOT NULL UNIQUE,
    created_at_ms        BIGINT NOT NULL
);
