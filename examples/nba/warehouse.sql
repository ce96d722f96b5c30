-- The NBA example's warehouse: one SQLite file per schema, attached to warehouse/main.db under
-- the schema's name (see [warehouse] in gapless.toml). Dates are TEXT 'YYYY-MM-DD' everywhere.
-- `gapless demo` creates it, then fills nba_reference from the generated league.

-- Reference data: what the league scheduled.
CREATE TABLE IF NOT EXISTS nba_reference.teams (
    team        TEXT PRIMARY KEY,
    team_name   TEXT NOT NULL,
    conference  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS nba_reference.schedule (
    game_id      TEXT PRIMARY KEY,
    game_date    TEXT NOT NULL,
    season_year  INTEGER NOT NULL,
    season_type  TEXT NOT NULL CHECK (season_type IN ('regular', 'play_in', 'playoffs')),
    home_team    TEXT NOT NULL,
    away_team    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS nba_reference.schedule_by_date ON schedule (game_date);
CREATE INDEX IF NOT EXISTS nba_reference.schedule_by_season ON schedule (season_year, season_type);

CREATE TABLE IF NOT EXISTS nba_reference.players (
    player_id    INTEGER PRIMARY KEY,
    player_name  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS nba_reference.rosters (
    season_year  INTEGER NOT NULL,
    team         TEXT NOT NULL,
    player_id    INTEGER NOT NULL,
    PRIMARY KEY (season_year, team, player_id)
);

-- Phase 2: the raw box scores, one row per player who played, as loaded from phase-1 files.
CREATE TABLE IF NOT EXISTS nba_raw.bdl_player_boxscores (
    game_id      TEXT NOT NULL,
    game_date    TEXT NOT NULL,
    season_year  INTEGER NOT NULL,
    season_type  TEXT NOT NULL,
    team         TEXT NOT NULL,
    opponent     TEXT NOT NULL,
    is_home      INTEGER NOT NULL,
    player_id    INTEGER NOT NULL,
    player_name  TEXT NOT NULL,
    is_starter   INTEGER NOT NULL,
    minutes      INTEGER NOT NULL,
    points       INTEGER NOT NULL,
    rebounds     INTEGER NOT NULL,
    assists      INTEGER NOT NULL,
    fgm          INTEGER NOT NULL,
    fga          INTEGER NOT NULL,
    fg3m         INTEGER NOT NULL,
    fg3a         INTEGER NOT NULL,
    ftm          INTEGER NOT NULL,
    fta          INTEGER NOT NULL,
    PRIMARY KEY (game_id, player_id)
);
-- Covers the phase's check (`COUNT(DISTINCT game_id)` per date) without reading the table.
CREATE INDEX IF NOT EXISTS nba_raw.bdl_player_boxscores_by_date
    ON bdl_player_boxscores (game_date, game_id);

-- Phase 3: one row per player per game with derived stats.
CREATE TABLE IF NOT EXISTS nba_analytics.player_game_summary (
    game_id            TEXT NOT NULL,
    game_date          TEXT NOT NULL,
    season_year        INTEGER NOT NULL,
    season_type        TEXT NOT NULL,
    player_id          INTEGER NOT NULL,
    player_name        TEXT NOT NULL,
    team               TEXT NOT NULL,
    opponent           TEXT NOT NULL,
    is_home            INTEGER NOT NULL,
    is_starter         INTEGER NOT NULL,
    minutes            INTEGER NOT NULL,
    points             INTEGER NOT NULL,
    rebounds           INTEGER NOT NULL,
    assists            INTEGER NOT NULL,
    fgm                INTEGER NOT NULL,
    fga                INTEGER NOT NULL,
    fg3m               INTEGER NOT NULL,
    fg3a               INTEGER NOT NULL,
    ftm                INTEGER NOT NULL,
    fta                INTEGER NOT NULL,
    team_points        INTEGER NOT NULL,
    opponent_points    INTEGER NOT NULL,
    is_win             INTEGER NOT NULL,
    points_per_minute  REAL NOT NULL,
    true_shooting_pct  REAL,             -- NULL when the player took no shot
    points_share       REAL NOT NULL,    -- share of the team's points: a usage proxy
    PRIMARY KEY (game_id, player_id)
);
-- Covers the phase's check (`COUNT(DISTINCT game_id)` per date) without reading the table.
CREATE INDEX IF NOT EXISTS nba_analytics.player_game_summary_by_date
    ON player_game_summary (game_date, game_id);
-- Phase 4's rolling windows look up one player's earlier games; covering the columns they
-- average keeps those lookups inside the index.
CREATE INDEX IF NOT EXISTS nba_analytics.player_game_summary_by_player
    ON player_game_summary (player_id, game_date, points, minutes, rebounds, assists);

-- Phase 4: rolling features per player per game date, over that player's games in the 30 days
-- strictly before the date. NULL features: no game in the window.
CREATE TABLE IF NOT EXISTS nba_precompute.player_composite_factors (
    game_date           TEXT NOT NULL,
    player_id           INTEGER NOT NULL,
    game_id             TEXT NOT NULL,
    season_year         INTEGER NOT NULL,
    season_type         TEXT NOT NULL,
    team                TEXT NOT NULL,
    opponent            TEXT NOT NULL,
    is_home             INTEGER NOT NULL,
    games_last_30       INTEGER NOT NULL,
    minutes_avg_30      REAL,
    points_avg_30       REAL,
    rebounds_avg_30     REAL,
    assists_avg_30      REAL,
    points_weighted_30  REAL,   -- linear time decay: yesterday weighs 30, 30 days ago weighs 1
    points_avg_10       REAL,   -- games in the last 10 days only
    form_trend          REAL,   -- points_avg_10 - points_avg_30
    days_rest           INTEGER,
    PRIMARY KEY (game_date, player_id)
);

-- Phase 5: one points line per player per game.
CREATE TABLE IF NOT EXISTS nba_predictions.player_prop_predictions (
    game_date         TEXT NOT NULL,
    player_id         INTEGER NOT NULL,
    game_id           TEXT NOT NULL,
    season_year       INTEGER NOT NULL,
    season_type       TEXT NOT NULL,
    team              TEXT NOT NULL,
    opponent          TEXT NOT NULL,
    model_version     TEXT NOT NULL,
    has_history       INTEGER NOT NULL,
    predicted_points  REAL NOT NULL,
    points_line       REAL NOT NULL,
    PRIMARY KEY (game_date, player_id)
);
CREATE INDEX IF NOT EXISTS nba_predictions.player_prop_predictions_by_season
    ON player_prop_predictions (season_year);

-- Phase 6: each prediction graded against what the player scored.
CREATE TABLE IF NOT EXISTS nba_predictions.prediction_accuracy (
    game_date         TEXT NOT NULL,
    player_id         INTEGER NOT NULL,
    game_id           TEXT NOT NULL,
    season_year       INTEGER NOT NULL,
    season_type       TEXT NOT NULL,
    model_version     TEXT NOT NULL,
    predicted_points  REAL NOT NULL,
    points_line       REAL NOT NULL,
    actual_points     INTEGER NOT NULL,
    recommendation    TEXT NOT NULL CHECK (recommendation IN ('over', 'under')),
    result            TEXT NOT NULL CHECK (result IN ('over', 'under')),
    is_correct        INTEGER NOT NULL,
    absolute_error    REAL NOT NULL,
    PRIMARY KEY (game_date, player_id)
);
CREATE INDEX IF NOT EXISTS nba_predictions.prediction_accuracy_by_season
    ON prediction_accuracy (season_year);
