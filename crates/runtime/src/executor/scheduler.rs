//! The scheduler: which tasks wait, run and are done; starts a task the moment everything it
//! needs is recorded complete, within `--jobs` and each phase's `concurrency`; records each
//! completion together with the claims of the tasks it lets start, and blocks what a failure
//! makes impossible.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gapless_core::spec::PhaseId;
use gapless_store::{Claim, NextClaims, StoreError, TaskState};
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
}

impl Scheduler {
    pub(super) fn new(execution: Arc<Execution>, tasks: Vec<ExecTask>) -> Self {
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
        }
    }

    pub(super) async fn run(&mut self) -> Result<Outcome, ExecError> {
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
                    self.spawn(i, None);
                }
            }
            if self.join_set.is_empty() {
                break;
            }
            tokio::select! {
                joined = self.join_set.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (i, result) = joined.map_err(ExecError::Panicked)?;
                    self.finished(i, result?).await?;
                }
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
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
                Status::Waiting | Status::Running | Status::Interrupted => {
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
        let claimed: Vec<(i64, i64)> = next
            .iter()
            .map(|&n| (self.tasks[n].id, self.tasks[n].epoch))
            .collect();
        let Execution { store, options, .. } = self.execution.as_ref();
        let next_claims = NextClaims {
            tasks: &claimed,
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
            self.status[i] = Status::Interrupted;
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

    /// Marks every task downstream of `failed` blocked, in the store and in `status`.
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
        let Execution {
            store,
            run_id,
            observer,
            options,
            ..
        } = self.execution.as_ref();
        let ids: Vec<i64> = newly.iter().map(|&i| self.tasks[i].id).collect();
        let reason = format!("{} did not complete", self.tasks[failed].label());
        patiently(options.store_outage, "block", || {
            store.block(run_id, &ids, &reason)
        })
        .await?;
        for i in newly {
            observer.event(Event::Blocked {
                task: &self.tasks[i],
                because: &self.tasks[failed],
            });
        }
        Ok(())
    }
}
