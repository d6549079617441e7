-- The limits and network of a job's runs in a container (JSON); `{}` means the defaults of the
-- job's kind.
ALTER TABLE jobs ADD COLUMN sandbox TEXT NOT NULL DEFAULT '{}';
