//! One owner per run: the process executing a run holds a lease on it, renewed while it runs
//! and released when it finishes, so a second process refuses to execute the same run.

use std::time::Duration;

use chrono::Utc;
use rusqlite::params;

use crate::codec::owner_from_row;
use crate::error::StoreError;
use crate::model::{Ownership, RunId, RunOwner, RunOwnerRecord};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::{Store, log_outcome, millis};

/// What the owner columns said when the caller asked: the run exists or not, and its owner.
type SeenOwner = Option<Option<RunOwnerRecord>>;

impl Store {
    /// Takes ownership of the run for `owner` until now + `ttl`, in one transaction: acquired
    /// when the run has no owner, its owner's lease expired, the owner is `owner` itself (a
    /// renewal), or the current owner's id is `take_over` (the caller checked that this owner
    /// is dead: on this host and its pid gone). Otherwise [`Ownership::HeldBy`] names the
    /// owner, and nothing changes. Fails with [`StoreError::UnknownRun`] for a run that does
    /// not exist. Durable on SQLite whatever the [`crate::SyncMode`].
    pub async fn acquire_run(
        &self,
        run_id: &RunId,
        owner: &RunOwner<'_>,
        ttl: Duration,
        take_over: Option<&str>,
    ) -> Result<Ownership, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let decide =
            |seen: SeenOwner| -> Result<Result<Option<String>, RunOwnerRecord>, StoreError> {
                let Some(current) = seen else {
                    return Err(StoreError::UnknownRun {
                        run_id: run_id.clone(),
                    });
                };
                Ok(match current {
                    None => Ok(None),
                    Some(current)
                        if current.expires_at.timestamp_millis() < now
                            || current.id == owner.id
                            || take_over == Some(current.id.as_str()) =>
                    {
                        Ok(Some(current.id))
                    }
                    Some(current) => Err(current),
                })
            };
        let id = run_id.as_str();
        let outcome = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let seen = sqlite::rows(
                    connection,
                    sql::SELECT_RUN_OWNER_SQLITE.sqlite,
                    [id],
                    |row| owner_from_row(row),
                )?;
                match decide(seen.into_iter().next())? {
                    Err(holder) => Ok(Ownership::HeldBy(holder)),
                    Ok(previous) => {
                        let values =
                            params![id, owner.id, owner.host, owner.pid, expires_at, previous];
                        sqlite::execute(connection, sql::SET_RUN_OWNER.sqlite, values)?;
                        Ok(Ownership::Acquired)
                    }
                }
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let seen = sqlx::query(sql::SELECT_RUN_OWNER_POSTGRES.postgres)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| owner_from_row(&row))
                    .transpose()?;
                match decide(seen)? {
                    Err(holder) => Ownership::HeldBy(holder),
                    Ok(previous) => {
                        sqlx::query(sql::SET_RUN_OWNER.postgres)
                            .bind(id)
                            .bind(owner.id)
                            .bind(owner.host)
                            .bind(owner.pid)
                            .bind(expires_at)
                            .bind(previous)
                            .execute(&mut *tx)
                            .await?;
                        Ownership::Acquired
                    }
                }
            })?,
        };
        log_outcome("acquire_run", outcome == Ownership::Acquired);
        Ok(outcome)
    }

    /// Renews the run's lease held by `owner_id` to now + `ttl`. `false` means the ownership
    /// was lost (taken over, released, the run finished): stop executing the run.
    pub async fn renew_run(
        &self,
        run_id: &RunId,
        owner_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires_at = Utc::now().timestamp_millis().saturating_add(millis(ttl));
        let won = self
            .run_owner_update(
                sql::RENEW_RUN,
                Commit::Configured,
                run_id,
                owner_id,
                Some(expires_at),
            )
            .await?;
        log_outcome("renew_run", won);
        Ok(won)
    }

    /// Gives up the run's ownership held by `owner_id`; `false` when it did not hold it.
    /// Durable on SQLite whatever the [`crate::SyncMode`].
    pub async fn release_run(&self, run_id: &RunId, owner_id: &str) -> Result<bool, StoreError> {
        let won = self
            .run_owner_update(sql::RELEASE_RUN, Commit::Durable, run_id, owner_id, None)
            .await?;
        log_outcome("release_run", won);
        Ok(won)
    }

    /// One compare-and-set on the run's owner id; `expires_at` is the third parameter, if any.
    /// A renewal commits with the store's [`crate::SyncMode`]: one lost to a power failure only
    /// shortens the lease.
    async fn run_owner_update(
        &self,
        statement: sql::Sql,
        commit: Commit,
        run_id: &RunId,
        owner_id: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let id = run_id.as_str();
        Ok(match self {
            Self::Sqlite(sqlite) => sqlite.transaction(commit, |connection| {
                let changed = match expires_at {
                    Some(at) => {
                        sqlite::execute(connection, statement.sqlite, params![id, owner_id, at])?
                    }
                    None => sqlite::execute(connection, statement.sqlite, params![id, owner_id])?,
                };
                Ok(changed == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                let mut query = sqlx::query(statement.postgres).bind(id).bind(owner_id);
                if let Some(at) = expires_at {
                    query = query.bind(at);
                }
                query.execute(pool).await?.rows_affected() == 1
            })?,
        })
    }
}
