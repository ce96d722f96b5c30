//! The event log: appending and reading events.

use chrono::{NaiveDate, Utc};
use rusqlite::params;

use crate::codec::{date_text, event_from_row};
use crate::error::StoreError;
use crate::model::{EventRecord, NewEvent, RunId};
use crate::sql;
use crate::sqlite;
use crate::store::Store;

impl Store {
    /// Appends an event (e.g. a `complete` reported by the live pipeline); returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let now = Utc::now().timestamp_millis();
        let run_id = event.run_id.as_ref().map(RunId::as_str);
        let date = date_text(event.date);
        let (status, source) = (event.status.as_str(), event.source.as_str());
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![event.phase, date, status, source, run_id, now];
                sqlite::scalar(connection, sql::INSERT_EVENT.sqlite, values)
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::INSERT_EVENT.postgres)
                    .bind(event.phase)
                    .bind(date)
                    .bind(status)
                    .bind(source)
                    .bind(run_id)
                    .bind(now)
                    .fetch_one(pool)
                    .await?
            }),
        }
    }

    /// Up to `limit` events with ids greater than `after_id`, oldest first (a negative `limit`
    /// counts as 0).
    pub async fn events(&self, after_id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit.max(0); // see `list_runs`
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(
                    connection,
                    sql::SELECT_EVENTS.sqlite,
                    [after_id, limit],
                    |row| event_from_row(row),
                )
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_EVENTS.postgres)
                    .bind(after_id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// How many events were stored for the cell (phase, date). A scan of the events table (no
    /// index serves it: one would cost a page on every completion); meant for checks and tests.
    pub async fn count_events(&self, phase: i64, date: NaiveDate) -> Result<i64, StoreError> {
        let date = date_text(date);
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::scalar(connection, sql::COUNT_EVENTS.sqlite, params![phase, date])
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::COUNT_EVENTS.postgres)
                    .bind(phase)
                    .bind(date)
                    .fetch_one(pool)
                    .await?
            }),
        }
    }
}
