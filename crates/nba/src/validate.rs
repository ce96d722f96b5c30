//! The original backfill plan's validation queries, as data: each compares what a phase holds
//! with what it should hold, as two single-integer queries on the warehouse.

use std::path::Path;

use sqlx::{AssertSqlSafe, Connection};

use crate::NbaError;
use crate::warehouse::connect;

/// One check: `actual_sql` should return the same integer as `expected_sql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// What is compared, e.g. `2021-22 playoff games in phase 3`.
    pub label: String,
    /// A `SELECT` returning one integer: what the phase holds.
    pub actual_sql: String,
    /// A `SELECT` returning one integer: what it should hold.
    pub expected_sql: String,
}

/// A [`Validation`] and the two numbers it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationResult {
    /// The check.
    pub validation: Validation,
    /// What `actual_sql` returned.
    pub actual: i64,
    /// What `expected_sql` returned.
    pub expected: i64,
}

impl ValidationResult {
    /// The phase holds what it should.
    pub fn is_passing(&self) -> bool {
        self.actual == self.expected
    }
}

/// The original plan's P0 checks: playoff games of 2021-22, 2022-23 and 2023-24 in phase 3,
/// their playoff dates in phase 4, and 2024-25 graded predictions in phase 6.
pub fn validation_queries() -> Vec<Validation> {
    let mut validations: Vec<Validation> = [2021, 2022, 2023]
        .into_iter()
        .map(|year| Validation {
            label: format!(
                "{year}-{:02} playoff games in phase 3 (nba_analytics.player_game_summary)",
                (year + 1) % 100
            ),
            actual_sql: format!(
                "SELECT COUNT(DISTINCT game_id) FROM nba_analytics.player_game_summary \
                 WHERE season_year = {year} AND season_type = 'playoffs'"
            ),
            expected_sql: format!(
                "SELECT COUNT(*) FROM nba_reference.schedule \
                 WHERE season_year = {year} AND season_type = 'playoffs'"
            ),
        })
        .collect();
    validations.push(Validation {
        label: "2021-22 to 2023-24 playoff dates in phase 4 \
                (nba_precompute.player_composite_factors)"
            .to_owned(),
        actual_sql:
            "SELECT COUNT(DISTINCT game_date) FROM nba_precompute.player_composite_factors \
                     WHERE season_year BETWEEN 2021 AND 2023 AND season_type = 'playoffs'"
                .to_owned(),
        expected_sql: "SELECT COUNT(DISTINCT game_date) FROM nba_reference.schedule \
                       WHERE season_year BETWEEN 2021 AND 2023 AND season_type = 'playoffs'"
            .to_owned(),
    });
    validations.push(Validation {
        label: "2024-25 graded predictions in phase 6 (nba_predictions.prediction_accuracy)"
            .to_owned(),
        actual_sql: "SELECT COUNT(*) FROM nba_predictions.prediction_accuracy \
                     WHERE season_year = 2024"
            .to_owned(),
        expected_sql: "SELECT COUNT(*) FROM nba_predictions.player_prop_predictions \
                       WHERE season_year = 2024"
            .to_owned(),
    });
    validations
}

/// Runs every [`validation_queries`] check on the warehouse in `dir`.
pub async fn run_validations(dir: &Path) -> Result<Vec<ValidationResult>, NbaError> {
    let mut connection = connect(dir).await?;
    let mut results = Vec::new();
    for validation in validation_queries() {
        // The queries are this module's constants, not user input.
        let actual: i64 = sqlx::query_scalar(AssertSqlSafe(validation.actual_sql.clone()))
            .fetch_one(&mut connection)
            .await?;
        let expected: i64 = sqlx::query_scalar(AssertSqlSafe(validation.expected_sql.clone()))
            .fetch_one(&mut connection)
            .await?;
        results.push(ValidationResult {
            validation,
            actual,
            expected,
        });
    }
    connection.close().await?;
    Ok(results)
}
