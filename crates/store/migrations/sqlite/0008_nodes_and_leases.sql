-- Several `serve` processes share one state store. Each registers itself in `nodes` and renews
-- its row by heartbeat; a row whose heartbeat stopped names a dead node, whose tasks any other
-- node rescues. Named leases (`leader`: the node that runs the scheduler and the alerts
-- outbox) carry a term that the store issues, one more on every change of holder, so a late
-- write of an old holder is refused by comparing terms. Kept in step with
-- ../postgres/0008_nodes_and_leases.sql.
CREATE TABLE nodes (
    id           TEXT    NOT NULL PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT,
    term       INTEGER NOT NULL,
    acquired_at INTEGER,
    expires_at INTEGER
) STRICT;

-- Every scheduled occurrence that a leader took on, once (the primary key), with the term it
-- ran under and when it finished: a leader that died mid-tick leaves `finished_at` empty, and
-- the next leader runs that occurrence again.
CREATE TABLE tick_runs (
    name        TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    term        INTEGER NOT NULL,
    node        TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    finished_at INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (name, at)
) STRICT;
