-- gapless state store, PostgreSQL. Kept column for column in step with ../sqlite/0001_init.sql:
-- the same queries run on both. Timestamps are BIGINT unix milliseconds, dates TEXT `YYYY-MM-DD`
-- (with COLLATE "C", so it sorts byte by byte as SQLite does), JSON TEXT.

CREATE TABLE runs (
    id          TEXT   NOT NULL PRIMARY KEY,
    -- Insertion order, so "newest first" is exact even for runs created in the same millisecond.
    seq         BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind        TEXT   NOT NULL,
    pipeline    TEXT   NOT NULL,
    request     TEXT   NOT NULL,
    state       TEXT   NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT,
    -- Bumped by every run state change: compare-and-set for cancel vs checkpoint races.
    version     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE tasks (
    id               BIGINT  NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           TEXT    NOT NULL REFERENCES runs (id),
    phase            BIGINT  NOT NULL,
    start_date       TEXT    COLLATE "C" NOT NULL,
    end_date         TEXT    COLLATE "C" NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('pending', 'running', 'complete', 'failed', 'blocked')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    -- Fencing token: bumped whenever the lease changes hands or the task leaves `running`.
    lease_epoch      BIGINT  NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    not_before       BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    error            TEXT,
    counts           TEXT,
    UNIQUE (run_id, phase, start_date),
    CHECK (start_date <= end_date),
    -- RELIABILITY 2.3: a running task is always visible to the expiry scan.
    CHECK (state <> 'running' OR (lease_expires_at IS NOT NULL AND lease_owner IS NOT NULL))
);

CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE state = 'running';

CREATE TABLE run_cells (
    run_id       TEXT   NOT NULL REFERENCES runs (id),
    phase        BIGINT NOT NULL,
    date         TEXT   COLLATE "C" NOT NULL,
    task_id      BIGINT NOT NULL REFERENCES tasks (id),
    state        TEXT   NOT NULL CHECK (state IN ('pending', 'complete', 'failed', 'blocked')),
    completed_at BIGINT,
    PRIMARY KEY (run_id, phase, date),
    CHECK ((state = 'complete') = (completed_at IS NOT NULL))
);

CREATE INDEX run_cells_task ON run_cells (task_id);

CREATE TABLE events (
    id         BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phase      BIGINT NOT NULL,
    date       TEXT   COLLATE "C" NOT NULL,
    status     TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    -- No foreign key: events also come from the live pipeline, outside any run.
    run_id     TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX events_phase_date ON events (phase, date);
