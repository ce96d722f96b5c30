-- Nodes and named leases with store-issued terms. Kept in step with
-- ../sqlite/0008_nodes_and_leases.sql, which says why.
CREATE TABLE nodes (
    id           TEXT   NOT NULL PRIMARY KEY,
    host         TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE leases (
    name        TEXT   NOT NULL PRIMARY KEY,
    holder      TEXT,
    term        BIGINT NOT NULL,
    acquired_at BIGINT,
    expires_at  BIGINT
);

-- Running tasks by phase, for the claim's count of a phase's running tasks across nodes.
CREATE INDEX tasks_running_phase ON tasks (run_id, phase) WHERE state = 'running';
-- Pending tasks by run, for nodes looking for runs to help with.
CREATE INDEX tasks_pending_run ON tasks (run_id) WHERE state = 'pending';

-- Every scheduled occurrence that a leader took on, once (the primary key), with the term it
-- ran under and when it finished: a leader that died mid-tick leaves `finished_at` empty, and
-- the next leader runs that occurrence again.
CREATE TABLE tick_runs (
    name        TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    term        BIGINT NOT NULL,
    node        TEXT   NOT NULL,
    claimed_at  BIGINT NOT NULL,
    finished_at BIGINT,
    attempts    BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (name, at)
);
