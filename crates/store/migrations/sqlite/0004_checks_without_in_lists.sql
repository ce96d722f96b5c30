-- The same constraints on `tasks.state` and `run_cells.state`, written as OR chains instead of
-- `IN (…)` lists. SQLite evaluates a CHECK with an IN list of more than two values by building a
-- temporary index of the list, each time a statement writes the column: about 3 µs per
-- statement, and every claim, completion and planned cell writes one. An OR chain of equalities
-- costs nothing measurable. PostgreSQL's 0004 changes nothing.
--
-- SQLite cannot change a CHECK in place, so both tables are rebuilt. Migrations run in one
-- transaction with foreign keys on, so no table that another table references is dropped while
-- referenced: the rows are set aside in plain copies, `run_cells` (the only table that refers to
-- `tasks`) is dropped before `tasks`, and both are created again and refilled, ids included.
CREATE TABLE tasks_v3 AS SELECT * FROM tasks;
CREATE TABLE run_cells_v3 AS SELECT * FROM run_cells;
DROP TABLE run_cells;
DROP TABLE tasks;

CREATE TABLE tasks (
    id               INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id           TEXT    NOT NULL REFERENCES runs (id),
    phase            INTEGER NOT NULL,
    start_date       TEXT    NOT NULL,
    end_date         TEXT    NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state = 'pending' OR state = 'running' OR state = 'complete'
               OR state = 'failed' OR state = 'blocked'),
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

INSERT INTO tasks (id, run_id, phase, start_date, end_date, state, attempt, lease_epoch,
                   lease_owner, lease_expires_at, not_before, started_at, finished_at, error,
                   counts)
    SELECT id, run_id, phase, start_date, end_date, state, attempt, lease_epoch, lease_owner,
           lease_expires_at, not_before, started_at, finished_at, error, counts
    FROM tasks_v3 ORDER BY id;

CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE state = 'running';

CREATE TABLE run_cells (
    run_id       TEXT    NOT NULL REFERENCES runs (id),
    phase        INTEGER NOT NULL,
    date         TEXT    NOT NULL,
    task_id      INTEGER NOT NULL REFERENCES tasks (id),
    state        TEXT    NOT NULL
        CHECK (state = 'pending' OR state = 'complete' OR state = 'failed' OR state = 'blocked'),
    completed_at INTEGER,
    PRIMARY KEY (run_id, phase, date),
    CHECK ((state = 'complete') = (completed_at IS NOT NULL))
) STRICT;

INSERT INTO run_cells (run_id, phase, date, task_id, state, completed_at)
    SELECT run_id, phase, date, task_id, state, completed_at FROM run_cells_v3
    ORDER BY run_id, phase, date;

CREATE INDEX run_cells_task ON run_cells (task_id);

DROP TABLE run_cells_v3;
DROP TABLE tasks_v3;
