//! Plain data types of the store: ids, states, inputs and records.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Identifier of a run: a UTC timestamp prefix and a random suffix, e.g.
/// `20261127T022400-4f2a9c`, so ids sort roughly by creation time and are safe in paths, URLs and
/// argv (`[A-Za-z0-9_.-]{1,64}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Validates a run id given by a user (CLI argument, URL path).
    pub fn parse(value: &str) -> Result<Self, InvalidRunId> {
        let valid = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            // Keep hostile input short in error messages; `Display` escapes it.
            Err(InvalidRunId {
                value: value.chars().take(Self::MAX_LEN + 1).collect(),
            })
        }
    }

    /// A fresh id for a run created at `now`. 24 random bits keep ids created in the same
    /// second apart; the runs table's primary key catches the improbable collision.
    pub(crate) fn generate(now: DateTime<Utc>) -> Self {
        Self(format!(
            "{}-{:06x}",
            now.format("%Y%m%dT%H%M%S"),
            fastrand::u32(..1 << 24)
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = InvalidRunId;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl TryFrom<String> for RunId {
    type Error = InvalidRunId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.0
    }
}

/// A string that is not a valid [`RunId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run id {value:?}: expected 1 to 64 characters from `A-Z a-z 0-9 _ . -`")]
pub struct InvalidRunId {
    /// The rejected input (truncated).
    pub value: String,
}

/// Defines a state enum stored as lowercase text, with `as_str`, `Display` and `FromStr`.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownState { value: value.to_owned() }),
                }
            }
        }
    };
}

/// Text that names none of an enum's states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {value:?}")]
pub struct UnknownState {
    /// The rejected text.
    pub value: String,
}

text_enum! {
    /// What started a run.
    RunKind {
        /// A user-requested backfill (`gapless backfill`, `POST /backfills`).
        Backfill = "backfill",
        /// Healing of detected gaps (`gapless heal`, the scheduler).
        Heal = "heal",
        /// Downstream cells an event made runnable (`gapless serve`'s trigger).
        Trigger = "trigger",
    }
}

text_enum! {
    /// Lifecycle of a run.
    RunState {
        /// Being executed (or crashed while executing: `resume` decides).
        Running = "running",
        /// Every cell ended complete.
        Succeeded = "succeeded",
        /// Finished with failed or blocked cells.
        Failed = "failed",
        /// Stopped by Ctrl-C or a signal; resumable.
        Interrupted = "interrupted",
        /// Cancelled by a user; not resumed.
        Cancelled = "cancelled",
    }
}

impl RunState {
    /// Whether the run has stopped (everything but `running`).
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

text_enum! {
    /// Lifecycle of a task.
    TaskState {
        /// Waiting to be claimed (possibly not before `not_before`).
        Pending = "pending",
        /// Claimed under a lease.
        Running = "running",
        /// Its runner succeeded and its cells validated.
        Complete = "complete",
        /// Gave up after its retries.
        Failed = "failed",
        /// Waiting on upstream cells that are not complete.
        Blocked = "blocked",
    }
}

text_enum! {
    /// The two states a task may be created in.
    NewTaskState {
        /// Ready to run once claimed.
        Pending = "pending",
        /// Its upstream is missing; `unblock` releases it.
        Blocked = "blocked",
    }
}

text_enum! {
    /// State of one (run, phase, date) cell. A cell is `pending` while its task is pending or
    /// running.
    CellState {
        /// Not yet complete.
        Pending = "pending",
        /// Recorded complete (exactly once).
        Complete = "complete",
        /// Its task failed.
        Failed = "failed",
        /// Its task is blocked.
        Blocked = "blocked",
    }
}

/// A run to create, with its whole plan.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// What started it.
    pub kind: RunKind,
    /// Pipeline name, from `gapless.toml`.
    pub pipeline: String,
    /// The request as given (dates, phases, flags), kept for `runs show` and resume.
    pub request: serde_json::Value,
    /// Its tasks.
    pub tasks: Vec<NewTask>,
}

/// A task to create: one invocation of a phase's runner over `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// Phase id.
    pub phase: i64,
    /// First date.
    pub start: NaiveDate,
    /// Last date (inclusive).
    pub end: NaiveDate,
    /// The cells it covers: the calendar dates within `start..=end` (not necessarily every day).
    /// Must be non-empty, inside the range, and each date may appear once per phase and run.
    pub dates: Vec<NaiveDate>,
    /// Initial state; a blocked task's cells start blocked.
    pub state: NewTaskState,
    /// Why it is blocked, if it is.
    pub error: Option<String>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Id.
    pub id: RunId,
    /// What started it.
    pub kind: RunKind,
    /// Pipeline name.
    pub pipeline: String,
    /// The request as given.
    pub request: serde_json::Value,
    /// Current state.
    pub state: RunState,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last state change.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Compare-and-set version, bumped by every state change.
    pub version: i64,
    /// The process executing it, while one holds its lease ([`crate::Store::acquire_run`]).
    pub owner: Option<RunOwnerRecord>,
}

/// A process that executes a run: who asks for a run's ownership ([`crate::Store::acquire_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOwner<'a> {
    /// Unique per process (e.g. host, pid and start time): take-over and renewal compare it.
    pub id: &'a str,
    /// The host the process runs on.
    pub host: &'a str,
    /// Its process id on that host.
    pub pid: i64,
}

/// Who creates a run, and under which guard ([`crate::Store::create_run_by`]).
#[derive(Debug, Clone, Copy)]
pub struct Creator<'a> {
    /// Owns the run from its first commit.
    pub owner: RunOwner<'a>,
    /// The length of the owner's lease on the run ([`crate::Store::acquire_run`]).
    pub ttl: std::time::Duration,
    /// The leader lease the run is created under, when creating it is the leader's work on a
    /// shared store (the trigger's runs, the scheduled heals): once the lease moved on,
    /// nothing is written and the call fails with [`crate::StoreError::Fenced`].
    pub fence: Option<&'a Fence>,
    /// Open gaps the run heals: marked `triggered` by it in the same transaction
    /// ([`crate::Store::trigger_gaps`]), so that a heal run never exists without its gaps
    /// pointing at it.
    pub heals: &'a [i64],
}

/// The recorded owner of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOwnerRecord {
    /// The owner's id.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its process id on that host.
    pub pid: i64,
    /// When its lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// The outcome of [`crate::Store::acquire_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The caller owns the run now, until its lease expires unless renewed.
    Acquired,
    /// Another owner's lease is live (and was not taken over): the caller must not execute it.
    HeldBy(RunOwnerRecord),
}

/// A live hold of another task on a cell that a task needs ([`crate::Store::cell_holders`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellHolder {
    /// Phase id.
    pub phase: i64,
    /// Partition date.
    pub date: NaiveDate,
    /// The run of the holding task.
    pub run_id: RunId,
    /// The holding task.
    pub task_id: i64,
    /// When the hold lapses unless its holder renews its lease.
    pub expires_at: DateTime<Utc>,
}

/// A task's recorded runner ([`crate::Store::recorded_runners`]): a process group that may still
/// be alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerRecord {
    /// The task.
    pub task_id: i64,
    /// The host the runner was started on.
    pub host: String,
    /// The runner's process group id on that host.
    pub pgid: i64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    /// Id, unique across runs.
    pub id: i64,
    /// Its run.
    pub run_id: RunId,
    /// Phase id.
    pub phase: i64,
    /// First date.
    pub start: NaiveDate,
    /// Last date (inclusive).
    pub end: NaiveDate,
    /// Current state.
    pub state: TaskState,
    /// Attempts claimed so far (1 during the first run).
    pub attempt: i32,
    /// Fencing token: pass it back to every transition; bumped whenever the lease changes hands.
    pub lease_epoch: i64,
    /// Who holds the lease (set while running).
    pub lease_owner: Option<String>,
    /// When the lease runs out unless renewed (set while running).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Earliest time of the next claim (retry backoff).
    pub not_before: Option<DateTime<Utc>>,
    /// When the latest attempt was claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Latest error or block reason.
    pub error: Option<String>,
    /// Counts reported on completion (the validation gate's numbers).
    pub counts: Option<serde_json::Value>,
    /// Host of the latest attempt's runner ([`crate::Store::record_runner`]), until the task
    /// completes, fails or is released; kept by a requeue, whose runner may still be alive.
    pub runner_host: Option<String>,
    /// That runner's process group id.
    pub runner_pgid: Option<i64>,
}

/// A lease won by [`crate::Store::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The new lease epoch: the fencing token for every later write of this attempt, and the
    /// runner's `GAPLESS_ATTEMPT_TOKEN`.
    pub epoch: i64,
    /// The attempt number, starting at 1.
    pub attempt: i32,
}

/// A (run, phase, date) cell as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellRecord {
    /// Its run.
    pub run_id: RunId,
    /// Phase id.
    pub phase: i64,
    /// Partition date.
    pub date: NaiveDate,
    /// The task that covers it.
    pub task_id: i64,
    /// Current state.
    pub state: CellState,
    /// When it was recorded complete.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Cell counts of one phase of a run. `running` counts pending cells whose task is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseProgress {
    /// Phase id.
    pub phase: i64,
    /// All cells of the phase in the run.
    pub total: i64,
    /// Waiting for their task to be claimed.
    pub pending: i64,
    /// Their task is running.
    pub running: i64,
    /// Recorded complete.
    pub complete: i64,
    /// Their task failed.
    pub failed: i64,
    /// Their task is blocked.
    pub blocked: i64,
}

/// An event to append: a cell changed state (SPEC "Events").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Phase id.
    pub phase: i64,
    /// Partition date.
    pub date: NaiveDate,
    /// The cell's new status, e.g. `complete`.
    pub status: String,
    /// Where it came from: `backfill`, `heal`, `http`, `pubsub`, `nats`, …
    pub source: String,
    /// The run that produced it, if any.
    pub run_id: Option<RunId>,
}

/// An event received from outside (HTTP, Pub/Sub push, NATS), to store once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    /// Phase id.
    pub phase: i64,
    /// Partition date.
    pub date: NaiveDate,
    /// The cell's new status, e.g. `complete`.
    pub status: String,
    /// `http`, `pubsub` or `nats`.
    pub source: String,
    /// A key that is the same on every delivery of this event (the sender's event id, Pub/Sub's
    /// `messageId`, NATS's `Nats-Msg-Id`): a second event with the same key is not stored.
    pub dedup_key: Option<String>,
}

/// What storing an [`IncomingEvent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored under this id.
    Stored(i64),
    /// An event with the same key was stored before: nothing changed.
    Duplicate,
}

/// An event received but not acted on (malformed, unknown phase), kept with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineRecord {
    /// Increasing id.
    pub id: i64,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// `http`, `pubsub` or `nats`.
    pub source: String,
    /// Its delivery key, if it had one.
    pub dedup_key: Option<String>,
    /// The bytes received (as text; invalid UTF-8 replaced).
    pub payload: String,
    /// Why it was not acted on.
    pub reason: String,
}

/// An alert message for one channel, in the alerts outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    /// Increasing id.
    pub id: i64,
    /// When the scan recorded it.
    pub created_at: DateTime<Utc>,
    /// The channel: `slack`, `webhook` or `email`.
    pub channel: String,
    /// The message as JSON.
    pub message: serde_json::Value,
    /// When the channel took it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Deliveries tried.
    pub attempts: i64,
    /// The latest failure.
    pub last_error: Option<String>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Increasing id: read the log with `events(after_id, limit)`.
    pub id: i64,
    /// Phase id.
    pub phase: i64,
    /// Partition date.
    pub date: NaiveDate,
    /// The cell's new status.
    pub status: String,
    /// Where it came from.
    pub source: String,
    /// The run that produced it, if any.
    pub run_id: Option<RunId>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

text_enum! {
    /// Where a gap of the ledger stands (SPEC.md, Semantics 6).
    GapStatus {
        /// Found, not acted on yet.
        Pending = "pending",
        /// A heal run was started for it.
        Triggered = "triggered",
        /// Its cell is complete: the gap is closed.
        Complete = "complete",
        /// Healing it failed.
        Failed = "failed",
        /// Left for a person (too old, or failed too often); an alert was sent.
        Alerted = "alerted",
    }
}

/// A gap found by a scan, to record in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedGap {
    /// The nearest phase the cell needs, if it needs another phase.
    pub phase_from: Option<i64>,
    /// The phase of the missing or short cell.
    pub phase_to: i64,
    /// Its date.
    pub date: NaiveDate,
    /// Whole days from the date to the scan's today.
    pub age_days: i64,
    /// Rows counted.
    pub found: i64,
    /// Rows expected.
    pub expected: i64,
}

/// A row of the gap ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapRecord {
    /// Row id.
    pub id: i64,
    /// When a scan first found it.
    pub detected_at: DateTime<Utc>,
    /// When a scan last found it.
    pub last_seen_at: DateTime<Utc>,
    /// The nearest phase the cell needs, if any.
    pub phase_from: Option<i64>,
    /// The phase of the cell.
    pub phase_to: i64,
    /// The cell's date.
    pub partition_date: NaiveDate,
    /// Its age in days at the last scan that found it.
    pub gap_age_days: i64,
    /// Rows counted at that scan.
    pub found: i64,
    /// Rows expected at that scan.
    pub expected: i64,
    /// Where it stands.
    pub healing_status: GapStatus,
    /// Heal attempts so far.
    pub attempts: i64,
    /// The latest run that tried to heal it.
    pub run_id: Option<RunId>,
    /// When it was last alerted.
    pub alerted_at: Option<DateTime<Utc>>,
    /// When a scan found its cell complete.
    pub healed_at: Option<DateTime<Utc>>,
    /// The latest healing error.
    pub last_error: Option<String>,
}

/// The ledger over time ([`crate::Store::gap_history`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GapHistory {
    /// Gaps open at the start of the window.
    pub open_at_start: i64,
    /// Per UTC day with any change: (day, gaps found, gaps closed), in day order.
    pub days: Vec<(NaiveDate, i64, i64)>,
}

impl GapHistory {
    /// Gaps open at the end of each day of `days` (oldest first), and the gaps found and
    /// closed that day: (day, open, found, closed).
    pub fn daily(
        &self,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> Vec<(NaiveDate, i64, i64, i64)> {
        let mut open = self.open_at_start;
        let mut changes = self.days.iter().peekable();
        days.into_iter()
            .map(|day| {
                let (mut found, mut closed) = (0, 0);
                while let Some(&&(changed, f, c)) = changes.peek() {
                    if changed > day {
                        break;
                    }
                    // Changes before the first day listed still count towards what is open.
                    open += f - c;
                    if changed == day {
                        found += f;
                        closed += c;
                    }
                    changes.next();
                }
                (day, open, found, closed)
            })
            .collect()
    }
}

/// Which rows of the ledger to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapFilter {
    /// Every row not `complete`.
    Open,
    /// Rows in one status.
    Status(GapStatus),
    /// Every row.
    All,
}

impl GapFilter {
    /// The filter's word, as `gaps --status` takes it: `open`, a status, or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Status(status) => status.as_str(),
            Self::All => "all",
        }
    }
}

impl FromStr for GapFilter {
    type Err = UnknownState;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "open" => Ok(Self::Open),
            "all" => Ok(Self::All),
            other => other.parse().map(Self::Status),
        }
    }
}

/// What recording a scan changed in the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanRecorded {
    /// Gaps not in the ledger before (new open rows).
    pub opened: usize,
    /// Open gaps found again (their counts and age updated).
    pub still_open: usize,
    /// Open gaps whose cell is now complete (closed).
    pub closed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_accepts_safe_ids_only() {
        for ok in ["20261127T022400-4f2a", "a", "A_b.c-9", &"x".repeat(64)] {
            assert!(RunId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "../x",
            "a;rm",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_run_ids_are_valid_and_time_prefixed() {
        let now = DateTime::from_timestamp(1_795_746_240, 0).unwrap_or_default();
        let id = RunId::generate(now);
        assert!(id.as_str().starts_with("20261127T022400-"), "{id}");
        assert_eq!(RunId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Blocked,
        ] {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("RUNNING".parse::<RunState>().is_err());
    }
}

/// A `serve` process registered in the state store ([`crate::Store::register_node`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRecord {
    /// Unique to the process (host, pid and a random part).
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its process id there.
    pub pid: i64,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// When its registration lapses unless renewed: past it, the node is dead.
    pub expires_at: DateTime<Utc>,
}

/// A named lease ([`crate::Store::acquire_lease`]), such as the leader's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// Its name (`leader`).
    pub name: String,
    /// Who holds it, if anyone.
    pub holder: Option<String>,
    /// The term: one more every time the lease changes holder, issued by the store.
    pub term: i64,
    /// When the holder took it.
    pub acquired_at: Option<DateTime<Utc>>,
    /// When it lapses unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
}

impl LeaseRecord {
    /// Whether a holder holds it at `now`.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.holder.is_some() && self.expires_at.is_some_and(|at| at >= now)
    }
}

/// A lease held: what a fenced write presents ([`crate::Store::claim_tick`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fence {
    /// The lease's name.
    pub name: String,
    /// The holder.
    pub holder: String,
    /// The term it holds the lease under.
    pub term: i64,
}

/// What [`crate::Store::acquire_lease`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Held until `expires_at`, under `fence.term` (a new term when it changed holder).
    Held {
        /// What fenced writes present.
        fence: Fence,
        /// Until when.
        expires_at: DateTime<Utc>,
    },
    /// Another holder's lease is live.
    HeldBy(LeaseRecord),
}

/// One scheduled occurrence a leader took on ([`crate::Store::claim_tick`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TickRun {
    /// The schedule's name.
    pub name: String,
    /// The occurrence.
    pub at: DateTime<Utc>,
    /// The leader's term that ran it (last).
    pub term: i64,
    /// The node that ran it (last).
    pub node: String,
    /// When that node took it.
    pub claimed_at: DateTime<Utc>,
    /// When it finished; `None` while running or when its leader died mid-tick.
    pub finished_at: Option<DateTime<Utc>>,
    /// How many leaders took it (more than one only after a leader died mid-tick).
    pub attempts: i64,
}

/// One node as `gapless nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The node's registration.
    #[serde(flatten)]
    pub node: NodeRecord,
    /// Whether its registration is live.
    pub alive: bool,
    /// Whether it holds the leader lease.
    pub leader: bool,
    /// The leases it holds, by name.
    pub leases: Vec<String>,
    /// The unfinished runs it owns.
    pub runs: Vec<String>,
    /// Tasks it is running now (of any run).
    pub running_tasks: i64,
}

/// The nodes sharing a state store, and its leases ([`crate::Store::nodes_report`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodesReport {
    /// Registered nodes, live or not yet reaped, oldest first.
    pub nodes: Vec<NodeView>,
    /// Every lease, held or not.
    pub leases: Vec<LeaseRecord>,
    /// The leader lease's holder, while live.
    pub leader: Option<String>,
    /// The leader lease's term.
    pub term: i64,
    /// Runs owned by something that is not a live node (a `gapless backfill`, or a dead
    /// node whose lease has not lapsed yet).
    pub other_owners: Vec<String>,
}
