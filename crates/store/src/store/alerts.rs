//! The alerts outbox and the scheduler's ticks.

use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::codec::{alert_from_row, time};
use crate::error::StoreError;
use crate::model::{AlertRecord, Fence};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::Store;
use crate::store::nodes::{fence_postgres, fence_sqlite, guard_postgres, guard_sqlite};

impl Store {
    /// Marks the open gaps `ids` alerted now and records `message` (JSON) for each channel in
    /// `channels`, in one transaction: the alert is in the outbox exactly when the gaps say they
    /// were alerted about. Returns how many gaps moved. `fence`: as for [`Store::record_scan`]
    /// (a leader that lost its lease does not alert a second time about what its successor
    /// alerts about).
    pub async fn alert_gaps(
        &self,
        ids: &[i64],
        channels: &[&str],
        message: &serde_json::Value,
        fence: Option<&Fence>,
    ) -> Result<usize, StoreError> {
        let now = Utc::now().timestamp_millis();
        let text = message.to_string();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                guard_sqlite(connection, fence, now)?;
                let mut moved = 0;
                for id in ids {
                    moved += sqlite::execute(connection, sql::ALERT_GAP.sqlite, params![id, now])?;
                }
                for channel in channels {
                    sqlite::execute(
                        connection,
                        sql::INSERT_ALERT.sqlite,
                        params![now, channel, text],
                    )?;
                }
                Ok(moved)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                guard_postgres(&mut tx, fence, now).await?;
                let mut moved = 0;
                for id in ids {
                    moved += sqlx::query(sql::ALERT_GAP.postgres)
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() as usize;
                }
                for channel in channels {
                    sqlx::query(sql::INSERT_ALERT.postgres)
                        .bind(now)
                        .bind(channel)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?;
                }
                moved
            }),
        }
    }

    /// The oldest `limit` alerts not delivered yet.
    pub async fn undelivered_alerts(&self, limit: i64) -> Result<Vec<AlertRecord>, StoreError> {
        self.rows_by(sql::UNDELIVERED_ALERTS, limit.max(0), |row| {
            alert_from_row(row)
        })
        .await
    }

    /// Records that alert `id` was delivered; `false` when it already was.
    pub async fn alert_delivered(&self, id: i64) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        self.alert_update(sql::ALERT_DELIVERED, id, Value::Time(now), None)
            .await
    }

    /// Records a failed delivery of alert `id`.
    pub async fn alert_failed(&self, id: i64, error: &str) -> Result<bool, StoreError> {
        self.alert_update(sql::ALERT_FAILED, id, Value::Text(error.to_owned()), None)
            .await
    }

    /// [`Store::alert_delivered`] by the leader holding `fence`: refused (`false`, nothing
    /// written) once its lease moved on.
    pub async fn alert_delivered_fenced(&self, id: i64, fence: &Fence) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        self.alert_update(sql::ALERT_DELIVERED, id, Value::Time(now), Some(fence))
            .await
    }

    /// [`Store::alert_failed`] by the leader holding `fence`.
    pub async fn alert_failed_fenced(
        &self,
        id: i64,
        error: &str,
        fence: &Fence,
    ) -> Result<bool, StoreError> {
        self.alert_update(
            sql::ALERT_FAILED,
            id,
            Value::Text(error.to_owned()),
            Some(fence),
        )
        .await
    }

    async fn alert_update(
        &self,
        statement: sql::Sql,
        id: i64,
        value: Value,
        fence: Option<&Fence>,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                if let Some(fence) = fence
                    && !fence_sqlite(connection, fence, now)?
                {
                    return Ok(false);
                }
                let changed = match &value {
                    Value::Time(at) => {
                        sqlite::execute(connection, statement.sqlite, params![id, at])?
                    }
                    Value::Text(text) => {
                        sqlite::execute(connection, statement.sqlite, params![id, text])?
                    }
                };
                Ok(changed == 1)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let held = match fence {
                    Some(fence) => fence_postgres(&mut tx, fence, now).await?,
                    None => true,
                };
                if held {
                    let query = sqlx::query(statement.postgres).bind(id);
                    let query = match &value {
                        Value::Time(at) => query.bind(*at),
                        Value::Text(text) => query.bind(text.clone()),
                    };
                    query.execute(&mut *tx).await?.rows_affected() == 1
                } else {
                    false
                }
            }),
        }
    }

    /// When scheduled job `name` last ticked.
    pub async fn last_tick(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let found = self
            .rows_by(sql::SELECT_TICK, name, |row| {
                time("ticks.last_at", row.i64("last_at")?)
            })
            .await?;
        Ok(found.into_iter().next())
    }

    /// Records that scheduled job `name` ticked at `at` (never moving it back).
    pub async fn save_tick(&self, name: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let at = at.timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::execute(connection, sql::SAVE_TICK.sqlite, params![name, at]).map(drop)
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SAVE_TICK.postgres)
                    .bind(name)
                    .bind(at)
                    .execute(pool)
                    .await?;
            }),
        }
    }
}

/// The second bound value of an alert update.
enum Value {
    Time(i64),
    Text(String),
}
