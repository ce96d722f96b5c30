//! The executor: runs a run's tasks the moment their needs are complete (pipelined across
//! dates, not phase by phase), within `--jobs` overall and each phase's `concurrency`, with
//! retries (exponential backoff, full jitter), timeouts, the validation gate, rollback, and a
//! checkpoint in the state store before every next step.
//!
//! Every transition is a compare-and-set on the task's `lease_epoch` in the store: a task
//! whose lease was taken over (a resumed run fenced it) cannot record anything.
//!
//! - `scheduler`: the task graph, limits, completions and blocking;
//! - `attempt`: one task's claim, runner under a heartbeat, retries and rollback;
//! - `gate`: the validation gate's re-probe and verdict;
//! - `crash`: the crash points of the crash tests.

mod attempt;
mod crash;
mod gate;
mod patience;
mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gapless_core::cells::CellRef;
use gapless_core::dates::{Date, DateRange};
use gapless_core::plan::{PlannedTask, dependencies};
use gapless_core::policy::Backoff;
use gapless_core::spec::{PhaseId, Spec};
use gapless_store::{RunId, Store, StoreError, TaskRecord, TaskState};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

pub use crash::{CrashAt, CrashPoint};
pub(crate) use patience::patiently;

/// One task as the executor sees it.
#[derive(Debug, Clone)]
pub struct ExecTask {
    /// Store id.
    pub id: i64,
    /// Phase.
    pub phase: PhaseId,
    /// Dates covered.
    pub range: DateRange,
    /// Dates that must become complete.
    pub dates: Vec<Date>,
    /// Indices (in the task list) of tasks that must complete first.
    pub deps: Vec<usize>,
    /// Lease epoch last seen in the store.
    pub epoch: i64,
    /// State in the store.
    pub state: TaskState,
}

impl ExecTask {
    /// `phase 3 2024-01-01..2024-01-31`.
    pub fn label(&self) -> String {
        format!("phase {} {}", self.phase, self.range)
    }
}

/// Builds executor tasks from a run's stored tasks, with dependencies derived from the spec.
/// Used by `resume`, so a resumed run follows exactly the graph the planner would build.
pub fn tasks_from_records(
    spec: &Spec,
    records: &[TaskRecord],
    cells: &HashMap<i64, Vec<Date>>,
) -> Vec<ExecTask> {
    let planned: Vec<PlannedTask> = records
        .iter()
        .map(|record| PlannedTask {
            phase: PhaseId(u32::try_from(record.phase).unwrap_or(0)),
            range: DateRange::new(record.start, record.end)
                .unwrap_or_else(|_| DateRange::single(record.start)),
            dates: cells.get(&record.id).cloned().unwrap_or_default(),
            deps: Vec::new(),
        })
        .collect();
    let deps = dependencies(spec, &planned);
    planned
        .into_iter()
        .zip(deps)
        .zip(records)
        .map(|((task, deps), record)| ExecTask {
            id: record.id,
            phase: task.phase,
            range: task.range,
            dates: task.dates,
            deps,
            epoch: record.lease_epoch,
            state: record.state,
        })
        .collect()
}

/// Every task of a run as the executor sees it, read back from the store: planned and blocked
/// ones, with dependencies derived from the spec ([`tasks_from_records`]). Backfill and resume
/// use the same view, so both execute exactly what the store holds.
pub async fn load_tasks(
    store: &Store,
    spec: &Spec,
    run_id: &RunId,
) -> Result<Vec<ExecTask>, StoreError> {
    let records = store.tasks(run_id).await?;
    let mut cells: HashMap<i64, Vec<Date>> = HashMap::new();
    for cell in store.cells(run_id).await? {
        cells.entry(cell.task_id).or_default().push(cell.date);
    }
    Ok(tasks_from_records(spec, &records, &cells))
}

/// How to execute.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tasks at once, overall.
    pub jobs: usize,
    /// This process's name in leases.
    pub owner: String,
    /// This host and boot, recorded with each runner's process group: only a process of the
    /// same host and boot may signal that group later (`owner::runner_host`).
    pub runner_host: String,
    /// Lease length; renewed every third of it.
    pub lease_ttl: Duration,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Event source recorded with completions (`backfill`, `heal`).
    pub source: String,
    /// Testing hook (RELIABILITY.md T3): abort the process at this durable step.
    pub crash_at: Option<CrashAt>,
    /// How long a state store that stops answering is waited for (with backoff) before the
    /// run stops with an infrastructure error.
    pub store_outage: Duration,
    /// Shared with other nodes (`serve` on PostgreSQL): the run's tasks may be claimed by any
    /// node, so a task this execution did not win is followed in the store (read every this
    /// long) rather than given up, and the phase's `concurrency` is counted in the claim over
    /// every node. `None`: this execution alone runs the run.
    pub shared: Option<Duration>,
    /// A helper: an execution of a run owned by another node, which takes what it can claim
    /// and leaves when nothing is left for it, never re-plans after a failure (the owner
    /// does) and never records how the run ended.
    pub helper: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jobs: 4,
            owner: format!("gapless-{}", std::process::id()),
            runner_host: crate::owner::runner_host(),
            lease_ttl: Duration::from_secs(60),
            backoff: Backoff::default(),
            source: "backfill".to_owned(),
            crash_at: None,
            store_outage: gapless_core::spec::DEFAULT_STATE_OUTAGE,
            shared: None,
            helper: false,
        }
    }
}

/// Something that happened, for progress display and logs.
#[derive(Debug)]
pub enum Event<'a> {
    /// An attempt started.
    Started {
        /// The task.
        task: &'a ExecTask,
        /// Attempt number (1-based).
        attempt: i32,
    },
    /// The task's cells passed the gate and were recorded complete.
    Completed {
        /// The task.
        task: &'a ExecTask,
        /// Time of the successful attempt.
        elapsed: Duration,
    },
    /// The task waits: a task of another run is running some of its cells.
    Waiting {
        /// The task.
        task: &'a ExecTask,
        /// The run holding them.
        holder: &'a RunId,
    },
    /// An attempt failed and will be retried.
    Retrying {
        /// The task.
        task: &'a ExecTask,
        /// The attempt that failed.
        attempt: i32,
        /// Why.
        error: &'a str,
        /// Wait before the next attempt.
        delay: Duration,
    },
    /// The task failed for good (after rollback).
    Failed {
        /// The task.
        task: &'a ExecTask,
        /// Why.
        error: &'a str,
    },
    /// The task will not run: a cell it needs will not become complete.
    Blocked {
        /// The task (or the piece of a task whose dates were only partly blocked).
        task: &'a ExecTask,
        /// The cell at the start of the chain: a cell of a failed or blocked task.
        root: CellRef,
    },
}

/// Receives [`Event`]s. Implementations must be cheap; they run on the scheduler.
pub trait Observer: Send + Sync {
    /// Called for each event.
    fn event(&self, event: Event<'_>);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _event: Event<'_>) {}
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Tasks complete (including ones complete before this execution).
    pub tasks_complete: usize,
    /// Tasks failed.
    pub tasks_failed: usize,
    /// Tasks blocked.
    pub tasks_blocked: usize,
    /// Tasks not finished because the run was interrupted.
    pub tasks_interrupted: usize,
    /// Whether Ctrl-C (or another cancel) stopped the run.
    pub interrupted: bool,
    /// Whether this execution left the run to other nodes (they re-planned its tasks):
    /// nothing about how the run ended is known here.
    pub left: bool,
}

impl Outcome {
    /// Every task complete.
    pub fn is_success(&self) -> bool {
        self.tasks_failed == 0
            && self.tasks_blocked == 0
            && !self.interrupted
            && !self.left
            && self.tasks_interrupted == 0
    }
}

/// Why execution stopped short of an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The state store failed: nothing more can be recorded safely.
    #[error("state store failed")]
    Store(#[from] StoreError),
    /// A task's future panicked (a bug).
    #[error("a task panicked")]
    Panicked(#[source] tokio::task::JoinError),
    /// The run's tasks could not be re-planned after a failure (a bug: the store holds a task
    /// list no plan makes).
    #[error("cannot re-plan the run after a failure")]
    Reblock(#[source] gapless_core::reblock::ReblockError),
}

/// Everything one execution of a run shares: where it runs, what it records to, how.
pub struct Execution {
    /// The pipeline and its warehouse.
    pub context: Arc<Context>,
    /// The state store holding the run.
    pub store: Store,
    /// The run being executed.
    pub run_id: RunId,
    /// Limits, lease and retry settings.
    pub options: Options,
    /// Receives progress events.
    pub observer: Arc<dyn Observer>,
    /// Cancelling stops running tasks (their process groups are terminated) and starts no more.
    pub cancel: CancellationToken,
}

/// Runs `tasks` (in an order where dependencies come first) to completion.
pub async fn execute(execution: Execution, tasks: Vec<ExecTask>) -> Result<Outcome, ExecError> {
    let mut scheduler = scheduler::Scheduler::new(Arc::new(execution), tasks);
    let result = scheduler.run().await;
    if result.is_err() {
        // Let the running tasks record what they can, then report.
        scheduler.execution.cancel.cancel();
        while scheduler.join_set.join_next().await.is_some() {}
    }
    result
}
