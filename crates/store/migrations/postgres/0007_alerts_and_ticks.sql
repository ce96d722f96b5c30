-- Alerts go out through an outbox; scheduled jobs record their last tick. Kept in step with
-- ../sqlite/0007_alerts_and_ticks.sql, which says why.
CREATE TABLE alerts (
    id           BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    channel      TEXT   NOT NULL,
    message      TEXT   NOT NULL,
    delivered_at BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX alerts_undelivered ON alerts (id) WHERE delivered_at IS NULL;

CREATE TABLE ticks (
    name    TEXT   NOT NULL PRIMARY KEY,
    last_at BIGINT NOT NULL
);
