//! The validation gate: after a runner exits 0, the task's cells are counted again and every
//! expected cell must reach its count, or the attempt fails with the shortfalls.

use std::collections::BTreeMap;

use gapless_core::dates::Date;
use gapless_core::spec::{Phase, Source};

use super::ExecTask;
use super::attempt::AttemptError;
use crate::context::Context;
use crate::observe;

/// The validation gate: re-probe the task's cells; every expected cell must reach its count.
pub(super) async fn gate(
    context: &Context,
    task: &ExecTask,
    phase: &Phase,
) -> Result<serde_json::Value, AttemptError> {
    let observed = observe::phase(context, phase, task.range)
        .await
        .map_err(AttemptError::Probe)?;
    judge(
        &task.dates,
        &observed.counts,
        observed.expected.as_ref(),
        phase.expect.min,
    )
    .map_err(AttemptError::Gate)
}

/// The gate's verdict on observed counts: the counts to record (`{"date": [count, expected]}`)
/// when every date reaches `max(expected, min)`, otherwise the shortfalls ("2024-01-15: 7 of 9").
pub(super) fn judge(
    dates: &[Date],
    counts: &BTreeMap<Date, i64>,
    expected: Option<&BTreeMap<Date, i64>>,
    min: i64,
) -> Result<serde_json::Value, String> {
    let mut shortfalls = Vec::new();
    let mut recorded = serde_json::Map::with_capacity(dates.len());
    for date in dates {
        let count = counts.get(date).copied().unwrap_or(0);
        let from_source = expected.and_then(|e| e.get(date).copied()).unwrap_or(0);
        let expected = from_source.max(min);
        recorded.insert(date.to_string(), serde_json::json!([count, expected]));
        if count < expected {
            shortfalls.push(format!("{date}: {count} of {expected}"));
        }
    }
    if shortfalls.is_empty() {
        return Ok(serde_json::Value::Object(recorded));
    }
    let total = shortfalls.len();
    let mut message = shortfalls
        .into_iter()
        .take(5)
        .collect::<Vec<_>>()
        .join(", ");
    if total > 5 {
        message.push_str(&format!(" and {} more dates short", total - 5));
    }
    Err(message)
}

/// The probes of a SQL phase whose gate can run inside the runner's own transaction: its check
/// (and its expectation, when it has one) are SQL on the same warehouse.
pub(super) fn transactional_probes(phase: &Phase) -> Option<Vec<&str>> {
    let Source::Sql(check) = &phase.check else {
        return None;
    };
    match &phase.expect.source {
        None => Some(vec![check.as_str()]),
        Some(Source::Sql(expect)) => Some(vec![check.as_str(), expect.as_str()]),
        Some(_) => None,
    }
}
