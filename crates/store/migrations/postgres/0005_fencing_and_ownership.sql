-- Kept in step with ../sqlite/0005_fencing_and_ownership.sql, which explains each change.

CREATE TABLE lease_counter (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last BIGINT  NOT NULL
);

INSERT INTO lease_counter (id, last) SELECT 1, COALESCE(MAX(lease_epoch), 0) FROM tasks;

CREATE TABLE cell_holds (
    phase      BIGINT NOT NULL,
    date       TEXT   COLLATE "C" NOT NULL,
    task_id    BIGINT NOT NULL,
    run_id     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (phase, date)
);

ALTER TABLE runs ADD COLUMN owner_id TEXT;
ALTER TABLE runs ADD COLUMN owner_host TEXT;
ALTER TABLE runs ADD COLUMN owner_pid BIGINT;
ALTER TABLE runs ADD COLUMN owner_expires_at BIGINT;

ALTER TABLE tasks ADD COLUMN runner_host TEXT;
ALTER TABLE tasks ADD COLUMN runner_pgid BIGINT;
