-- Events from outside (HTTP, Pub/Sub push, NATS) are deduplicated by a stable key, malformed ones
-- are kept apart in `quarantine`, and each consumer of the event log (the trigger, the NATS and
-- webhook deliveries) keeps its position. Kept in step with ../sqlite/0006_inbox_and_consumers.sql.

ALTER TABLE events ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX events_dedup_key ON events (dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE quarantine (
    id          BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at BIGINT NOT NULL,
    source      TEXT   NOT NULL,
    dedup_key   TEXT,
    payload     TEXT   NOT NULL,
    reason      TEXT   NOT NULL
);
CREATE UNIQUE INDEX quarantine_dedup_key ON quarantine (dedup_key) WHERE dedup_key IS NOT NULL;

-- How far each consumer has read the event log: the last id read. Identity values are drawn
-- when rows are inserted, not when their transactions commit, so every transaction that inserts
-- events takes one advisory lock first and holds it to its commit: ids become visible in
-- order, and a reader that keeps the last id read skips nothing.
CREATE TABLE consumers (
    name       TEXT   NOT NULL PRIMARY KEY,
    event_id   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
