-- The random token of the worker process that claimed the run's current attempt. The same
-- process may claim the attempt again (its first claim's reply was lost on the way), another
-- process of the same worker name may not (NULL for runs claimed before this column existed).
ALTER TABLE runs ADD COLUMN claim_token TEXT;
