//! How records map to columns on both backends: typed column access, record decoders, and the
//! text and integer encodings of dates and times.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::error::StoreError;
use crate::model::{
    AlertRecord, CellHolder, CellRecord, CellState, EventRecord, GapRecord, GapStatus,
    PhaseProgress, QuarantineRecord, RunId, RunKind, RunOwnerRecord, RunRecord, RunState,
    RunnerRecord, TaskRecord, TaskState,
};

// --- row decoding -----------------------------------------------------------------------------

/// Typed column access shared by both backends' rows, so each record is decoded by one function.
pub(crate) trait RowExt {
    fn i64(&self, column: &str) -> Result<i64, StoreError>;
    fn i32(&self, column: &str) -> Result<i32, StoreError>;
    fn string(&self, column: &str) -> Result<String, StoreError>;
    fn opt_i64(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn opt_string(&self, column: &str) -> Result<Option<String>, StoreError>;
}

/// Implements [`RowExt`] by forwarding each method to the row type's own typed getter.
macro_rules! impl_row_ext {
    ($row:ty, $get:ident) => {
        impl RowExt for $row {
            fn i64(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.$get(column)?)
            }
            fn i32(&self, column: &str) -> Result<i32, StoreError> {
                Ok(self.$get(column)?)
            }
            fn string(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.$get(column)?)
            }
            fn opt_i64(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.$get(column)?)
            }
            fn opt_string(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(self.$get(column)?)
            }
        }
    };
}

impl_row_ext!(PgRow, try_get);
// rusqlite checks the column's storage class: an `i32` out of range or a TEXT read as an integer
// is an error (`StoreError::Query`), never a silent conversion.
impl_row_ext!(rusqlite::Row<'_>, get);

pub(crate) fn run_from_row(row: &(impl RowExt + ?Sized)) -> Result<RunRecord, StoreError> {
    let request = row.string("request")?;
    Ok(RunRecord {
        id: run_id(row.string("id")?)?,
        kind: parse_text::<RunKind>("runs.kind", row.string("kind")?)?,
        pipeline: row.string("pipeline")?,
        request: serde_json::from_str(&request).map_err(|source| StoreError::Json {
            column: "runs.request",
            source,
        })?,
        state: parse_text::<RunState>("runs.state", row.string("state")?)?,
        created_at: time("runs.created_at", row.i64("created_at")?)?,
        updated_at: time("runs.updated_at", row.i64("updated_at")?)?,
        finished_at: opt_time("runs.finished_at", row.opt_i64("finished_at")?)?,
        version: row.i64("version")?,
        owner: owner_from_row(row)?,
    })
}

pub(crate) fn task_from_row(row: &(impl RowExt + ?Sized)) -> Result<TaskRecord, StoreError> {
    let counts = row
        .opt_string("counts")?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|source| StoreError::Json {
            column: "tasks.counts",
            source,
        })?;
    Ok(TaskRecord {
        id: row.i64("id")?,
        run_id: run_id(row.string("run_id")?)?,
        phase: row.i64("phase")?,
        start: date("tasks.start_date", &row.string("start_date")?)?,
        end: date("tasks.end_date", &row.string("end_date")?)?,
        state: parse_text::<TaskState>("tasks.state", row.string("state")?)?,
        attempt: row.i32("attempt")?,
        lease_epoch: row.i64("lease_epoch")?,
        lease_owner: row.opt_string("lease_owner")?,
        lease_expires_at: opt_time("tasks.lease_expires_at", row.opt_i64("lease_expires_at")?)?,
        not_before: opt_time("tasks.not_before", row.opt_i64("not_before")?)?,
        started_at: opt_time("tasks.started_at", row.opt_i64("started_at")?)?,
        finished_at: opt_time("tasks.finished_at", row.opt_i64("finished_at")?)?,
        error: row.opt_string("error")?,
        counts,
        runner_host: row.opt_string("runner_host")?,
        runner_pgid: row.opt_i64("runner_pgid")?,
    })
}

/// The `owner_*` columns of a run: `None` when it has no owner.
pub(crate) fn owner_from_row(
    row: &(impl RowExt + ?Sized),
) -> Result<Option<RunOwnerRecord>, StoreError> {
    let Some(id) = row.opt_string("owner_id")? else {
        return Ok(None);
    };
    let missing = |column| StoreError::Corrupt {
        column,
        value: "NULL".to_owned(),
    };
    Ok(Some(RunOwnerRecord {
        id,
        host: row
            .opt_string("owner_host")?
            .ok_or_else(|| missing("runs.owner_host"))?,
        pid: row
            .opt_i64("owner_pid")?
            .ok_or_else(|| missing("runs.owner_pid"))?,
        expires_at: time(
            "runs.owner_expires_at",
            row.opt_i64("owner_expires_at")?
                .ok_or_else(|| missing("runs.owner_expires_at"))?,
        )?,
    }))
}

pub(crate) fn holder_from_row(row: &(impl RowExt + ?Sized)) -> Result<CellHolder, StoreError> {
    Ok(CellHolder {
        phase: row.i64("phase")?,
        date: date("cell_holds.date", &row.string("date")?)?,
        run_id: run_id(row.string("run_id")?)?,
        task_id: row.i64("task_id")?,
        expires_at: time("cell_holds.expires_at", row.i64("expires_at")?)?,
    })
}

pub(crate) fn runner_from_row(row: &(impl RowExt + ?Sized)) -> Result<RunnerRecord, StoreError> {
    Ok(RunnerRecord {
        task_id: row.i64("id")?,
        host: row.string("runner_host")?,
        pgid: row.i64("runner_pgid")?,
    })
}

pub(crate) fn cell_from_row(row: &(impl RowExt + ?Sized)) -> Result<CellRecord, StoreError> {
    Ok(CellRecord {
        run_id: run_id(row.string("run_id")?)?,
        phase: row.i64("phase")?,
        date: date("run_cells.date", &row.string("date")?)?,
        task_id: row.i64("task_id")?,
        state: parse_text::<CellState>("run_cells.state", row.string("state")?)?,
        completed_at: opt_time("run_cells.completed_at", row.opt_i64("completed_at")?)?,
    })
}

pub(crate) fn progress_from_row(row: &(impl RowExt + ?Sized)) -> Result<PhaseProgress, StoreError> {
    Ok(PhaseProgress {
        phase: row.i64("phase")?,
        total: row.i64("total")?,
        pending: row.i64("pending")?,
        running: row.i64("running")?,
        complete: row.i64("complete")?,
        failed: row.i64("failed")?,
        blocked: row.i64("blocked")?,
    })
}

pub(crate) fn event_from_row(row: &(impl RowExt + ?Sized)) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: row.i64("id")?,
        phase: row.i64("phase")?,
        date: date("events.date", &row.string("date")?)?,
        status: row.string("status")?,
        source: row.string("source")?,
        run_id: row.opt_string("run_id")?.map(run_id).transpose()?,
        created_at: time("events.created_at", row.i64("created_at")?)?,
    })
}

pub(crate) fn alert_from_row(row: &(impl RowExt + ?Sized)) -> Result<AlertRecord, StoreError> {
    let text = row.string("message")?;
    Ok(AlertRecord {
        id: row.i64("id")?,
        created_at: time("alerts.created_at", row.i64("created_at")?)?,
        channel: row.string("channel")?,
        message: serde_json::from_str(&text).map_err(|source| StoreError::Json {
            column: "alerts.message",
            source,
        })?,
        delivered_at: opt_time("alerts.delivered_at", row.opt_i64("delivered_at")?)?,
        attempts: row.i64("attempts")?,
        last_error: row.opt_string("last_error")?,
    })
}

pub(crate) fn quarantine_from_row(
    row: &(impl RowExt + ?Sized),
) -> Result<QuarantineRecord, StoreError> {
    Ok(QuarantineRecord {
        id: row.i64("id")?,
        received_at: time("quarantine.received_at", row.i64("received_at")?)?,
        source: row.string("source")?,
        dedup_key: row.opt_string("dedup_key")?,
        payload: row.string("payload")?,
        reason: row.string("reason")?,
    })
}

pub(crate) fn gap_from_row(row: &(impl RowExt + ?Sized)) -> Result<GapRecord, StoreError> {
    Ok(GapRecord {
        id: row.i64("id")?,
        detected_at: time("gaps.detected_at", row.i64("detected_at")?)?,
        last_seen_at: time("gaps.last_seen_at", row.i64("last_seen_at")?)?,
        phase_from: row.opt_i64("phase_from")?,
        phase_to: row.i64("phase_to")?,
        partition_date: date("gaps.partition_date", &row.string("partition_date")?)?,
        gap_age_days: row.i64("gap_age_days")?,
        found: row.i64("found")?,
        expected: row.i64("expected")?,
        healing_status: parse_text::<GapStatus>(
            "gaps.healing_status",
            row.string("healing_status")?,
        )?,
        attempts: row.i64("attempts")?,
        run_id: row.opt_string("run_id")?.map(run_id).transpose()?,
        alerted_at: opt_time("gaps.alerted_at", row.opt_i64("alerted_at")?)?,
        healed_at: opt_time("gaps.healed_at", row.opt_i64("healed_at")?)?,
        last_error: row.opt_string("last_error")?,
    })
}

/// Dates are stored as `YYYY-MM-DD`, which sorts as it compares.
pub(crate) fn date_text(date: NaiveDate) -> String {
    // `Display` writes `YYYY-MM-DD` directly; `format` would parse a format string each time.
    date.to_string()
}

pub(crate) fn date(column: &'static str, text: &str) -> Result<NaiveDate, StoreError> {
    // `FromStr` reads the `YYYY-MM-DD` shape directly, without parsing a format string.
    text.parse::<NaiveDate>().map_err(|_| StoreError::Corrupt {
        column,
        value: text.to_owned(),
    })
}

pub(crate) fn time(column: &'static str, millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::Corrupt {
        column,
        value: millis.to_string(),
    })
}

fn opt_time(
    column: &'static str,
    millis: Option<i64>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(|millis| time(column, millis)).transpose()
}

pub(crate) fn run_id(text: String) -> Result<RunId, StoreError> {
    RunId::parse(&text).map_err(|_| StoreError::Corrupt {
        column: "run_id",
        value: text,
    })
}

pub(crate) fn parse_text<T: FromStr>(column: &'static str, text: String) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: text,
    })
}
