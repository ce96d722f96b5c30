-- The gap ledger (SPEC.md, Semantics 6): one row per gap found by `scan`. A cell has at most one
-- open row (any status but `complete`): a gap found again updates its row; a gap whose cell is
-- complete is closed (`complete`, `healed_at`) and a later gap on the same cell opens a new row.
CREATE TABLE gaps (
    id             INTEGER NOT NULL PRIMARY KEY,
    detected_at    INTEGER NOT NULL,
    -- The latest scan that found it.
    last_seen_at   INTEGER NOT NULL,
    -- The nearest phase the cell needs; NULL for a phase that needs no other.
    phase_from     INTEGER,
    phase_to       INTEGER NOT NULL,
    partition_date TEXT    NOT NULL,
    gap_age_days   INTEGER NOT NULL,
    -- Rows counted and expected at the latest scan.
    found          INTEGER NOT NULL,
    expected       INTEGER NOT NULL,
    healing_status TEXT    NOT NULL
        CHECK (healing_status IN ('pending', 'triggered', 'complete', 'failed', 'alerted')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    run_id         TEXT,
    alerted_at     INTEGER,
    healed_at      INTEGER,
    last_error     TEXT,
    CHECK ((healing_status = 'complete') = (healed_at IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX gaps_open_cell ON gaps (phase_to, partition_date)
    WHERE healing_status <> 'complete';
