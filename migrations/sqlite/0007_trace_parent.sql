-- The W3C traceparent of the span that created a run: its later steps join that trace (NULL
-- when tracing was off).
ALTER TABLE runs ADD COLUMN trace_parent TEXT;
