//! Progress: a bar per phase (done / total, failures, ETA) on a terminal; one plain line per
//! task otherwise. Both go to stderr, so stdout stays for data (`--json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use gapless_core::spec::{PhaseId, Spec};
use gapless_runtime::executor::{Event, ExecTask, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows executor events to a person.
pub(crate) enum Progress {
    Bars(Bars),
    Lines { quiet: bool },
}

pub(crate) struct Bars {
    _multi: MultiProgress,
    bars: BTreeMap<PhaseId, ProgressBar>,
    failed: Mutex<BTreeMap<PhaseId, usize>>,
}

impl Progress {
    /// Bars on a terminal, lines otherwise. `tasks` are all of the run's tasks.
    pub(crate) fn new(spec: &Spec, tasks: &[ExecTask], quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress::Lines { quiet };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:<24} [{bar:30}] {pos:>5}/{len:<5} {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let mut bars = BTreeMap::new();
        for phase in &spec.phases {
            let total = tasks.iter().filter(|t| t.phase == phase.id).count();
            if total == 0 {
                continue;
            }
            let done = tasks
                .iter()
                .filter(|t| t.phase == phase.id && t.state == gapless_store::TaskState::Complete)
                .count();
            let bar = multi.add(ProgressBar::new(total as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("phase {} {}", phase.id, phase.name));
            bar.set_position(done as u64);
            bars.insert(phase.id, bar);
        }
        Progress::Bars(Bars {
            _multi: multi,
            bars,
            failed: Mutex::new(BTreeMap::new()),
        })
    }

    /// Finishes the bars (leaves them on screen).
    pub(crate) fn finish(&self) {
        if let Progress::Bars(bars) = self {
            for bar in bars.bars.values() {
                bar.abandon();
            }
        }
    }

    fn line(&self, text: String) {
        match self {
            Progress::Lines { quiet: true } => {}
            Progress::Lines { quiet: false } => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
            Progress::Bars(bars) => {
                if let Some(bar) = bars.bars.values().next() {
                    bar.println(text);
                }
            }
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: Event<'_>) {
        if let Progress::Lines { quiet: true } = self {
            // Shows nothing: skip building lines only to drop them (one per task).
            return;
        }
        match event {
            Event::Started { task, attempt } => {
                if let Progress::Lines { quiet: false } = self
                    && attempt > 1
                {
                    self.line(format!("{} started (attempt {attempt})", task.label()));
                }
            }
            Event::Completed { task, elapsed } => match self {
                Progress::Bars(bars) => {
                    if let Some(bar) = bars.bars.get(&task.phase) {
                        bar.inc(1);
                    }
                }
                Progress::Lines { .. } => self.line(format!(
                    "{} complete ({} cell{}, {:.2}s)",
                    task.label(),
                    task.dates.len(),
                    if task.dates.len() == 1 { "" } else { "s" },
                    elapsed.as_secs_f64()
                )),
            },
            Event::Waiting { task, holder } => self.line(format!(
                "{} waits: run {holder} is running some of its cells",
                task.label()
            )),
            Event::Retrying {
                task,
                attempt,
                error,
                delay,
            } => self.line(format!(
                "{} attempt {attempt} failed, retrying in {:.1}s: {error}",
                task.label(),
                delay.as_secs_f64()
            )),
            Event::Failed { task, error } => {
                if let Progress::Bars(bars) = self {
                    let mut failed = bars
                        .failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let count = failed.entry(task.phase).or_insert(0);
                    *count += 1;
                    if let Some(bar) = bars.bars.get(&task.phase) {
                        bar.set_message(format!("{count} failed"));
                    }
                }
                self.line(format!("{} failed: {error}", task.label()));
            }
            Event::Blocked { task, root } => {
                if let Progress::Lines { quiet: false } = self {
                    self.line(format!(
                        "{} blocked: phase {} {} did not complete",
                        task.label(),
                        root.phase,
                        root.date
                    ));
                }
            }
        }
    }
}
