//! `GET /metrics`: Prometheus (OpenMetrics text) through `prometheus-client`, one registry per
//! `serve`, no global state.
//!
//! What the state store knows is read at scrape time, so it agrees with the ledger and the runs
//! whoever wrote them (another process included): `gapless_gaps_open{phase}`,
//! `gapless_gap_oldest_age_seconds`, `gapless_tasks_total{phase,status}` (tasks by state, every run).
//! What happens in this process is counted as it happens: `gapless_events_total{source}`,
//! `gapless_heals_total{result}`, `gapless_task_duration_seconds{phase}` (tasks this `serve`
//! ran), `gapless_scan_duration_seconds`. Labels are bounded: phase ids, statuses, sources and
//! results, never dates or run ids.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::app::App;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseStatus {
    phase: String,
    status: String,
}

fn task_buckets() -> Histogram {
    // 10 ms to about 3 hours.
    Histogram::new(exponential_buckets(0.01, 4.0, 11))
}

/// The counters and histograms of one `serve` (clones share them).
#[derive(Clone)]
pub struct Metrics {
    events: Family<Source, Counter>,
    heals: Family<Outcome, Counter>,
    task_duration: Family<Phase, Histogram, fn() -> Histogram>,
    scan_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            heals: Family::default(),
            task_duration: Family::new_with_constructor(task_buckets),
            // 1 ms to about 17 minutes.
            scan_duration: Histogram::new(exponential_buckets(0.001, 4.0, 11)),
        }
    }
}

impl Metrics {
    /// `stored` events were stored from `source`.
    pub fn events(&self, source: &str, stored: u64) {
        if stored > 0 {
            self.events
                .get_or_create(&Source {
                    source: source.to_owned(),
                })
                .inc_by(stored);
        }
    }

    /// `count` gaps ended a heal with `result` (`healed`, `failed`) or were `alerted`.
    pub fn heals(&self, result: &str, count: u64) {
        if count > 0 {
            self.heals
                .get_or_create(&Outcome {
                    result: result.to_owned(),
                })
                .inc_by(count);
        }
    }

    /// A task of `phase` completed in `seconds`.
    pub fn task(&self, phase: u32, seconds: f64) {
        self.task_duration
            .get_or_create(&Phase {
                phase: phase.to_string(),
            })
            .observe(seconds);
    }

    /// A scan took `seconds`.
    pub fn scan(&self, seconds: f64) {
        self.scan_duration.observe(seconds);
    }
}

/// The metrics text: the state store's view read now, and this process's counters.
pub async fn render(app: &App) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    let metrics = &app.metrics;
    registry.register(
        "gapless_events",
        "Events stored, by source",
        metrics.events.clone(),
    );
    registry.register(
        "gapless_heals",
        "Gaps that ended a heal (healed, failed) or were alerted, by result",
        metrics.heals.clone(),
    );
    registry.register(
        "gapless_task_duration_seconds",
        "Duration of the tasks this serve ran, by phase",
        metrics.task_duration.clone(),
    );
    registry.register(
        "gapless_scan_duration_seconds",
        "Duration of gap scans",
        metrics.scan_duration.clone(),
    );

    let open: Family<Phase, Gauge> = Family::default();
    let oldest: Gauge = Gauge::default();
    let now = app.context().now.and_utc();
    for phase in &app.spec.phases {
        // Every phase is listed, with 0 when it has no open gap.
        open.get_or_create(&Phase {
            phase: phase.id.0.to_string(),
        })
        .set(0);
    }
    let mut oldest_seconds = 0;
    for gap in app.store.gaps(gapless_store::GapFilter::Open).await? {
        open.get_or_create(&Phase {
            phase: gap.phase_to.to_string(),
        })
        .inc();
        let age = gap
            .gap_age_days
            .saturating_mul(86_400)
            .max((now - gap.detected_at).num_seconds().max(0));
        oldest_seconds = oldest_seconds.max(age);
    }
    oldest.set(oldest_seconds);
    registry.register(
        "gapless_gaps_open",
        "Open gaps in the ledger, by phase",
        open,
    );
    registry.register(
        "gapless_gap_oldest_age_seconds",
        "Age of the oldest open gap in the ledger (0 when none is open)",
        oldest,
    );

    let tasks: Family<PhaseStatus, Gauge> = Family::default();
    let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for (phase, status, count) in app.store.task_counts().await? {
        *counts.entry((phase, status)).or_default() += count;
    }
    for ((phase, status), count) in counts {
        tasks
            .get_or_create(&PhaseStatus {
                phase: phase.to_string(),
                status,
            })
            .set(count);
    }
    registry.register(
        "gapless_tasks_total",
        "Tasks in the state store, by phase and state (every run)",
        tasks,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
