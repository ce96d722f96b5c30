-- The NBA example's warehouse on BigQuery: one dataset per schema of the SQLite variant, dates
-- as DATE. `gapless demo --warehouse bigquery` runs this against the emulator at
-- BIGQUERY_EMULATOR_HOST, replacing the tables (and so their rows) of a previous demo, then fills
-- nba_reference from the generated league. BigQuery has no indexes and enforces no keys.
CREATE SCHEMA IF NOT EXISTS nba_reference;
CREATE SCHEMA IF NOT EXISTS nba_raw;
CREATE SCHEMA IF NOT EXISTS nba_analytics;
CREATE SCHEMA IF NOT EXISTS nba_precompute;
CREATE SCHEMA IF NOT EXISTS nba_predictions;

-- Reference data: what the league scheduled.
CREATE OR REPLACE TABLE nba_reference.teams (
    team        STRING NOT NULL,
    team_name   STRING NOT NULL,
    conference  STRING NOT NULL
);

CREATE OR REPLACE TABLE nba_reference.schedule (
    game_id      STRING NOT NULL,
    game_date    DATE NOT NULL,
    season_year  INT64 NOT NULL,
    season_type  STRING NOT NULL,
    home_team    STRING NOT NULL,
    away_team    STRING NOT NULL
);

CREATE OR REPLACE TABLE nba_reference.players (
    player_id    INT64 NOT NULL,
    player_name  STRING NOT NULL
);

CREATE OR REPLACE TABLE nba_reference.rosters (
    season_year  INT64 NOT NULL,
    team         STRING NOT NULL,
    player_id    INT64 NOT NULL
);

-- Phase 2: the raw box scores, one row per player who played, as loaded from phase-1 files.
CREATE OR REPLACE TABLE nba_raw.bdl_player_boxscores (
    game_id      STRING NOT NULL,
    game_date    DATE NOT NULL,
    season_year  INT64 NOT NULL,
    season_type  STRING NOT NULL,
    team         STRING NOT NULL,
    opponent     STRING NOT NULL,
    is_home      INT64 NOT NULL,
    player_id    INT64 NOT NULL,
    player_name  STRING NOT NULL,
    is_starter   INT64 NOT NULL,
    minutes      INT64 NOT NULL,
    points       INT64 NOT NULL,
    rebounds     INT64 NOT NULL,
    assists      INT64 NOT NULL,
    fgm          INT64 NOT NULL,
    fga          INT64 NOT NULL,
    fg3m         INT64 NOT NULL,
    fg3a         INT64 NOT NULL,
    ftm          INT64 NOT NULL,
    fta          INT64 NOT NULL
);

-- Phase 3: one row per player per game with derived stats.
CREATE OR REPLACE TABLE nba_analytics.player_game_summary (
    game_id            STRING NOT NULL,
    game_date          DATE NOT NULL,
    season_year        INT64 NOT NULL,
    season_type        STRING NOT NULL,
    player_id          INT64 NOT NULL,
    player_name        STRING NOT NULL,
    team               STRING NOT NULL,
    opponent           STRING NOT NULL,
    is_home            INT64 NOT NULL,
    is_starter         INT64 NOT NULL,
    minutes            INT64 NOT NULL,
    points             INT64 NOT NULL,
    rebounds           INT64 NOT NULL,
    assists            INT64 NOT NULL,
    fgm                INT64 NOT NULL,
    fga                INT64 NOT NULL,
    fg3m               INT64 NOT NULL,
    fg3a               INT64 NOT NULL,
    ftm                INT64 NOT NULL,
    fta                INT64 NOT NULL,
    team_points        INT64 NOT NULL,
    opponent_points    INT64 NOT NULL,
    is_win             INT64 NOT NULL,
    points_per_minute  FLOAT64 NOT NULL,
    true_shooting_pct  FLOAT64,  -- NULL when the player took no shot
    points_share       FLOAT64 NOT NULL  -- share of the team's points: a usage proxy
);

-- Phase 4: rolling features per player per game date, over that player's games in the 30 days
-- strictly before the date. NULL features: no game in the window.
CREATE OR REPLACE TABLE nba_precompute.player_composite_factors (
    game_date           DATE NOT NULL,
    player_id           INT64 NOT NULL,
    game_id             STRING NOT NULL,
    season_year         INT64 NOT NULL,
    season_type         STRING NOT NULL,
    team                STRING NOT NULL,
    opponent            STRING NOT NULL,
    is_home             INT64 NOT NULL,
    games_last_30       INT64 NOT NULL,
    minutes_avg_30      FLOAT64,
    points_avg_30       FLOAT64,
    rebounds_avg_30     FLOAT64,
    assists_avg_30      FLOAT64,
    points_weighted_30  FLOAT64,  -- linear time decay: yesterday weighs 30, 30 days ago weighs 1
    points_avg_10       FLOAT64,  -- games in the last 10 days only
    form_trend          FLOAT64,  -- points_avg_10 - points_avg_30
    days_rest           INT64
);

-- Phase 5: one points line per player per game.
CREATE OR REPLACE TABLE nba_predictions.player_prop_predictions (
    game_date         DATE NOT NULL,
    player_id         INT64 NOT NULL,
    game_id           STRING NOT NULL,
    season_year       INT64 NOT NULL,
    season_type       STRING NOT NULL,
    team              STRING NOT NULL,
    opponent          STRING NOT NULL,
    model_version     STRING NOT NULL,
    has_history       INT64 NOT NULL,
    predicted_points  FLOAT64 NOT NULL,
    points_line       FLOAT64 NOT NULL
);

-- Phase 6: each prediction graded against what the player scored.
CREATE OR REPLACE TABLE nba_predictions.prediction_accuracy (
    game_date         DATE NOT NULL,
    player_id         INT64 NOT NULL,
    game_id           STRING NOT NULL,
    season_year       INT64 NOT NULL,
    season_type       STRING NOT NULL,
    model_version     STRING NOT NULL,
    predicted_points  FLOAT64 NOT NULL,
    points_line       FLOAT64 NOT NULL,
    actual_points     INT64 NOT NULL,
    recommendation    STRING NOT NULL,
    result            STRING NOT NULL,
    is_correct        INT64 NOT NULL,
    absolute_error    FLOAT64 NOT NULL
);
