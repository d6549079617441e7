-- The dispatcher looks for queued runs not yet sent to the bus after every run that ends; with a
-- long queue of dispatched runs, only this index keeps that look from reading all of them.
CREATE INDEX runs_undispatched ON runs (id) WHERE status = 'queued' AND dispatched_at_ms IS NULL;
