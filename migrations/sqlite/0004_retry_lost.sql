-- A job may ask for lost attempts (the worker stopped answering) to be run again.
ALTER TABLE jobs ADD COLUMN retry_lost INTEGER NOT NULL DEFAULT 0;
