//! Probing: one `check` (and `expect`) probe per phase per range, never one per date, run
//! concurrently across phases, into [`Observations`] for [`gapless_core::cells::classify`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::future::try_join_all;
use gapless_core::cells::{Observations, PhaseObservation};
use gapless_core::dates::{Date, DateRange};
use gapless_core::spec::{Phase, PhaseId, Source};

use crate::context::Context;

/// A probe that failed, naming the phase and probe.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A SQL probe failed.
    #[error("{what} query failed")]
    Sql {
        /// Which probe (`phase 3 check`, `calendar`).
        what: String,
        /// The warehouse error (boxed: it is large, and this error is on every probe's path).
        #[source]
        source: Box<gapless_connect::WarehouseError>,
    },
    /// A command or files probe failed.
    #[error("{what} probe failed")]
    Probe {
        /// Which probe.
        what: String,
        /// The probe error.
        #[source]
        source: gapless_connect::ProbeError,
    },
    /// SQL was used without a warehouse (validation prevents this).
    #[error("{what} uses SQL but the pipeline has no warehouse")]
    NoWarehouse {
        /// Which probe.
        what: String,
    },
}

/// The warehouse for a SQL probe (validation guarantees one exists when SQL is used).
fn warehouse<'a>(
    context: &'a Context,
    what: &str,
) -> Result<&'a gapless_connect::Warehouse, ObserveError> {
    context
        .warehouse
        .as_ref()
        .ok_or_else(|| ObserveError::NoWarehouse {
            what: what.to_owned(),
        })
}

/// Counts from one source over `range`.
pub async fn counts(
    context: &Context,
    source: &Source,
    range: DateRange,
    what: &str,
) -> Result<BTreeMap<Date, i64>, ObserveError> {
    match source {
        Source::Sql(sql) => warehouse(context, what)?
            .counts(sql, range.start(), range.end())
            .await
            .map_err(|source| ObserveError::Sql {
                what: what.to_owned(),
                source: Box::new(source),
            }),
        // Boxed, as is the files probe: each is kilobytes of future state, which would
        // otherwise be part of every gate's future, SQL ones included.
        Source::Command(argv) => Box::pin(gapless_connect::command_counts(
            argv,
            &context.base_dir,
            &[],
            range.start(),
            range.end(),
            context.probe_timeout,
        ))
        .await
        .map_err(|source| ObserveError::Probe {
            what: what.to_owned(),
            source,
        }),
        Source::Files(pattern) => Box::pin(gapless_connect::file_counts(
            pattern,
            &context.base_dir,
            range.start(),
            range.end(),
        ))
        .await
        .map_err(|source| ObserveError::Probe {
            what: what.to_owned(),
            source,
        }),
    }
}

/// The calendar's dates in `range`, or `None` when every day is expected.
pub async fn calendar(
    context: &Context,
    range: DateRange,
) -> Result<Option<BTreeSet<Date>>, ObserveError> {
    let Some(source) = &context.spec.calendar else {
        return Ok(None);
    };
    let dates = match source {
        Source::Sql(sql) => warehouse(context, "calendar")?
            .dates(sql, range.start(), range.end())
            .await
            .map_err(|source| ObserveError::Sql {
                what: "calendar".to_owned(),
                source: Box::new(source),
            })?,
        other => counts(context, other, range, "calendar")
            .await?
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(date, _)| date)
            .collect(),
    };
    Ok(Some(
        dates.into_iter().filter(|d| range.contains(*d)).collect(),
    ))
}

/// Check counts and expectations of one phase over `range`.
pub async fn phase(
    context: &Context,
    phase: &Phase,
    range: DateRange,
) -> Result<PhaseObservation, ObserveError> {
    let check_label = format!("phase {} `{}` check", phase.id, phase.name);
    let expect_label = format!("phase {} `{}` expect", phase.id, phase.name);
    let check = counts(context, &phase.check, range, &check_label);
    let expected = async {
        match &phase.expect.source {
            Some(source) => counts(context, source, range, &expect_label)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (counts, expected) = futures::try_join!(check, expected)?;
    Ok(PhaseObservation { counts, expected })
}

/// Probes every phase (and the calendar) over `range`. Identical probes (the same source in
/// several phases, like one schedule count as the expectation of three phases) run once.
pub async fn observe(context: &Context, range: DateRange) -> Result<Observations, ObserveError> {
    let mut unique: Vec<(&Source, String)> = Vec::new();
    let mut wiring: Vec<(PhaseId, usize, Option<usize>)> = Vec::new();
    for phase in &context.spec.phases {
        let check = position_or_push(
            &mut unique,
            &phase.check,
            format!("phase {} `{}` check", phase.id, phase.name),
        );
        let expect = phase.expect.source.as_ref().map(|source| {
            position_or_push(
                &mut unique,
                source,
                format!("phase {} `{}` expect", phase.id, phase.name),
            )
        });
        wiring.push((phase.id, check, expect));
    }
    let calendar = calendar(context, range);
    let probes = try_join_all(
        unique
            .iter()
            .map(|(source, label)| counts(context, source, range, label)),
    );
    let (calendar, results) = futures::try_join!(calendar, probes)?;
    let phases = wiring
        .into_iter()
        .map(|(id, check, expect)| {
            (
                id,
                PhaseObservation {
                    counts: results[check].clone(),
                    expected: expect.map(|i| results[i].clone()),
                },
            )
        })
        .collect::<HashMap<_, _>>();
    Ok(Observations {
        range,
        calendar,
        phases,
    })
}

fn position_or_push<'a>(
    unique: &mut Vec<(&'a Source, String)>,
    source: &'a Source,
    label: String,
) -> usize {
    unique
        .iter()
        .position(|(known, _)| *known == source)
        .unwrap_or_else(|| {
            unique.push((source, label));
            unique.len() - 1
        })
}

/// The range to probe so lookback windows of `requested` can be judged: `requested` widened
/// back by the longest single lookback, never before `[pipeline] start`
/// ([`gapless_core::plan::observation_range`]).
pub fn probe_range(context: &Context, requested: DateRange) -> DateRange {
    gapless_core::plan::observation_range(&context.spec, requested)
}
