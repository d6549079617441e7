-- Whether a job's claude runs put their prompt, the assistant's text and tool inputs and results
-- on their trace spans (capped, secrets redacted); off unless the job asks.
ALTER TABLE jobs ADD COLUMN trace_content INTEGER NOT NULL DEFAULT 0;
