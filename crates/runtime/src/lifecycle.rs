//! The run lifecycle, the one path that `backfill`, `resume`, `heal` and `serve` share:
//! probe and plan ([`plan`]), persist ([`create_run`]), make a stored run ready to go on
//! ([`prepare_resume`]), execute and record how it ended ([`execute_run`]); and the gap scan
//! ([`scan`]). Callers only parse their input and present what these return.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gapless_core::cells::{CellState, Completeness, classify};
use gapless_core::dates::{Date, DateRange};
use gapless_core::gaps::{Gap, detect};
use gapless_core::plan::{Plan, PlanError, Request};
use gapless_core::spec::{PhaseId, Spec};
use gapless_store::{
    DetectedGap, Fence, NewRun, NewTask, NewTaskState, Ownership, RunId, RunKind, RunOwnerRecord,
    RunRecord, RunState, ScanRecorded, Store, StoreError, TaskState,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::executor::{self, CrashAt, ExecError, ExecTask, Execution, Observer, Options, Outcome};
use crate::heal::{self, LateHeals};
use crate::observe::{self, ObserveError};
use crate::owner::{OrphanError, Owner, RUN_LEASE, end_orphans, keep_owning};

/// Why a step of the lifecycle failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Probing the pipeline failed.
    #[error("probing the pipeline")]
    Observe(#[source] ObserveError),
    /// The request cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The state store failed.
    #[error("state store")]
    Store(#[from] StoreError),
    /// Execution stopped short of an outcome.
    #[error("the run stopped")]
    Exec(#[from] ExecError),
    /// Runners left by the run's dead owner could not be stopped.
    #[error(transparent)]
    Orphans(#[from] OrphanError),
    /// Another live process executes the run.
    #[error(
        "run `{run_id}` is being executed by process {} on {} (its lease runs until {}); wait for it to finish, or stop that process and resume again",
        .owner.pid, .owner.host, .owner.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
    )]
    Owned {
        /// The run.
        run_id: RunId,
        /// Its live owner.
        owner: RunOwnerRecord,
    },
    /// This process stopped renewing the run's lease in time and another one took the run
    /// over: it stopped executing and recorded nothing more.
    #[error("run `{run_id}` was taken over by another process")]
    TakenOver {
        /// The run.
        run_id: RunId,
    },
}

/// Probes `range` (widened back by the spec's lookbacks, never before its start) and
/// classifies every cell: one probe per phase over the whole range.
pub async fn matrix(context: &Context, range: DateRange) -> Result<Completeness, LifecycleError> {
    let probe_range = observe::probe_range(context, range);
    let observations = observe::observe(context, probe_range)
        .await
        .map_err(LifecycleError::Observe)?;
    Ok(classify(&context.spec, &observations, context.now))
}

/// Probes and plans `request`: what a backfill would run, skip and find blocked.
pub async fn plan(context: &Context, request: &Request) -> Result<Plan, LifecycleError> {
    let matrix = matrix(context, request.range).await?;
    Ok(gapless_core::plan::plan(&context.spec, &matrix, request)?)
}

/// Persists `plan` as a run of `kind`, owned by `owner` from its first commit: its tasks, and
/// the blocked cells as blocked tasks, in one transaction.
pub async fn create_run(
    store: &Store,
    spec: &Spec,
    request: &Request,
    plan: &Plan,
    kind: RunKind,
    owner: &Owner,
) -> Result<RunId, StoreError> {
    create_run_with(store, spec, request, plan, kind, owner, None).await
}

/// [`create_run`], with one more `(key, value)` in the run's recorded request (`serve` marks
/// the runs it started with `"via": "api"`, to resume them on its next start).
pub async fn create_run_with(
    store: &Store,
    spec: &Spec,
    request: &Request,
    plan: &Plan,
    kind: RunKind,
    owner: &Owner,
    extra: Option<(&str, &str)>,
) -> Result<RunId, StoreError> {
    let run = new_run(spec, request, plan, kind, extra);
    store
        .create_run_owned(&run, &owner.as_store(), RUN_LEASE)
        .await
}

/// `plan` as a run of `kind` to create: its tasks, the blocked cells as blocked tasks, and the
/// request recorded with `extra` ([`create_run_with`]).
pub(crate) fn new_run(
    spec: &Spec,
    request: &Request,
    plan: &Plan,
    kind: RunKind,
    extra: Option<(&str, &str)>,
) -> NewRun {
    let mut tasks: Vec<NewTask> = plan
        .tasks
        .iter()
        .map(|task| NewTask {
            phase: i64::from(task.phase.0),
            start: task.range.start(),
            end: task.range.end(),
            dates: task.dates.clone(),
            state: NewTaskState::Pending,
            error: None,
        })
        .collect();
    tasks.extend(plan.blocked.iter().map(|blocked| NewTask {
        phase: i64::from(blocked.cell.phase.0),
        start: blocked.cell.date,
        end: blocked.cell.date,
        dates: vec![blocked.cell.date],
        state: NewTaskState::Blocked,
        error: Some(blocked.describe()),
    }));
    let mut recorded = json!({
        "start_date": request.range.start(),
        "end_date": request.range.end(),
        "phases": request.phases.iter().map(|p| p.0).collect::<Vec<_>>(),
        "force": request.force,
        // What the request covered besides the cells the run holds, so that `runs` can
        // count every cell the request covers.
        "already_complete": plan
            .phases
            .iter()
            .filter(|phase| phase.requested)
            .map(|phase| phase.skipped_complete)
            .sum::<usize>(),
        "not_expected": plan
            .phases
            .iter()
            .filter(|phase| phase.requested)
            .map(|phase| phase.not_expected)
            .sum::<usize>(),
    });
    if let Some((key, value)) = extra {
        recorded[key] = serde_json::Value::String(value.to_owned());
    }
    NewRun {
        kind,
        pipeline: spec.name.clone(),
        request: recorded,
        tasks,
    }
}

/// How to execute a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Tasks at once, overall.
    pub jobs: usize,
    /// Event source recorded with completions (`backfill`, `heal`).
    pub source: String,
    /// Crash-test hook (`GAPLESS_CRASH_AT`).
    pub crash_at: Option<CrashAt>,
    /// How long a state store that stops answering mid-run is waited for before the run stops
    /// with an infrastructure error (`[state] outage`).
    pub store_outage: Duration,
    /// The length of task leases, renewed every third of it.
    pub lease_ttl: Duration,
    /// Shared with other nodes (`serve` on PostgreSQL): see [`Options::shared`].
    pub shared: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            jobs: 4,
            source: "backfill".to_owned(),
            crash_at: None,
            store_outage: gapless_core::spec::DEFAULT_STATE_OUTAGE,
            lease_ttl: Options::default().lease_ttl,
            shared: None,
        }
    }
}

/// How an execution of a run ended, as recorded in the store.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run.
    pub run_id: RunId,
    /// Its recorded state: succeeded, failed or interrupted.
    pub state: RunState,
    /// What the executor counted.
    pub outcome: Outcome,
    /// Cells the executed tasks cover.
    pub cells: usize,
    /// Wall time of the execution.
    pub elapsed: Duration,
}

/// Executes `tasks` of run `run_id` (as [`executor::load_tasks`] or [`prepare_resume`] return
/// them) as its owner `owner`, renewing the run's lease meanwhile, reporting to `observer`,
/// until they are all done or `cancel` fires; then records how the run ended. `cancel` stops
/// running tasks (their process groups are terminated) and starts no more: the run is
/// recorded `interrupted` and can be resumed.
#[expect(
    clippy::too_many_arguments,
    reason = "the lifecycle's one entry to execution"
)]
pub async fn execute_run(
    context: Arc<Context>,
    store: &Store,
    run_id: &RunId,
    owner: &Owner,
    tasks: Vec<ExecTask>,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Result<Finished, LifecycleError> {
    let started = Instant::now();
    let cancel = cancel.child_token();
    let stop_owning = CancellationToken::new();
    let owning = tokio::spawn(keep_owning(
        store.clone(),
        run_id.clone(),
        owner.clone(),
        stop_owning.clone(),
        cancel.clone(),
    ));
    let cells: usize = tasks.iter().map(|t| t.dates.len()).sum();
    let execution = Execution {
        context,
        store: store.clone(),
        run_id: run_id.clone(),
        options: Options {
            jobs: options.jobs,
            source: options.source.clone(),
            crash_at: options.crash_at.clone(),
            store_outage: options.store_outage,
            lease_ttl: options.lease_ttl,
            shared: options.shared,
            // Task leases name the same process as the run's own lease.
            owner: owner.id.clone(),
            ..Options::default()
        },
        observer,
        cancel,
    };
    let outcome = executor::execute(execution, tasks).await;
    stop_owning.cancel();
    let taken_over = owning.await.unwrap_or(false);
    if taken_over {
        // The new owner records what happens to the run from now on.
        return Err(LifecycleError::TakenOver {
            run_id: run_id.clone(),
        });
    }
    let outcome = outcome?;
    if outcome.left {
        // Other nodes re-planned the run: this one gives it up, to be adopted afresh.
        executor::patiently(options.store_outage, "release run", || {
            store.release_run(run_id, &owner.id)
        })
        .await?;
        return Ok(Finished {
            run_id: run_id.clone(),
            state: RunState::Running,
            outcome,
            cells,
            elapsed: started.elapsed(),
        });
    }
    let state = if outcome.interrupted {
        RunState::Interrupted
    } else if outcome.is_success() {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    executor::patiently(options.store_outage, "finish run", || {
        store.finish_run(run_id, state)
    })
    .await?;
    Ok(Finished {
        run_id: run_id.clone(),
        state,
        outcome,
        cells,
        elapsed: started.elapsed(),
    })
}

/// Helps execute run `run_id`, owned by another node of a shared state store: claims whatever
/// of its tasks becomes ready, under this node's own leases, until nothing of the run is left
/// undone or held elsewhere, the run's tasks are re-planned (after a failure: the owner does
/// it), or `cancel` fires. Records nothing about the run itself; its owner does. The number of
/// tasks it ran to completion.
pub async fn help_run(
    context: Arc<Context>,
    store: &Store,
    run_id: &RunId,
    owner: &Owner,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Result<usize, LifecycleError> {
    let tasks = executor::load_tasks(store, &context.spec, run_id).await?;
    let before = tasks
        .iter()
        .filter(|task| task.state == TaskState::Complete)
        .count();
    let execution = Execution {
        context,
        store: store.clone(),
        run_id: run_id.clone(),
        options: Options {
            jobs: options.jobs,
            source: options.source.clone(),
            crash_at: options.crash_at.clone(),
            store_outage: options.store_outage,
            lease_ttl: options.lease_ttl,
            shared: Some(options.shared.unwrap_or(Duration::from_millis(250))),
            helper: true,
            owner: owner.id.clone(),
            ..Options::default()
        },
        observer,
        cancel,
    };
    let outcome = executor::execute(execution, tasks).await?;
    Ok(outcome.tasks_complete.saturating_sub(before))
}

/// A stored run made ready to go on: what [`prepare_resume`] found and did.
#[derive(Debug)]
pub struct Resumption {
    /// The run's tasks as the executor sees them, after the changes below.
    pub tasks: Vec<ExecTask>,
    /// Tasks that were running when the run's last owner stopped: fenced and pending again.
    pub requeued: usize,
    /// Failed tasks pending again, to be re-probed and run.
    pub retried: u64,
    /// Blocked tasks released because what blocked them is complete now or will be made by
    /// this run.
    pub unblocked: u64,
    /// Pending tasks whose cells probe complete already, recorded complete without running.
    pub adopted: usize,
}

/// Makes run `run` ready to execute again after a crash, kill, Ctrl-C or a failure whose cause
/// was fixed: tasks left running are fenced (their lease epoch bumped) and pending again; then
/// the run's unfinished cells are re-probed, before anything is trusted. Failed tasks are
/// pending again (the cause may be fixed: they are re-probed and run), and so is everything
/// they blocked; tasks blocked because a cell outside the run was not complete run now if that
/// cell has been filled since. Cells the warehouse already holds (a runner that finished just
/// before the crash, or a fix made by hand) are recorded complete without running again,
/// unless the run was forced.
pub async fn prepare_resume(
    context: &Context,
    store: &Store,
    run: &RunRecord,
    owner: &Owner,
) -> Result<Resumption, LifecycleError> {
    prepare_resume_with(context, store, run, owner, false).await
}

/// [`prepare_resume`]; `shared`: the run's tasks may be held by other live nodes (`serve` on
/// PostgreSQL), so only the tasks whose lease expired are taken back (a dead node's tasks are
/// taken back by whichever node finds it dead, after stopping its runners on that host), not
/// every running one.
pub async fn prepare_resume_with(
    context: &Context,
    store: &Store,
    run: &RunRecord,
    owner: &Owner,
    shared: bool,
) -> Result<Resumption, LifecycleError> {
    take_over(store, &run.id, owner).await?;
    let requeued = if shared {
        store.requeue_expired(chrono::Utc::now()).await?.len()
    } else {
        // Runners of a dead owner may still be running these cells (this process may itself
        // have crashed before): they are stopped before anything runs again.
        let orphans = end_orphans(store, &run.id).await?;
        if orphans > 0 {
            tracing::warn!(run = %run.id, orphans, "stopped runners left by the run's last owner");
        }
        let requeued = store.requeue_running(&run.id).await?.len();
        store.forget_runners(&run.id).await?;
        requeued
    };
    let mut tasks = executor::load_tasks(store, &context.spec, &run.id).await?;
    let forced = run
        .request
        .get("force")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let blocked: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state == TaskState::Blocked)
        .collect();
    let failed: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state == TaskState::Failed)
        .collect();
    let probed: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state != TaskState::Complete)
        .collect();
    let mut adopted = 0;
    let mut unblocked = 0;
    let mut retried = 0;
    let (Some(start), Some(end)) = (
        probed.iter().map(|i| tasks[*i].range.start()).min(),
        probed.iter().map(|i| tasks[*i].range.end()).max(),
    ) else {
        return Ok(Resumption {
            tasks,
            requeued,
            retried,
            unblocked,
            adopted,
        });
    };
    // Both come from tasks' own ranges, whose start never follows their end.
    let range = DateRange::new(start, end).unwrap_or_else(|_| DateRange::single(start));
    let matrix = matrix(context, range).await?;
    let state_of = |phase, date: Date| matrix.cell(phase, date).map(|cell| cell.state);
    // Which task of this run produces each cell, to tell whether a blocked cell's root cause
    // will be produced by the run itself.
    let producer: HashMap<(PhaseId, Date), usize> = tasks
        .iter()
        .enumerate()
        .flat_map(|(i, task)| task.dates.iter().map(move |date| ((task.phase, *date), i)))
        .collect();
    let mut will_run: Vec<bool> = tasks
        .iter()
        .map(|task| matches!(task.state, TaskState::Pending | TaskState::Failed))
        .collect();
    // A blocked task may run once every cell it covers is either no longer blocked, or blocked
    // only behind a cell that a task of this run (complete, pending or itself released)
    // produces. Iterate: releasing phase 3 can release phase 4 behind it.
    let mut ready: Vec<usize> = Vec::new();
    loop {
        let before = ready.len();
        for &i in &blocked {
            if will_run[i] {
                continue;
            }
            let task = &tasks[i];
            let deps_ok = task
                .deps
                .iter()
                .all(|dep| tasks[*dep].state == TaskState::Complete || will_run[*dep]);
            let cells_ok = task
                .dates
                .iter()
                .all(|date| match state_of(task.phase, *date) {
                    None => false,
                    Some(CellState::Blocked) => matrix
                        .root_cause(task.phase, *date)
                        .and_then(|(root, _)| producer.get(&(root.phase, root.date)))
                        .is_some_and(|j| tasks[*j].state == TaskState::Complete || will_run[*j]),
                    Some(_) => true,
                });
            if deps_ok && cells_ok {
                will_run[i] = true;
                ready.push(i);
            }
        }
        if ready.len() == before {
            break;
        }
    }
    if !failed.is_empty() {
        let ids: Vec<i64> = failed.iter().map(|i| tasks[*i].id).collect();
        retried = store.retry_failed(&run.id, &ids).await?;
        for i in &failed {
            tasks[*i].state = TaskState::Pending;
        }
    }
    if !ready.is_empty() {
        let ids: Vec<i64> = ready.iter().map(|i| tasks[*i].id).collect();
        unblocked = store.unblock(&run.id, &ids).await?;
        for i in &ready {
            tasks[*i].state = TaskState::Pending;
        }
    }
    for i in probed {
        if forced || tasks[i].state != TaskState::Pending {
            continue;
        }
        let task = &tasks[i];
        let complete = !task.dates.is_empty()
            && task
                .dates
                .iter()
                .all(|date| state_of(task.phase, *date) == Some(CellState::Complete));
        if !complete {
            continue;
        }
        let counts = json!(
            task.dates
                .iter()
                .map(|date| {
                    let cell = matrix.cell(task.phase, *date);
                    (
                        date.to_string(),
                        json!([cell.map_or(0, |c| c.count), cell.map_or(0, |c| c.expected)]),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        );
        if let Some(claim) = store
            .claim(task.id, task.epoch, &owner.id, RUN_LEASE)
            .await?
            && store
                .complete(task.id, claim.epoch, &counts, "resume")
                .await?
        {
            tasks[i].state = TaskState::Complete;
            tasks[i].epoch = claim.epoch;
            adopted += 1;
        }
    }
    Ok(Resumption {
        tasks,
        requeued,
        retried,
        unblocked,
        adopted,
    })
}

/// Makes `owner` the owner of run `run_id`: at once when it has none, or its owner's lease
/// expired, or its owner was a process of this host that is gone (kill -9, a crash); refused
/// while another owner is alive.
async fn take_over(store: &Store, run_id: &RunId, owner: &Owner) -> Result<(), LifecycleError> {
    let held_by = match store
        .acquire_run(run_id, &owner.as_store(), RUN_LEASE, None)
        .await?
    {
        Ownership::Acquired => return Ok(()),
        Ownership::HeldBy(current) => current,
    };
    if !owner.sees_dead(&held_by) {
        return Err(LifecycleError::Owned {
            run_id: run_id.clone(),
            owner: held_by,
        });
    }
    match store
        .acquire_run(run_id, &owner.as_store(), RUN_LEASE, Some(&held_by.id))
        .await?
    {
        Ownership::Acquired => Ok(()),
        // Someone else took it over first, and is alive.
        Ownership::HeldBy(current) => Err(LifecycleError::Owned {
            run_id: run_id.clone(),
            owner: current,
        }),
    }
}

/// What a scan found and recorded in the gap ledger.
#[derive(Debug)]
pub struct Scan {
    /// The dates scanned; `None` when the pipeline starts after today (nothing is expected).
    pub range: Option<DateRange>,
    /// The gaps found, in phase and date order.
    pub gaps: Vec<Gap>,
    /// What the ledger did with them.
    pub recorded: ScanRecorded,
    /// Heals of ended runs that nobody had recorded, recorded before the scan's findings.
    pub late_heals: LateHeals,
}

/// What a scan writes in the gap ledger.
#[derive(Debug, Clone, Copy)]
pub enum Ledger<'a> {
    /// Nothing: a dry run.
    Untouched,
    /// The heals nobody recorded ([`heal::record_late_heals`]), then what the scan found. With
    /// `fence` (the leader's scheduled scan on a shared store) every write is refused with
    /// [`StoreError::Fenced`] once the leader lease moved on; scans a person asks for are not
    /// the leader's work and pass none.
    Recorded {
        /// The leader lease the scan runs under.
        fence: Option<&'a Fence>,
    },
}

/// Scans the last `days` days up to today (never before the pipeline's start), by counting
/// rows, and records the result in the gap ledger in one transaction (SPEC.md, Semantics 6).
pub async fn scan(context: &Context, store: &Store, days: i64) -> Result<Scan, LifecycleError> {
    scan_with(context, store, days, Ledger::Recorded { fence: None }).await
}

/// [`scan`], writing the ledger as `ledger` says (a dry run does not).
pub async fn scan_with(
    context: &Context,
    store: &Store,
    days: i64,
    ledger: Ledger<'_>,
) -> Result<Scan, LifecycleError> {
    let today = context.today;
    let start = gapless_core::dates::add_days(today, -days).max(context.spec.start);
    let Ok(range) = DateRange::new(start, today) else {
        return Ok(Scan {
            range: None,
            gaps: Vec::new(),
            recorded: ScanRecorded::default(),
            late_heals: LateHeals::default(),
        });
    };
    let matrix = matrix(context, range).await?;
    let scan = detect(&context.spec, &matrix, range, context.now);
    let found: Vec<DetectedGap> = scan
        .gaps
        .iter()
        .map(|gap| DetectedGap {
            phase_from: gap.phase_from.map(|phase| i64::from(phase.0)),
            phase_to: i64::from(gap.phase_to.0),
            date: gap.date,
            age_days: gap.age_days,
            found: gap.found,
            expected: gap.expected,
        })
        .collect();
    let satisfied: Vec<_> = scan
        .satisfied
        .iter()
        .map(|&(phase, date)| (i64::from(phase.0), date))
        .collect();
    let (recorded, late_heals) = match ledger {
        Ledger::Untouched => (ScanRecorded::default(), LateHeals::default()),
        Ledger::Recorded { fence } => {
            let late_heals = heal::record_late_heals(store, fence).await?;
            (
                store.record_scan(&found, &satisfied, fence).await?,
                late_heals,
            )
        }
    };
    Ok(Scan {
        range: Some(range),
        gaps: scan.gaps,
        recorded,
        late_heals,
    })
}

/// What `resume` would do with a run as it is stored, without probing anything: the plan
/// `runs show` prints. Counts of tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResumePreview {
    /// Running when their owner stopped: run again (fenced first).
    pub rerun_running: usize,
    /// Not started yet: run (re-probed first; found complete, recorded without running).
    pub run_pending: usize,
    /// Failed: re-probed and run again, so "fix the cause, then resume" works.
    pub retry_failed: usize,
    /// Blocked behind a failed or blocked task of this run: run once that one completes.
    pub after_failures: usize,
    /// Blocked by a cell outside the run that was not complete: run if it has been filled
    /// since, otherwise still blocked.
    pub recheck_blocked: usize,
}

impl ResumePreview {
    /// Tasks a resume would try to run.
    pub fn total(&self) -> usize {
        self.rerun_running
            + self.run_pending
            + self.retry_failed
            + self.after_failures
            + self.recheck_blocked
    }
}

/// What [`prepare_resume`] and the execution after it would do with `tasks` (a run's tasks,
/// as [`executor::load_tasks`] reads them).
pub fn resume_preview(tasks: &[ExecTask]) -> ResumePreview {
    let mut preview = ResumePreview::default();
    for task in tasks {
        match task.state {
            TaskState::Complete => {}
            TaskState::Running => preview.rerun_running += 1,
            TaskState::Pending => preview.run_pending += 1,
            TaskState::Failed => preview.retry_failed += 1,
            TaskState::Blocked => {
                let behind_this_run = task
                    .deps
                    .iter()
                    .any(|&dep| matches!(tasks[dep].state, TaskState::Failed | TaskState::Blocked));
                if behind_this_run {
                    preview.after_failures += 1;
                } else {
                    preview.recheck_blocked += 1;
                }
            }
        }
    }
    preview
}
