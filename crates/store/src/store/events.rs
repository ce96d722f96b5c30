//! The event log: appending and reading events.

use chrono::{NaiveDate, Utc};
use rusqlite::params;

use crate::codec::{RowExt as _, date, date_text, event_from_row, quarantine_from_row};
use crate::error::StoreError;
use crate::model::{EventRecord, IncomingEvent, Ingested, NewEvent, QuarantineRecord, RunId};
use crate::sql;
use crate::sqlite::{self, Commit};
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
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                sqlx::query(sql::LOCK_EVENT_LOG_POSTGRES)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query_scalar(sql::INSERT_EVENT.postgres)
                    .bind(event.phase)
                    .bind(date)
                    .bind(status)
                    .bind(source)
                    .bind(run_id)
                    .bind(now)
                    .fetch_one(&mut *tx)
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

    /// (phase, task state, count) over every run's tasks.
    pub async fn task_counts(&self) -> Result<Vec<(i64, String, i64)>, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::TASK_COUNTS.sqlite, [], |row| {
                    Ok((row.i64("phase")?, row.string("state")?, row.i64("n")?))
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::TASK_COUNTS.postgres)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok((row.i64("phase")?, row.string("state")?, row.i64("n")?)))
                    .collect::<Result<Vec<_>, StoreError>>()?
            }),
        }
    }

    /// The newest `limit` events, newest first.
    pub async fn recent_events(&self, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        self.rows_by(sql::RECENT_EVENTS, limit.max(0), |row| event_from_row(row))
            .await
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

    /// Stores events received from outside, in one transaction, each unless an event with the
    /// same `dedup_key` was stored before. Returns what happened to each, in order.
    pub async fn ingest_events(
        &self,
        events: &[IncomingEvent],
    ) -> Result<Vec<Ingested>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let rows: Vec<(i64, String, &str, &str, Option<&str>)> = events
            .iter()
            .map(|event| {
                (
                    event.phase,
                    date_text(event.date),
                    event.status.as_str(),
                    event.source.as_str(),
                    event.dedup_key.as_deref(),
                )
            })
            .collect();
        let outcome = |id: Option<i64>| id.map_or(Ingested::Duplicate, Ingested::Stored);
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let mut out = Vec::with_capacity(rows.len());
                for (phase, date, status, source, key) in &rows {
                    let values = params![phase, date, status, source, now, key];
                    let id = sqlite::rows(connection, sql::INGEST_EVENT.sqlite, values, |row| {
                        row.i64("id")
                    })?;
                    out.push(outcome(id.first().copied()));
                }
                Ok(out)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                sqlx::query(sql::LOCK_EVENT_LOG_POSTGRES)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                    .execute(&mut *tx)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for (phase, date, status, source, key) in &rows {
                    let id: Option<i64> = sqlx::query_scalar(sql::INGEST_EVENT.postgres)
                        .bind(phase)
                        .bind(date)
                        .bind(status)
                        .bind(source)
                        .bind(now)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    out.push(outcome(id));
                }
                out
            }),
        }
    }

    /// Keeps an event that will not be acted on, with why. `false` when one with the same
    /// `dedup_key` was kept before.
    pub async fn quarantine(
        &self,
        source: &str,
        dedup_key: Option<&str>,
        payload: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![now, source, dedup_key, payload, reason];
                let ids = sqlite::rows(connection, sql::QUARANTINE.sqlite, values, |row| {
                    row.i64("id")
                })?;
                Ok(!ids.is_empty())
            }),
            Self::Postgres(pool) => pg_call!({
                let id: Option<i64> = sqlx::query_scalar(sql::QUARANTINE.postgres)
                    .bind(now)
                    .bind(source)
                    .bind(dedup_key)
                    .bind(payload)
                    .bind(reason)
                    .fetch_optional(pool)
                    .await?;
                id.is_some()
            }),
        }
    }

    /// The newest `limit` quarantined events, newest first.
    pub async fn quarantined(&self, limit: i64) -> Result<Vec<QuarantineRecord>, StoreError> {
        let limit = limit.max(0);
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::SELECT_QUARANTINE.sqlite, [limit], |row| {
                    quarantine_from_row(row)
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_QUARANTINE.postgres)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(quarantine_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// The last event id consumer `name` has read (0 for a new consumer): it reads on with
    /// [`Store::events`] from there.
    pub async fn consumer_position(&self, name: &str) -> Result<i64, StoreError> {
        let found: Vec<i64> = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::SELECT_CONSUMER.sqlite, [name], |row| {
                    row.i64("event_id")
                })
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::SELECT_CONSUMER.postgres)
                    .bind(name)
                    .fetch_all(pool)
                    .await?
            })?,
        };
        Ok(found.first().copied().unwrap_or(0))
    }

    /// Records that consumer `name` has read the event log up to event `event_id`.
    pub async fn save_consumer_position(
        &self,
        name: &str,
        event_id: i64,
    ) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![name, event_id, now];
                sqlite::execute(connection, sql::SAVE_CONSUMER.sqlite, values).map(drop)
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SAVE_CONSUMER.postgres)
                    .bind(name)
                    .bind(event_id)
                    .bind(now)
                    .execute(pool)
                    .await?;
            }),
        }
    }

    /// The dates of phase `phase` within `start..=end` that a run whose owner is alive still
    /// means to run: what a trigger must not plan again.
    pub async fn active_cells(
        &self,
        phase: i64,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<Vec<NaiveDate>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let (start, end) = (date_text(start), date_text(end));
        let texts: Vec<String> = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![now, phase, start, end];
                sqlite::rows(connection, sql::ACTIVE_CELLS.sqlite, values, |row| {
                    row.string("date")
                })
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::ACTIVE_CELLS.postgres)
                    .bind(now)
                    .bind(phase)
                    .bind(&start)
                    .bind(&end)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| row.string("date"))
                    .collect::<Result<Vec<_>, StoreError>>()?
            })?,
        };
        texts
            .iter()
            .map(|text| date("run_cells.date", text))
            .collect()
    }
}
