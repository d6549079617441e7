-- MCP servers that runs can be granted, and the credentials they use.

-- A server's transport, tools and description as one JSON document.
CREATE TABLE mcp_servers (
    name                 TEXT PRIMARY KEY,
    config               TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL
);

-- Each value sealed under a key of its own, which is sealed under the master key.
CREATE TABLE credentials (
    name                 TEXT PRIMARY KEY,
    wrapped_key          TEXT NOT NULL,
    sealed_value         TEXT NOT NULL,
    fingerprint          TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL,
    last_used_at_ms      BIGINT
);

-- The MCP servers a job's runs are granted (JSON: [{server, access, allow, deny}]).
ALTER TABLE jobs ADD COLUMN tool_grants TEXT NOT NULL DEFAULT '[]';
