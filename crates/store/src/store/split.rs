//! Splitting a task that has not run into pieces, e.g. at the dates a failure blocks, so that
//! its runnable dates run without the blocked ones.

use chrono::NaiveDate;
use rusqlite::params;

use crate::codec::{date, date_text, task_from_row};
use crate::error::StoreError;
use crate::model::{NewTask, RunId, TaskRecord, TaskState};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::runs::validate_tasks;
use crate::store::{Store, log_outcome};

impl Store {
    /// Replaces a pending or blocked task of the run, still at `seen_epoch`, by `pieces`, in one
    /// transaction: each of its cells moves to the piece whose range covers its date, in that
    /// piece's state (a blocked piece's cells are blocked). Returns the pieces' task ids in
    /// order of `pieces`; the first piece keeps the task's id (its row is rewritten: new range,
    /// state and error, attempt count reset, epoch + 1 so earlier readers of the task are
    /// fenced). `None` when the task is gone, or no longer pending or blocked at `seen_epoch`.
    ///
    /// Fails with [`StoreError::InvalidSplit`], writing nothing, unless the pieces are of the
    /// task's phase, their ranges do not overlap, and their dates together are exactly the
    /// task's dates; and with [`StoreError::InvalidTask`] for a piece that is inconsistent in
    /// itself.
    pub async fn split_task(
        &self,
        run_id: &RunId,
        task_id: i64,
        seen_epoch: i64,
        pieces: &[NewTask],
    ) -> Result<Option<Vec<i64>>, StoreError> {
        validate_tasks(pieces)?;
        let run = run_id.as_str();
        let split = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let task = sqlite::rows(connection, sql::SELECT_TASK.sqlite, [task_id], |row| {
                    task_from_row(row)
                })?;
                let Some(task) = splittable(task.into_iter().next(), run_id, task_id, seen_epoch)?
                else {
                    return Ok(None);
                };
                let dates = sqlite::rows(
                    connection,
                    sql::SELECT_TASK_DATES.sqlite,
                    [task_id],
                    |row| date("run_cells.date", &row.get::<_, String>(0)?),
                )?;
                check_pieces(&task, &dates, pieces)?;
                let first = &pieces[0];
                let values = params![
                    task_id,
                    seen_epoch,
                    date_text(first.start),
                    date_text(first.end),
                    first.state.as_str(),
                    first.error
                ];
                if sqlite::execute(connection, sql::REWRITE_SPLIT_TASK.sqlite, values)? == 0 {
                    return Ok(None);
                }
                let mut ids = vec![task_id];
                for piece in &pieces[1..] {
                    let values = params![
                        run,
                        piece.phase,
                        date_text(piece.start),
                        date_text(piece.end),
                        piece.state.as_str(),
                        piece.error
                    ];
                    sqlite::execute(connection, sql::INSERT_TASK_SQLITE.sqlite, values)?;
                    ids.push(connection.last_insert_rowid());
                }
                for (piece, &id) in pieces.iter().zip(&ids) {
                    let values = params![
                        task_id,
                        id,
                        piece.state.as_str(),
                        date_text(piece.start),
                        date_text(piece.end)
                    ];
                    sqlite::execute(connection, sql::MOVE_CELLS.sqlite, values)?;
                }
                Ok(Some(ids))
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let task = sqlx::query(sql::SELECT_TASK.postgres)
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| task_from_row(&row))
                    .transpose()?;
                match splittable(task, run_id, task_id, seen_epoch)? {
                    None => None,
                    Some(task) => {
                        let dates =
                            sqlx::query_scalar::<_, String>(sql::SELECT_TASK_DATES.postgres)
                                .bind(task_id)
                                .fetch_all(&mut *tx)
                                .await?
                                .iter()
                                .map(|text| date("run_cells.date", text))
                                .collect::<Result<Vec<_>, _>>()?;
                        check_pieces(&task, &dates, pieces)?;
                        let first = &pieces[0];
                        let rewritten = sqlx::query(sql::REWRITE_SPLIT_TASK.postgres)
                            .bind(task_id)
                            .bind(seen_epoch)
                            .bind(date_text(first.start))
                            .bind(date_text(first.end))
                            .bind(first.state.as_str())
                            .bind(first.error.as_deref())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                            == 1;
                        if rewritten {
                            let mut ids = vec![task_id];
                            for piece in &pieces[1..] {
                                let id: i64 =
                                    sqlx::query_scalar(sql::INSERT_TASK_POSTGRES.postgres)
                                        .bind(run)
                                        .bind(piece.phase)
                                        .bind(date_text(piece.start))
                                        .bind(date_text(piece.end))
                                        .bind(piece.state.as_str())
                                        .bind(piece.error.as_deref())
                                        .fetch_one(&mut *tx)
                                        .await?;
                                ids.push(id);
                            }
                            for (piece, &id) in pieces.iter().zip(&ids) {
                                sqlx::query(sql::MOVE_CELLS.postgres)
                                    .bind(task_id)
                                    .bind(id)
                                    .bind(piece.state.as_str())
                                    .bind(date_text(piece.start))
                                    .bind(date_text(piece.end))
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            Some(ids)
                        } else {
                            None
                        }
                    }
                }
            })?,
        };
        log_outcome("split_task", split.is_some());
        Ok(split)
    }
}

/// The task if it may be split now: it exists, is pending or blocked, and is at `seen_epoch`.
/// A task of another run is an error, not a lost race.
fn splittable(
    task: Option<TaskRecord>,
    run_id: &RunId,
    task_id: i64,
    seen_epoch: i64,
) -> Result<Option<TaskRecord>, StoreError> {
    let Some(task) = task else {
        return Ok(None);
    };
    if &task.run_id != run_id {
        return Err(StoreError::InvalidSplit {
            task_id,
            reason: "the task belongs to another run",
        });
    }
    let open = matches!(task.state, TaskState::Pending | TaskState::Blocked);
    Ok((open && task.lease_epoch == seen_epoch).then_some(task))
}

/// Whether `pieces` replace `task`, whose cells are on `dates` (sorted), exactly: same phase,
/// ranges apart, and together the same dates.
fn check_pieces(
    task: &TaskRecord,
    dates: &[NaiveDate],
    pieces: &[NewTask],
) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidSplit {
        task_id: task.id,
        reason,
    };
    if pieces.is_empty() {
        return Err(invalid("no pieces were given"));
    }
    if pieces.iter().any(|piece| piece.phase != task.phase) {
        return Err(invalid("a piece is of another phase than the task"));
    }
    let mut ranges: Vec<(NaiveDate, NaiveDate)> = pieces
        .iter()
        .map(|piece| (piece.start, piece.end))
        .collect();
    ranges.sort_unstable();
    if ranges.windows(2).any(|pair| pair[1].0 <= pair[0].1) {
        return Err(invalid("the ranges of two pieces overlap"));
    }
    let mut covered: Vec<NaiveDate> = pieces
        .iter()
        .flat_map(|piece| piece.dates.iter().copied())
        .collect();
    covered.sort_unstable();
    if covered != dates {
        return Err(invalid(
            "the pieces' dates are not exactly the task's dates",
        ));
    }
    Ok(())
}
