//! Cells and progress: the run's (phase, date) cells, their counts, and blocking, unblocking
//! and retrying tasks together with their cells.

use rusqlite::params;

use crate::codec::{cell_from_row, progress_from_row};
use crate::error::StoreError;
use crate::model::{CellRecord, PhaseProgress, RunId};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::Store;

/// Which way [`Store::move_tasks`] moves tasks that hold no lease.
#[derive(Debug, Clone, Copy)]
enum Move<'a> {
    /// pending → blocked, with the reason.
    Block(&'a str),
    /// blocked → pending.
    Unblock,
    /// failed → pending.
    Retry,
}

impl Store {
    /// The run's cells, ordered by phase, then date.
    pub async fn cells(&self, run_id: &RunId) -> Result<Vec<CellRecord>, StoreError> {
        self.rows_by(sql::SELECT_CELLS, run_id.as_str(), |row| cell_from_row(row))
            .await
    }

    /// Cell counts per phase of the run, ordered by phase.
    pub async fn run_progress(&self, run_id: &RunId) -> Result<Vec<PhaseProgress>, StoreError> {
        self.rows_by(sql::RUN_PROGRESS, run_id.as_str(), |row| {
            progress_from_row(row)
        })
        .await
    }

    /// Blocks the run's tasks among `task_ids` that are pending (and their pending cells), with
    /// `reason` as their error, in one transaction. Returns how many tasks it blocked; tasks in
    /// any other state are left alone.
    pub async fn block(
        &self,
        run_id: &RunId,
        task_ids: &[i64],
        reason: &str,
    ) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Block(reason)).await
    }

    /// Releases the run's blocked tasks among `task_ids` (and their cells) back to pending, in
    /// one transaction, e.g. when resume finds their upstream complete now. Returns how many it
    /// released.
    pub async fn unblock(&self, run_id: &RunId, task_ids: &[i64]) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Unblock).await
    }

    /// Sends the run's failed tasks among `task_ids` (and their failed cells) back to pending,
    /// in one transaction: `resume` after the cause of a failure was fixed. Their attempts stay
    /// counted. Returns how many it moved.
    pub async fn retry_failed(&self, run_id: &RunId, task_ids: &[i64]) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Retry).await
    }

    /// Each task among `task_ids` that is in the move's source state moves with its cells;
    /// the others stay as they are.
    async fn move_tasks(
        &self,
        run_id: &RunId,
        task_ids: &[i64],
        kind: Move<'_>,
    ) -> Result<u64, StoreError> {
        let run_id = run_id.as_str();
        let (task_sql, cells_sql, block_reason) = match kind {
            Move::Block(reason) => (sql::BLOCK_TASK, sql::BLOCK_CELLS, Some(reason)),
            Move::Unblock => (sql::UNBLOCK_TASK, sql::UNBLOCK_CELLS, None),
            Move::Retry => (sql::RETRY_TASK, sql::RETRY_CELLS, None),
        };
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let mut moved = 0;
                for &task_id in task_ids {
                    let changed = match block_reason {
                        Some(reason) => sqlite::execute(
                            connection,
                            task_sql.sqlite,
                            params![task_id, run_id, reason],
                        )?,
                        None => {
                            sqlite::execute(connection, task_sql.sqlite, params![task_id, run_id])?
                        }
                    };
                    if changed == 1 {
                        sqlite::execute(connection, cells_sql.sqlite, [task_id])?;
                        moved += 1;
                    }
                }
                Ok(moved)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let mut moved = 0;
                for &task_id in task_ids {
                    let mut query = sqlx::query(task_sql.postgres).bind(task_id).bind(run_id);
                    if let Some(reason) = block_reason {
                        query = query.bind(reason);
                    }
                    if query.execute(&mut *tx).await?.rows_affected() == 1 {
                        sqlx::query(cells_sql.postgres)
                            .bind(task_id)
                            .execute(&mut *tx)
                            .await?;
                        moved += 1;
                    }
                }
                moved
            }),
        }
    }
}
