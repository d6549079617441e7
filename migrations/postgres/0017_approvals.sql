-- Approval gates: each tool call of a run that waited for a person's decision, who could make
-- it, who made it and when. The input is the call's as the model wrote it (cut when large).
CREATE TABLE approvals (
    id                   TEXT PRIMARY KEY,
    run_id               TEXT NOT NULL,
    attempt              BIGINT NOT NULL,
    job_id               TEXT,
    tool                 TEXT NOT NULL,
    input                TEXT NOT NULL,
    tool_use_id          TEXT,
    approvers            TEXT NOT NULL,
    status               TEXT NOT NULL,
    requested_at_ms      BIGINT NOT NULL,
    expires_at_ms        BIGINT NOT NULL,
    decided_at_ms        BIGINT,
    decided_by           TEXT,
    reason               TEXT
);
CREATE INDEX approvals_run ON approvals (run_id);
CREATE INDEX approvals_pending ON approvals (expires_at_ms) WHERE status = 'pending';
