-- Kept column for column in step with ../sqlite/0003_gap_ledger.sql.
CREATE TABLE gaps (
    id             BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at    BIGINT NOT NULL,
    last_seen_at   BIGINT NOT NULL,
    phase_from     BIGINT,
    phase_to       BIGINT NOT NULL,
    partition_date TEXT   COLLATE "C" NOT NULL,
    gap_age_days   BIGINT NOT NULL,
    found          BIGINT NOT NULL,
    expected       BIGINT NOT NULL,
    healing_status TEXT   NOT NULL
        CHECK (healing_status IN ('pending', 'triggered', 'complete', 'failed', 'alerted')),
    attempts       BIGINT NOT NULL DEFAULT 0,
    run_id         TEXT,
    alerted_at     BIGINT,
    healed_at      BIGINT,
    last_error     TEXT,
    CHECK ((healing_status = 'complete') = (healed_at IS NOT NULL))
);

CREATE UNIQUE INDEX gaps_open_cell ON gaps (phase_to, partition_date)
    WHERE healing_status <> 'complete';
