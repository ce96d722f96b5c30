//! The gap ledger: recording scans and listing gaps.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::params;

use crate::codec::{RowExt, date, date_text, gap_from_row, run_id};
use crate::error::StoreError;
use crate::model::{DetectedGap, Fence, GapFilter, GapHistory, GapRecord, RunId, ScanRecorded};
use crate::sql;
use crate::sqlite::{self, Commit};
use crate::store::Store;
use crate::store::nodes::{guard_postgres, guard_sqlite};

impl Store {
    /// Records a scan in the gap ledger, in one transaction: every gap in `found` opens a row
    /// or updates its cell's open row (one open row per cell), and every cell in `satisfied`
    /// (complete, or expecting nothing) closes its open row if it has one. Rows of cells the
    /// scan did not cover, or found blocked, are left as they are.
    ///
    /// `fence`: the leader's scheduled scan on a shared store presents its lease; once the
    /// lease moved on the call fails with [`StoreError::Fenced`] and writes nothing.
    pub async fn record_scan(
        &self,
        found: &[DetectedGap],
        satisfied: &[(i64, NaiveDate)],
        fence: Option<&Fence>,
    ) -> Result<ScanRecorded, StoreError> {
        let now = Utc::now().timestamp_millis();
        let satisfied: HashSet<(i64, NaiveDate)> = satisfied.iter().copied().collect();
        let count = move |recorded: &mut ScanRecorded, detected_at: i64| {
            if detected_at == now {
                recorded.opened += 1;
            } else {
                recorded.still_open += 1;
            }
        };
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                guard_sqlite(connection, fence, now)?;
                let mut recorded = ScanRecorded::default();
                for gap in found {
                    let values = params![
                        now,
                        gap.phase_from,
                        gap.phase_to,
                        date_text(gap.date),
                        gap.age_days,
                        gap.found,
                        gap.expected
                    ];
                    let detected_at: i64 =
                        sqlite::scalar(connection, sql::UPSERT_GAP.sqlite, values)?;
                    count(&mut recorded, detected_at);
                }
                let open = sqlite::rows(connection, sql::OPEN_GAP_CELLS.sqlite, [], |row| {
                    open_gap_cell(row)
                })?;
                for id in closing(&open, &satisfied) {
                    let values = params![id, now];
                    recorded.closed += sqlite::execute(connection, sql::CLOSE_GAP.sqlite, values)?;
                }
                Ok(recorded)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                guard_postgres(&mut tx, fence, now).await?;
                let mut recorded = ScanRecorded::default();
                for gap in found {
                    let detected_at: i64 = sqlx::query_scalar(sql::UPSERT_GAP.postgres)
                        .bind(now)
                        .bind(gap.phase_from)
                        .bind(gap.phase_to)
                        .bind(date_text(gap.date))
                        .bind(gap.age_days)
                        .bind(gap.found)
                        .bind(gap.expected)
                        .fetch_one(&mut *tx)
                        .await?;
                    count(&mut recorded, detected_at);
                }
                let open = sqlx::query(sql::OPEN_GAP_CELLS.postgres)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(open_gap_cell)
                    .collect::<Result<Vec<_>, _>>()?;
                for id in closing(&open, &satisfied) {
                    let closed = sqlx::query(sql::CLOSE_GAP.postgres)
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    recorded.closed += usize::try_from(closed).unwrap_or(usize::MAX);
                }
                recorded
            }),
        }
    }

    /// The ledger's rows that `filter` selects, by phase, date and id.
    pub async fn gaps(&self, filter: GapFilter) -> Result<Vec<GapRecord>, StoreError> {
        self.rows_by(sql::SELECT_GAPS, filter.as_str(), |row| gap_from_row(row))
            .await
    }

    /// The ledger since `since`: what was open then, and what was found and closed each UTC
    /// day after (for the dashboard's trend).
    pub async fn gap_history(&self, since: DateTime<Utc>) -> Result<GapHistory, StoreError> {
        let rows = self
            .rows_by(sql::GAP_HISTORY, since.timestamp_millis(), |row| {
                Ok((row.string("kind")?, row.i64("day")?, row.i64("n")?))
            })
            .await?;
        let mut history = GapHistory::default();
        let mut days: std::collections::BTreeMap<NaiveDate, (i64, i64)> = Default::default();
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
        for (kind, day, n) in rows {
            let date = epoch + chrono::Days::new(u64::try_from(day).unwrap_or(0));
            match kind.as_str() {
                "open" => history.open_at_start = n,
                "found" => days.entry(date).or_default().0 += n,
                _ => days.entry(date).or_default().1 += n,
            }
        }
        history.days = days.into_iter().map(|(d, (f, c))| (d, f, c)).collect();
        Ok(history)
    }

    /// Records that heal run `run_id` was started for the open gaps `ids`: each goes
    /// `triggered`, names the run and counts one more attempt. Returns how many moved.
    /// ([`Store::create_run_by`] does this in the transaction that creates the run.) `fence`:
    /// as for [`Store::record_scan`].
    pub async fn trigger_gaps(
        &self,
        ids: &[i64],
        run_id: &RunId,
        fence: Option<&Fence>,
    ) -> Result<usize, StoreError> {
        let now = Utc::now().timestamp_millis();
        let run = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                guard_sqlite(connection, fence, now)?;
                trigger_gaps_sqlite(connection, ids, run)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                guard_postgres(&mut tx, fence, now).await?;
                trigger_gaps_postgres(&mut tx, ids, run).await?
            }),
        }
    }

    /// Records how heal run `run_id` ended for the gaps it was started for: `complete` (with
    /// `healed_at`) where it completed the cell, else `failed` with the task's error. Returns
    /// (healed, failed). Idempotent: only gaps still `triggered` by the run change, so a second
    /// call (the run's owner, and a scan that found the heal unrecorded) changes nothing.
    /// `fence`: as for [`Store::record_scan`].
    pub async fn finish_heal(
        &self,
        run_id: &RunId,
        fence: Option<&Fence>,
    ) -> Result<(usize, usize), StoreError> {
        let now = Utc::now().timestamp_millis();
        let run = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                guard_sqlite(connection, fence, now)?;
                let healed =
                    sqlite::execute(connection, sql::HEALED_GAPS.sqlite, params![run, now])?;
                let failed = sqlite::execute(connection, sql::UNHEALED_GAPS.sqlite, params![run])?;
                Ok((healed, failed))
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                guard_postgres(&mut tx, fence, now).await?;
                let healed = sqlx::query(sql::HEALED_GAPS.postgres)
                    .bind(run)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as usize;
                let failed = sqlx::query(sql::UNHEALED_GAPS.postgres)
                    .bind(run)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as usize;
                (healed, failed)
            }),
        }
    }

    /// The runs that ended (are not running) while gaps still name them `triggered`: heals
    /// nobody recorded, because the node that ran them died between ending the run and
    /// recording the heal. [`Store::finish_heal`] records each.
    pub async fn ended_heals(&self) -> Result<Vec<RunId>, StoreError> {
        let ids: Vec<String> = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::ENDED_HEALS.sqlite, [], |row| {
                    Ok(row.get(0)?)
                })
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::ENDED_HEALS.postgres)
                    .fetch_all(pool)
                    .await?
            })?,
        };
        ids.into_iter().map(run_id).collect()
    }
}

/// `(id, phase_to, partition_date)` of an open gap.
/// Marks the open gaps `ids` triggered by heal run `run`, in the caller's transaction; how
/// many it moved.
pub(crate) fn trigger_gaps_sqlite(
    connection: &rusqlite::Connection,
    ids: &[i64],
    run: &str,
) -> Result<usize, StoreError> {
    let mut moved = 0;
    for id in ids {
        moved += sqlite::execute(connection, sql::TRIGGER_GAP.sqlite, params![id, run])?;
    }
    Ok(moved)
}

/// [`trigger_gaps_sqlite`] on PostgreSQL: one statement for all of them.
pub(crate) async fn trigger_gaps_postgres(
    tx: &mut sqlx::PgConnection,
    ids: &[i64],
    run: &str,
) -> Result<usize, StoreError> {
    let moved = sqlx::query(sql::TRIGGER_GAPS_POSTGRES.postgres)
        .bind(ids)
        .bind(run)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(usize::try_from(moved).unwrap_or(usize::MAX))
}

fn open_gap_cell(row: &(impl RowExt + ?Sized)) -> Result<(i64, i64, NaiveDate), StoreError> {
    Ok((
        row.i64("id")?,
        row.i64("phase_to")?,
        date("gaps.partition_date", &row.string("partition_date")?)?,
    ))
}

/// The open gaps whose cell is among `satisfied`.
fn closing(open: &[(i64, i64, NaiveDate)], satisfied: &HashSet<(i64, NaiveDate)>) -> Vec<i64> {
    open.iter()
        .filter(|&&(_, phase, date)| satisfied.contains(&(phase, date)))
        .map(|&(id, _, _)| id)
        .collect()
}
