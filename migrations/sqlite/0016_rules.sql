-- More ways to start and govern runs: a job's chain, conditions and budget (JSON), the fires
-- those skipped, and the chained fires already made.

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

-- One row per chained fire: the child job and the parent runs it answers (sorted ids, comma
-- separated). Written with the child's run, so a run's end starts its followers once, whichever
-- replica sees it and however often.
CREATE TABLE chain_fires (
    job_id               TEXT NOT NULL,
    parents              TEXT NOT NULL,
    run_id               TEXT,
    created_at_ms        BIGINT NOT NULL,
    PRIMARY KEY (job_id, parents)
);

-- Runs that ended since a time: what the chainer reads.
CREATE INDEX runs_finished ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
