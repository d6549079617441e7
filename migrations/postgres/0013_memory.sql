-- The `memory` server's entries: a small document store per job (`job:<id>`) or webhook
-- (`webhook:<id>`), written and read by that job's runs.
CREATE TABLE memories (
    scope                TEXT NOT NULL,
    key                  TEXT NOT NULL,
    value                TEXT NOT NULL,
    -- The value's size in bytes of UTF-8.
    bytes                BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL,
    -- The run that wrote it last (none when an operator did).
    run_id               TEXT,
    PRIMARY KEY (scope, key)
);

CREATE INDEX memories_recent ON memories (scope, updated_at_ms);
