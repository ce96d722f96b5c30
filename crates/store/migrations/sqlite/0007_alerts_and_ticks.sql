-- Alerts go out through an outbox: a scan that alerts about gaps records, in the same
-- transaction as the gaps' `alerted` status, one row per message and channel; deliveries read
-- the undelivered rows, so a crash between the scan and the delivery loses no alert. Scheduled
-- jobs record their last tick, so a tick missed while `serve` was down runs once on start.
-- Kept in step with ../postgres/0007_alerts_and_ticks.sql.
CREATE TABLE alerts (
    id           INTEGER NOT NULL PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    channel      TEXT    NOT NULL,
    -- The message as JSON (the pipeline and its items), rendered per channel at delivery.
    message      TEXT    NOT NULL,
    delivered_at INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
) STRICT;
CREATE INDEX alerts_undelivered ON alerts (id) WHERE delivered_at IS NULL;

CREATE TABLE ticks (
    name    TEXT    NOT NULL PRIMARY KEY,
    last_at INTEGER NOT NULL
) STRICT;
