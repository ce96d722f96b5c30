-- Fencing that survives runs, one runner per cell across runs, one owner per run, and the
-- runner's process group recorded with its task. Kept in step with
-- ../postgres/0005_fencing_and_ownership.sql.

-- Every lease epoch a claim hands out is drawn from this one-row counter, in the claim's
-- transaction, so each is strictly greater than every epoch handed out before, for any task of
-- any run: a sink that keeps the highest attempt token per cell never rejects a later run's
-- write. It starts at the highest epoch any task holds, which bounds every epoch handed out so
-- far (a task's epoch only grows).
CREATE TABLE lease_counter (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
) STRICT;

INSERT INTO lease_counter (id, last) SELECT 1, COALESCE(MAX(lease_epoch), 0) FROM tasks;

-- Which task of which run holds a (phase, date) cell, across runs: a claim takes a hold on each
-- date of its task and is refused while another task's hold is live. The liveness is the row's
-- own `expires_at` (the holder's lease, renewed with it by heartbeats), never a join on `tasks`.
-- Rows are dropped when their task leaves `running`. No foreign key: a hold is checked and
-- written on every claim, and its task is never deleted while it holds. No index on `task_id`
-- either: a task's holds are found through its cells (`run_cells_task`), which saves a page
-- written per claim and per completion.
CREATE TABLE cell_holds (
    phase      INTEGER NOT NULL,
    date       TEXT    NOT NULL,
    task_id    INTEGER NOT NULL,
    run_id     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (phase, date)
) STRICT, WITHOUT ROWID;

-- The process that executes a run: a lease renewed while it runs, released when it finishes.
ALTER TABLE runs ADD COLUMN owner_id TEXT;
ALTER TABLE runs ADD COLUMN owner_host TEXT;
ALTER TABLE runs ADD COLUMN owner_pid INTEGER;
ALTER TABLE runs ADD COLUMN owner_expires_at INTEGER;

-- The host and process group of a running task's runner, so that a resume can make sure a dead
-- owner's runners are gone before it runs their cells again.
ALTER TABLE tasks ADD COLUMN runner_host TEXT;
ALTER TABLE tasks ADD COLUMN runner_pgid INTEGER;
