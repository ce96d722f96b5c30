-- Phase 6: nba_predictions.prediction_accuracy, every prediction of the range graded against
-- the points the player scored (phase 3). Lines end in .5, so a result is never a push.
-- BigQuery dialect: the same text as the SQLite original, ../sql/phase6_grading.sql.
DELETE FROM nba_predictions.prediction_accuracy
WHERE game_date BETWEEN :start AND :end;

INSERT INTO nba_predictions.prediction_accuracy (
    game_date, player_id, game_id, season_year, season_type, model_version,
    predicted_points, points_line, actual_points, recommendation, result, is_correct,
    absolute_error
)
SELECT
    game_date, player_id, game_id, season_year, season_type, model_version,
    predicted_points, points_line, actual_points, recommendation, result,
    CASE WHEN recommendation = result THEN 1 ELSE 0 END,
    ROUND(ABS(predicted_points - actual_points), 2)
FROM (
    SELECT
        prediction.game_date, prediction.player_id, prediction.game_id,
        prediction.season_year, prediction.season_type, prediction.model_version,
        prediction.predicted_points, prediction.points_line,
        actual.points AS actual_points,
        CASE WHEN prediction.predicted_points > prediction.points_line
             THEN 'over' ELSE 'under' END AS recommendation,
        CASE WHEN actual.points > prediction.points_line
             THEN 'over' ELSE 'under' END AS result
    FROM nba_predictions.player_prop_predictions AS prediction
    JOIN nba_analytics.player_game_summary AS actual
        ON actual.game_id = prediction.game_id
       AND actual.player_id = prediction.player_id
    WHERE prediction.game_date BETWEEN :start AND :end
) AS graded;
