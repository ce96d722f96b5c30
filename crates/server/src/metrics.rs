//! `GET /metrics`: Prometheus (OpenMetrics text) through `prometheus-client`, one registry per
//! `serve`, no global state.
//!
//! What the state store knows is read at scrape time, so it agrees with the ledger and the runs
//! whoever wrote them (another process included): `gapless_gaps_open{phase}`,
//! `gapless_gap_oldest_age_seconds`, `gapless_tasks_total{phase,status}` (tasks of every run
//! that ended `complete` or `failed`; a failed task resumed and completed moves from one to the
//! other) and `gapless_tasks_in_state{phase,status}` (every state, now).
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

/// The content type of [`classic`]'s text.
pub const CONTENT_TYPE_CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` asks for OpenMetrics (Prometheus does); others (curl,
/// `promtool check metrics`) get the classic text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// [`render`]'s OpenMetrics text in Prometheus's classic text format (0.0.4): a counter's
/// family is named with its `_total` sample, and the lines the classic format does not have
/// (`# EOF`, `# UNIT`, `_created` samples) are left out.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

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
    for phase in &app.spec.phases {
        // Every phase is listed, with 0 when it has no open gap.
        open.get_or_create(&Phase {
            phase: phase.id.0.to_string(),
        })
        .set(0);
    }
    let gaps = app.open_gaps().await?;
    for (phase, count) in &gaps.by_phase {
        open.get_or_create(&Phase {
            phase: phase.to_string(),
        })
        .set(i64::try_from(*count).unwrap_or(i64::MAX));
    }
    let oldest_seconds = gaps.oldest_seconds.unwrap_or(0);
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

    // Two views of the tasks of every run: how many ended complete or failed (a counter, as
    // Prometheus expects of a `_total`), and how many are in each state now (a gauge).
    let ended: Family<PhaseStatus, Counter> = Family::default();
    let current: Family<PhaseStatus, Gauge> = Family::default();
    let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for (phase, status, count) in app.store.task_counts().await? {
        *counts.entry((phase, status)).or_default() += count;
    }
    for phase in &app.spec.phases {
        for status in ["complete", "failed"] {
            counts
                .entry((i64::from(phase.id.0), status.to_owned()))
                .or_default();
        }
    }
    for ((phase, status), count) in counts {
        let labels = PhaseStatus {
            phase: phase.to_string(),
            status,
        };
        if matches!(labels.status.as_str(), "complete" | "failed") {
            ended
                .get_or_create(&labels)
                .inc_by(u64::try_from(count).unwrap_or(0));
        }
        current.get_or_create(&labels).set(count);
    }
    registry.register(
        "gapless_tasks",
        "Tasks of every run in the state store that ended complete or failed, by phase",
        ended,
    );
    registry.register(
        "gapless_tasks_in_state",
        "Tasks of every run in the state store by phase and current state",
        current,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_by_their_samples() {
        let openmetrics = "# HELP gapless_events Events stored.\n# TYPE gapless_events counter\n\
            gapless_events_total{source=\"http\"} 3\n\
            gapless_events_created{source=\"http\"} 1.7e9\n\
            # HELP gapless_gaps_open Open gaps.\n# TYPE gapless_gaps_open gauge\n\
            gapless_gaps_open{phase=\"3\"} 2\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP gapless_events_total Events stored.\n# TYPE gapless_events_total counter\n\
             gapless_events_total{source=\"http\"} 3\n\
             # HELP gapless_gaps_open Open gaps.\n# TYPE gapless_gaps_open gauge\n\
             gapless_gaps_open{phase=\"3\"} 2\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
