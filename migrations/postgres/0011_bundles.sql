-- Tool bundles: named sets of server grants and built-in tools that jobs, webhooks and quick runs
-- name instead of repeating them. Grants and tools as one JSON document.
CREATE TABLE tool_bundles (
    name                 TEXT PRIMARY KEY,
    config               TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL
);

-- The bundles a job's runs are given (JSON: ["name", …]).
ALTER TABLE jobs ADD COLUMN tool_bundles TEXT NOT NULL DEFAULT '[]';
