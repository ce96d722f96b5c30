//! Several nodes on one state store: each `serve` registers itself and renews its row by
//! heartbeat; a dead node's tasks and runs are taken back by any other; named leases (the
//! leader's) carry a term issued by the store, and the leader's writes are fenced by it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::codec::{RowExt, runner_from_row, time};
use crate::error::StoreError;
use crate::model::{
    Fence, LeaseOutcome, LeaseRecord, NodeRecord, NodeView, NodesReport, RunOwner, RunnerRecord,
    TickRun,
};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::{Store, log_outcome, millis};

/// The name of the leader's lease.
pub const LEADER: &str = "leader";

impl Store {
    /// Registers `node` (or renews its registration) until now + `ttl`.
    pub async fn register_node(
        &self,
        node: &RunOwner<'_>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![node.id, node.host, node.pid, now, expires_at];
                sqlite::execute(connection, sql::REGISTER_NODE.sqlite, values).map(drop)
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::REGISTER_NODE.postgres)
                    .bind(node.id)
                    .bind(node.host)
                    .bind(node.pid)
                    .bind(now)
                    .bind(expires_at)
                    .execute(pool)
                    .await?;
            }),
        }
    }

    /// Renews node `id`'s registration to now + `ttl`. `false`: its row is gone (another node
    /// found it dead and took its work back): register again.
    pub async fn node_heartbeat(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![id, now, expires_at];
                Ok(sqlite::execute(connection, sql::NODE_HEARTBEAT.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::NODE_HEARTBEAT.postgres)
                    .bind(id)
                    .bind(now)
                    .bind(expires_at)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("node_heartbeat", won);
        Ok(won)
    }

    /// Node `id` stops: its row goes and the leases it holds are released (their terms stay,
    /// so the next holder's is larger). Durable on SQLite.
    pub async fn deregister_node(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                sqlite::execute(connection, sql::DELETE_OWN_NODE.sqlite, [id])?;
                sqlite::execute(connection, sql::RELEASE_LEASES_OF.sqlite, [id]).map(drop)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                sqlx::query(sql::DELETE_OWN_NODE.postgres)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::RELEASE_LEASES_OF.postgres)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }),
        }
    }

    /// Every registered node, live or not yet reaped, oldest first.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::SELECT_NODES.sqlite, [], |row| {
                    node_from_row(row)
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_NODES.postgres)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(node_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// The recorded runners of the tasks node `id` is running: stop those on this host before
    /// [`Store::reap_node`] hands their tasks to someone else.
    pub async fn runners_of(&self, id: &str) -> Result<Vec<RunnerRecord>, StoreError> {
        self.rows_by(sql::RUNNING_TASKS_OF, id, |row| runner_from_row(row))
            .await
    }

    /// Takes a dead node's work back, in one transaction, if its row still expires at what
    /// `seen` says (a node that renewed meanwhile is alive, and a node another reaper took is
    /// gone): its row is deleted, its leases released, its running tasks pending again with
    /// their epochs bumped (its late writes are refused) and their cell holds dropped, and its
    /// runs left without owner, so that any node adopts them at once. `gone`: the caller made
    /// sure the process is gone and its runners with it (a process of its own host), so every
    /// running task of the node is taken back; otherwise only those whose lease expired, the
    /// rest once theirs do ([`Store::requeue_expired`]), since a node cut off from the store
    /// stops its runners only when their leases could expire. `None` when the guard refused;
    /// otherwise the requeued task ids.
    pub async fn reap_node(
        &self,
        seen: &NodeRecord,
        gone: bool,
    ) -> Result<Option<Vec<i64>>, StoreError> {
        let id = seen.id.as_str();
        let expires_at = seen.expires_at.timestamp_millis();
        let cutoff = if gone {
            i64::MAX
        } else {
            Utc::now().timestamp_millis()
        };
        let reaped = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![id, expires_at];
                if sqlite::execute(connection, sql::DELETE_NODE.sqlite, values)? == 0 {
                    return Ok(None);
                }
                sqlite::execute(connection, sql::RELEASE_LEASES_OF.sqlite, [id])?;
                let ids: Vec<i64> = sqlite::rows(
                    connection,
                    sql::REQUEUE_OWNED_BY.sqlite,
                    params![id, cutoff],
                    |row| Ok(row.get(0)?),
                )?;
                for &task_id in &ids {
                    sqlite::execute(connection, sql::DROP_HOLDS.sqlite, [task_id])?;
                }
                sqlite::execute(connection, sql::RELEASE_RUNS_OF.sqlite, [id])?;
                Ok(Some(ids))
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let deleted = sqlx::query(sql::DELETE_NODE.postgres)
                    .bind(id)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    None
                } else {
                    sqlx::query(sql::RELEASE_LEASES_OF.postgres)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let ids: Vec<i64> = sqlx::query_scalar(sql::REQUEUE_OWNED_BY.postgres)
                        .bind(id)
                        .bind(cutoff)
                        .fetch_all(&mut *tx)
                        .await?;
                    for &task_id in &ids {
                        sqlx::query(sql::DROP_HOLDS.postgres)
                            .bind(task_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query(sql::RELEASE_RUNS_OF.postgres)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::NOTIFY_WORK_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                    Some(ids)
                }
            })?,
        };
        log_outcome("reap_node", reaped.is_some());
        Ok(reaped)
    }

    /// Takes or renews lease `name` for `holder` until now + `ttl`, in one transaction: renewed
    /// (same term) when `holder` holds it; taken, with the term one higher, when nobody holds
    /// it, its holder's lease expired, or its holder is `take_over` (the caller checked that
    /// this holder is dead). Otherwise [`LeaseOutcome::HeldBy`] names the holder, and nothing
    /// changes. Durable on SQLite.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        take_over: Option<&str>,
    ) -> Result<LeaseOutcome, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let until = time("leases.expires_at", expires_at)?;
        let decide = |current: &LeaseRecord| -> Decision {
            match &current.holder {
                Some(who) if who == holder => Decision::Renew,
                Some(who)
                    if current
                        .expires_at
                        .is_some_and(|at| at.timestamp_millis() >= now)
                        && take_over != Some(who.as_str()) =>
                {
                    Decision::Refuse
                }
                _ => Decision::Take,
            }
        };
        let held = |term| LeaseOutcome::Held {
            fence: Fence {
                name: name.to_owned(),
                holder: holder.to_owned(),
                term,
            },
            expires_at: until,
        };
        let outcome = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                sqlite::execute(connection, sql::ENSURE_LEASE.sqlite, [name])?;
                let current = lease_sqlite(connection, name)?;
                Ok(match decide(&current) {
                    Decision::Refuse => LeaseOutcome::HeldBy(current),
                    Decision::Renew => {
                        let values = params![name, holder, current.term, expires_at];
                        sqlite::execute(connection, sql::RENEW_LEASE.sqlite, values)?;
                        held(current.term)
                    }
                    Decision::Take => {
                        let values = params![name, holder, now, expires_at, current.term];
                        let terms =
                            sqlite::rows(connection, sql::TAKE_LEASE.sqlite, values, |row| {
                                Ok(row.get::<_, i64>(0)?)
                            })?;
                        match terms.first() {
                            Some(&term) => held(term),
                            None => LeaseOutcome::HeldBy(current),
                        }
                    }
                })
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                sqlx::query(sql::ENSURE_LEASE.postgres)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query(sql::SELECT_LEASE_POSTGRES.postgres)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                let current = lease_from_row(&row)?;
                match decide(&current) {
                    Decision::Refuse => LeaseOutcome::HeldBy(current),
                    Decision::Renew => {
                        sqlx::query(sql::RENEW_LEASE.postgres)
                            .bind(name)
                            .bind(holder)
                            .bind(current.term)
                            .bind(expires_at)
                            .execute(&mut *tx)
                            .await?;
                        held(current.term)
                    }
                    Decision::Take => {
                        let term: Option<i64> = sqlx::query_scalar(sql::TAKE_LEASE.postgres)
                            .bind(name)
                            .bind(holder)
                            .bind(now)
                            .bind(expires_at)
                            .bind(current.term)
                            .fetch_optional(&mut *tx)
                            .await?;
                        match term {
                            Some(term) => held(term),
                            None => LeaseOutcome::HeldBy(current),
                        }
                    }
                }
            })?,
        };
        log_outcome(
            "acquire_lease",
            matches!(outcome, LeaseOutcome::Held { .. }),
        );
        Ok(outcome)
    }

    /// Gives lease `fence.name` up, if `fence` still holds it; `false` otherwise.
    pub async fn release_lease(&self, fence: &Fence) -> Result<bool, StoreError> {
        let Fence { name, holder, term } = fence;
        Ok(match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![name, holder, term];
                Ok(sqlite::execute(connection, sql::RELEASE_LEASE.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::RELEASE_LEASE.postgres)
                    .bind(name)
                    .bind(holder)
                    .bind(term)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        })
    }

    /// Every lease, held or not.
    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::SELECT_LEASES.sqlite, [], |row| {
                    lease_from_row(row)
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_LEASES.postgres)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(lease_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// The leader takes scheduled occurrence `at` of `name` under `fence`, in one transaction:
    /// refused (`None`) unless `fence` still holds its lease, and unless the occurrence is new
    /// or was taken under an older term and never finished (that leader died mid-tick). The
    /// schedule's last tick ([`Store::last_tick`]) moves to `at` with it. `Some(attempts)`: how
    /// many leaders took it, this one included.
    pub async fn claim_tick(
        &self,
        name: &str,
        at: DateTime<Utc>,
        fence: &Fence,
    ) -> Result<Option<i64>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let at = at.timestamp_millis();
        let claimed = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                if !fence_sqlite(connection, fence, now)? {
                    return Ok(None);
                }
                let values = params![name, at, fence.term, fence.holder, now];
                let attempts = sqlite::rows(connection, sql::CLAIM_TICK.sqlite, values, |row| {
                    Ok(row.get::<_, i64>(0)?)
                })?;
                let attempts = attempts.into_iter().next();
                if attempts.is_some() {
                    sqlite::execute(connection, sql::SAVE_TICK.sqlite, params![name, at])?;
                }
                Ok(attempts)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                if fence_postgres(&mut tx, fence, now).await? {
                    let attempts: Option<i64> = sqlx::query_scalar(sql::CLAIM_TICK.postgres)
                        .bind(name)
                        .bind(at)
                        .bind(fence.term)
                        .bind(fence.holder.as_str())
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if attempts.is_some() {
                        sqlx::query(sql::SAVE_TICK.postgres)
                            .bind(name)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    attempts
                } else {
                    None
                }
            })?,
        };
        log_outcome("claim_tick", claimed.is_some());
        Ok(claimed)
    }

    /// Records occurrence `at` of `name`, taken under `fence`, finished; `false` when `fence`
    /// no longer holds its lease (a newer leader will run it again) or it was not taken so.
    pub async fn finish_tick(
        &self,
        name: &str,
        at: DateTime<Utc>,
        fence: &Fence,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let at = at.timestamp_millis();
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                if !fence_sqlite(connection, fence, now)? {
                    return Ok(false);
                }
                let values = params![name, at, fence.term, now];
                Ok(sqlite::execute(connection, sql::FINISH_TICK.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                if fence_postgres(&mut tx, fence, now).await? {
                    sqlx::query(sql::FINISH_TICK.postgres)
                        .bind(name)
                        .bind(at)
                        .bind(fence.term)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1
                } else {
                    false
                }
            })?,
        };
        log_outcome("finish_tick", won);
        Ok(won)
    }

    /// The latest occurrence of `name` that a leader of a term before `term` took and never
    /// finished: the leader that died mid-tick; the new one runs it again.
    pub async fn unfinished_tick(
        &self,
        name: &str,
        term: i64,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let found: Vec<i64> = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(
                    connection,
                    sql::UNFINISHED_TICK.sqlite,
                    params![name, term],
                    |row| Ok(row.get(0)?),
                )
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::UNFINISHED_TICK.postgres)
                    .bind(name)
                    .bind(term)
                    .fetch_all(pool)
                    .await?
            })?,
        };
        found
            .first()
            .map(|&at| time("tick_runs.at", at))
            .transpose()
    }

    /// Every occurrence of `name` a leader took, oldest first.
    pub async fn tick_runs(&self, name: &str) -> Result<Vec<TickRun>, StoreError> {
        self.rows_by(sql::TICK_RUNS, name, |row| tick_from_row(row))
            .await
    }

    /// The nodes, their leases, runs and running tasks, and the leader, as of `now`: what
    /// `gapless nodes` prints and the dashboard shows.
    pub async fn nodes_report(&self, now: DateTime<Utc>) -> Result<NodesReport, StoreError> {
        let nodes = self.nodes().await?;
        let leases = self.leases().await?;
        let (owned, running): (Vec<OwnedRun>, Vec<RunningCount>) = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let owned = sqlite::rows(connection, sql::OWNED_RUNS.sqlite, [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                let running = sqlite::rows(connection, sql::RUNNING_PER_OWNER.sqlite, [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                Ok((owned, running))
            })?,
            Self::Postgres(pool) => pg_call!({
                let owned = sqlx::query_as::<_, (String, String)>(sql::OWNED_RUNS.postgres)
                    .fetch_all(pool)
                    .await?;
                let running = sqlx::query_as::<_, (String, i64)>(sql::RUNNING_PER_OWNER.postgres)
                    .fetch_all(pool)
                    .await?;
                (owned, running)
            })?,
        };
        let leader_lease = leases.iter().find(|lease| lease.name == LEADER);
        let leader = leader_lease
            .filter(|lease| lease.live_at(now))
            .and_then(|lease| lease.holder.clone());
        let running: HashMap<String, i64> = running.into_iter().collect();
        let mut runs_of: HashMap<String, Vec<String>> = HashMap::new();
        for (owner, run) in owned {
            runs_of.entry(owner).or_default().push(run);
        }
        let views: Vec<NodeView> = nodes
            .into_iter()
            .map(|node| NodeView {
                alive: node.expires_at >= now,
                leader: leader.as_deref() == Some(node.id.as_str()),
                leases: leases
                    .iter()
                    .filter(|lease| lease.live_at(now) && lease.holder.as_ref() == Some(&node.id))
                    .map(|lease| lease.name.clone())
                    .collect(),
                runs: runs_of.remove(&node.id).unwrap_or_default(),
                running_tasks: running.get(&node.id).copied().unwrap_or(0),
                node,
            })
            .collect();
        let mut other_owners: Vec<String> = runs_of.into_keys().collect();
        other_owners.sort();
        Ok(NodesReport {
            term: leader_lease.map_or(0, |lease| lease.term),
            nodes: views,
            leases,
            leader,
            other_owners,
        })
    }
}

/// (owner id, run id) of a running run.
type OwnedRun = (String, String);
/// (lease owner, running tasks).
type RunningCount = (String, i64);

enum Decision {
    Renew,
    Take,
    Refuse,
}

fn lease_sqlite(connection: &Connection, name: &str) -> Result<LeaseRecord, StoreError> {
    sqlite::rows(connection, sql::SELECT_LEASE_SQLITE.sqlite, [name], |row| {
        lease_from_row(row)
    })?
    .into_iter()
    .next()
    .ok_or_else(|| StoreError::Corrupt {
        column: "leases.name",
        value: name.to_owned(),
    })
}

/// Whether `fence` holds its lease at `now`, inside the caller's SQLite transaction (writers
/// are serialized, so no take-over can come between this read and the caller's write).
pub(crate) fn fence_sqlite(
    connection: &Connection,
    fence: &Fence,
    now: i64,
) -> Result<bool, StoreError> {
    let values = params![fence.name, fence.holder, fence.term, now];
    let held = sqlite::rows(connection, sql::FENCE_SQLITE.sqlite, values, |row| {
        Ok(row.get::<_, i64>(0)?)
    })?;
    let held = held.first().copied().unwrap_or(0) == 1;
    if !held {
        tracing::warn!(lease = %fence.name, term = fence.term, "fenced: the lease moved on");
    }
    Ok(held)
}

/// [`fence_sqlite`] on PostgreSQL: a locking read of the lease row, held to the caller's
/// commit, so that a take-over waits for the caller's write, and the caller's read waits for a
/// take-over in progress and then sees its new term.
pub(crate) async fn fence_postgres(
    tx: &mut sqlx::PgConnection,
    fence: &Fence,
    now: i64,
) -> Result<bool, StoreError> {
    let held: i64 = sqlx::query_scalar(sql::FENCE_POSTGRES.postgres)
        .bind(fence.name.as_str())
        .bind(fence.holder.as_str())
        .bind(fence.term)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    if held != 1 {
        tracing::warn!(lease = %fence.name, term = fence.term, "fenced: the lease moved on");
    }
    Ok(held == 1)
}

/// Fails with [`StoreError::Fenced`] unless `fence`, when given, holds its lease at `now`:
/// [`fence_sqlite`] as the first statement of the caller's transaction, whose error rolls it
/// back, so a fenced write leaves nothing behind.
pub(crate) fn guard_sqlite(
    connection: &Connection,
    fence: Option<&Fence>,
    now: i64,
) -> Result<(), StoreError> {
    match fence {
        Some(fence) if !fence_sqlite(connection, fence, now)? => Err(fenced(fence)),
        _ => Ok(()),
    }
}

/// [`guard_sqlite`] on PostgreSQL ([`fence_postgres`]): the lease row stays share-locked to the
/// caller's commit, so no take-over lands between this check and the caller's writes.
pub(crate) async fn guard_postgres(
    tx: &mut sqlx::PgConnection,
    fence: Option<&Fence>,
    now: i64,
) -> Result<(), StoreError> {
    match fence {
        Some(fence) if !fence_postgres(tx, fence, now).await? => Err(fenced(fence)),
        _ => Ok(()),
    }
}

fn fenced(fence: &Fence) -> StoreError {
    StoreError::Fenced {
        lease: fence.name.clone(),
        term: fence.term,
    }
}

fn node_from_row(row: &(impl RowExt + ?Sized)) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        id: row.string("id")?,
        host: row.string("host")?,
        pid: row.i64("pid")?,
        started_at: time("nodes.started_at", row.i64("started_at")?)?,
        heartbeat_at: time("nodes.heartbeat_at", row.i64("heartbeat_at")?)?,
        expires_at: time("nodes.expires_at", row.i64("expires_at")?)?,
    })
}

fn lease_from_row(row: &(impl RowExt + ?Sized)) -> Result<LeaseRecord, StoreError> {
    let opt = |column: &'static str, value: Option<i64>| value.map(|v| time(column, v)).transpose();
    Ok(LeaseRecord {
        name: row.string("name")?,
        holder: row.opt_string("holder")?,
        term: row.i64("term")?,
        acquired_at: opt("leases.acquired_at", row.opt_i64("acquired_at")?)?,
        expires_at: opt("leases.expires_at", row.opt_i64("expires_at")?)?,
    })
}

fn tick_from_row(row: &(impl RowExt + ?Sized)) -> Result<TickRun, StoreError> {
    Ok(TickRun {
        name: row.string("name")?,
        at: time("tick_runs.at", row.i64("at")?)?,
        term: row.i64("term")?,
        node: row.string("node")?,
        claimed_at: time("tick_runs.claimed_at", row.i64("claimed_at")?)?,
        finished_at: row
            .opt_i64("finished_at")?
            .map(|at| time("tick_runs.finished_at", at))
            .transpose()?,
        attempts: row.i64("attempts")?,
    })
}
