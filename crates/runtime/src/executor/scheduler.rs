//! The scheduler: which tasks wait, run and are done; starts a task the moment everything it
//! needs is recorded complete, within `--jobs` and each phase's `concurrency`; records each
//! completion together with the claims of the tasks it lets start, and blocks what a failure
//! makes impossible.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gapless_core::cells::CellRef;
use gapless_core::reblock::{RunTask, TaskStatus, reblock};
use gapless_core::spec::PhaseId;
use gapless_store::{Claim, NewTask, NewTaskState, NextClaims, StoreError, TaskState};
use tokio::task::JoinSet;

use super::attempt::TaskResult;
use super::crash::CrashPoint;
use super::{Event, ExecError, ExecTask, Execution, Outcome, patiently};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Done,
    Failed,
    Blocked,
    Interrupted,
    /// Another node holds it (or won the claim): followed in the store (shared runs only).
    Elsewhere,
}

type Joined = (usize, Result<TaskResult, StoreError>);

/// The scheduler's view of a run.
pub(super) struct Scheduler {
    pub(super) execution: Arc<Execution>,
    tasks: Vec<ExecTask>,
    status: Vec<Status>,
    dependents: Vec<Vec<usize>>,
    /// Per task, how many of its needs are not done.
    waiting_on: Vec<usize>,
    /// Tasks whose needs are all done, not started, in task order.
    ready: BTreeSet<usize>,
    running_per_phase: HashMap<PhaseId, u32>,
    pub(super) join_set: JoinSet<Joined>,
    jobs: usize,
    /// The task list changed under this execution (another node split tasks after a
    /// failure): it starts nothing more and ends once its running tasks are recorded.
    leaving: bool,
}

impl Scheduler {
    pub(super) fn new(execution: Arc<Execution>, tasks: Vec<ExecTask>) -> Self {
        let n = tasks.len();
        let shared = execution.options.shared.is_some();
        let status: Vec<Status> = tasks
            .iter()
            .map(|t| match t.state {
                TaskState::Complete => Status::Done,
                TaskState::Failed => Status::Failed,
                TaskState::Blocked => Status::Blocked,
                // Held by another node of a shared run: followed, not claimed.
                TaskState::Running if shared => Status::Elsewhere,
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
            leaving: false,
        }
    }

    pub(super) async fn run(&mut self) -> Result<Outcome, ExecError> {
        // Cells that need cells of tasks already failed or blocked cannot run (a resumed run).
        if self
            .status
            .iter()
            .any(|s| matches!(s, Status::Failed | Status::Blocked))
        {
            self.reblock().await?;
        }
        self.ready = (0..self.tasks.len())
            .filter(|&i| self.status[i] == Status::Waiting && self.waiting_on[i] == 0)
            .collect();
        let cancel = self.execution.cancel.clone();
        let refresh = self.execution.options.shared;
        loop {
            if !cancel.is_cancelled() && !self.leaving {
                let mut counted = std::mem::take(&mut self.running_per_phase);
                let launched = self.select(&mut counted);
                self.running_per_phase = counted;
                for i in launched {
                    self.spawn(i, None);
                }
            }
            if self.join_set.is_empty() && !self.follows_others(&cancel) {
                break;
            }
            tokio::select! {
                joined = self.join_set.join_next(), if !self.join_set.is_empty() => {
                    let Some(joined) = joined else { continue };
                    let (i, result) = joined.map_err(ExecError::Panicked)?;
                    self.finished(i, result?).await?;
                }
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
                () = tokio::time::sleep(refresh.unwrap_or_default()), if refresh.is_some() && !self.leaving => {
                    self.refresh().await?;
                }
            }
        }
        let mut outcome = Outcome {
            interrupted: cancel.is_cancelled(),
            ..Outcome::default()
        };
        for s in &self.status {
            match s {
                Status::Done => outcome.tasks_complete += 1,
                Status::Failed => outcome.tasks_failed += 1,
                Status::Blocked => outcome.tasks_blocked += 1,
                Status::Waiting | Status::Running | Status::Interrupted | Status::Elsewhere => {
                    outcome.tasks_interrupted += 1
                }
            }
        }
        outcome.left = self.leaving;
        Ok(outcome)
    }

    /// With nothing of its own running: whether to wait for what other nodes run (a shared
    /// run with tasks still held elsewhere, or waiting on those), rather than end.
    fn follows_others(&self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        self.execution.options.shared.is_some()
            && !cancel.is_cancelled()
            && !self.leaving
            && self.status.contains(&Status::Elsewhere)
    }

    /// Reads every task's state from the store and follows what other nodes did: a task they
    /// completed is done here too (its dependents become ready), one they gave back is ready
    /// again, one they run is theirs, one they failed blocks what needs it (the owner re-plans;
    /// a helper leaves that to the owner and leaves). A task list that changed (split by
    /// another node) ends this execution's part.
    async fn refresh(&mut self) -> Result<(), ExecError> {
        let Execution {
            store,
            run_id,
            options,
            ..
        } = self.execution.as_ref();
        let states = patiently(options.store_outage, "read tasks", || {
            store.task_states(run_id)
        })
        .await?;
        let index: HashMap<i64, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, task)| (task.id, i))
            .collect();
        if states.len() != self.tasks.len() || states.iter().any(|(id, ..)| !index.contains_key(id))
        {
            tracing::info!(run = %run_id, "the run's tasks were re-planned by another node: leaving them to it");
            self.leaving = true;
            return Ok(());
        }
        let mut failed = false;
        for (id, state, epoch) in states {
            let i = index[&id];
            match (self.status[i], state) {
                (Status::Waiting | Status::Elsewhere, TaskState::Complete) => {
                    self.tasks[i].epoch = epoch;
                    self.done_elsewhere(i);
                }
                (Status::Elsewhere, TaskState::Pending) => {
                    self.tasks[i].epoch = epoch;
                    self.status[i] = Status::Waiting;
                    if self.waiting_on[i] == 0 {
                        self.ready.insert(i);
                    }
                }
                (Status::Waiting, TaskState::Pending) => self.tasks[i].epoch = epoch,
                (Status::Waiting, TaskState::Running) => {
                    self.tasks[i].epoch = epoch;
                    self.status[i] = Status::Elsewhere;
                    self.ready.remove(&i);
                }
                (Status::Waiting | Status::Elsewhere, TaskState::Failed) => {
                    self.status[i] = Status::Failed;
                    self.tasks[i].state = TaskState::Failed;
                    self.ready.remove(&i);
                    failed = true;
                }
                (Status::Waiting | Status::Elsewhere, TaskState::Blocked) => {
                    self.status[i] = Status::Blocked;
                    self.tasks[i].state = TaskState::Blocked;
                    self.ready.remove(&i);
                }
                _ => {}
            }
        }
        if failed {
            if self.execution.options.helper {
                self.leaving = true;
            } else {
                self.reblock().await?;
            }
        }
        Ok(())
    }

    /// Task `i` was recorded complete by another node: done here, without an event of ours.
    fn done_elsewhere(&mut self, i: usize) {
        self.status[i] = Status::Done;
        self.tasks[i].state = TaskState::Complete;
        self.ready.remove(&i);
        for &dependent in &self.dependents[i] {
            self.waiting_on[dependent] = self.waiting_on[dependent].saturating_sub(1);
            if self.waiting_on[dependent] == 0 && self.status[dependent] == Status::Waiting {
                self.ready.insert(dependent);
            }
        }
    }

    /// What becomes of a task someone else holds now: followed when the run is shared, else
    /// interrupted (the run was taken over).
    fn lost(&self) -> Status {
        if self.execution.options.shared.is_some() {
            Status::Elsewhere
        } else {
            Status::Interrupted
        }
    }

    /// Picks the tasks to start now from `ready`, in task order, within `--jobs` and each
    /// phase's `concurrency`, counting them in `counted`.
    fn select(&self, counted: &mut HashMap<PhaseId, u32>) -> Vec<usize> {
        let busy = self.join_set.len();
        let mut chosen = Vec::new();
        // A helper starts at a random place among the ready tasks, so that the nodes sharing a
        // run do not all reach for the same next task (the owner keeps the run's order).
        let skip = if self.execution.options.helper && !self.ready.is_empty() {
            fastrand::usize(..self.ready.len())
        } else {
            0
        };
        let order = self
            .ready
            .iter()
            .skip(skip)
            .chain(self.ready.iter().take(skip));
        for &i in order {
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

    /// Starts task `i`, under `claim` when the scheduler already won it.
    fn spawn(&mut self, i: usize, claim: Option<Claim>) {
        self.ready.remove(&i);
        self.status[i] = Status::Running;
        let task = self.tasks[i].clone();
        let execution = Arc::clone(&self.execution);
        self.join_set
            .spawn(async move { (i, execution.run_task(&task, claim).await) });
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
                self.status[i] = Status::Failed;
                self.tasks[i].state = TaskState::Failed;
                if self.execution.options.helper {
                    // The owner re-plans the run around the failure.
                    self.leaving = true;
                } else {
                    self.reblock().await?;
                }
            }
            TaskResult::Cancelled => self.status[i] = Status::Interrupted,
            TaskResult::Fenced => self.status[i] = self.lost(),
        }
        Ok(())
    }

    /// Task `i`'s gate passed under `epoch`: record its completion, in one transaction with
    /// the claims of the tasks that start next (one commit per task instead of two, and a
    /// dependent is never claimed without the completion it needs).
    async fn passed(
        &mut self,
        i: usize,
        epoch: i64,
        counts: serde_json::Value,
        elapsed: Duration,
    ) -> Result<(), ExecError> {
        // The tasks this completion makes ready, tentatively ready while the scheduler picks
        // the tasks to start now.
        let newly_ready: Vec<usize> = self.dependents[i]
            .iter()
            .copied()
            .filter(|&d| self.waiting_on[d] == 1 && self.status[d] == Status::Waiting)
            .collect();
        self.ready.extend(newly_ready.iter().copied());
        let mut counted = self.running_per_phase.clone();
        let next = if self.execution.cancel.is_cancelled() {
            Vec::new()
        } else {
            self.select(&mut counted)
        };
        // In phase order: on PostgreSQL each claim takes its phase's lock, and two completions
        // taking them in one order cannot deadlock.
        let mut next = next;
        next.sort_by_key(|&n| (self.tasks[n].phase, n));
        let claimed: Vec<(i64, i64)> = next
            .iter()
            .map(|&n| (self.tasks[n].id, self.tasks[n].epoch))
            .collect();
        let Execution {
            store,
            options,
            context,
            ..
        } = self.execution.as_ref();
        // Shared with other nodes: each claim counts its phase's running tasks on every node,
        // under a lock per run and phase held to the commit. The first claim in the completed
        // task's own phase is exempt: the completion frees the slot it takes, in the same
        // transaction, so the phase's count cannot grow (and that lock, the one every node's
        // claims of the phase queue on, is not taken).
        let limits: Vec<Option<u32>> = if options.shared.is_some() {
            let mut swapped = false;
            next.iter()
                .map(|&n| {
                    if !swapped && self.tasks[n].phase == self.tasks[i].phase {
                        swapped = true;
                        return None;
                    }
                    context
                        .spec
                        .phase(self.tasks[n].phase)
                        .map(|phase| phase.concurrency)
                })
                .collect()
        } else {
            Vec::new()
        };
        let next_claims = NextClaims {
            tasks: &claimed,
            limits: &limits,
            owner: &options.owner,
            ttl: options.lease_ttl,
        };
        let id = self.tasks[i].id;
        let recorded = patiently(options.store_outage, "complete", || {
            store.complete_then_claim(id, epoch, &counts, &options.source, &next_claims)
        })
        .await?;
        let Some(claims) = recorded else {
            // Fenced: someone else holds the task now, and its dependents wait.
            self.status[i] = self.lost();
            for dependent in &newly_ready {
                self.ready.remove(dependent);
            }
            return Ok(());
        };
        self.completed(i, elapsed);
        self.running_per_phase = counted;
        for (n, claim) in next.into_iter().zip(claims) {
            self.spawn(n, claim);
        }
        Ok(())
    }

    /// Blocks exactly the waiting cells that need a cell of a failed or blocked task (same
    /// date, lookback windows, self-dependency, transitively) and nothing else: a waiting task
    /// whose dates are partly blocked is split in the store into pieces of consecutive dates,
    /// runnable or blocked ([`gapless_core::reblock`]), and its runnable pieces still run. The
    /// task graph is then rebuilt from the new task list.
    async fn reblock(&mut self) -> Result<(), ExecError> {
        let run_tasks: Vec<RunTask> = self
            .tasks
            .iter()
            .zip(&self.status)
            .map(|(task, status)| RunTask {
                phase: task.phase,
                range: task.range,
                dates: task.dates.clone(),
                status: match status {
                    Status::Waiting => TaskStatus::Pending,
                    // An interrupted task's cells may still become complete (resume): it
                    // blocks nothing, like a running one.
                    Status::Running | Status::Interrupted | Status::Elsewhere => {
                        TaskStatus::Running
                    }
                    Status::Done => TaskStatus::Complete,
                    Status::Failed => TaskStatus::Failed,
                    Status::Blocked => TaskStatus::Blocked,
                },
            })
            .collect();
        let replanned =
            reblock(&self.execution.context.spec, &run_tasks, &[]).map_err(ExecError::Reblock)?;
        if replanned.splits.is_empty() {
            return Ok(());
        }
        let execution = Arc::clone(&self.execution);
        let Execution {
            store,
            run_id,
            observer,
            options,
            ..
        } = execution.as_ref();
        let limit = options.store_outage;
        let mut blocked: Vec<(usize, CellRef)> = Vec::new();
        for split in &replanned.splits {
            let old = self.tasks[split.task].clone();
            if let [only] = split.pieces.as_slice() {
                // Every date blocked: the task stays whole.
                let root = only.root.unwrap_or(CellRef {
                    phase: old.phase,
                    date: old.range.start(),
                });
                let reason = blocked_reason(root);
                let ids = [old.id];
                patiently(limit, "block", || store.block(run_id, &ids, &reason)).await?;
                self.status[split.task] = Status::Blocked;
                self.tasks[split.task].state = TaskState::Blocked;
                blocked.push((split.task, root));
                continue;
            }
            let pieces: Vec<NewTask> = split
                .pieces
                .iter()
                .map(|piece| NewTask {
                    phase: i64::from(old.phase.0),
                    start: piece.range.start(),
                    end: piece.range.end(),
                    dates: piece.dates.clone(),
                    state: if piece.status == TaskStatus::Blocked {
                        NewTaskState::Blocked
                    } else {
                        NewTaskState::Pending
                    },
                    error: piece.root.map(blocked_reason),
                })
                .collect();
            let ids = patiently(limit, "split", || {
                store.split_task(run_id, old.id, old.epoch, &pieces)
            })
            .await?;
            for (k, piece) in split.pieces.iter().enumerate() {
                let replaced = match &ids {
                    Some(ids) => {
                        let id = ids[k];
                        let epoch = patiently(limit, "read task", || store.task(id))
                            .await?
                            .map_or(old.epoch, |record| record.lease_epoch);
                        let blocked_piece = piece.status == TaskStatus::Blocked;
                        if let (true, Some(root)) = (blocked_piece, piece.root) {
                            blocked.push((piece.index, root));
                        }
                        (
                            ExecTask {
                                id,
                                phase: old.phase,
                                range: piece.range,
                                dates: piece.dates.clone(),
                                deps: Vec::new(),
                                epoch,
                                state: if blocked_piece {
                                    TaskState::Blocked
                                } else {
                                    TaskState::Pending
                                },
                            },
                            if blocked_piece {
                                Status::Blocked
                            } else {
                                Status::Waiting
                            },
                        )
                    }
                    // The task changed under us (another process took the run over): leave
                    // it, and its pieces, to whoever holds it now.
                    None => (
                        ExecTask {
                            range: piece.range,
                            dates: piece.dates.clone(),
                            ..old.clone()
                        },
                        Status::Interrupted,
                    ),
                };
                if piece.index < self.tasks.len() {
                    self.tasks[piece.index] = replaced.0;
                    self.status[piece.index] = replaced.1;
                } else {
                    self.tasks.push(replaced.0);
                    self.status.push(replaced.1);
                }
            }
        }
        for (task, deps) in self.tasks.iter_mut().zip(replanned.deps) {
            task.deps = deps;
        }
        self.rebuild_graph();
        for (i, root) in blocked {
            observer.event(Event::Blocked {
                task: &self.tasks[i],
                root,
            });
        }
        Ok(())
    }

    /// Dependents, counts of needs not done and the ready set, from the tasks' `deps`.
    fn rebuild_graph(&mut self) {
        let n = self.tasks.len();
        self.dependents = vec![Vec::new(); n];
        self.waiting_on = vec![0; n];
        for (i, task) in self.tasks.iter().enumerate() {
            for &dep in &task.deps {
                self.dependents[dep].push(i);
                if self.status[dep] != Status::Done {
                    self.waiting_on[i] += 1;
                }
            }
        }
        let (status, waiting_on) = (&self.status, &self.waiting_on);
        self.ready = (0..n)
            .filter(|&i| status[i] == Status::Waiting && waiting_on[i] == 0)
            .collect();
    }
}

/// The error recorded on a blocked task.
fn blocked_reason(root: CellRef) -> String {
    format!("phase {} {} did not complete", root.phase, root.date)
}
