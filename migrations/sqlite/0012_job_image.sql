-- The image a job's runs start from (Docker executor), when not the worker's own.
ALTER TABLE jobs ADD COLUMN image TEXT;
