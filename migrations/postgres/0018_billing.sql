-- Who paid for a Claude run's tokens: `api` or `subscription` (an OAuth token, whose cost is
-- only the CLI's estimate and which budgets do not count). NULL: not a Claude run, or a run from
-- before this was recorded (counted as `api`).
ALTER TABLE runs ADD COLUMN billing TEXT;
