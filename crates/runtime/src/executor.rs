//! The executor: runs a run's tasks the moment their needs are complete (pipelined across
//! dates, not phase by phase), within `--jobs` overall and each phase's `concurrency`, with
//! retries (exponential backoff, full jitter), timeouts, the validation gate, rollback, and a
//! checkpoint in the state store before every next step.
//!
//! Every transition is a compare-and-set on the task's `lease_epoch` in the store: a task
//! whose lease was taken over (a resumed run fenced it) cannot record anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gapless_connect::{CommandSpec, HttpSpec, RunError, ScriptParams};
use gapless_core::dates::{Date, DateRange};
use gapless_core::plan::{PlannedTask, dependencies};
use gapless_core::policy::Backoff;
use gapless_core::spec::{Phase, PhaseId, Rollback, Runner, Source, Spec};
use gapless_core::template::{Values, substitute};
use gapless_store::{NextClaims, RunId, Store, StoreError, TaskRecord, TaskState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::observe;
use crate::preflight::error_chain;

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
    /// Lease length; renewed every third of it.
    pub lease_ttl: Duration,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Event source recorded with completions (`backfill`, `heal`).
    pub source: String,
    /// Testing hook (RELIABILITY.md T3): abort the process at this durable step.
    pub crash_at: Option<CrashAt>,
}

/// A named step between two durable writes, where the crash-point tests abort the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The claim is committed; the runner has not started.
    AfterClaim,
    /// The runner exited 0; the gate has not re-probed.
    AfterRunner,
    /// The gate passed; the completion is not committed.
    BeforeComplete,
    /// The completion is committed, with the claims of the tasks it made ready; those have not
    /// started.
    AfterComplete,
}

impl CrashPoint {
    /// Every point, by name.
    pub const ALL: [(&'static str, CrashPoint); 4] = [
        ("after-claim", CrashPoint::AfterClaim),
        ("after-runner", CrashPoint::AfterRunner),
        ("before-complete", CrashPoint::BeforeComplete),
        ("after-complete", CrashPoint::AfterComplete),
    ];
}

/// `GAPLESS_CRASH_AT=point[:n]`: abort (as `kill -9` would stop it, without cleanup) the n-th
/// time (default the first) the executor reaches `point`. Only for crash tests.
#[derive(Debug)]
pub struct CrashAt {
    point: CrashPoint,
    nth: u32,
    seen: std::sync::atomic::AtomicU32,
}

impl Clone for CrashAt {
    fn clone(&self) -> Self {
        Self {
            point: self.point,
            nth: self.nth,
            seen: std::sync::atomic::AtomicU32::new(
                self.seen.load(std::sync::atomic::Ordering::SeqCst),
            ),
        }
    }
}

impl CrashAt {
    /// Parses `point[:n]`; `None` for an unknown point or count.
    pub fn parse(value: &str) -> Option<Self> {
        let (name, nth) = match value.split_once(':') {
            Some((name, nth)) => (name, nth.parse().ok()?),
            None => (value, 1),
        };
        let point = CrashPoint::ALL.iter().find(|(known, _)| *known == name)?.1;
        Some(Self {
            point,
            nth,
            seen: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn reached(&self, point: CrashPoint) {
        if point == self.point
            && self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.nth
        {
            eprintln!("gapless: crashing at {point:?} (GAPLESS_CRASH_AT)");
            std::process::abort();
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jobs: 4,
            owner: format!("gapless-{}", std::process::id()),
            lease_ttl: Duration::from_secs(60),
            backoff: Backoff::default(),
            source: "backfill".to_owned(),
            crash_at: None,
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
    /// The task will not run because a task it needs failed.
    Blocked {
        /// The task.
        task: &'a ExecTask,
        /// The failed task upstream.
        because: &'a ExecTask,
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
}

impl Outcome {
    /// Every task complete.
    pub fn is_success(&self) -> bool {
        self.tasks_failed == 0
            && self.tasks_blocked == 0
            && !self.interrupted
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
}

enum TaskResult {
    /// The gate passed under `epoch`; the completion is recorded by the scheduler, in the
    /// transaction that also claims the tasks it starts next.
    Passed {
        epoch: i64,
        counts: serde_json::Value,
        elapsed: Duration,
    },
    Failed,
    Cancelled,
    /// The lease was taken by someone else: they own the task now.
    Fenced,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    /// The gate passed; the completion is being recorded apart ([`Recording`]).
    Recording,
    Done,
    Failed,
    Blocked,
    Interrupted,
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

/// A lease won before the task it is for could start.
#[derive(Clone, Copy)]
struct Lease {
    claim: gapless_store::Claim,
    /// When it was won: a lease a third of its length old is renewed before the runner starts.
    at: Instant,
}

/// The one task claimed ahead of need: the task the scheduler predicts it starts next, claimed
/// in the transaction of the completion before, so that it can start the moment a slot frees
/// while that completion is still being recorded.
struct Ahead {
    index: usize,
    lease: Lease,
}

/// The one completion being recorded apart from the scheduler
/// ([`Store::spawn_complete_then_claim`]), while the task claimed ahead runs. Until it is
/// recorded, no task that needs it starts: its dependents become ready only then.
struct Recording {
    index: usize,
    elapsed: Duration,
    /// The task claimed ahead in the same transaction, if any.
    lookahead: Option<usize>,
    handle: tokio::task::JoinHandle<Result<Option<Vec<Option<gapless_store::Claim>>>, StoreError>>,
}

type Joined = (usize, Result<TaskResult, StoreError>);

/// Runs `tasks` (in an order where dependencies come first) to completion.
pub async fn execute(execution: Execution, tasks: Vec<ExecTask>) -> Result<Outcome, ExecError> {
    let mut scheduler = Scheduler::new(Arc::new(execution), tasks);
    let result = scheduler.run().await;
    if result.is_err() {
        // Let the running tasks record what they can, then report.
        scheduler.execution.cancel.cancel();
        while scheduler.join_set.join_next().await.is_some() {}
        if let Some(recording) = scheduler.recording.take() {
            let _recorded = recording.handle.await;
        }
    }
    result
}

/// The scheduler's view of a run: which tasks wait, run and are done, and what it has in
/// flight with the store.
struct Scheduler {
    execution: Arc<Execution>,
    tasks: Vec<ExecTask>,
    status: Vec<Status>,
    dependents: Vec<Vec<usize>>,
    /// Per task, how many of its needs are not done.
    waiting_on: Vec<usize>,
    /// Tasks whose needs are all done, not started, in task order.
    ready: BTreeSet<usize>,
    running_per_phase: HashMap<PhaseId, u32>,
    join_set: JoinSet<Joined>,
    jobs: usize,
    ahead: Option<Ahead>,
    recording: Option<Recording>,
    pacing: Pacing,
}

/// Whether recording a completion apart pays, judged as the run goes. Apart, the scheduler
/// pays for handing the transaction to another thread (a wake-up: median 24 µs on this VM)
/// and, when the transaction is not done by the time the next completion needs it, for
/// parking and being woken again (median 290 µs here). In its own thread it pays for the
/// transaction (median 66 µs here, far more while the disk is busy). A recording that is late
/// now and then (the disk stalled, a checkpoint ran) is the price of hiding all the others
/// behind the next task; recordings that are late most of the time mean the tasks are too
/// short to hide anything (a warehouse on tmpfs), and then the scheduler records in its own
/// thread. So: apart while at most [`Pacing::LATE_AT_MOST`] of the last eight recordings
/// apart were late, and otherwise in-thread, with a probe sent apart now and then to notice
/// that the tasks got longer: after [`Pacing::PROBE_FIRST`] eligible completions, then twice
/// as many after each probe that was late too, up to [`Pacing::PROBE_LONGEST`].
///
/// Why the late share and not the two ways' measured costs: both costs swing by 5× within a
/// run on a busy disk, and comparing their moving averages chose a different way from one run
/// to the next (from 11 % to 72 % of completions apart). Whether a recording is late depends
/// on the tasks' length far more than on the disk, so its share separates the two cases
/// cleanly: about 3 % late for SQL tasks on disk, nearly all on tmpfs.
struct Pacing {
    /// The last eight recordings apart, one bit each, set when late.
    history: u8,
    /// Completions that could have gone apart so far.
    eligible: u32,
    /// How many went apart, and how many of those were late.
    apart: u32,
    late: u32,
    /// In-thread completions until the next probe, and since the last.
    probe_every: u32,
    since_probe: u32,
    /// Whether the recording in flight is a probe.
    probing: bool,
}

impl Pacing {
    const LATE_AT_MOST: u32 = 3;
    const PROBE_FIRST: u32 = 32;
    const PROBE_LONGEST: u32 = 256;

    fn new() -> Self {
        Self {
            history: 0,
            eligible: 0,
            apart: 0,
            late: 0,
            probe_every: Self::PROBE_FIRST,
            since_probe: 0,
            probing: false,
        }
    }

    /// Whether a completion that may go apart should.
    fn apart(&mut self) -> bool {
        self.eligible += 1;
        self.probing = false;
        let apart = if self.history.count_ones() <= Self::LATE_AT_MOST {
            self.probe_every = Self::PROBE_FIRST;
            self.since_probe = 0;
            true
        } else {
            self.since_probe += 1;
            self.probing = self.since_probe >= self.probe_every;
            if self.probing {
                self.since_probe = 0;
            }
            self.probing
        };
        self.apart += u32::from(apart);
        apart
    }

    /// A recording apart was taken in: `late` if the scheduler had to wait for it.
    fn recorded(&mut self, late: bool) {
        self.late += u32::from(late);
        self.history = (self.history << 1) | u8::from(late);
        if std::mem::take(&mut self.probing) {
            self.probe_every = if late {
                (self.probe_every * 2).min(Self::PROBE_LONGEST)
            } else {
                Self::PROBE_FIRST
            };
        }
    }
}

impl Scheduler {
    fn new(execution: Arc<Execution>, tasks: Vec<ExecTask>) -> Self {
        let n = tasks.len();
        let status: Vec<Status> = tasks
            .iter()
            .map(|t| match t.state {
                TaskState::Complete => Status::Done,
                TaskState::Failed => Status::Failed,
                TaskState::Blocked => Status::Blocked,
                TaskState::Pending | TaskState::Running => Status::Waiting,
            })
            .collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting_on: Vec<usize> = vec![0; n];
        for (i, task) in tasks.iter().enumerate() {
            for &dep in &task.deps {
                dependents[dep].push(i);
                if status[dep] != Status::Done {
                    waiting_on[i] += 1;
                }
            }
        }
        let jobs = execution.options.jobs.max(1);
        Self {
            execution,
            tasks,
            status,
            dependents,
            waiting_on,
            ready: BTreeSet::new(),
            running_per_phase: HashMap::new(),
            join_set: JoinSet::new(),
            jobs,
            ahead: None,
            recording: None,
            pacing: Pacing::new(),
        }
    }

    async fn run(&mut self) -> Result<Outcome, ExecError> {
        // Tasks whose upstream already failed or is blocked cannot run.
        let initially_failed: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| matches!(self.status[i], Status::Failed | Status::Blocked))
            .collect();
        for i in initially_failed {
            self.block_downstream(i).await?;
        }
        self.ready = (0..self.tasks.len())
            .filter(|&i| self.status[i] == Status::Waiting && self.waiting_on[i] == 0)
            .collect();
        let cancel = self.execution.cancel.clone();
        loop {
            if !cancel.is_cancelled() {
                let mut counted = std::mem::take(&mut self.running_per_phase);
                let launched = self.select(&mut counted);
                self.running_per_phase = counted;
                for i in launched {
                    let lease = self.take_ahead(i);
                    self.spawn(i, lease);
                }
            }
            if self.join_set.is_empty() && self.recording.is_none() {
                break;
            }
            let recording = self.recording.as_mut().map(|r| &mut r.handle);
            let recording_open = recording.is_some();
            tokio::select! {
                // A recorded completion first: it may make tasks ready for free slots.
                biased;
                recorded = async {
                    match recording {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if recording_open => {
                    let recorded = recorded.map_err(ExecError::Panicked)?;
                    if let Some(recording) = self.recording.take() {
                        // Done while the scheduler had nothing else to do.
                        self.pacing.recorded(false);
                        self.settle(recording, recorded)?;
                    }
                }
                joined = self.join_set.join_next(), if !self.join_set.is_empty() => {
                    let Some(joined) = joined else { continue };
                    let (i, result) = joined.map_err(ExecError::Panicked)?;
                    self.finished(i, result?).await?;
                }
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
        if let Some(ahead) = self.ahead.take() {
            // Claimed for a start that never came (the run stopped first): give it back.
            self.release(ahead).await?;
        }
        tracing::debug!(
            eligible = self.pacing.eligible,
            apart = self.pacing.apart,
            late = self.pacing.late,
            "completions recorded apart while the next task ran"
        );
        let mut outcome = Outcome {
            interrupted: cancel.is_cancelled(),
            ..Outcome::default()
        };
        for s in &self.status {
            match s {
                Status::Done => outcome.tasks_complete += 1,
                Status::Failed => outcome.tasks_failed += 1,
                Status::Blocked => outcome.tasks_blocked += 1,
                Status::Waiting | Status::Running | Status::Recording | Status::Interrupted => {
                    outcome.tasks_interrupted += 1
                }
            }
        }
        Ok(outcome)
    }

    /// Picks the tasks to start now from `ready`, in task order, within `--jobs` and each
    /// phase's `concurrency`, counting them in `counted`.
    fn select(&self, counted: &mut HashMap<PhaseId, u32>) -> Vec<usize> {
        let busy = self.join_set.len();
        let mut chosen = Vec::new();
        for &i in &self.ready {
            if busy + chosen.len() >= self.jobs {
                break;
            }
            let task = &self.tasks[i];
            let Some(phase) = self.execution.context.spec.phase(task.phase) else {
                continue;
            };
            let running = counted.entry(task.phase).or_insert(0);
            if *running >= phase.concurrency {
                continue;
            }
            *running += 1;
            chosen.push(i);
        }
        chosen
    }

    /// The lease won ahead for task `i`, if it is the task claimed ahead.
    fn take_ahead(&mut self, i: usize) -> Option<Lease> {
        match &self.ahead {
            Some(ahead) if ahead.index == i => self.ahead.take().map(|ahead| ahead.lease),
            _ => None,
        }
    }

    fn spawn(&mut self, i: usize, lease: Option<Lease>) {
        self.ready.remove(&i);
        self.status[i] = Status::Running;
        let task = self.tasks[i].clone();
        let execution = Arc::clone(&self.execution);
        self.join_set
            .spawn(async move { (i, execution.run_task(&task, lease).await) });
    }

    /// Waits for the completion being recorded apart, if any: store writes stay in order.
    ///
    /// Whether the scheduler had to wait goes into [`Pacing`].
    async fn settle_recording(&mut self) -> Result<(), ExecError> {
        if let Some(mut recording) = self.recording.take() {
            self.pacing.recorded(!recording.handle.is_finished());
            let recorded = (&mut recording.handle).await.map_err(ExecError::Panicked)?;
            self.settle(recording, recorded)?;
        }
        Ok(())
    }

    /// Takes in a completion recorded apart: the task is done and its dependents may start,
    /// or, fenced, someone else holds it and they wait.
    fn settle(
        &mut self,
        recording: Recording,
        recorded: Result<Option<Vec<Option<gapless_store::Claim>>>, StoreError>,
    ) -> Result<(), ExecError> {
        let Recording {
            index,
            elapsed,
            lookahead,
            ..
        } = recording;
        match recorded? {
            None => self.status[index] = Status::Interrupted,
            Some(claims) => {
                self.completed(index, elapsed);
                // Recorded apart only when no task to start needed a claim: the lookahead's
                // is the only one.
                self.hold_ahead(lookahead, claims.first().copied().flatten());
            }
        }
        Ok(())
    }

    /// Task `i`'s completion is recorded: it is done, its dependents need one task less, and
    /// those that needed only it are ready.
    fn completed(&mut self, i: usize, elapsed: Duration) {
        self.execution.crash(CrashPoint::AfterComplete);
        self.status[i] = Status::Done;
        self.tasks[i].state = TaskState::Complete;
        self.execution.observer.event(Event::Completed {
            task: &self.tasks[i],
            elapsed,
        });
        for &dependent in &self.dependents[i] {
            self.waiting_on[dependent] = self.waiting_on[dependent].saturating_sub(1);
            if self.waiting_on[dependent] == 0 && self.status[dependent] == Status::Waiting {
                self.ready.insert(dependent);
            }
        }
    }

    fn hold_ahead(&mut self, lookahead: Option<usize>, claim: Option<gapless_store::Claim>) {
        if let (Some(index), Some(claim)) = (lookahead, claim) {
            self.ahead = Some(Ahead {
                index,
                lease: Lease {
                    claim,
                    at: Instant::now(),
                },
            });
        }
    }

    /// Gives back the claim of a task claimed ahead that will not start under it.
    async fn release(&mut self, ahead: Ahead) -> Result<(), StoreError> {
        let task = &mut self.tasks[ahead.index];
        let epoch = ahead.lease.claim.epoch;
        if self.execution.store.release_claim(task.id, epoch).await? {
            task.epoch = epoch + 1;
        }
        Ok(())
    }

    /// Task `i` finished: record what it came to, and start what that allows.
    async fn finished(&mut self, i: usize, result: TaskResult) -> Result<(), ExecError> {
        if let Some(running) = self.running_per_phase.get_mut(&self.tasks[i].phase) {
            *running = running.saturating_sub(1);
        }
        match result {
            TaskResult::Passed {
                epoch,
                counts,
                elapsed,
            } => self.passed(i, epoch, counts, elapsed).await?,
            TaskResult::Failed => {
                self.settle_recording().await?;
                self.status[i] = Status::Failed;
                self.block_downstream(i).await?;
                let status = &self.status;
                self.ready
                    .retain(|&candidate| status[candidate] != Status::Blocked);
            }
            TaskResult::Cancelled | TaskResult::Fenced => self.status[i] = Status::Interrupted,
        }
        Ok(())
    }

    /// Task `i`'s gate passed under `epoch`: record its completion, in one transaction with
    /// the claims of the tasks that start next and of the one predicted after them.
    ///
    /// When the only task to start next was claimed ahead and does not need `i`, it starts at
    /// once and the transaction is recorded apart, on another thread, while it runs: the
    /// state store's commit leaves the critical path. Otherwise (a task to start needs `i`, or
    /// has no claim yet) the scheduler waits for the commit, as every start must follow its
    /// claim and every dependent its upstream's recorded completion.
    async fn passed(
        &mut self,
        i: usize,
        epoch: i64,
        counts: serde_json::Value,
        elapsed: Duration,
    ) -> Result<(), ExecError> {
        // One store write in flight at a time, in order.
        self.settle_recording().await?;
        let cancelled = self.execution.cancel.is_cancelled();
        // The tasks this completion makes ready, tentatively ready while the scheduler picks
        // the tasks to start now.
        let newly_ready: Vec<usize> = self.dependents[i]
            .iter()
            .copied()
            .filter(|&d| self.waiting_on[d] == 1 && self.status[d] == Status::Waiting)
            .collect();
        self.ready.extend(newly_ready.iter().copied());
        let mut counted = self.running_per_phase.clone();
        let (next, lookahead) = if cancelled {
            (Vec::new(), None)
        } else {
            let next = self.select(&mut counted);
            let lookahead = self.predict(&next);
            (next, lookahead)
        };
        let could_go_apart = matches!((&self.ahead, next.as_slice()),
            (Some(ahead), [only]) if ahead.index == *only && !newly_ready.contains(only));
        let apart = could_go_apart && self.pacing.apart();
        let mut claimed: Vec<(i64, i64)> = next
            .iter()
            .filter(|&&n| self.ahead.as_ref().is_none_or(|ahead| ahead.index != n))
            .map(|&n| (self.tasks[n].id, self.tasks[n].epoch))
            .collect();
        let to_claim = claimed.len();
        claimed.extend(lookahead.map(|n| (self.tasks[n].id, self.tasks[n].epoch)));
        let options = &self.execution.options;
        if apart {
            // `i`'s dependents become ready when its completion is recorded ([`Self::settle`]).
            for dependent in &newly_ready {
                self.ready.remove(dependent);
            }
            let handle =
                self.execution
                    .store
                    .spawn_complete_then_claim(gapless_store::Completion {
                        task_id: self.tasks[i].id,
                        epoch,
                        counts,
                        source: options.source.clone(),
                        next: claimed,
                        owner: options.owner.clone(),
                        ttl: options.lease_ttl,
                    });
            self.running_per_phase = counted;
            self.status[i] = Status::Recording;
            let lease = self.take_ahead(next[0]);
            self.spawn(next[0], lease);
            self.recording = Some(Recording {
                index: i,
                elapsed,
                lookahead,
                handle,
            });
            return Ok(());
        }
        let recorded = self
            .execution
            .store
            .complete_then_claim(
                self.tasks[i].id,
                epoch,
                &counts,
                &options.source,
                &NextClaims {
                    tasks: &claimed,
                    owner: &options.owner,
                    ttl: options.lease_ttl,
                },
            )
            .await?;
        let Some(claims) = recorded else {
            // Fenced: someone else holds the task now, and its dependents wait.
            self.status[i] = Status::Interrupted;
            for dependent in &newly_ready {
                self.ready.remove(dependent);
            }
            return Ok(());
        };
        self.completed(i, elapsed);
        self.running_per_phase = counted;
        let mut fresh = claims.iter().copied();
        for n in next {
            let lease = match self.take_ahead(n) {
                Some(lease) => Some(lease),
                None => fresh.next().flatten().map(|claim| Lease {
                    claim,
                    at: Instant::now(),
                }),
            };
            self.spawn(n, lease);
        }
        self.hold_ahead(lookahead, claims.get(to_claim).copied().flatten());
        Ok(())
    }

    /// The task the scheduler will most likely start when a slot next frees, once `next` has
    /// started, to claim it ahead: the first in task order of the ready tasks and those one of
    /// `next` alone holds back. `None` while a task claimed ahead waits: there is only ever one.
    fn predict(&self, next: &[usize]) -> Option<usize> {
        if self
            .ahead
            .as_ref()
            .is_some_and(|ahead| !next.contains(&ahead.index))
        {
            return None;
        }
        let from_ready = self.ready.iter().copied().find(|n| !next.contains(n));
        let from_next = next
            .iter()
            .flat_map(|&n| self.dependents[n].iter().copied())
            .filter(|&d| self.status[d] == Status::Waiting && self.waiting_on[d] == 1)
            .filter(|d| !self.ready.contains(d))
            .min();
        match (from_ready, from_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Marks every task downstream of `failed` blocked, in the store and in `status`. A task
    /// among them claimed ahead gives its claim back first.
    async fn block_downstream(&mut self, failed: usize) -> Result<(), StoreError> {
        let mut stack = self.dependents[failed].clone();
        let mut newly = Vec::new();
        while let Some(i) = stack.pop() {
            if self.status[i] != Status::Waiting {
                continue;
            }
            self.status[i] = Status::Blocked;
            newly.push(i);
            stack.extend(self.dependents[i].iter().copied());
        }
        if newly.is_empty() {
            return Ok(());
        }
        if let Some(ahead) = self.ahead.take_if(|ahead| newly.contains(&ahead.index)) {
            self.release(ahead).await?;
        }
        let Execution {
            store,
            run_id,
            observer,
            ..
        } = self.execution.as_ref();
        let ids: Vec<i64> = newly.iter().map(|&i| self.tasks[i].id).collect();
        let reason = format!("{} did not complete", self.tasks[failed].label());
        store.block(run_id, &ids, &reason).await?;
        for i in newly {
            observer.event(Event::Blocked {
                task: &self.tasks[i],
                because: &self.tasks[failed],
            });
        }
        Ok(())
    }
}

/// Why one attempt did not produce complete cells.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("SQL runner failed")]
    Sql(#[source] gapless_connect::WarehouseError),
    #[error("timed out after {}", gapless_core::dates::format_duration(*.0))]
    Timeout(Duration),
    #[error("validation gate: {0}")]
    Gate(String),
    #[error("re-probe after the run failed")]
    Probe(#[source] observe::ObserveError),
    #[error("the phase has no runner")]
    NoRunner,
}

impl AttemptError {
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Run(error) => error.is_retryable(),
            AttemptError::Sql(_)
            | AttemptError::Timeout(_)
            | AttemptError::Gate(_)
            | AttemptError::Probe(_) => true,
            AttemptError::NoRunner => false,
        }
    }
}

impl Execution {
    /// Runs a task's attempts until its gate passes or it fails for good. `lease`: the claim
    /// the scheduler already won for it (with a completion before).
    async fn run_task(
        &self,
        task: &ExecTask,
        mut lease: Option<Lease>,
    ) -> Result<TaskResult, StoreError> {
        let Execution {
            context,
            store,
            options,
            observer,
            cancel,
            ..
        } = self;
        let Some(phase) = context.spec.phase(task.phase) else {
            tracing::error!(phase = %task.phase, "phase is not in the pipeline file");
            return Ok(TaskResult::Failed);
        };
        let max_attempts = i32::try_from(phase.retries)
            .unwrap_or(i32::MAX)
            .saturating_add(1);
        let mut seen_epoch = task.epoch;
        loop {
            let claim = match lease.take() {
                Some(lease) => self.renewed(task.id, lease).await?,
                None => self.claim(task.id, seen_epoch).await?,
            };
            let Some(claim) = claim else {
                return Ok(if cancel.is_cancelled() {
                    TaskResult::Cancelled
                } else {
                    TaskResult::Fenced
                });
            };
            self.crash(CrashPoint::AfterClaim);
            if matches!(phase.run, Some(Runner::Http(_))) {
                // The request leaves this machine and may outlive it: its claim (the fencing
                // token it carries) must survive a power loss, or a resumed run could hand the
                // same token to a second attempt.
                store.flush().await?;
            }
            observer.event(Event::Started {
                task,
                attempt: claim.attempt,
            });
            let started = Instant::now();
            let child_cancel = cancel.child_token();
            // Boxed: the attempt (2.8 KB of future state, with its runners' large branches
            // boxed in turn) is most of a task's future, which tokio copies when it spawns the
            // task and again when it hands back the result.
            let attempt = Box::pin(self.attempt(task, phase, claim, &child_cancel));
            let result = self
                .with_heartbeat(task.id, claim.epoch, &child_cancel, attempt)
                .await?;
            let result = match result {
                None => return Ok(TaskResult::Fenced),
                Some(result) => result,
            };
            match result {
                Ok(counts) => {
                    self.crash(CrashPoint::BeforeComplete);
                    return Ok(TaskResult::Passed {
                        epoch: claim.epoch,
                        counts,
                        elapsed: started.elapsed(),
                    });
                }
                Err(_) if cancel.is_cancelled() => {
                    store
                        .release_for_retry(task.id, claim.epoch, "interrupted", Duration::ZERO)
                        .await?;
                    return Ok(TaskResult::Cancelled);
                }
                Err(error) => {
                    let message = error_chain(&error);
                    if error.is_retryable() && claim.attempt < max_attempts {
                        let delay = options
                            .backoff
                            .delay(u32::try_from(claim.attempt).unwrap_or(1), fastrand::f64());
                        if !store
                            .release_for_retry(task.id, claim.epoch, &message, delay)
                            .await?
                        {
                            return Ok(TaskResult::Fenced);
                        }
                        seen_epoch = claim.epoch + 1;
                        observer.event(Event::Retrying {
                            task,
                            attempt: claim.attempt,
                            error: &message,
                            delay,
                        });
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = cancel.cancelled() => return Ok(TaskResult::Cancelled),
                        }
                        continue;
                    }
                    let message = match self.rollback(task, phase, claim.epoch).await {
                        None => message,
                        Some(Ok(())) => format!("{message} (rolled back)"),
                        Some(Err(rollback_error)) => {
                            format!("{message}; rollback also failed: {rollback_error}")
                        }
                    };
                    if !store.fail(task.id, claim.epoch, &message).await? {
                        return Ok(TaskResult::Fenced);
                    }
                    observer.event(Event::Failed {
                        task,
                        error: &message,
                    });
                    return Ok(TaskResult::Failed);
                }
            }
        }
    }

    /// Claims the task. The store refuses a claim before a retry's `not_before`; clocks and
    /// timers differ by milliseconds, so a refusal while the task is still ours to claim (pending,
    /// same epoch) waits for `not_before` and tries again. `None`: someone else holds the task.
    async fn claim(
        &self,
        task_id: i64,
        seen_epoch: i64,
    ) -> Result<Option<gapless_store::Claim>, StoreError> {
        let Execution {
            store,
            options,
            cancel,
            ..
        } = self;
        for _ in 0..1_000 {
            if let Some(claim) = store
                .claim(task_id, seen_epoch, &options.owner, options.lease_ttl)
                .await?
            {
                return Ok(Some(claim));
            }
            let Some(record) = store.task(task_id).await? else {
                return Ok(None);
            };
            if record.state != TaskState::Pending || record.lease_epoch != seen_epoch {
                return Ok(None);
            }
            let wait = record
                .not_before
                .map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default())
                .unwrap_or_default()
                .max(Duration::from_millis(5));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The claim of `lease`, renewed first if it is a third of its length old (a task claimed
    /// ahead waits for a slot): it then holds as long as a fresh one. `None`: the lease was
    /// lost meanwhile.
    async fn renewed(
        &self,
        task_id: i64,
        lease: Lease,
    ) -> Result<Option<gapless_store::Claim>, StoreError> {
        let ttl = self.options.lease_ttl;
        if lease.at.elapsed() < ttl / 3 {
            return Ok(Some(lease.claim));
        }
        let held = self
            .store
            .heartbeat(task_id, lease.claim.epoch, ttl)
            .await?;
        Ok(held.then_some(lease.claim))
    }

    /// Runs `work` while renewing the lease every third of its length. `None` when the lease was
    /// lost: the work is cancelled (its child killed) before anyone else can take the task over.
    async fn with_heartbeat<T>(
        &self,
        task_id: i64,
        epoch: i64,
        cancel: &CancellationToken,
        work: impl Future<Output = T>,
    ) -> Result<Option<T>, StoreError> {
        let ttl = self.options.lease_ttl;
        let store = &self.store;
        // The first renewal is one period away. (`interval`'s immediate first tick still goes
        // through the timer wheel, which costs up to a millisecond per task.)
        let period = ttl / 3;
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tokio::pin!(work);
        loop {
            tokio::select! {
                // Work first: an attempt that finishes in its first poll (inline SQL) never
                // registers the heartbeat's timer.
                biased;
                result = &mut work => return Ok(Some(result)),
                _ = interval.tick() => {
                    if !store.heartbeat(task_id, epoch, ttl).await? {
                        cancel.cancel();
                        return Ok(None);
                    }
                }
            }
        }
    }
}

fn values<'a>(task: &ExecTask, run_id: &'a RunId) -> Values<'a> {
    Values {
        date: task.range.start().to_string(),
        start: task.range.start().to_string(),
        end: task.range.end().to_string(),
        phase: task.phase.to_string(),
        run_id: run_id.as_str(),
    }
}

fn environment(
    task: &ExecTask,
    run_id: &RunId,
    epoch: i64,
    pipeline: &str,
) -> Vec<(String, String)> {
    let cell_key = if task.range.start() == task.range.end() {
        format!("{pipeline}/{}/{}", task.phase, task.range.start())
    } else {
        format!(
            "{pipeline}/{}/{}..{}",
            task.phase,
            task.range.start(),
            task.range.end()
        )
    };
    vec![
        ("GAPLESS_DATE".to_owned(), task.range.start().to_string()),
        ("GAPLESS_START".to_owned(), task.range.start().to_string()),
        ("GAPLESS_END".to_owned(), task.range.end().to_string()),
        ("GAPLESS_PHASE".to_owned(), task.phase.to_string()),
        ("GAPLESS_RUN_ID".to_owned(), run_id.to_string()),
        ("GAPLESS_CELL_KEY".to_owned(), cell_key),
        ("GAPLESS_ATTEMPT_TOKEN".to_owned(), epoch.to_string()),
    ]
}

impl Execution {
    /// A runner or rollback command with placeholders substituted, the `GAPLESS_*` environment,
    /// and its log file; it is not cancellable until the caller sets `cancel`.
    fn command_spec(
        &self,
        task: &ExecTask,
        phase: &Phase,
        epoch: i64,
        argv: &[String],
        log: &str,
    ) -> CommandSpec {
        let values = values(task, &self.run_id);
        let attempt_log = self
            .context
            .log_dir
            .join(self.run_id.as_str())
            .join(format!(
                "phase{}-{}-{}-{log}.log",
                task.phase,
                task.range.start(),
                task.range.end()
            ));
        CommandSpec {
            argv: argv.iter().map(|a| substitute(a, &values)).collect(),
            cwd: self.context.base_dir.clone(),
            env: environment(task, &self.run_id, epoch, &self.context.spec.name),
            timeout: phase.timeout,
            log_path: Some(attempt_log),
            cancel: CancellationToken::new(),
        }
    }
}

impl Execution {
    /// One attempt: the runner, then the validation gate. Returns the counts recorded on success.
    async fn attempt(
        &self,
        task: &ExecTask,
        phase: &Phase,
        claim: gapless_store::Claim,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, AttemptError> {
        let Execution {
            context, run_id, ..
        } = self;
        let (epoch, attempt) = (claim.epoch, claim.attempt);
        match &phase.run {
            None => return Err(AttemptError::NoRunner),
            Some(Runner::Command(argv)) => {
                let mut spec =
                    self.command_spec(task, phase, epoch, argv, &format!("attempt{attempt}"));
                spec.cancel = cancel.clone();
                gapless_connect::run_command(&spec).await?;
            }
            Some(Runner::Sql(sql)) => {
                let warehouse = context.warehouse.as_ref().ok_or(AttemptError::NoRunner)?;
                let params = ScriptParams {
                    start: task.range.start(),
                    end: task.range.end(),
                    date: Some(task.range.start()),
                };
                if let Some(probes) = transactional_probes(phase) {
                    // The gate runs inside the runner's transaction: a script whose rows fall
                    // short never commits, and the whole attempt is one trip to the warehouse.
                    let dates = task.dates.clone();
                    let min = phase.expect.min;
                    let gated = warehouse.execute_script_gated(
                        sql,
                        &params,
                        phase.timeout,
                        &probes,
                        move |mut observed: Vec<BTreeMap<Date, i64>>| {
                            let expected = (observed.len() > 1).then(|| observed.remove(1));
                            let counts = observed.into_iter().next().unwrap_or_default();
                            judge(&dates, &counts, expected.as_ref(), min)
                        },
                    );
                    let verdict = tokio::select! {
                        result = gated => result.map_err(AttemptError::Sql)?,
                        () = cancel.cancelled() => return Err(AttemptError::Run(RunError::Cancelled)),
                    };
                    self.crash(CrashPoint::AfterRunner);
                    return verdict.map_err(AttemptError::Gate);
                }
                tokio::select! {
                    result = tokio::time::timeout(phase.timeout, warehouse.execute_script_with_timeout(sql, &params, phase.timeout)) => {
                        result.map_err(|_| AttemptError::Timeout(phase.timeout))?.map_err(AttemptError::Sql)?;
                    }
                    () = cancel.cancelled() => return Err(AttemptError::Run(RunError::Cancelled)),
                }
            }
            Some(Runner::Http(http)) => {
                let values = values(task, run_id);
                let spec = HttpSpec {
                    method: gapless_connect::Method::from_bytes(http.method.as_bytes())
                        .unwrap_or(gapless_connect::Method::POST),
                    url: substitute(&http.url, &values),
                    body: http.body.as_ref().map(|b| substitute(b, &values)),
                    headers: http.headers.clone(),
                    token_command: http.token_command.clone(),
                    timeout: phase.timeout,
                    idempotency_key: format!("{}-{}-{}", run_id, task.phase, task.range.start()),
                    cwd: context.base_dir.clone(),
                };
                // Built whenever a phase has an HTTP runner (`Context::connect`).
                let client = context.http.as_ref().ok_or(AttemptError::NoRunner)?;
                tokio::select! {
                    result = gapless_connect::run_http(&spec, client) => { result?; }
                    () = cancel.cancelled() => return Err(AttemptError::Run(RunError::Cancelled)),
                }
            }
        }
        self.crash(CrashPoint::AfterRunner);
        gate(context, task, phase).await
    }

    fn crash(&self, point: CrashPoint) {
        if let Some(crash_at) = &self.options.crash_at {
            crash_at.reached(point);
        }
    }
}

/// The validation gate: re-probe the task's cells; every expected cell must reach its count.
async fn gate(
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
fn judge(
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
fn transactional_probes(phase: &Phase) -> Option<Vec<&str>> {
    let Source::Sql(check) = &phase.check else {
        return None;
    };
    match &phase.expect.source {
        None => Some(vec![check.as_str()]),
        Some(Source::Sql(expect)) => Some(vec![check.as_str(), expect.as_str()]),
        Some(_) => None,
    }
}

impl Execution {
    async fn rollback(
        &self,
        task: &ExecTask,
        phase: &Phase,
        epoch: i64,
    ) -> Option<Result<(), String>> {
        let context = &self.context;
        let rollback = phase.rollback.as_ref()?;
        Some(match rollback {
            Rollback::Sql(sql) => match &context.warehouse {
                None => Err("no warehouse".to_owned()),
                Some(warehouse) => {
                    let params = ScriptParams {
                        start: task.range.start(),
                        end: task.range.end(),
                        date: Some(task.range.start()),
                    };
                    warehouse
                        .execute_script_with_timeout(sql, &params, phase.timeout)
                        .await
                        .map(|_| ())
                        .map_err(|e| error_chain(&e))
                }
            },
            Rollback::Command(argv) => {
                let spec = self.command_spec(task, phase, epoch, argv, "rollback");
                gapless_connect::run_command(&spec)
                    .await
                    .map(|_| ())
                    .map_err(|e| error_chain(&e))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Pacing;

    /// Which way each of `n` eligible completions goes, `true` for apart, with every recording
    /// apart taken in as `late(its number among them)`.
    fn run(pacing: &mut Pacing, n: u32, late: impl Fn(u32) -> bool) -> Vec<bool> {
        (0..n)
            .map(|_| {
                let apart = pacing.apart();
                if apart {
                    pacing.recorded(late(pacing.apart));
                }
                apart
            })
            .collect()
    }

    #[test]
    fn recordings_that_are_seldom_late_keep_completions_apart() {
        let mut pacing = Pacing::new();
        // One recording in ten is late (the disk stalled), and once three in a row.
        let taken = run(&mut pacing, 500, |n| n % 10 == 0 || (200..203).contains(&n));
        assert!(taken.iter().all(|apart| *apart));
        assert_eq!((pacing.apart, pacing.late), (500, 52));
    }

    /// The indices of the completions that went apart.
    fn indices(taken: &[bool]) -> Vec<usize> {
        (0..taken.len()).filter(|&i| taken[i]).collect()
    }

    #[test]
    fn recordings_mostly_late_send_completions_back_in_thread_with_probes() {
        let mut pacing = Pacing::new();
        let taken = run(&mut pacing, 512, |_| true);
        // Apart until four of the last eight were late, then in-thread but for probes, 32
        // completions after the fourth, then twice as far apart while they are late too, up to
        // 256.
        assert_eq!(indices(&taken), [0, 1, 2, 3, 35, 99, 227, 483]);

        // The tasks got longer: the next probe is in time, the following ones come 32 apart,
        // and once four of the last eight are in time, completions go apart again, all of
        // them.
        let taken = run(&mut pacing, 512, |_| false);
        let apart = indices(&taken);
        assert_eq!(apart[..5], [227, 259, 291, 323, 355]);
        assert_eq!(apart[5..], (356..512).collect::<Vec<_>>()[..]);
    }
}
