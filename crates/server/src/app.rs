//! What every part of `serve` shares: the pipeline, the state store, the clock, and the runs it
//! executes.

use std::sync::Arc;
use std::time::Duration;

use gapless_core::dates::DateTime;
use gapless_core::spec::Spec;
use gapless_runtime::context::Context;
use gapless_runtime::executor::{self, Event, Observer};
use gapless_runtime::lifecycle::{self, LifecycleError, RunOptions};
use gapless_runtime::owner::Owner;
use gapless_store::{Fence, RunId, RunKind, RunRecord, RunState, Store};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The moment cells are classified at (`GAPLESS_NOW` in tests, else the wall clock).
pub type Clock = Arc<dyn Fn() -> DateTime + Send + Sync>;

/// How `serve` executes runs.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Tasks at once per run, and runs the trigger executes at once.
    pub jobs: usize,
    /// `[state] outage`.
    pub store_outage: Duration,
    /// How long the trigger waits after an event for more to arrive, so that a burst for
    /// neighbouring dates becomes one batch.
    pub coalesce: Duration,
    /// How often the trigger looks at the event log when nothing woke it: events written by
    /// other processes (a `gapless backfill` on the same state store) are seen this late.
    pub poll: Duration,
    /// The length of this node's leases: its registration, the leader lease and its tasks'
    /// leases, each renewed every third of it. A dead node's work is taken back, and a new
    /// leader elected, within about this long (at once for a node of the same host).
    pub lease: Duration,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            jobs: 4,
            store_outage: gapless_core::spec::DEFAULT_STATE_OUTAGE,
            coalesce: Duration::from_millis(50),
            poll: Duration::from_millis(500),
            lease: Duration::from_secs(30),
        }
    }
}

/// The state of one `serve` process.
pub struct App {
    /// The validated pipeline.
    pub spec: Arc<Spec>,
    base: Context,
    /// The state store.
    pub store: Store,
    /// This process, as the owner of the runs it executes.
    pub owner: Owner,
    clock: Clock,
    /// Execution settings.
    pub options: AppOptions,
    /// Bumped whenever events are stored here (received, or completions of the runs this
    /// process executes), so the event log's readers (the trigger, the deliveries out) read
    /// them at once instead of at their next poll.
    wake: watch::Sender<u64>,
    /// The leader lease while this node holds it: what its fenced writes present.
    leader: watch::Sender<Option<Fence>>,
    /// The runs this node executes now, as owner or helper: never twice at once.
    engaged: std::sync::Mutex<std::collections::HashSet<RunId>>,
    /// Runs this node helps with at once (`jobs`).
    pub(crate) help_slots: Arc<Semaphore>,
    /// Bumped when work was added or given back (tasks requeued, a dead node reaped, a
    /// notification from another node), so that idle runners look for it at once.
    work: watch::Sender<u64>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    runs: TaskTracker,
    run_slots: Arc<Semaphore>,
    /// One scan-and-heal at a time: a second one waits, then finds the first's gaps
    /// `triggered` and leaves them to it.
    pub(crate) heal_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl App {
    /// `base` is a context built for the pipeline; its `now` and `today` are refreshed from
    /// `clock` for each use.
    pub fn new(
        base: Context,
        store: Store,
        owner: Owner,
        clock: Clock,
        options: AppOptions,
    ) -> Arc<Self> {
        let slots = options.jobs.max(1);
        Arc::new(Self {
            spec: Arc::clone(&base.spec),
            base,
            store,
            owner,
            clock,
            options,
            wake: watch::Sender::new(0),
            leader: watch::Sender::new(None),
            engaged: std::sync::Mutex::new(std::collections::HashSet::new()),
            help_slots: Arc::new(Semaphore::new(slots)),
            work: watch::Sender::new(0),
            metrics: crate::metrics::Metrics::default(),
            runs: TaskTracker::new(),
            run_slots: Arc::new(Semaphore::new(slots)),
            heal_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
        })
    }

    /// The context as of now.
    pub fn context(&self) -> Context {
        let now = (self.clock)();
        Context {
            now,
            today: now.date(),
            ..self.base.clone()
        }
    }

    /// Fires when `serve` is stopping.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for a slot to execute one more run: the trigger holds it from creating a run to
    /// its end, so that runs it cannot execute yet are not created (their cells stay free).
    pub async fn run_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            permit = Arc::clone(&self.run_slots).acquire_owned() => permit.ok(),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// Executes run `run_id` (already created, owned by this process) in the background.
    /// `permit`, when given, is held until it ends.
    pub fn execute(
        self: &Arc<Self>,
        run_id: RunId,
        kind: RunKind,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let app = Arc::clone(self);
        let engaged = self.engage(&run_id);
        self.runs.spawn(async move {
            let _permit = permit;
            let _engaged = engaged;
            match app.execute_now(&run_id, source_of(kind)).await {
                // Left to another node (`running`): that node records the heal.
                Ok(state) if kind == RunKind::Heal && state != RunState::Running => {
                    match gapless_runtime::heal::finish_heal(&app.store, &run_id).await {
                        Ok((healed, failed)) => {
                            app.metrics.heals("healed", healed as u64);
                            app.metrics.heals("failed", failed as u64);
                            tracing::info!(run = %run_id, healed, failed, "heal run recorded");
                        }
                        Err(error) => {
                            tracing::error!(run = %run_id, error = %error_chain(&error), "cannot record the heal");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(run = %run_id, error = %error_chain(&error), "run failed to execute");
                }
            }
            app.wake();
        });
    }

    /// How runs execute on this node: shared with the others on PostgreSQL.
    pub(crate) fn run_options(&self, source: &str) -> RunOptions {
        RunOptions {
            jobs: self.options.jobs,
            source: source.to_owned(),
            store_outage: self.options.store_outage,
            lease_ttl: self.options.lease,
            shared: self.shared().then_some(FOLLOW),
            ..RunOptions::default()
        }
    }

    /// Marks run `run_id` executed here until the guard is dropped; `None` when it already is.
    pub(crate) fn engage(self: &Arc<Self>, run_id: &RunId) -> Option<Engaged> {
        let mut engaged = self
            .engaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        engaged.insert(run_id.clone()).then(|| Engaged {
            app: Arc::clone(self),
            run_id: run_id.clone(),
        })
    }

    /// Whether this node executes run `run_id` now.
    pub(crate) fn is_engaged(&self, run_id: &RunId) -> bool {
        self.engaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(run_id)
    }

    pub(crate) fn runs_tracker(&self) -> &TaskTracker {
        &self.runs
    }

    pub(crate) fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(WakeOnCompletion(self.wake.clone(), self.metrics.clone()))
    }

    async fn execute_now(&self, run_id: &RunId, source: &str) -> Result<RunState, LifecycleError> {
        let context = Arc::new(self.context());
        let tasks = executor::load_tasks(&self.store, &self.spec, run_id).await?;
        let options = self.run_options(source);
        let finished = lifecycle::execute_run(
            context,
            &self.store,
            run_id,
            &self.owner,
            tasks,
            &options,
            self.observer(),
            self.shutdown.child_token(),
        )
        .await?;
        tracing::info!(
            run = %run_id,
            state = %finished.state.as_str(),
            cells = finished.cells,
            elapsed_ms = finished.elapsed.as_millis() as u64,
            "run ended"
        );
        Ok(finished.state)
    }

    /// Resumes the runs `serve` is responsible for that a previous `serve` left unfinished
    /// (stopped by SIGTERM, or killed): trigger and heal runs, and backfills started through
    /// the API. Returns how many it resumed. A run whose owner is alive is left to it.
    pub async fn resume_unfinished(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut resumed = 0;
        let now = chrono::Utc::now();
        for run in self.store.list_runs(1_000).await? {
            if !self.is_ours_to_resume(&run) || self.is_engaged(&run.id) {
                continue;
            }
            // A live owner keeps its run (checked again, under a lock, by the take-over).
            if run
                .owner
                .as_ref()
                .is_some_and(|owner| owner.expires_at >= now && !self.owner.sees_dead(owner))
            {
                continue;
            }
            let context = self.context();
            let shared = self.shared();
            match lifecycle::prepare_resume_with(&context, &self.store, &run, &self.owner, shared)
                .await
            {
                Ok(_) => {
                    if !self
                        .store
                        .set_run_state(&run.id, run.version, RunState::Running)
                        .await?
                        && self.ended_meanwhile(&run.id).await?
                    {
                        continue;
                    }
                    tracing::info!(run = %run.id, kind = %run.kind.as_str(), "resuming");
                    self.execute(run.id.clone(), run.kind, None);
                    resumed += 1;
                }
                Err(LifecycleError::Owned { .. }) => {}
                Err(error) => {
                    tracing::warn!(run = %run.id, error = %error_chain(&error), "cannot resume");
                }
            }
        }
        Ok(resumed)
    }

    /// Whether run `run_id`, found changed while this node was about to resume it, has ended
    /// (its owner finished it and died before recording its heal, or it was cancelled): then
    /// its heal is recorded here, and it is not resumed.
    async fn ended_meanwhile(&self, run_id: &RunId) -> Result<bool, gapless_store::StoreError> {
        let Some(run) = self.store.run(run_id).await? else {
            return Ok(true);
        };
        if run.state == RunState::Running {
            return Ok(false);
        }
        if let Some((healed, failed)) =
            gapless_runtime::heal::record_if_ended(&self.store, run_id).await?
        {
            self.metrics.heals("healed", healed as u64);
            self.metrics.heals("failed", failed as u64);
            tracing::info!(run = %run_id, healed, failed, "heal run recorded");
        }
        Ok(true)
    }

    fn is_ours_to_resume(&self, run: &RunRecord) -> bool {
        let unfinished = matches!(run.state, RunState::Running | RunState::Interrupted);
        let ours = match run.kind {
            RunKind::Trigger | RunKind::Heal => true,
            RunKind::Backfill => run.request.get("via").and_then(|via| via.as_str()) == Some("api"),
        };
        unfinished && ours && run.pipeline == self.spec.name
    }

    /// Stops every run (their tasks are recorded interrupted, to be resumed on the next start)
    /// and waits for them to record it.
    pub async fn stop_runs(&self) {
        self.shutdown.cancel();
        self.runs.close();
        self.runs.wait().await;
    }

    /// Whether the state store is shared by several nodes (PostgreSQL): then runs' tasks are
    /// claimed by whichever node has room, and expired task leases are given back by any node.
    pub fn shared(&self) -> bool {
        matches!(self.store, Store::Postgres(_))
    }

    /// What the leader's writes present, under the leader lease `fence`: the fence itself on a
    /// shared store, where another node may lead by the time a paused one writes; nothing on
    /// SQLite, which one node uses alone.
    pub fn leader_writes<'f>(&self, fence: &'f Fence) -> Option<&'f Fence> {
        self.shared().then_some(fence)
    }

    /// The leader lease, while this node holds it.
    pub fn fence(&self) -> Option<Fence> {
        self.leader.borrow().clone()
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.borrow().is_some()
    }

    pub(crate) fn set_leader(&self, fence: Option<Fence>) {
        self.leader.send_if_modified(|held| {
            let changed = *held != fence;
            *held = fence;
            changed
        });
    }

    /// Waits until this node leads, and returns its lease; `None` when `serve` stops first.
    pub async fn until_leader(&self) -> Option<Fence> {
        let mut leading = self.leader.subscribe();
        tokio::select! {
            held = leading.wait_for(Option::is_some) => held.ok().and_then(|held| held.clone()),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// Fires when this node stops leading (or `serve` stops).
    pub async fn leadership_lost(&self) {
        let mut leading = self.leader.subscribe();
        tokio::select! {
            _ = leading.wait_for(Option::is_none) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// Tells idle runners that work was added or given back.
    pub fn work_added(&self) {
        self.work
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver that sees every [`App::work_added`] after its creation.
    pub fn work_woken(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    /// Tells the event log's readers that there is more to read.
    pub fn wake(&self) {
        self.wake
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver that sees every [`App::wake`] after its creation.
    pub fn woken(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Records that `stored` events from `source` were stored, and wakes the trigger.
    pub fn stored(&self, source: &str, stored: u64) {
        self.metrics.events(source, stored);
        if stored > 0 {
            self.wake();
        }
    }
}

/// How often a node re-reads the tasks of a shared run it executes, to follow what the other
/// nodes claimed and completed (LISTEN/NOTIFY wakes it sooner when something changes).
const FOLLOW: Duration = Duration::from_millis(250);

/// A run this node executes, forgotten when dropped ([`App::engage`]).
pub(crate) struct Engaged {
    app: Arc<App>,
    run_id: RunId,
}

impl Drop for Engaged {
    fn drop(&mut self) {
        self.app
            .engaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.run_id);
    }
}

/// The open gaps of the ledger, as the dashboard and `/metrics` both show them.
pub(crate) struct OpenGaps {
    /// Open gaps by phase id (only phases that have some).
    pub(crate) by_phase: std::collections::BTreeMap<i64, usize>,
    /// Age of the oldest, in seconds: its age in days at the last scan, or the time since it
    /// was found if longer.
    pub(crate) oldest_seconds: Option<i64>,
}

impl App {
    /// The open gaps of the ledger, read once.
    pub(crate) async fn open_gaps(&self) -> Result<OpenGaps, gapless_store::StoreError> {
        let now = self.context().now.and_utc();
        let mut open = OpenGaps {
            by_phase: Default::default(),
            oldest_seconds: None,
        };
        for gap in self.store.gaps(gapless_store::GapFilter::Open).await? {
            *open.by_phase.entry(gap.phase_to).or_default() += 1;
            let age = gap
                .gap_age_days
                .saturating_mul(86_400)
                .max((now - gap.detected_at).num_seconds().max(0));
            open.oldest_seconds = Some(open.oldest_seconds.map_or(age, |o| o.max(age)));
        }
        Ok(open)
    }
}

/// Wakes the event log's readers whenever a task of a run this process executes completes:
/// its cells' completion events are committed by then.
/// It also times them for `gapless_task_duration_seconds`.
struct WakeOnCompletion(watch::Sender<u64>, crate::metrics::Metrics);

impl Observer for WakeOnCompletion {
    fn event(&self, event: Event<'_>) {
        if let Event::Completed { task, elapsed } = event {
            self.1.task(task.phase.0, elapsed.as_secs_f64());
            self.0.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

/// The event source recorded with a run's completions.
pub(crate) fn source_of(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Backfill => "backfill",
        RunKind::Heal => "heal",
        RunKind::Trigger => "trigger",
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
