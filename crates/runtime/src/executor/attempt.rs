//! One task's attempts: claim, runner under a heartbeat, gate, retry with backoff, rollback,
//! and the compare-and-set that records the task failed.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use gapless_connect::{CommandSpec, HttpSpec, RunError, ScriptParams};
use gapless_core::dates::Date;
use gapless_core::spec::{Phase, Rollback, Runner};
use gapless_core::template::{Values, substitute};
use gapless_store::{Claim, RunId, StoreError, TaskState};
use tokio_util::sync::CancellationToken;

use super::crash::CrashPoint;
use super::gate::{gate, judge, transactional_probes};
use super::{Event, ExecTask, Execution, patiently};
use crate::observe;
use crate::preflight::error_chain;

/// How one task's attempts ended.
pub(super) enum TaskResult {
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

/// Why one attempt did not produce complete cells.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
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
    #[error(
        "the state store did not answer for {}: the runner was stopped before its lease could expire",
        gapless_core::dates::format_duration(*.0)
    )]
    StoreUnreachable(Duration),
}

impl AttemptError {
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Run(error) => error.is_retryable(),
            AttemptError::Sql(_)
            | AttemptError::Timeout(_)
            | AttemptError::Gate(_)
            | AttemptError::Probe(_)
            | AttemptError::StoreUnreachable(_) => true,
            AttemptError::NoRunner => false,
        }
    }
}

impl Execution {
    /// Runs a task's attempts until its gate passes or it fails for good. `claim`: the claim
    /// the scheduler already won for it, in the transaction of a completion before.
    pub(super) async fn run_task(
        &self,
        task: &ExecTask,
        mut claimed: Option<Claim>,
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
        // The stored attempt count is the task's whole history (a resume after a fix retries a
        // failed task); the phase's `retries` apply to each execution afresh.
        let mut first_attempt = None;
        loop {
            let claim = match claimed.take() {
                Some(claim) => Some((claim, false)),
                None => self.claim(task, seen_epoch).await?,
            };
            let Some((claim, waited)) = claim else {
                return Ok(if cancel.is_cancelled() {
                    TaskResult::Cancelled
                } else {
                    TaskResult::Fenced
                });
            };
            self.crash(CrashPoint::AfterClaim);
            if waited {
                // Another run held some of these cells: what it made complete is not run again.
                let started = Instant::now();
                if let Ok(counts) = gate(context, task, phase).await {
                    return Ok(TaskResult::Passed {
                        epoch: claim.epoch,
                        counts,
                        elapsed: started.elapsed(),
                    });
                }
            }
            if matches!(phase.run, Some(Runner::Http(_))) {
                // The request leaves this machine and may outlive it: its claim (the fencing
                // token it carries) must survive a power loss, or a resumed run could hand the
                // same token to a second attempt.
                patiently(options.store_outage, "flush", || store.flush()).await?;
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
            let result = match self
                .with_heartbeat(task.id, claim.epoch, &child_cancel, attempt)
                .await?
            {
                Beat::Done(result) => result,
                Beat::Lost => return Ok(TaskResult::Fenced),
                Beat::Lapsed(unanswered) => Err(AttemptError::StoreUnreachable(unanswered)),
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
                    patiently(options.store_outage, "release", || {
                        store.release_for_retry(task.id, claim.epoch, "interrupted", Duration::ZERO)
                    })
                    .await?;
                    return Ok(TaskResult::Cancelled);
                }
                Err(error) => {
                    let message = error_chain(&error);
                    let first = *first_attempt.get_or_insert(claim.attempt);
                    let attempts_here = claim.attempt.saturating_sub(first).saturating_add(1);
                    if error.is_retryable() && attempts_here < max_attempts {
                        let delay = options
                            .backoff
                            .delay(u32::try_from(attempts_here).unwrap_or(1), fastrand::f64());
                        if !patiently(options.store_outage, "release", || {
                            store.release_for_retry(task.id, claim.epoch, &message, delay)
                        })
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
                    if !patiently(options.store_outage, "fail", || {
                        store.fail(task.id, claim.epoch, &message)
                    })
                    .await?
                    {
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
    /// same epoch) waits for `not_before` and tries again. It also refuses a claim while a task
    /// of another run runs one of its cells (SPEC.md, Semantics 9): then it waits for that
    /// run's task to end, and says so with `true`, so that the caller re-probes the cells before
    /// running anything. `None`: someone else holds the task.
    async fn claim(
        &self,
        task: &ExecTask,
        seen_epoch: i64,
    ) -> Result<Option<(Claim, bool)>, StoreError> {
        let Execution {
            store,
            options,
            cancel,
            observer,
            ..
        } = self;
        let limit = options.store_outage;
        let mut waited = false;
        let mut unexplained = 0;
        let mut told: Option<RunId> = None;
        while unexplained < 1_000 {
            // Shared with other nodes: the phase's `concurrency` is counted over all of them.
            let within = options
                .shared
                .and_then(|_| self.context.spec.phase(task.phase))
                .map(|phase| phase.concurrency);
            if let Some(claim) = patiently(limit, "claim", || {
                store.claim_within(
                    task.id,
                    seen_epoch,
                    &options.owner,
                    options.lease_ttl,
                    within,
                )
            })
            .await?
            {
                return Ok(Some((claim, waited)));
            }
            let Some(record) = patiently(limit, "read task", || store.task(task.id)).await? else {
                return Ok(None);
            };
            if record.state != TaskState::Pending || record.lease_epoch != seen_epoch {
                return Ok(None);
            }
            let backoff = record
                .not_before
                .map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default())
                .unwrap_or_default();
            let holders = if backoff.is_zero() {
                patiently(limit, "read holders", || store.cell_holders(task.id)).await?
            } else {
                Vec::new()
            };
            let wait = match holders.iter().min_by_key(|holder| holder.expires_at) {
                Some(holder) => {
                    waited = true;
                    if told.as_ref() != Some(&holder.run_id) {
                        observer.event(Event::Waiting {
                            task,
                            holder: &holder.run_id,
                        });
                        told = Some(holder.run_id.clone());
                    }
                    // Until the holder ends or its lease would run out, polled at least
                    // every second.
                    (holder.expires_at - chrono::Utc::now())
                        .to_std()
                        .unwrap_or_default()
                        .clamp(Duration::from_millis(50), Duration::from_secs(1))
                }
                // Shared: the phase runs as many tasks as it may on other nodes; the
                // scheduler offers this one again when it follows their progress.
                None if backoff.is_zero() && options.shared.is_some() => return Ok(None),
                None => {
                    unexplained += 1;
                    backoff.max(Duration::from_millis(5))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Runs `work` while renewing the lease every third of its length.
    ///
    /// While the state store does not answer, renewals are tried again every second, and the
    /// work goes on as long as the lease it holds is safely unexpired; once it could expire
    /// (five sixths of its length after the last renewal), the work is cancelled, its runner
    /// killed, so that no one who takes the task over after the lease expired runs beside it
    /// (RELIABILITY.md 2.2).
    async fn with_heartbeat<T>(
        &self,
        task_id: i64,
        epoch: i64,
        cancel: &CancellationToken,
        work: impl Future<Output = T>,
    ) -> Result<Beat<T>, StoreError> {
        let ttl = self.options.lease_ttl;
        let store = &self.store;
        let period = ttl / 3;
        // The lease runs from the moment its last renewal was sent; the work must be stopped
        // by five sixths of it, whatever the store does meanwhile.
        let mut renewed = tokio::time::Instant::now();
        let stop_by = |renewed: tokio::time::Instant| renewed + (ttl - ttl / 6);
        // The first renewal is one period away. (`interval`'s immediate first tick still goes
        // through the timer wheel, which costs up to a millisecond per task.)
        let mut next = renewed + period;
        tokio::pin!(work);
        loop {
            tokio::select! {
                // Work first: an attempt that finishes in its first poll (inline SQL) never
                // registers the heartbeat's timer.
                biased;
                result = &mut work => return Ok(Beat::Done(result)),
                () = tokio::time::sleep_until(next) => {
                    let sent = tokio::time::Instant::now();
                    // A call that hangs (a dead TCP peer) is given up at the deadline.
                    let left = stop_by(renewed).saturating_duration_since(sent);
                    let renewal = tokio::time::timeout(
                        left.max(Duration::from_millis(1)),
                        store.heartbeat(task_id, epoch, ttl),
                    )
                    .await;
                    let failure = match renewal {
                        Ok(Ok(true)) => {
                            renewed = sent;
                            next = renewed + period;
                            continue;
                        }
                        Ok(Ok(false)) => {
                            cancel.cancel();
                            return Ok(Beat::Lost);
                        }
                        Ok(Err(error)) if error.is_retryable() => error.to_string(),
                        Ok(Err(error)) => return Err(error),
                        Err(_elapsed) => "the state store did not answer in time".to_owned(),
                    };
                    let now = tokio::time::Instant::now();
                    if now >= stop_by(renewed) {
                        let unanswered = now - renewed;
                        tracing::warn!(task_id, error = %failure, ?unanswered, "the lease could not be renewed before it expires: stopping the runner");
                        cancel.cancel();
                        // Let the work see the cancellation and clean up (its process
                        // group is killed) before the attempt is recorded.
                        let _cancelled = (&mut work).await;
                        return Ok(Beat::Lapsed(unanswered));
                    }
                    tracing::warn!(task_id, error = %failure, "cannot renew the lease; trying again");
                    next = (now + RENEW_RETRY.min(period)).min(stop_by(renewed));
                }
            }
        }
    }
}

/// How often a renewal is tried again while the state store does not answer.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// How work under a heartbeat ended.
enum Beat<T> {
    /// It finished under its lease.
    Done(T),
    /// The lease was taken over: the work was cancelled.
    Lost,
    /// The state store did not answer for this long, and the lease could have expired: the
    /// work was cancelled.
    Lapsed(Duration),
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
        claim: Claim,
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
                // The runner's process group is recorded with the task as soon as it starts,
                // so that whoever resumes the run after this process died makes sure the
                // group is gone before running these cells again.
                let (started, mut told) = tokio::sync::mpsc::unbounded_channel();
                let options = gapless_connect::RunOptions {
                    started: Some(started),
                    ..gapless_connect::RunOptions::default()
                };
                let record = async {
                    if let Some(runner) = told.recv().await {
                        let recorded = self
                            .store
                            .record_runner(
                                task.id,
                                epoch,
                                &self.options.runner_host,
                                i64::from(runner.process_group),
                            )
                            .await;
                        if let Err(error) = recorded {
                            tracing::warn!(task = task.id, %error, "cannot record the runner's process group");
                        }
                    }
                };
                let (ran, ()) =
                    tokio::join!(gapless_connect::run_command_with(&spec, &options), record);
                ran?;
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

    pub(super) fn crash(&self, point: CrashPoint) {
        if let Some(crash_at) = &self.options.crash_at {
            crash_at.reached(point);
        }
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
