//! The example's warehouse: `warehouse/main.db` with one attached SQLite file per schema, so
//! SQL names tables `nba_raw.bdl_player_boxscores` as it would on PostgreSQL or BigQuery.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, SqliteConnection};

use crate::NbaError;
use crate::generate::League;

/// The attached schemas, each in `warehouse/{schema}.db`.
pub const SCHEMAS: [&str; 5] = [
    "nba_reference",
    "nba_raw",
    "nba_analytics",
    "nba_precompute",
    "nba_predictions",
];

/// The warehouse's tables and indexes (`examples/nba/warehouse.sql`).
pub const WAREHOUSE_SQL: &str = include_str!("../../../examples/nba/warehouse.sql");

/// Rows per multi-row `INSERT`: 50 rows × at most 20 columns stays far below SQLite's limit of
/// 32,766 bound parameters, and cuts the per-statement round trips to sqlx's worker thread.
pub(crate) const ROWS_PER_INSERT: usize = 50;

/// Opens `dir/warehouse/main.db` with every schema attached. Fails if the warehouse does not
/// exist (see [`setup`]).
pub async fn connect(dir: &Path) -> Result<SqliteConnection, NbaError> {
    open(dir, false).await
}

async fn open(dir: &Path, create: bool) -> Result<SqliteConnection, NbaError> {
    let warehouse = dir.join("warehouse");
    if create {
        fs_err::create_dir_all(&warehouse)?;
    }
    let options = SqliteConnectOptions::new()
        .filename(warehouse.join("main.db"))
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // gapless probes the warehouse while runners write to it.
        .busy_timeout(Duration::from_secs(30));
    let mut connection = options.connect().await?;
    for schema in SCHEMAS {
        let path = warehouse.join(format!("{schema}.db"));
        let path_text = path
            .to_str()
            .ok_or_else(|| NbaError::NonUtf8Path { path: path.clone() })?;
        // A schema name cannot be a bound parameter; these are our own constants.
        sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ? AS {schema}")))
            .bind(path_text)
            .execute(&mut connection)
            .await?;
    }
    Ok(connection)
}

/// Creates the warehouse under `dir/warehouse/` (every database file, table and index) and
/// fills `nba_reference` (teams, schedule, players, rosters) from `league`. Safe to run again:
/// tables are created if missing and the reference data is replaced.
pub async fn setup(dir: &Path, league: &League) -> Result<(), NbaError> {
    let mut connection = open(dir, true).await?;
    for schema in SCHEMAS {
        // WAL is a property of each database file, not of the connection.
        sqlx::query(AssertSqlSafe(format!("PRAGMA {schema}.journal_mode = WAL")))
            .execute(&mut connection)
            .await?;
    }
    sqlx::raw_sql(WAREHOUSE_SQL)
        .execute(&mut connection)
        .await?;

    let mut transaction = connection.begin().await?;
    for table in ["teams", "schedule", "players", "rosters"] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM nba_reference.{table}")))
            .execute(&mut *transaction)
            .await?;
    }
    for team in &league.teams {
        sqlx::query(
            "INSERT INTO nba_reference.teams (team, team_name, conference) VALUES (?, ?, ?)",
        )
        .bind(&team.abbreviation)
        .bind(&team.name)
        .bind(team.conference.as_str())
        .execute(&mut *transaction)
        .await?;
    }

    let games: Vec<_> = league.games().collect();
    let schedule_columns = [
        "game_id",
        "game_date",
        "season_year",
        "season_type",
        "home_team",
        "away_team",
    ];
    for chunk in games.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql("nba_reference.schedule", &schedule_columns, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for game in chunk {
            query = query
                .bind(&game.game_id)
                .bind(game.game_date.format("%Y-%m-%d").to_string())
                .bind(game.season_year)
                .bind(game.season_type.as_str())
                .bind(&game.home_team)
                .bind(&game.away_team);
        }
        query.execute(&mut *transaction).await?;
    }

    for season in &league.seasons {
        for spot in &season.rosters {
            sqlx::query(
                "INSERT INTO nba_reference.players (player_id, player_name) VALUES (?, ?) \
                 ON CONFLICT (player_id) DO NOTHING",
            )
            .bind(spot.player_id)
            .bind(&spot.player_name)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO nba_reference.rosters (season_year, team, player_id) VALUES (?, ?, ?)",
            )
            .bind(season.season_year)
            .bind(&spot.team)
            .bind(spot.player_id)
            .execute(&mut *transaction)
            .await?;
        }
    }
    transaction.commit().await?;
    connection.close().await?;
    Ok(())
}

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows` rows.
pub(crate) fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let placeholders = format!("({})", vec!["?"; columns.len()].join(", "));
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        vec![placeholders.as_str(); rows].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::insert_sql;

    #[test]
    fn insert_sql_has_one_group_per_row() {
        assert_eq!(
            insert_sql("s.t", &["a", "b"], 2),
            "INSERT INTO s.t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
