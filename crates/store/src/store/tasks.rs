//! Tasks and their leases: claims, heartbeats, completion, release, failure and requeue. Every
//! transition is a compare-and-set on the task's state and lease epoch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::codec::{RowExt, holder_from_row, parse_text, run_id, runner_from_row, task_from_row};
use crate::error::StoreError;
use crate::model::{CellHolder, Claim, RunId, RunnerRecord, TaskRecord, TaskState};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::{Key, Store, log_outcome, millis};

/// Tasks to claim in the transaction that completes another ([`Store::complete_then_claim`]).
#[derive(Debug, Clone, Copy)]
pub struct NextClaims<'a> {
    /// `(task_id, seen_epoch)` of each task to claim.
    pub tasks: &'a [(i64, i64)],
    /// Per task, the most tasks of its run and phase that may run at once on every node
    /// together (the phase's `concurrency`), checked on PostgreSQL; `None` or missing: not
    /// checked. A claim of the completed task's own run and phase needs no check: the
    /// completion frees the slot it takes, in the same transaction.
    pub limits: &'a [Option<u32>],
    /// The lease owner.
    pub owner: &'a str,
    /// The lease length.
    pub ttl: Duration,
}

impl Store {
    /// The run's tasks, ordered by phase, then start date.
    pub async fn tasks(&self, run_id: &RunId) -> Result<Vec<TaskRecord>, StoreError> {
        self.rows_by(sql::SELECT_TASKS, run_id.as_str(), |row| task_from_row(row))
            .await
    }

    /// Every task of the run: `(id, state, lease epoch)`, in id order. Cheap enough to poll:
    /// a scheduler sharing a run with other nodes follows their claims and completions by it.
    pub async fn task_states(
        &self,
        run_id: &RunId,
    ) -> Result<Vec<(i64, TaskState, i64)>, StoreError> {
        self.rows_by(sql::TASK_STATES, run_id.as_str(), |row| {
            let state = parse_text::<TaskState>("tasks.state", row.string("state")?)?;
            Ok((row.i64("id")?, state, row.i64("lease_epoch")?))
        })
        .await
    }

    /// Up to 50 running runs of `pipeline` with a task that can be claimed now: the runs a
    /// node with room can help with.
    pub async fn runs_with_work(&self, pipeline: &str) -> Result<Vec<RunId>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let ids: Vec<String> = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(
                    connection,
                    sql::RUNS_WITH_WORK.sqlite,
                    params![pipeline, now],
                    |row| Ok(row.get(0)?),
                )
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::RUNS_WITH_WORK.postgres)
                    .bind(pipeline)
                    .bind(now)
                    .fetch_all(pool)
                    .await?
            })?,
        };
        ids.into_iter().map(run_id).collect()
    }

    /// On PostgreSQL, a connection listening for work added or given back by any node (runs
    /// created, tasks completed, released or requeued, events stored): each notification is
    /// sent at the commit of the transaction that did it. `None` on SQLite (one node).
    pub async fn listen_for_work(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match self {
            Self::Sqlite(_) => Ok(None),
            Self::Postgres(pool) => pg_call!({
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(sql::WORK_CHANNEL).await?;
                Some(listener)
            }),
        }
    }

    /// One task, if it exists.
    pub async fn task(&self, task_id: i64) -> Result<Option<TaskRecord>, StoreError> {
        self.row_by(sql::SELECT_TASK, task_id, |row| task_from_row(row))
            .await
    }

    /// Claims a pending task whose lease epoch is still `seen_epoch` and whose retry backoff has
    /// passed: pending → running, attempt + 1, lease held by `owner` until now + `ttl`, and a
    /// hold on each of its cells ([`Store::cell_holders`]) until the same time. `None` means
    /// another claimer won, the epoch is stale, the task is not claimable (yet), or a live task
    /// of another run holds one of its cells: do not run it.
    ///
    /// The new lease epoch (the runner's `GAPLESS_ATTEMPT_TOKEN`) is strictly greater than
    /// every epoch any claim handed out before, for any task of any run: it comes from one
    /// counter bumped in the claim's transaction (SQLite), or from one sequence drawn after the
    /// claim took its cells' holds (PostgreSQL).
    pub async fn claim(
        &self,
        task_id: i64,
        seen_epoch: i64,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        self.claim_within(task_id, seen_epoch, owner, ttl, None)
            .await
    }

    /// [`Store::claim`], refused also while `limit` tasks of the task's run and phase are
    /// running, on any node (the phase's `concurrency` across nodes). PostgreSQL counts them
    /// under a lock per run and phase, held to the claim's commit; on SQLite, one process
    /// executes a run and counts for itself, so `limit` is not checked there.
    pub async fn claim_within(
        &self,
        task_id: i64,
        seen_epoch: i64,
        owner: &str,
        ttl: Duration,
        limit: Option<u32>,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let claim = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                claim_sqlite(connection, task_id, seen_epoch, owner, expires_at, now)
            })?,
            Self::Postgres(pool) => pg_call!({
                let mut tx = pool.begin().await?;
                let claim =
                    claim_postgres(&mut tx, task_id, seen_epoch, owner, expires_at, now, limit)
                        .await?;
                if claim.is_some() {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                claim
            })?,
        };
        log_outcome("claim", claim.is_some());
        Ok(claim)
    }

    /// Renews the lease of a running task held under `epoch` to now + `ttl`. `false` means the
    /// lease was lost (rescued, requeued): the holder must stop its runner. The task's cell
    /// holds are renewed with it, in the same transaction.
    pub async fn heartbeat(
        &self,
        task_id: i64,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires_at = Utc::now().timestamp_millis().saturating_add(millis(ttl));
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, expires_at];
                if sqlite::execute(connection, sql::HEARTBEAT.sqlite, values)? == 0 {
                    return Ok(false);
                }
                let values = params![task_id, expires_at];
                sqlite::execute(connection, sql::RENEW_HOLDS.sqlite, values)?;
                Ok(true)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::HEARTBEAT.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(sql::RENEW_HOLDS.postgres)
                        .bind(task_id)
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await?;
                }
                won
            })?,
        };
        log_outcome("heartbeat", won);
        Ok(won)
    }

    /// Records a running task held under `epoch` as complete, in one transaction: the task
    /// (with `counts`, lease cleared, epoch + 1, runner forgotten), its still-pending cells →
    /// complete, one `complete` event from `source` per cell that became complete, and its
    /// cell holds dropped. `false` means the lease was
    /// lost: a stale completion, to be logged and dropped, not turned into a failure.
    ///
    /// Four statements, each set-based (the task's compare-and-set, then the cells, their
    /// events and holds whatever their number); a lost compare-and-set stops after the first.
    pub async fn complete(
        &self,
        task_id: i64,
        epoch: i64,
        counts: &serde_json::Value,
        source: &str,
    ) -> Result<bool, StoreError> {
        let next = NextClaims {
            tasks: &[],
            limits: &[],
            owner: "",
            ttl: Duration::ZERO,
        };
        Ok(self
            .complete_then_claim(task_id, epoch, counts, source, &next)
            .await?
            .is_some())
    }

    /// [`Store::complete`], and in the same transaction [`Store::claim`] each of `next.tasks`
    /// (`(task_id, seen_epoch)`): the executor hands the tasks a completion makes ready their
    /// claims with the commit that made them ready, one commit instead of two per task. On
    /// PostgreSQL the claims are made in the order given, so give them in phase order: two
    /// completions of one run then take the phases' locks in one order.
    /// `None` when the completion lost its compare-and-set (nothing is claimed then); otherwise
    /// one entry per next task, `None` where that claim was refused.
    pub async fn complete_then_claim(
        &self,
        task_id: i64,
        epoch: i64,
        counts: &serde_json::Value,
        source: &str,
        next: &NextClaims<'_>,
    ) -> Result<Option<Vec<Option<Claim>>>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(next.ttl));
        let counts = serde_json::to_string(counts).map_err(|source| StoreError::Json {
            column: "tasks.counts",
            source,
        })?;
        let claims = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, now, counts];
                if sqlite::execute(connection, sql::COMPLETE_TASK.sqlite, values)? == 0 {
                    return Ok(None);
                }
                sqlite::execute(
                    connection,
                    sql::COMPLETE_CELLS.sqlite,
                    params![task_id, now],
                )?;
                let values = params![task_id, now, source];
                sqlite::execute(connection, sql::INSERT_COMPLETION_EVENTS.sqlite, values)?;
                sqlite::execute(connection, sql::DROP_HOLDS.sqlite, [task_id])?;
                let mut claims = Vec::with_capacity(next.tasks.len());
                for &(next_id, seen_epoch) in next.tasks {
                    let claim =
                        claim_sqlite(connection, next_id, seen_epoch, next.owner, expires_at, now)?;
                    claims.push(claim);
                }
                Ok(Some(claims))
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::COMPLETE_TASK.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(now)
                    .bind(counts.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(sql::COMPLETE_CELLS.postgres)
                        .bind(task_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    drop_holds_postgres(&mut tx, task_id).await?;
                    let mut claims = Vec::with_capacity(next.tasks.len());
                    for (k, &(next_id, seen_epoch)) in next.tasks.iter().enumerate() {
                        // A savepoint per claim: a refused one is rolled back alone.
                        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                        let claim = claim_postgres(
                            &mut savepoint,
                            next_id,
                            seen_epoch,
                            next.owner,
                            expires_at,
                            now,
                            next.limits.get(k).copied().flatten(),
                        )
                        .await?;
                        if claim.is_some() {
                            savepoint.commit().await?;
                        } else {
                            savepoint.rollback().await?;
                        }
                        claims.push(claim);
                    }
                    // The event log's lock last: it orders every transaction that writes
                    // events, and is held from here to the commit only.
                    sqlx::query(sql::LOCK_EVENT_LOG_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::INSERT_COMPLETION_EVENTS.postgres)
                        .bind(task_id)
                        .bind(now)
                        .bind(source)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                    Some(claims)
                } else {
                    None
                }
            })?,
        };
        log_outcome("complete", claims.is_some());
        Ok(claims)
    }

    /// Gives a running task held under `epoch` back for another attempt: running → pending,
    /// `error` recorded, lease cleared, epoch + 1, not claimable before now + `not_before`,
    /// cell holds dropped.
    pub async fn release_for_retry(
        &self,
        task_id: i64,
        epoch: i64,
        error: &str,
        not_before: Duration,
    ) -> Result<bool, StoreError> {
        let not_before = Utc::now()
            .timestamp_millis()
            .saturating_add(millis(not_before));
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, error, not_before];
                if sqlite::execute(connection, sql::RELEASE_FOR_RETRY.sqlite, values)? == 0 {
                    return Ok(false);
                }
                sqlite::execute(connection, sql::DROP_HOLDS.sqlite, [task_id])?;
                Ok(true)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::RELEASE_FOR_RETRY.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(error)
                    .bind(not_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    drop_holds_postgres(&mut tx, task_id).await?;
                    sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                }
                won
            })?,
        };
        log_outcome("release_for_retry", won);
        Ok(won)
    }

    /// Fails a running task held under `epoch` for good, in one transaction: the task → failed
    /// with `error` (lease cleared, epoch + 1) and its pending cells → failed, its cell holds
    /// dropped. A lost compare-and-set stops after the first statement.
    pub async fn fail(&self, task_id: i64, epoch: i64, error: &str) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, error, now];
                if sqlite::execute(connection, sql::FAIL_TASK.sqlite, values)? == 0 {
                    return Ok(false);
                }
                sqlite::execute(connection, sql::FAIL_CELLS.sqlite, [task_id])?;
                sqlite::execute(connection, sql::DROP_HOLDS.sqlite, [task_id])?;
                Ok(true)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::FAIL_TASK.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(sql::FAIL_CELLS.postgres)
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                    drop_holds_postgres(&mut tx, task_id).await?;
                }
                won
            })?,
        };
        log_outcome("fail", won);
        Ok(won)
    }

    /// For `resume` of a run whose executor is gone: every running task of the run → pending,
    /// error `interrupted`, lease cleared, epoch + 1, so a stale holder's later writes are
    /// rejected, and their cell holds dropped. Their runners stay recorded
    /// ([`Store::recorded_runners`]): the old holder may not have stopped them. Returns the
    /// requeued task ids. With several nodes, use
    /// [`Store::requeue_expired`] instead: it spares tasks whose holder is alive.
    pub async fn requeue_running(&self, run_id: &RunId) -> Result<Vec<i64>, StoreError> {
        self.requeue(sql::REQUEUE_RUNNING, run_id.as_str()).await
    }

    /// Rescues tasks of dead holders: every running task (of any run) whose lease expired
    /// before `now` → pending, error `lease expired`, lease cleared, epoch + 1, cell holds
    /// dropped, runners kept recorded. Returns their ids.
    ///
    /// One guarded statement, not read-then-update: the guard (still `running`, lease still
    /// expired) is evaluated per row under its row lock, so a task that completed, was
    /// re-claimed or renewed its lease meanwhile is not touched (River #1302). The epoch a
    /// separate read would have compared is implied: any epoch change also changes the state
    /// or refreshes the lease.
    pub async fn requeue_expired(&self, now: DateTime<Utc>) -> Result<Vec<i64>, StoreError> {
        self.requeue(sql::REQUEUE_EXPIRED, now.timestamp_millis())
            .await
    }

    /// Runs a requeue statement (running → pending, `RETURNING id`) for `key` and drops the
    /// requeued tasks' cell holds, in one transaction.
    async fn requeue<K: Key>(&self, statement: sql::Sql, key: K) -> Result<Vec<i64>, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let ids: Vec<i64> =
                    sqlite::rows(connection, statement.sqlite, [key], |row| Ok(row.get(0)?))?;
                for &task_id in &ids {
                    sqlite::execute(connection, sql::DROP_HOLDS.sqlite, [task_id])?;
                }
                Ok(ids)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let ids: Vec<i64> = sqlx::query_scalar(statement.postgres)
                    .bind(key)
                    .fetch_all(&mut *tx)
                    .await?;
                for &task_id in &ids {
                    drop_holds_postgres(&mut tx, task_id).await?;
                }
                if !ids.is_empty() {
                    sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                }
                ids
            }),
        }
    }

    /// Records the runner of the attempt held under `epoch`: its `host` and process group id
    /// `pgid`, so that a resume can make sure it is gone ([`Store::recorded_runners`]). One
    /// statement; `false` means the lease was lost meanwhile.
    pub async fn record_runner(
        &self,
        task_id: i64,
        epoch: i64,
        host: &str,
        pgid: i64,
    ) -> Result<bool, StoreError> {
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![task_id, epoch, host, pgid];
                Ok(sqlite::execute(connection, sql::RECORD_RUNNER.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::RECORD_RUNNER.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(host)
                    .bind(pgid)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("record_runner", won);
        Ok(won)
    }

    /// The run's recorded runners that may still be alive: those of its running tasks, and of
    /// its tasks that [`Store::requeue_running`] or [`Store::requeue_expired`] took from a holder
    /// that may not have stopped them. A runner is forgotten when its task completes, fails or is
    /// released by its holder, when the task is claimed again, and by [`Store::forget_runners`].
    pub async fn recorded_runners(&self, run_id: &RunId) -> Result<Vec<RunnerRecord>, StoreError> {
        self.rows_by(sql::SELECT_RUNNERS, run_id.as_str(), |row| {
            runner_from_row(row)
        })
        .await
    }

    /// Forgets the recorded runners of the run's tasks that are not running, once the caller
    /// made sure they are gone (so that a later resume does not signal a process group id the
    /// system has reused). Returns how many it forgot.
    pub async fn forget_runners(&self, run_id: &RunId) -> Result<u64, StoreError> {
        let run_id = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let forgot = sqlite::execute(connection, sql::FORGET_RUNNERS.sqlite, [run_id])?;
                Ok(u64::try_from(forgot).unwrap_or(u64::MAX))
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::FORGET_RUNNERS.postgres)
                    .bind(run_id)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }),
        }
    }

    /// The live holds of other tasks (of other runs) on the cells of `task_id`, by phase and
    /// date: while there is one, [`Store::claim`] refuses the task. The executor waits for
    /// them (and then skips the cells that became complete) or reports who holds them.
    pub async fn cell_holders(&self, task_id: i64) -> Result<Vec<CellHolder>, StoreError> {
        let now = Utc::now().timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(
                    connection,
                    sql::SELECT_HOLDERS.sqlite,
                    [task_id, now],
                    |row| holder_from_row(row),
                )
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_HOLDERS.postgres)
                    .bind(task_id)
                    .bind(now)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(holder_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }
}

/// Claims a task inside the caller's SQLite transaction, whose writers are serialized: the
/// guarded update (which refuses while another task holds one of its cells), the task's cell
/// holds, the new lease, and the epoch counter moved to it. `None` when the guard refused (not
/// pending at `seen_epoch`, backing off, or a cell held); nothing is written then.
fn claim_sqlite(
    connection: &Connection,
    task_id: i64,
    seen_epoch: i64,
    owner: &str,
    expires_at: i64,
    now: i64,
) -> Result<Option<Claim>, StoreError> {
    let values = params![task_id, seen_epoch, owner, expires_at, now];
    if sqlite::execute(connection, sql::CLAIM_SQLITE.sqlite, values)? == 0 {
        return Ok(None);
    }
    let values = params![task_id, expires_at, now];
    sqlite::execute(connection, sql::TAKE_HOLDS.sqlite, values)?;
    let lease = sqlite::rows(connection, sql::SELECT_LEASE.sqlite, [task_id], |row| {
        claim_from_row(row)
    })?;
    let claim = lease.into_iter().next();
    if let Some(claim) = claim {
        sqlite::execute(connection, sql::SET_LEASE_COUNTER.sqlite, [claim.epoch])?;
    }
    Ok(claim)
}

/// Claims a task inside the caller's PostgreSQL transaction: the task's row, locked with `SKIP
/// LOCKED` (a task another node is claiming right now is refused at once, not waited for), then,
/// with a `limit`, the count of the run's running tasks of the phase under a lock per run and
/// phase, then the task's cell holds (an `INSERT … ON CONFLICT` that sees concurrent claimers'
/// committed holds), then the guarded update, whose new epoch the `lease_epochs` sequence
/// issues. `None` when refused; the caller must then roll back what this wrote (a transaction
/// or a savepoint of its own).
///
/// No lock is shared by all claims: claims of different tasks run side by side. Two
/// transactions can only wait on each other through a phase lock or a cell's hold; PostgreSQL
/// breaks the rare cycle (two overlapping runs claiming the same cells in opposite order) by
/// failing one transaction with a deadlock error, which callers retry as transient.
async fn claim_postgres(
    tx: &mut sqlx::PgConnection,
    task_id: i64,
    seen_epoch: i64,
    owner: &str,
    expires_at: i64,
    now: i64,
    limit: Option<u32>,
) -> Result<Option<Claim>, StoreError> {
    let claimable = sqlx::query(sql::LOCK_CLAIMABLE_POSTGRES.postgres)
        .bind(task_id)
        .bind(seen_epoch)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
    if claimable.is_none() {
        return Ok(None);
    }
    if let Some(limit) = limit {
        sqlx::query(sql::LOCK_PHASE_POSTGRES.postgres)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        let running: i64 = sqlx::query_scalar(sql::RUNNING_PEERS.postgres)
            .bind(task_id)
            .fetch_one(&mut *tx)
            .await?;
        if running >= i64::from(limit) {
            return Ok(None);
        }
    }
    let held: bool = sqlx::query_scalar(sql::TAKE_HOLDS_POSTGRES.postgres)
        .bind(task_id)
        .bind(expires_at)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    if !held {
        return Ok(None);
    }
    let row = sqlx::query(sql::CLAIM_POSTGRES.postgres)
        .bind(task_id)
        .bind(seen_epoch)
        .bind(owner)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
    row.map(|row| claim_from_row(&row)).transpose()
}

async fn drop_holds_postgres(tx: &mut sqlx::PgConnection, task_id: i64) -> Result<(), StoreError> {
    sqlx::query(sql::DROP_HOLDS.postgres)
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn claim_from_row(row: &impl RowExt) -> Result<Claim, StoreError> {
    Ok(Claim {
        epoch: row.i64("lease_epoch")?,
        attempt: row.i32("attempt")?,
    })
}
