-- Kept in step with ../sqlite/0002_lean_events.sql: the (phase, date) index on events, which
-- nothing but tests read, costs a page per completed task. The identity column stays.
DROP INDEX events_phase_date;
