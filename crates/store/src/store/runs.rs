//! Runs: creation with their whole plan, reads, and run-level state changes.

use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, params};

use crate::codec::{date_text, run_from_row};
use crate::error::StoreError;
use crate::model::{Creator, NewRun, NewTask, RunId, RunOwner, RunRecord, RunState};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::gaps::{trigger_gaps_postgres, trigger_gaps_sqlite};
use crate::store::nodes::{guard_postgres, guard_sqlite};
use crate::store::{Store, log_outcome, millis};

impl Store {
    // --- runs -----------------------------------------------------------------------------

    /// Creates a run in state `running` with all its tasks and one cell per task date, in one
    /// transaction: either all of it is stored or none. Durable on SQLite whatever the
    /// [`SyncMode`]: a run that was reported created survives a power loss.
    ///
    /// Fails with [`StoreError::Duplicate`] when two tasks share (phase, start) or two tasks
    /// cover the same (phase, date), and with [`StoreError::InvalidTask`] for a task whose dates
    /// are empty or outside its range.
    pub async fn create_run(&self, new: &NewRun) -> Result<RunId, StoreError> {
        self.insert_run(new, None).await
    }

    /// [`Store::create_run`], owned by `owner` from its first commit, with a lease of `ttl`
    /// ([`Store::acquire_run`]).
    pub async fn create_run_owned(
        &self,
        new: &NewRun,
        owner: &RunOwner<'_>,
        ttl: Duration,
    ) -> Result<RunId, StoreError> {
        let creator = Creator {
            owner: *owner,
            ttl,
            fence: None,
            heals: &[],
        };
        self.insert_run(new, Some(&creator)).await
    }

    /// [`Store::create_run_owned`] by `creator`, in the same transaction: with a fence, the
    /// lease row is read first (share-locked on PostgreSQL) and the call fails with
    /// [`StoreError::Fenced`], writing nothing, once the lease moved on; the gaps it heals go
    /// `triggered` by the new run.
    pub async fn create_run_by(
        &self,
        new: &NewRun,
        creator: &Creator<'_>,
    ) -> Result<RunId, StoreError> {
        self.insert_run(new, Some(creator)).await
    }

    async fn insert_run(
        &self,
        new: &NewRun,
        creator: Option<&Creator<'_>>,
    ) -> Result<RunId, StoreError> {
        validate_tasks(&new.tasks)?;
        let now = Utc::now();
        let id = RunId::generate(now);
        let now = now.timestamp_millis();
        let request = serde_json::to_string(&new.request).map_err(|source| StoreError::Json {
            column: "runs.request",
            source,
        })?;
        let (kind, run_id) = (new.kind.as_str(), id.as_str());
        let (owner_id, owner_host, owner_pid, owner_expires_at) = match creator {
            Some(Creator { owner, ttl, .. }) => (
                Some(owner.id),
                Some(owner.host),
                Some(owner.pid),
                Some(now.saturating_add(millis(*ttl))),
            ),
            None => (None, None, None, None),
        };
        let fence = creator.and_then(|creator| creator.fence);
        let heals = creator.map_or(&[][..], |creator| creator.heals);
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                guard_sqlite(connection, fence, now)?;
                let pipeline = new.pipeline.as_str();
                let values = params![
                    run_id,
                    kind,
                    pipeline,
                    request,
                    now,
                    owner_id,
                    owner_host,
                    owner_pid,
                    owner_expires_at
                ];
                sqlite::execute(connection, sql::INSERT_RUN_SQLITE, values)?;
                insert_tasks_sqlite(connection, run_id, &new.tasks)?;
                trigger_gaps_sqlite(connection, heals, run_id)?;
                Ok(())
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                guard_postgres(&mut tx, fence, now).await?;
                sqlx::query(sql::INSERT_RUN_POSTGRES)
                    .bind(run_id)
                    .bind(kind)
                    .bind(new.pipeline.as_str())
                    .bind(request.as_str())
                    .bind(now)
                    .bind(owner_id)
                    .bind(owner_host)
                    .bind(owner_pid)
                    .bind(owner_expires_at)
                    .execute(&mut *tx)
                    .await?;
                insert_tasks_postgres(&mut tx, run_id, &new.tasks).await?;
                if !heals.is_empty() {
                    trigger_gaps_postgres(&mut tx, heals, run_id).await?;
                }
                sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                    .execute(&mut *tx)
                    .await?;
            })?,
        }
        Ok(id)
    }

    /// Adds tasks (and their cells) to an existing run in one transaction, returning their ids
    /// in order. Fails with [`StoreError::Duplicate`], writing nothing, when any of them repeats
    /// a (phase, start) or a (phase, date) the run already has.
    pub async fn add_tasks(
        &self,
        run_id: &RunId,
        tasks: &[NewTask],
    ) -> Result<Vec<i64>, StoreError> {
        validate_tasks(tasks)?;
        let run_id = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                insert_tasks_sqlite(connection, run_id, tasks)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                insert_tasks_postgres(&mut tx, run_id, tasks).await?
            }),
        }
    }

    /// The run, if it exists.
    pub async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.row_by(sql::SELECT_RUN, id.as_str(), |row| run_from_row(row))
            .await
    }

    /// The most recently created run.
    pub async fn latest_run(&self) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.list_runs(1).await?.pop())
    }

    /// Up to `limit` runs, newest first (a negative `limit` counts as 0).
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunRecord>, StoreError> {
        // A negative LIMIT means "all" to SQLite and is an error to PostgreSQL.
        self.rows_by(sql::LIST_RUNS, limit.max(0), |row| run_from_row(row))
            .await
    }

    /// Compare-and-set of the run's state on its `version`; `true` when it applied. Sets
    /// `finished_at` for terminal states (and releases the run's owner) and clears it for
    /// `running` (resume). Durable on
    /// SQLite whatever the [`SyncMode`].
    pub async fn set_run_state(
        &self,
        run_id: &RunId,
        expected_version: i64,
        new_state: RunState,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let finished_at = new_state.is_terminal().then_some(now);
        let (run_id, state) = (run_id.as_str(), new_state.as_str());
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![run_id, expected_version, state, now, finished_at];
                Ok(sqlite::execute(connection, sql::SET_RUN_STATE.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SET_RUN_STATE.postgres)
                    .bind(run_id)
                    .bind(expected_version)
                    .bind(state)
                    .bind(now)
                    .bind(finished_at)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("set_run_state", won);
        Ok(won)
    }

    /// Moves a `running` run to the terminal `state` and releases its owner; `true` when it
    /// applied. A run that is no longer running (cancelled, already finished) is left alone. Durable on SQLite whatever
    /// the [`SyncMode`], and so is everything committed before it.
    pub async fn finish_run(&self, run_id: &RunId, state: RunState) -> Result<bool, StoreError> {
        if !state.is_terminal() {
            return Err(StoreError::NotTerminal { state });
        }
        let now = Utc::now().timestamp_millis();
        let (run_id, state) = (run_id.as_str(), state.as_str());
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![run_id, state, now];
                Ok(sqlite::execute(connection, sql::FINISH_RUN.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::FINISH_RUN.postgres)
                    .bind(run_id)
                    .bind(state)
                    .bind(now)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("finish_run", won);
        Ok(won)
    }
}

/// Inserts `tasks` and their cells into the open transaction; their ids, in order.
pub(super) async fn insert_tasks_postgres(
    tx: &mut sqlx::PgConnection,
    run_id: &str,
    tasks: &[NewTask],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let task_id: i64 = sqlx::query_scalar(sql::INSERT_TASK_POSTGRES.postgres)
            .bind(run_id)
            .bind(task.phase)
            .bind(date_text(task.start))
            .bind(date_text(task.end))
            .bind(task.state.as_str())
            .bind(task.error.as_deref())
            .fetch_one(&mut *tx)
            .await?;
        for date in &task.dates {
            sqlx::query(sql::INSERT_CELL.postgres)
                .bind(run_id)
                .bind(task.phase)
                .bind(date_text(*date))
                .bind(task_id)
                .bind(task.state.as_str())
                .execute(&mut *tx)
                .await?;
        }
        ids.push(task_id);
    }
    Ok(ids)
}

/// Inserts `tasks` and their cells into the open transaction; their ids, in order.
pub(super) fn insert_tasks_sqlite(
    connection: &Connection,
    run_id: &str,
    tasks: &[NewTask],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (start, end, state) = (
            date_text(task.start),
            date_text(task.end),
            task.state.as_str(),
        );
        let values = params![run_id, task.phase, start, end, state, task.error];
        sqlite::execute(connection, sql::INSERT_TASK_SQLITE.sqlite, values)?;
        let task_id = connection.last_insert_rowid();
        for date in &task.dates {
            let values = params![run_id, task.phase, date_text(*date), task_id, state];
            sqlite::execute(connection, sql::INSERT_CELL.sqlite, values)?;
        }
        ids.push(task_id);
    }
    Ok(ids)
}

pub(super) fn validate_tasks(tasks: &[NewTask]) -> Result<(), StoreError> {
    for task in tasks {
        let invalid = |reason| StoreError::InvalidTask {
            phase: task.phase,
            start: task.start,
            reason,
        };
        if task.start > task.end {
            return Err(invalid("start is after end"));
        }
        if task.dates.is_empty() {
            return Err(invalid("it covers no dates"));
        }
        if task
            .dates
            .iter()
            .any(|date| *date < task.start || *date > task.end)
        {
            return Err(invalid("a date lies outside start..=end"));
        }
    }
    Ok(())
}
