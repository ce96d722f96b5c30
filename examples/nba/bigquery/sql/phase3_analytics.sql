-- Phase 3: nba_analytics.player_game_summary, one row per player per game, from the raw box
-- scores of the range, with team totals and derived rates. Idempotent: the range is replaced.
-- BigQuery dialect; the SQLite original is ../sql/phase3_analytics.sql.
DELETE FROM nba_analytics.player_game_summary
WHERE game_date BETWEEN :start AND :end;

INSERT INTO nba_analytics.player_game_summary (
    game_id, game_date, season_year, season_type, player_id, player_name, team, opponent,
    is_home, is_starter, minutes, points, rebounds, assists, fgm, fga, fg3m, fg3a, ftm, fta,
    team_points, opponent_points, is_win, points_per_minute, true_shooting_pct, points_share
)
SELECT
    game_id, game_date, season_year, season_type, player_id, player_name, team, opponent,
    is_home, is_starter, minutes, points, rebounds, assists, fgm, fga, fg3m, fg3a, ftm, fta,
    team_points,
    game_points - team_points,
    CASE WHEN team_points > game_points - team_points THEN 1 ELSE 0 END,
    ROUND(CAST(points AS FLOAT64) / minutes, 4),
    CASE WHEN fga + 0.44 * fta > 0
         THEN ROUND(points / (2.0 * (fga + 0.44 * fta)), 4) END,
    CASE WHEN team_points > 0 THEN ROUND(CAST(points AS FLOAT64) / team_points, 4) ELSE 0 END
FROM (
    SELECT
        game_id, game_date, season_year, season_type, player_id, player_name, team, opponent,
        is_home, is_starter, minutes, points, rebounds, assists, fgm, fga, fg3m, fg3a, ftm, fta,
        SUM(points) OVER (PARTITION BY game_id, team) AS team_points,
        SUM(points) OVER (PARTITION BY game_id) AS game_points
    FROM nba_raw.bdl_player_boxscores
    WHERE game_date BETWEEN :start AND :end
) AS box;
