-- Phase 4: nba_precompute.player_composite_factors. For every player who played on a date of
-- the range, features over that player's games in the 30 days strictly before the date (the
-- window the pipeline file declares with lookback_days = 30). Nothing older is read, so a
-- complete phase 3 over [date - 30, date] is all a date needs. A player without a game in the
-- window still gets a row, with games_last_30 = 0 and NULL features.
-- BigQuery dialect; the SQLite original is ../sql/phase4_precompute.sql.
DELETE FROM nba_precompute.player_composite_factors
WHERE game_date BETWEEN :start AND :end;

INSERT INTO nba_precompute.player_composite_factors (
    game_date, player_id, game_id, season_year, season_type, team, opponent, is_home,
    games_last_30, minutes_avg_30, points_avg_30, rebounds_avg_30, assists_avg_30,
    points_weighted_30, points_avg_10, form_trend, days_rest
)
SELECT
    game_date, player_id, game_id, season_year, season_type, team, opponent, is_home,
    games_last_30, minutes_avg_30, points_avg_30, rebounds_avg_30, assists_avg_30,
    points_weighted_30, points_avg_10,
    ROUND(points_avg_10 - points_avg_30, 3),
    days_rest
FROM (
    SELECT
        today.game_date, today.player_id, today.game_id, today.season_year,
        today.season_type, today.team, today.opponent, today.is_home,
        COUNT(earlier.game_date) AS games_last_30,
        ROUND(AVG(earlier.minutes), 3) AS minutes_avg_30,
        ROUND(AVG(earlier.points), 3) AS points_avg_30,
        ROUND(AVG(earlier.rebounds), 3) AS rebounds_avg_30,
        ROUND(AVG(earlier.assists), 3) AS assists_avg_30,
        -- Linear time decay: a game 1 day back weighs 30, one 30 days back weighs 1.
        ROUND(
            SUM(earlier.points * (31 - DATE_DIFF(today.game_date, earlier.game_date, DAY)))
            / SUM(31 - DATE_DIFF(today.game_date, earlier.game_date, DAY)),
            3) AS points_weighted_30,
        ROUND(AVG(CASE WHEN earlier.game_date >= DATE_SUB(today.game_date, INTERVAL 10 DAY)
                       THEN earlier.points END), 3) AS points_avg_10,
        DATE_DIFF(today.game_date, MAX(earlier.game_date), DAY)
            AS days_rest
    FROM nba_analytics.player_game_summary AS today
    LEFT JOIN nba_analytics.player_game_summary AS earlier
        ON earlier.player_id = today.player_id
       AND earlier.game_date >= DATE_SUB(today.game_date, INTERVAL 30 DAY)
       AND earlier.game_date < today.game_date
    WHERE today.game_date BETWEEN :start AND :end
    GROUP BY
        today.game_date, today.player_id, today.game_id, today.season_year,
        today.season_type, today.team, today.opponent, today.is_home
) AS features;
