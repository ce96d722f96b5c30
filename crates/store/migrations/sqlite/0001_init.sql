-- gapless state store, SQLite. Kept column for column in step with ../postgres/0001_init.sql:
-- the same queries run on both. Timestamps are INTEGER unix milliseconds, dates TEXT `YYYY-MM-DD`
-- (sorts as it compares), JSON TEXT. STRICT makes SQLite reject values of the wrong type, as
-- PostgreSQL does.

CREATE TABLE runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    -- Insertion order, so "newest first" is exact even for runs created in the same millisecond.
    seq         INTEGER NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    pipeline    TEXT    NOT NULL,
    request     TEXT    NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER,
    -- Bumped by every run state change: compare-and-set for cancel vs checkpoint races.
    version     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE tasks (
    id               INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id           TEXT    NOT NULL REFERENCES runs (id),
    phase            INTEGER NOT NULL,
    start_date       TEXT    NOT NULL,
    end_date         TEXT    NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('pending', 'running', 'complete', 'failed', 'blocked')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    -- Fencing token: bumped whenever the lease changes hands or the task leaves `running`.
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    not_before       INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    error            TEXT,
    counts           TEXT,
    UNIQUE (run_id, phase, start_date),
    CHECK (start_date <= end_date),
    -- RELIABILITY 2.3: a running task is always visible to the expiry scan.
    CHECK (state <> 'running' OR (lease_expires_at IS NOT NULL AND lease_owner IS NOT NULL))
) STRICT;

CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE state = 'running';

CREATE TABLE run_cells (
    run_id       TEXT    NOT NULL REFERENCES runs (id),
    phase        INTEGER NOT NULL,
    date         TEXT    NOT NULL,
    task_id      INTEGER NOT NULL REFERENCES tasks (id),
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'complete', 'failed', 'blocked')),
    completed_at INTEGER,
    PRIMARY KEY (run_id, phase, date),
    CHECK ((state = 'complete') = (completed_at IS NOT NULL))
) STRICT;

CREATE INDEX run_cells_task ON run_cells (task_id);

CREATE TABLE events (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    phase      INTEGER NOT NULL,
    date       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    -- No foreign key: events also come from the live pipeline, outside any run.
    run_id     TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX events_phase_date ON events (phase, date);
