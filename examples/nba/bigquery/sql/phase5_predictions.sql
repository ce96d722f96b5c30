-- Phase 5: nba_predictions.player_prop_predictions, one points line per player per game from
-- the phase-4 features. The model is deliberately transparent:
--   predicted = 0.6 * time-weighted 30-day points + 0.4 * plain 30-day average
--   no game in the last 30 days: 9.0 points, about the league's average per player-game
--   line = the prediction rounded down to the nearest half point that is not whole (x.5),
--          as sportsbooks do so that a bet cannot push
-- BigQuery dialect; the SQLite original is ../sql/phase5_predictions.sql (BigQuery's CAST to
-- INT64 rounds, so the line floors instead).
DELETE FROM nba_predictions.player_prop_predictions
WHERE game_date BETWEEN :start AND :end;

INSERT INTO nba_predictions.player_prop_predictions (
    game_date, player_id, game_id, season_year, season_type, team, opponent,
    model_version, has_history, predicted_points, points_line
)
SELECT
    game_date, player_id, game_id, season_year, season_type, team, opponent,
    'recent-form-v1', has_history, predicted_points,
    FLOOR(predicted_points) + 0.5
FROM (
    SELECT
        game_date, player_id, game_id, season_year, season_type, team, opponent,
        CASE WHEN games_last_30 > 0 THEN 1 ELSE 0 END AS has_history,
        CASE WHEN games_last_30 > 0
             THEN ROUND(0.6 * points_weighted_30 + 0.4 * points_avg_30, 2)
             ELSE 9.0 END AS predicted_points
    FROM nba_precompute.player_composite_factors
    WHERE game_date BETWEEN :start AND :end
) AS model;
