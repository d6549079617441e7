-- Dynamic servers' versions: each save of a Python MCP server, as one JSON document (source,
-- environment, author, what a worker found when it started it, approval).
CREATE TABLE dynamic_versions (
    server               TEXT NOT NULL,
    version              BIGINT NOT NULL,
    document             TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    PRIMARY KEY (server, version)
);
