-- Events from outside (HTTP, Pub/Sub push, NATS) are deduplicated by a stable key, malformed ones
-- are kept apart in `quarantine`, and each consumer of the event log (the trigger, the NATS and
-- webhook deliveries) keeps its position. Kept in step with
-- ../postgres/0006_inbox_and_consumers.sql.

-- NULL for completions recorded by gapless itself: the partial index is not written for them.
ALTER TABLE events ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX events_dedup_key ON events (dedup_key) WHERE dedup_key IS NOT NULL;

-- An event received but not acted on: its bytes as received and why.
CREATE TABLE quarantine (
    id          INTEGER NOT NULL PRIMARY KEY,
    received_at INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    dedup_key   TEXT,
    payload     TEXT    NOT NULL,
    reason      TEXT    NOT NULL
) STRICT;
CREATE UNIQUE INDEX quarantine_dedup_key ON quarantine (dedup_key) WHERE dedup_key IS NOT NULL;

-- How far each consumer has read the event log: the last id read. One writer at a time
-- commits, so ids become visible in order.
CREATE TABLE consumers (
    name       TEXT    NOT NULL PRIMARY KEY,
    event_id   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
