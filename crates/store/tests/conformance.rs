//! Store conformance: one scenario ([`story`]), one race ([`race`]) and the stale-epoch refusals
//! ([`stale_epochs_are_refused`]), run against every backend, plus the SQLite-only settings:
//! sync modes, `flush`, schema versions of older and newer databases.
//! SQLite always runs (a file in a temp dir, and `sqlite::memory:`); PostgreSQL runs when
//! `GAPLESS_TEST_PG_URL` is set, on a fresh database per test, and fails instead of skipping when
//! `GAPLESS_REQUIRE_EXTERNAL=1`.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{NaiveDate, Utc};
use gapless_store::{
    CellState, Claim, ConnectOptions, DetectedGap, GapFilter, GapStatus, IncomingEvent, Ingested,
    NewEvent, NewRun, NewTask, NewTaskState, NextClaims, Ownership, PhaseProgress, RunId, RunKind,
    RunOwner, RunState, RunnerRecord, SCHEMA_VERSION, ScanRecorded, Store, StoreError, SyncMode,
    TaskRecord, TaskState,
};
use sqlx::SqlSafeStr as _;
use tokio::task::JoinSet;

const TTL: Duration = Duration::from_secs(60);

fn d(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, day).expect("a valid January 2024 date")
}

/// A pending task covering every day of `start..=end`.
fn task(phase: i64, start: NaiveDate, end: NaiveDate) -> NewTask {
    NewTask {
        phase,
        start,
        end,
        dates: start.iter_days().take_while(|date| *date <= end).collect(),
        state: NewTaskState::Pending,
        error: None,
    }
}

fn run_of(kind: RunKind, tasks: Vec<NewTask>) -> NewRun {
    NewRun {
        kind,
        pipeline: "nba-props".to_owned(),
        request: serde_json::json!({"start_date": "2024-01-01", "end_date": "2024-01-05"}),
        tasks,
    }
}

fn id_of(tasks: &[TaskRecord], phase: i64, start: NaiveDate) -> anyhow::Result<i64> {
    tasks
        .iter()
        .find(|task| task.phase == phase && task.start == start)
        .map(|task| task.id)
        .with_context(|| format!("no task for phase {phase} starting {start}"))
}

async fn task_record(store: &Store, task_id: i64) -> anyhow::Result<TaskRecord> {
    store
        .task(task_id)
        .await?
        .with_context(|| format!("task {task_id} not found"))
}

async fn cell_state(
    store: &Store,
    run: &RunId,
    phase: i64,
    date: NaiveDate,
) -> anyhow::Result<CellState> {
    store
        .cells(run)
        .await?
        .into_iter()
        .find(|cell| cell.phase == phase && cell.date == date)
        .map(|cell| cell.state)
        .with_context(|| format!("no cell ({phase}, {date})"))
}

fn progress(phase: i64, counts: [i64; 5]) -> PhaseProgress {
    let [pending, running, complete, failed, blocked] = counts;
    PhaseProgress {
        phase,
        total: counts.iter().sum(),
        pending,
        running,
        complete,
        failed,
        blocked,
    }
}

/// The whole contract of the store, in the order a backfill, a crash and a resume exercise it.
async fn story(store: Store) -> anyhow::Result<()> {
    // --- schema: connecting does not migrate; migrating twice is a no-op -----------------------
    match store.ensure_current().await {
        Err(StoreError::SchemaOutdated { found: 0, expected }) if expected == SCHEMA_VERSION => {}
        other => bail!("an unmigrated store must be outdated, got {other:?}"),
    }
    store.migrate().await?;
    store.migrate().await?;
    assert_eq!(store.schema_version().await?, SCHEMA_VERSION);
    store.ensure_current().await?;

    // --- create a run: one multi-date batch, a calendar gap, a blocked task --------------------
    let mut batch = task(2, d(1), d(3));
    batch.dates = vec![d(1), d(3)]; // no games on Jan 2: no cell
    let mut blocked = task(3, d(4), d(4));
    blocked.state = NewTaskState::Blocked;
    blocked.error = Some("upstream (2, 2024-01-04) missing".to_owned());
    let new_run = run_of(
        RunKind::Backfill,
        vec![
            batch,
            task(2, d(4), d(4)),
            task(2, d(5), d(5)),
            task(3, d(1), d(3)),
            blocked,
            task(3, d(5), d(5)),
            task(4, d(1), d(1)),
        ],
    );
    let run = store.create_run(&new_run).await?;
    let record = store.run(&run).await?.context("run not found")?;
    assert_eq!(record.id, run);
    assert_eq!(record.kind, RunKind::Backfill);
    assert_eq!(record.pipeline, "nba-props");
    assert_eq!(record.request, new_run.request);
    assert_eq!(record.state, RunState::Running);
    assert_eq!(record.version, 0);
    assert_eq!(record.finished_at, None);

    let tasks = store.tasks(&run).await?;
    let order: Vec<_> = tasks.iter().map(|t| (t.phase, t.start)).collect();
    assert_eq!(
        order,
        [
            (2, d(1)),
            (2, d(4)),
            (2, d(5)),
            (3, d(1)),
            (3, d(4)),
            (3, d(5)),
            (4, d(1))
        ]
    );
    assert!(tasks.iter().all(|t| t.attempt == 0 && t.lease_epoch == 0));
    let batch = id_of(&tasks, 2, d(1))?;
    let retried = id_of(&tasks, 2, d(4))?;
    let failing = id_of(&tasks, 2, d(5))?;
    let resumed = id_of(&tasks, 3, d(1))?;
    let rescued = id_of(&tasks, 3, d(4))?;
    let to_block = id_of(&tasks, 3, d(5))?;
    let backoff = id_of(&tasks, 4, d(1))?;
    let record = task_record(&store, rescued).await?;
    assert_eq!(record.state, TaskState::Blocked);
    assert_eq!(record.end, d(4));
    assert_eq!(
        record.error.as_deref(),
        Some("upstream (2, 2024-01-04) missing")
    );

    let cells = store.cells(&run).await?;
    assert_eq!(cells.len(), 10);
    assert!(!cells.iter().any(|c| c.phase == 2 && c.date == d(2)));
    assert_eq!(cell_state(&store, &run, 3, d(4)).await?, CellState::Blocked);
    assert_eq!(
        store.run_progress(&run).await?,
        [
            progress(2, [4, 0, 0, 0, 0]),
            progress(3, [4, 0, 0, 0, 1]),
            progress(4, [1, 0, 0, 0, 0]),
        ]
    );

    // --- claim, heartbeat, complete --------------------------------------------------------
    let before = Utc::now();
    let claim = store.claim(batch, 0, "node-a", TTL).await?;
    assert_eq!(
        claim,
        Some(Claim {
            epoch: 1,
            attempt: 1
        })
    );
    let record = task_record(&store, batch).await?;
    assert_eq!(record.state, TaskState::Running);
    assert_eq!(record.lease_owner.as_deref(), Some("node-a"));
    assert!(
        record
            .lease_expires_at
            .context("lease expiry set at claim")?
            > before
    );
    assert!(record.started_at.is_some());
    // Another claimer with the epoch it saw before: lost.
    assert_eq!(store.claim(batch, 0, "node-b", TTL).await?, None);
    // With the current epoch, but the task is not pending: lost.
    assert_eq!(store.claim(batch, 1, "node-b", TTL).await?, None);
    assert!(store.heartbeat(batch, 1, TTL).await?);
    assert!(!store.heartbeat(batch, 0, TTL).await?);
    assert_eq!(
        store.run_progress(&run).await?[0],
        progress(2, [2, 2, 0, 0, 0])
    );

    let counts = serde_json::json!({"2024-01-01": 9, "2024-01-03": 11});
    assert!(!store.complete(batch, 0, &counts, "backfill").await?);
    assert!(store.complete(batch, 1, &counts, "backfill").await?);
    assert!(!store.complete(batch, 1, &counts, "backfill").await?);
    let record = task_record(&store, batch).await?;
    assert_eq!(record.state, TaskState::Complete);
    assert_eq!(record.counts.as_ref(), Some(&counts));
    assert_eq!(record.lease_owner, None);
    assert_eq!(record.lease_expires_at, None);
    assert!(record.finished_at.is_some());
    assert_eq!(record.lease_epoch, 2);
    assert_eq!(
        cell_state(&store, &run, 2, d(1)).await?,
        CellState::Complete
    );
    assert_eq!(
        cell_state(&store, &run, 2, d(3)).await?,
        CellState::Complete
    );
    let events = store.events(0, 100).await?;
    let cells_of_events: Vec<_> = events.iter().map(|e| (e.phase, e.date)).collect();
    assert_eq!(cells_of_events, [(2, d(1)), (2, d(3))]);
    assert!(events.iter().all(|e| e.status == "complete"
        && e.source == "backfill"
        && e.run_id.as_ref() == Some(&run)));

    // --- stale epochs lose; release for retry, re-claim gets attempt 2 ----------------------
    assert_eq!(store.claim(retried, 7, "node-a", TTL).await?, None);
    let first = store
        .claim(retried, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    assert!(
        store
            .release_for_retry(retried, first.epoch, "exit status 1", Duration::ZERO)
            .await?
    );
    assert!(
        !store
            .release_for_retry(retried, first.epoch, "exit status 1", Duration::ZERO)
            .await?
    );
    let record = task_record(&store, retried).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error.as_deref(), Some("exit status 1"));
    assert_eq!(record.lease_owner, None);
    assert_eq!(record.lease_expires_at, None);
    assert_eq!(record.lease_epoch, first.epoch + 1);
    assert!(
        !store
            .complete(retried, first.epoch, &counts, "backfill")
            .await?
    );
    assert!(!store.heartbeat(retried, first.epoch, TTL).await?);
    assert_eq!(
        store.claim(retried, first.epoch, "node-b", TTL).await?,
        None
    );
    let second = store
        .claim(retried, record.lease_epoch, "node-b", TTL)
        .await?
        .context("re-claim")?;
    assert!(second.epoch > first.epoch);
    assert_eq!(second.attempt, 2);
    assert!(
        store
            .complete(retried, second.epoch, &counts, "backfill")
            .await?
    );

    // Retry backoff: not claimable before `not_before`.
    let claim = store
        .claim(backoff, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    let hour = Duration::from_secs(3600);
    assert!(
        store
            .release_for_retry(backoff, claim.epoch, "timeout", hour)
            .await?
    );
    let record = task_record(&store, backoff).await?;
    assert!(record.not_before.context("backoff recorded")? > Utc::now());
    assert_eq!(
        store
            .claim(backoff, record.lease_epoch, "node-a", TTL)
            .await?,
        None
    );

    // --- a claim given back: its lease is fenced ------------------------------------------------
    let ahead = store
        .claim(failing, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    let give_back = |epoch| store.release_for_retry(failing, epoch, "interrupted", Duration::ZERO);
    assert!(!give_back(ahead.epoch - 1).await?);
    assert!(give_back(ahead.epoch).await?);
    assert!(!give_back(ahead.epoch).await?);
    let record = task_record(&store, failing).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.lease_epoch, ahead.epoch + 1);
    assert_eq!(record.lease_owner, None);
    assert_eq!(record.lease_expires_at, None);
    assert!(!store.heartbeat(failing, ahead.epoch, TTL).await?);
    assert!(
        !store
            .complete(failing, ahead.epoch, &counts, "backfill")
            .await?
    );
    assert_eq!(cell_state(&store, &run, 2, d(5)).await?, CellState::Pending);

    // --- fail marks the cells failed ------------------------------------------------------------
    let claim = store
        .claim(failing, record.lease_epoch, "node-a", TTL)
        .await?
        .context("claim")?;
    assert_eq!(claim.attempt, 2);
    assert!(!store.fail(failing, claim.epoch - 1, "stale").await?);
    assert!(
        store
            .fail(failing, claim.epoch, "validation: 7 of 9 games")
            .await?
    );
    assert!(!store.fail(failing, claim.epoch, "again").await?);
    assert!(
        !store
            .complete(failing, claim.epoch, &counts, "backfill")
            .await?
    );
    let record = task_record(&store, failing).await?;
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(record.error.as_deref(), Some("validation: 7 of 9 games"));
    assert_eq!(record.lease_expires_at, None);
    assert!(record.finished_at.is_some());
    assert_eq!(cell_state(&store, &run, 2, d(5)).await?, CellState::Failed);

    // --- block and unblock: only pending (resp. blocked) tasks of that run move -----------------
    let reason = "upstream (2, 2024-01-05) failed";
    let other_run = RunId::parse("no-such-run")?;
    assert_eq!(store.block(&other_run, &[to_block], reason).await?, 0);
    assert_eq!(
        store
            .block(&run, &[to_block, batch, rescued], reason)
            .await?,
        1
    );
    let record = task_record(&store, to_block).await?;
    assert_eq!(record.state, TaskState::Blocked);
    assert_eq!(record.error.as_deref(), Some(reason));
    assert_eq!(cell_state(&store, &run, 3, d(5)).await?, CellState::Blocked);
    assert_eq!(task_record(&store, batch).await?.state, TaskState::Complete);
    assert_eq!(store.unblock(&run, &[rescued, batch]).await?, 1);
    let record = task_record(&store, rescued).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error, None);
    assert_eq!(cell_state(&store, &run, 3, d(4)).await?, CellState::Pending);

    // --- resume: requeue_running fences the old holder ------------------------------------------
    let stale = store
        .claim(resumed, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    assert_eq!(store.requeue_running(&run).await?, [resumed]);
    let record = task_record(&store, resumed).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error.as_deref(), Some("interrupted"));
    assert_eq!(record.lease_owner, None);
    assert!(record.lease_epoch > stale.epoch);
    assert!(
        !store
            .complete(resumed, stale.epoch, &counts, "backfill")
            .await?
    );
    assert!(!store.heartbeat(resumed, stale.epoch, TTL).await?);
    assert!(!store.fail(resumed, stale.epoch, "late").await?);
    let fresh = store
        .claim(resumed, record.lease_epoch, "node-b", TTL)
        .await?
        .context("claim after resume")?;
    assert_eq!(fresh.attempt, 2);
    assert!(
        store
            .complete(resumed, fresh.epoch, &counts, "backfill")
            .await?
    );
    assert_eq!(store.requeue_running(&run).await?, Vec::<i64>::new());

    // --- rescue of a holder that crashed between claim and first heartbeat (RELIABILITY 2.3) ----
    let dead = store
        .claim(rescued, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    assert_eq!(store.requeue_expired(Utc::now()).await?, Vec::<i64>::new());
    let later = Utc::now() + TTL * 2;
    assert_eq!(store.requeue_expired(later).await?, [rescued]);
    let record = task_record(&store, rescued).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error.as_deref(), Some("lease expired"));
    assert!(
        !store
            .complete(rescued, dead.epoch, &counts, "backfill")
            .await?
    );
    let alive = store
        .claim(rescued, record.lease_epoch, "node-b", TTL)
        .await?
        .context("claim after rescue")?;
    assert!(
        store
            .complete(rescued, alive.epoch, &counts, "backfill")
            .await?
    );
    // A completed task is never resurrected by a late rescue (River #1302).
    assert_eq!(store.requeue_expired(later).await?, Vec::<i64>::new());
    assert_eq!(
        task_record(&store, rescued).await?.state,
        TaskState::Complete
    );

    // --- every cell recorded complete exactly once, one event per completed cell ---------------
    let cells = store.cells(&run).await?;
    let complete: Vec<_> = cells
        .iter()
        .filter(|c| c.state == CellState::Complete)
        .map(|c| (c.phase, c.date))
        .collect();
    assert_eq!(
        complete,
        [
            (2, d(1)),
            (2, d(3)),
            (2, d(4)),
            (3, d(1)),
            (3, d(2)),
            (3, d(3)),
            (3, d(4))
        ]
    );
    assert!(
        cells
            .iter()
            .all(|c| (c.state == CellState::Complete) == c.completed_at.is_some())
    );
    let events = store.events(0, 1000).await?;
    let mut cells_of_events: Vec<_> = events.iter().map(|e| (e.phase, e.date)).collect();
    cells_of_events.sort();
    assert_eq!(cells_of_events, complete);
    for &(phase, date) in &complete {
        assert_eq!(
            store.count_events(phase, date).await?,
            1,
            "({phase}, {date})"
        );
    }
    assert_eq!(store.count_events(2, d(5)).await?, 0);

    assert_eq!(
        store.run_progress(&run).await?,
        [
            progress(2, [0, 0, 3, 1, 0]),
            progress(3, [0, 0, 4, 0, 1]),
            progress(4, [1, 0, 0, 0, 0]),
        ]
    );

    // --- unique keys: nothing of a rejected write is stored ----------------------------------
    let result = store.add_tasks(&run, &[task(2, d(1), d(1))]).await;
    assert!(
        matches!(result, Err(StoreError::Duplicate(_))),
        "same (run, phase, start): {result:?}"
    );
    let result = store
        .add_tasks(&run, &[task(4, d(2), d(2)), task(2, d(2), d(3))])
        .await;
    assert!(
        matches!(result, Err(StoreError::Duplicate(_))),
        "cell (2, Jan 3) already covered: {result:?}"
    );
    assert_eq!(store.tasks(&run).await?.len(), 7);
    let added = store.add_tasks(&run, &[task(4, d(2), d(2))]).await?;
    assert_eq!(added.len(), 1);
    assert_eq!(store.tasks(&run).await?.len(), 8);
    let result = store
        .create_run(&run_of(
            RunKind::Backfill,
            vec![task(2, d(1), d(1)), task(2, d(1), d(2))],
        ))
        .await;
    assert!(
        matches!(result, Err(StoreError::Duplicate(_))),
        "{result:?}"
    );
    let mut empty = task(2, d(1), d(1));
    empty.dates.clear();
    let result = store
        .create_run(&run_of(RunKind::Backfill, vec![empty]))
        .await;
    assert!(
        matches!(result, Err(StoreError::InvalidTask { .. })),
        "{result:?}"
    );
    assert_eq!(store.list_runs(10).await?.len(), 1);

    // --- run state compare-and-set ---------------------------------------------------------
    assert!(store.set_run_state(&run, 0, RunState::Interrupted).await?);
    assert!(!store.set_run_state(&run, 0, RunState::Running).await?);
    let record = store.run(&run).await?.context("run")?;
    assert_eq!((record.state, record.version), (RunState::Interrupted, 1));
    assert!(record.finished_at.is_some());
    assert!(store.set_run_state(&run, 1, RunState::Running).await?);
    let record = store.run(&run).await?.context("run")?;
    assert_eq!((record.state, record.version), (RunState::Running, 2));
    assert_eq!(record.finished_at, None);
    assert!(matches!(
        store.finish_run(&run, RunState::Running).await,
        Err(StoreError::NotTerminal { .. })
    ));
    assert!(store.finish_run(&run, RunState::Failed).await?);
    assert!(!store.finish_run(&run, RunState::Succeeded).await?);
    let record = store.run(&run).await?.context("run")?;
    assert_eq!((record.state, record.version), (RunState::Failed, 3));
    assert!(record.finished_at.is_some());

    // --- list_runs: newest first -------------------------------------------------------------
    let second = store
        .create_run(&run_of(RunKind::Heal, vec![task(2, d(1), d(1))]))
        .await?;
    let third = store.create_run(&run_of(RunKind::Backfill, vec![])).await?;
    let ids: Vec<_> = store
        .list_runs(10)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [third.clone(), second.clone(), run.clone()]);
    assert_eq!(store.list_runs(2).await?.len(), 2);
    assert_eq!(store.list_runs(-1).await?.len(), 0);
    assert_eq!(store.latest_run().await?.map(|r| r.id), Some(third));
    assert_eq!(
        store.run(&second).await?.map(|r| r.kind),
        Some(RunKind::Heal)
    );
    assert_eq!(store.run(&other_run).await?, None);

    // --- events appended from outside a run ------------------------------------------------------
    let last = events.last().context("events")?.id;
    let id = store
        .append_event(&NewEvent {
            phase: 2,
            date: d(9),
            status: "complete".to_owned(),
            source: "http".to_owned(),
            run_id: None,
        })
        .await?;
    assert!(id > last);
    let tail = store.events(last, 10).await?;
    assert_eq!(tail.len(), 1);
    assert_eq!(
        (tail[0].id, tail[0].date, tail[0].run_id.clone()),
        (id, d(9), None)
    );
    assert_eq!(tail[0].source, "http");
    assert_eq!(store.events(0, 3).await?.len(), 3);
    assert_eq!(store.count_events(2, d(9)).await?, 1);

    // --- the schema itself refuses a running task without a lease (RELIABILITY 2.3) -----------
    let leaseless = execute(
        &store,
        "UPDATE tasks SET state = 'running', lease_owner = NULL, lease_expires_at = NULL \
         WHERE state = 'pending'",
    )
    .await;
    assert!(leaseless.is_err(), "CHECK must reject: {leaseless:?}");

    assert_eq!(store.integrity_check().await?, "ok");
    Ok(())
}

/// Runs raw SQL on either backend, bypassing the store's API.
async fn execute(store: &Store, statement: &'static str) -> anyhow::Result<u64> {
    Ok(match store {
        Store::Sqlite(sqlite) => {
            let changed =
                sqlite.with_connection(|connection| connection.execute(statement, []))??;
            u64::try_from(changed)?
        }
        Store::Postgres(pool) => sqlx::query(statement).execute(pool).await?.rows_affected(),
    })
}

/// Eight claimers race for one task with the same seen epoch: exactly one wins. Then eight
/// completers race with the winning epoch: exactly one wins, and each cell gets one event.
async fn race(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    for round in 0..10 {
        let phase = 100 + round;
        let run = store
            .create_run(&run_of(RunKind::Backfill, vec![task(phase, d(1), d(2))]))
            .await?;
        let task_id = store.tasks(&run).await?.first().context("task")?.id;

        let mut claimers = JoinSet::new();
        for node in 0..8 {
            let store = store.clone();
            claimers
                .spawn(async move { store.claim(task_id, 0, &format!("node-{node}"), TTL).await });
        }
        let mut claims = Vec::new();
        while let Some(outcome) = claimers.join_next().await {
            claims.extend(outcome??);
        }
        assert_eq!(claims.len(), 1, "round {round}: one claim wins");
        let epoch = claims[0].epoch;

        let mut completers = JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            completers.spawn(async move {
                let counts = serde_json::json!({"rows": 1});
                store.complete(task_id, epoch, &counts, "backfill").await
            });
        }
        let mut wins = 0;
        while let Some(outcome) = completers.join_next().await {
            wins += usize::from(outcome??);
        }
        assert_eq!(wins, 1, "round {round}: one completion wins");
        assert_eq!(store.count_events(phase, d(1)).await?, 1);
        assert_eq!(store.count_events(phase, d(2)).await?, 1);
    }
    Ok(())
}

/// Runs `scenario` on a fresh PostgreSQL database, or skips when no server is configured.
async fn on_postgres<F, Fut>(scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    on_postgres_with(ConnectOptions::default(), scenario).await
}

/// [`on_postgres`] with the store opened with `options`.
async fn on_postgres_with<F, Fut>(options: ConnectOptions, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let Some(url) = gapless_testkit::pg_url() else {
        eprintln!("skipped: `GAPLESS_TEST_PG_URL` is not set");
        return Ok(());
    };
    let db = gapless_testkit::fresh_pg_database(&url).await?;
    let store = Store::connect_with(db.url(), Path::new("."), options).await?;
    let outcome = scenario(store.clone()).await;
    store.close().await;
    db.drop_db().await?;
    outcome
}

#[tokio::test]
async fn sqlite_file_story() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Relative to the base directory, with a parent directory that does not exist yet.
    let store = Store::connect("sqlite://state/gapless.db", dir.path()).await?;
    assert!(dir.path().join("state/gapless.db").is_file());
    story(store).await
}

#[tokio::test]
async fn sqlite_memory_story() -> anyhow::Result<()> {
    story(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_story() -> anyhow::Result<()> {
    on_postgres(story).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_race() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("race.db");
    // An absolute path: the base directory is ignored.
    let url = format!("sqlite://{}", path.display());
    race(Store::connect(&url, Path::new("/nonexistent")).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_race() -> anyhow::Result<()> {
    on_postgres(race).await
}

#[tokio::test]
async fn connect_rejects_unknown_urls() -> anyhow::Result<()> {
    let base = Path::new(".");
    match Store::connect("mysql://root:secret@localhost/db", base).await {
        Err(StoreError::UnsupportedUrl { scheme }) => assert_eq!(scheme, "mysql"),
        other => bail!("expected UnsupportedUrl, got {other:?}"),
    }
    assert!(matches!(
        Store::connect("sqlite://", base).await,
        Err(StoreError::InvalidSqliteUrl { .. })
    ));
    assert!(matches!(
        Store::connect("sqlite://state.db?mode=ro", base).await,
        Err(StoreError::InvalidSqliteUrl { .. })
    ));
    Ok(())
}

/// One `PRAGMA` of the store's own connection.
fn pragma<T: rusqlite::types::FromSql>(store: &Store, name: &str) -> anyhow::Result<T> {
    let Store::Sqlite(sqlite) = store else {
        bail!("not a SQLite store");
    };
    let sql = format!("PRAGMA {name}");
    Ok(sqlite.with_connection(|connection| connection.query_row(&sql, [], |row| row.get(0)))??)
}

#[tokio::test]
async fn sqlite_sessions_are_bounded_and_normal_by_default() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::connect("sqlite://state.db", dir.path()).await?;
    assert_eq!(store.sync_mode(), Some(SyncMode::Normal));
    assert_eq!(pragma::<String>(&store, "journal_mode")?, "wal");
    assert_eq!(pragma::<i64>(&store, "synchronous")?, 1, "NORMAL");
    assert_eq!(pragma::<i64>(&store, "busy_timeout")?, 10_000);
    assert_eq!(pragma::<i64>(&store, "foreign_keys")?, 1);
    Ok(())
}

/// `Normal` and `Full` set `synchronous` on the store's connection, and a durable commit
/// (`create_run`, `set_run_state`, `finish_run`, `flush`) leaves it as it found it.
#[tokio::test]
async fn sqlite_sync_mode_survives_durable_commits() -> anyhow::Result<()> {
    for (mode, level) in [(SyncMode::Normal, 1), (SyncMode::Full, 2)] {
        let dir = tempfile::tempdir()?;
        let store = Store::connect_with(
            "sqlite://state.db",
            dir.path(),
            ConnectOptions {
                sync: mode,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(store.sync_mode(), Some(mode));
        assert_eq!(mode.pragma_value(), level);
        assert_eq!(pragma::<i64>(&store, "synchronous")?, level, "{mode:?}");
        store.migrate().await?;
        assert_eq!(
            pragma::<i64>(&store, "synchronous")?,
            level,
            "{mode:?} after migrate"
        );
        let run = store
            .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(2))]))
            .await?;
        assert_eq!(
            pragma::<i64>(&store, "synchronous")?,
            level,
            "{mode:?} after create_run"
        );
        let task_id = store.tasks(&run).await?.first().context("task")?.id;
        let claim = store
            .claim(task_id, 0, "node-a", TTL)
            .await?
            .context("claim")?;
        assert!(
            store
                .complete(task_id, claim.epoch, &serde_json::json!({}), "backfill")
                .await?
        );
        assert!(store.set_run_state(&run, 0, RunState::Interrupted).await?);
        assert!(store.set_run_state(&run, 1, RunState::Running).await?);
        assert_eq!(
            pragma::<i64>(&store, "synchronous")?,
            level,
            "{mode:?} after set_run_state"
        );
        assert!(store.finish_run(&run, RunState::Succeeded).await?);
        assert_eq!(
            pragma::<i64>(&store, "synchronous")?,
            level,
            "{mode:?} after finish_run"
        );
        store.flush().await?;
        assert_eq!(
            pragma::<i64>(&store, "synchronous")?,
            level,
            "{mode:?} after flush"
        );
        // Everything committed is there, in a second connection too.
        let reader = rusqlite::Connection::open(dir.path().join("state.db"))?;
        let state: String = reader.query_row(
            "SELECT state FROM runs WHERE id = ?1",
            [run.as_str()],
            |row| row.get(0),
        )?;
        assert_eq!(state, "succeeded");
    }
    Ok(())
}

/// `flush` in `Normal` mode must commit a real write: an empty transaction appends no WAL
/// frame, and then SQLite syncs nothing. A second connection sees a new commit as a change of
/// `PRAGMA data_version`.
#[tokio::test]
async fn sqlite_flush_commits_a_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::connect("sqlite://state.db", dir.path()).await?;
    store.migrate().await?;
    let reader = rusqlite::Connection::open(dir.path().join("state.db"))?;
    let data_version = || reader.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0));
    let before = data_version()?;
    // The detector works: an empty write transaction is no commit to other connections.
    let Store::Sqlite(sqlite) = &store else {
        bail!("not a SQLite store");
    };
    sqlite.with_connection(|connection| connection.execute_batch("BEGIN IMMEDIATE; COMMIT"))??;
    assert_eq!(data_version()?, before);
    store.flush().await?;
    let after = data_version()?;
    assert_ne!(before, after, "flush committed nothing");
    // The write it made changes nothing anyone reads.
    assert_eq!(store.schema_version().await?, SCHEMA_VERSION);
    store.ensure_current().await?;
    assert_eq!(store.list_runs(10).await?.len(), 0);
    // Also on a fresh, unmigrated database and in memory.
    Store::connect("sqlite://empty.db", dir.path())
        .await?
        .flush()
        .await?;
    Store::connect("sqlite::memory:", Path::new("."))
        .await?
        .flush()
        .await?;
    Ok(())
}

#[tokio::test]
async fn postgres_flush_is_a_no_op() -> anyhow::Result<()> {
    on_postgres(|store| async move {
        assert_eq!(store.sync_mode(), None);
        store.flush().await?;
        store.migrate().await?;
        store.flush().await?;
        Ok(())
    })
    .await
}

/// Stale lease epochs are refused by every transition, and a refused call writes nothing.
async fn stale_epochs_are_refused(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let run = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(3))]))
        .await?;
    let task_id = store.tasks(&run).await?.first().context("task")?.id;
    let counts = serde_json::json!({"rows": 3});
    assert_eq!(
        store.claim(task_id, 1, "node-a", TTL).await?,
        None,
        "future epoch"
    );
    let claim = store
        .claim(task_id, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    assert_eq!(
        claim,
        Claim {
            epoch: 1,
            attempt: 1
        }
    );
    let held = task_record(&store, task_id).await?;

    assert_eq!(
        store.claim(task_id, 0, "node-b", TTL).await?,
        None,
        "seen epoch moved on"
    );
    assert_eq!(
        store.claim(task_id, 1, "node-b", TTL).await?,
        None,
        "not pending"
    );
    let stale = claim.epoch - 1;
    assert!(!store.heartbeat(task_id, stale, TTL).await?);
    assert!(!store.complete(task_id, stale, &counts, "backfill").await?);
    assert!(
        !store
            .release_for_retry(task_id, stale, "x", Duration::ZERO)
            .await?
    );
    assert!(!store.fail(task_id, stale, "x").await?);
    assert_eq!(
        task_record(&store, task_id).await?,
        held,
        "refusals write nothing"
    );
    assert_eq!(store.count_events(1, d(1)).await?, 0);
    assert!(
        store
            .cells(&run)
            .await?
            .iter()
            .all(|c| c.state == CellState::Pending)
    );

    assert!(
        store
            .complete(task_id, claim.epoch, &counts, "backfill")
            .await?
    );
    assert!(
        !store
            .complete(task_id, claim.epoch, &counts, "backfill")
            .await?,
        "twice"
    );
    assert!(!store.fail(task_id, claim.epoch, "late").await?);
    assert_eq!(store.count_events(1, d(2)).await?, 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_stale_epochs_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    stale_epochs_are_refused(Store::connect("sqlite://state.db", dir.path()).await?).await
}

#[tokio::test]
async fn postgres_stale_epochs_are_refused() -> anyhow::Result<()> {
    on_postgres(stale_epochs_are_refused).await
}

/// A completion claims the tasks it makes ready in its own transaction; a completion that loses
/// its compare-and-set claims nothing, and a refused next claim is reported as `None`.
async fn completion_claims_the_next_tasks(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let run = store
        .create_run(&run_of(
            RunKind::Backfill,
            vec![
                task(1, d(1), d(1)),
                task(2, d(1), d(1)),
                task(3, d(1), d(1)),
            ],
        ))
        .await?;
    let tasks = store.tasks(&run).await?;
    let (first, second, third) = (
        id_of(&tasks, 1, d(1))?,
        id_of(&tasks, 2, d(1))?,
        id_of(&tasks, 3, d(1))?,
    );
    let counts = serde_json::json!({"2024-01-01": [1, 1]});
    let claim = store
        .claim(first, 0, "node-a", TTL)
        .await?
        .context("claim")?;
    let next = NextClaims {
        limits: &[],
        tasks: &[(second, 0), (third, 7)],
        owner: "node-a",
        ttl: TTL,
    };
    // A stale completion: nothing is completed and nothing claimed.
    assert_eq!(
        store
            .complete_then_claim(first, claim.epoch - 1, &counts, "backfill", &next)
            .await?,
        None
    );
    assert_eq!(task_record(&store, second).await?.state, TaskState::Pending);

    let claims = store
        .complete_then_claim(first, claim.epoch, &counts, "backfill", &next)
        .await?
        .context("the completion won")?;
    match claims.as_slice() {
        [Some(next), None] => {
            assert!(
                next.epoch > claim.epoch,
                "a claim's epoch must exceed every epoch handed out before: {next:?} after {claim:?}"
            );
            assert_eq!(next.attempt, 1);
        }
        other => panic!(
            "the second next task should be claimed and the third refused (wrong epoch): {other:?}"
        ),
    }
    assert_eq!(task_record(&store, first).await?.state, TaskState::Complete);
    let claimed = task_record(&store, second).await?;
    assert_eq!(claimed.state, TaskState::Running);
    assert_eq!(claimed.lease_owner.as_deref(), Some("node-a"));
    assert_eq!(task_record(&store, third).await?.state, TaskState::Pending);
    assert_eq!(store.count_events(1, d(1)).await?, 1);

    Ok(())
}

#[tokio::test]
async fn sqlite_completion_claims_the_next_tasks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    completion_claims_the_next_tasks(Store::connect("sqlite://state.db", dir.path()).await?).await
}

#[tokio::test]
async fn postgres_completion_claims_the_next_tasks() -> anyhow::Result<()> {
    on_postgres(completion_claims_the_next_tasks).await
}

/// The gap ledger: one open row per cell, updated when found again, closed when the cell is
/// complete, and a new row when the same cell breaks again.
async fn gap_ledger(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let gap = |phase_to: i64, day: u32, found: i64| DetectedGap {
        phase_from: Some(phase_to - 1),
        phase_to,
        date: d(day),
        age_days: 30 - i64::from(day),
        found,
        expected: 9,
    };
    let first = store
        .record_scan(
            &[gap(3, 1, 0), gap(3, 2, 7), gap(4, 1, 0)],
            &[(2, d(1))],
            None,
        )
        .await?;
    assert_eq!(
        first,
        ScanRecorded {
            opened: 3,
            still_open: 0,
            closed: 0
        }
    );
    let open = store.gaps(GapFilter::Open).await?;
    let cells: Vec<_> = open
        .iter()
        .map(|g| (g.phase_to, g.partition_date))
        .collect();
    assert_eq!(cells, [(3, d(1)), (3, d(2)), (4, d(1))]);
    assert!(
        open.iter()
            .all(|g| g.healing_status == GapStatus::Pending && g.healed_at.is_none())
    );
    assert_eq!(
        (open[1].found, open[1].expected, open[1].phase_from),
        (7, 9, Some(2))
    );

    // Found again (with new counts), one cell now complete, one cell not covered.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = store
        .record_scan(&[gap(3, 2, 8)], &[(3, d(1)), (5, d(1))], None)
        .await?;
    assert_eq!(
        second,
        ScanRecorded {
            opened: 0,
            still_open: 1,
            closed: 1
        }
    );
    let all = store.gaps(GapFilter::All).await?;
    assert_eq!(all.len(), 3, "found again updates its row: {all:?}");
    let again = all
        .iter()
        .find(|g| g.partition_date == d(2))
        .ok_or_else(|| anyhow::anyhow!("the gap of day 2 is gone: {all:?}"))?;
    assert_eq!(again.found, 8);
    assert!(again.last_seen_at > again.detected_at);
    let closed = store.gaps(GapFilter::Status(GapStatus::Complete)).await?;
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].phase_to, closed[0].partition_date), (3, d(1)));
    assert!(closed[0].healed_at.is_some());
    // Phase 4 on day 1 was in neither list: still open.
    let open: Vec<_> = store
        .gaps(GapFilter::Open)
        .await?
        .iter()
        .map(|g| (g.phase_to, g.partition_date))
        .collect();
    assert_eq!(open, [(3, d(2)), (4, d(1))]);

    // The closed cell breaks again: a new row, the closed one kept as history.
    let third = store.record_scan(&[gap(3, 1, 0)], &[], None).await?;
    assert_eq!(third.opened, 1);
    assert_eq!(store.gaps(GapFilter::All).await?.len(), 4);
    assert_eq!(store.gaps(GapFilter::Open).await?.len(), 3);
    assert!(
        store
            .gaps(GapFilter::Status(GapStatus::Alerted))
            .await?
            .is_empty()
    );
    // Filters by their words, as `gaps --status` takes them.
    assert_eq!("open".parse::<GapFilter>(), Ok(GapFilter::Open));
    assert_eq!(
        "triggered".parse::<GapFilter>(),
        Ok(GapFilter::Status(GapStatus::Triggered))
    );
    assert!("closed".parse::<GapFilter>().is_err());
    Ok(())
}

/// RELIABILITY.md T13: scans racing over the same gaps leave one open row per cell.
async fn concurrent_scans_open_each_gap_once(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let found: Vec<DetectedGap> = (1..=20)
        .map(|day| DetectedGap {
            phase_from: Some(1),
            phase_to: 2,
            date: d(day),
            age_days: 1,
            found: 0,
            expected: 3,
        })
        .collect();
    let scans: Vec<_> = (0..4)
        .map(|_| {
            let (store, found) = (store.clone(), found.clone());
            tokio::spawn(async move { store.record_scan(&found, &[], None).await })
        })
        .collect();
    for scan in scans {
        scan.await??;
    }
    let open = store.gaps(GapFilter::Open).await?;
    assert_eq!(open.len(), 20, "{open:?}");
    assert_eq!(store.gaps(GapFilter::All).await?.len(), 20);
    Ok(())
}

#[tokio::test]
async fn sqlite_concurrent_scans_open_each_gap_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    concurrent_scans_open_each_gap_once(Store::connect("sqlite://state.db", dir.path()).await?)
        .await
}

#[tokio::test]
async fn postgres_concurrent_scans_open_each_gap_once() -> anyhow::Result<()> {
    on_postgres(concurrent_scans_open_each_gap_once).await
}

#[tokio::test]
async fn sqlite_gap_ledger() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    gap_ledger(Store::connect("sqlite://state.db", dir.path()).await?).await
}

#[tokio::test]
async fn postgres_gap_ledger() -> anyhow::Result<()> {
    on_postgres(gap_ledger).await
}

/// A database migrated by an older gapless (sqlx's migrator on SQLite, `user_version` 0) is
/// current as it is; a database from a newer gapless is refused.
#[tokio::test]
async fn sqlite_schema_versions_old_and_new() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legacy.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let migration = sqlx::migrate::Migration::new(
        1,
        "init".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::AssertSqlSafe(include_str!("../migrations/sqlite/0001_init.sql")).into_sql_str(),
        false,
    );
    sqlx::migrate::Migrator::with_migrations(vec![migration])
        .run(&pool)
        .await?;
    pool.close().await;

    let store = Store::connect("sqlite://legacy.db", dir.path()).await?;
    assert_eq!(pragma::<i64>(&store, "user_version")?, 0);
    assert_eq!(store.schema_version().await?, 1);
    assert!(matches!(
        store.ensure_current().await,
        Err(StoreError::SchemaOutdated { found: 1, .. })
    ));
    // Events written at version 1 survive the rebuild of `events` in 2, ids and all, and new
    // ones come after them.
    execute(
        &store,
        "INSERT INTO events (id, phase, date, status, source, run_id, created_at) \
         VALUES (7, 3, '2024-01-01', 'complete', 'live', NULL, 1)",
    )
    .await?;
    store.migrate().await?; // applies 2 only: the tables of 1 exist
    assert_eq!(pragma::<i64>(&store, "user_version")?, SCHEMA_VERSION);
    store.ensure_current().await?;
    assert_eq!(store.count_events(3, d(1)).await?, 1);
    let next = NewEvent {
        phase: 3,
        date: d(1),
        status: "complete".to_owned(),
        source: "http".to_owned(),
        run_id: None,
    };
    assert_eq!(store.append_event(&next).await?, 8);
    let ids: Vec<i64> = store.events(0, 10).await?.iter().map(|e| e.id).collect();
    assert_eq!(ids, [7, 8]);
    store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(1))]))
        .await?;

    let store = Store::connect("sqlite://newer.db", dir.path()).await?;
    store.migrate().await?;
    assert_eq!(pragma::<i64>(&store, "user_version")?, SCHEMA_VERSION);
    execute(&store, "PRAGMA user_version = 99").await?;
    match store.migrate().await {
        Err(StoreError::SchemaNewer {
            found: 99,
            expected,
        }) if expected == SCHEMA_VERSION => {}
        other => bail!("a newer schema must be refused by migrate, got {other:?}"),
    }
    assert!(matches!(
        store.ensure_current().await,
        Err(StoreError::SchemaNewer { found: 99, .. })
    ));
    Ok(())
}

/// Migration 4 rebuilds `tasks` and `run_cells` to write their state checks without `IN` lists.
/// Rows written at version 3 survive with their ids and states, new ids follow the old ones, and
/// the checks and foreign keys still refuse bad rows.
#[tokio::test]
async fn sqlite_migration_4_keeps_tasks_and_cells() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let connection = rusqlite::Connection::open(dir.path().join("v3.db"))?;
        for migration in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_lean_events.sql"),
            include_str!("../migrations/sqlite/0003_gap_ledger.sql"),
        ] {
            connection.execute_batch(migration)?;
        }
        connection.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO runs (id, seq, kind, pipeline, request, state, created_at, updated_at)
                 VALUES ('r3', 1, 'backfill', 'p', '{}', 'running', 1, 1);
             INSERT INTO tasks (id, run_id, phase, start_date, end_date, state, attempt,
                                lease_epoch, finished_at, counts)
                 VALUES (41, 'r3', 1, '2024-01-01', '2024-01-02', 'complete', 1, 2, 5,
                         '{\"2024-01-01\":[1,1],\"2024-01-02\":[1,1]}');
             INSERT INTO tasks (id, run_id, phase, start_date, end_date, state, error)
                 VALUES (42, 'r3', 2, '2024-01-01', '2024-01-01', 'blocked', 'phase 1 failed');
             INSERT INTO run_cells (run_id, phase, date, task_id, state, completed_at)
                 VALUES ('r3', 1, '2024-01-01', 41, 'complete', 5),
                        ('r3', 1, '2024-01-02', 41, 'complete', 5),
                        ('r3', 2, '2024-01-01', 42, 'blocked', NULL);",
        )?;
    }
    let store = Store::connect("sqlite://v3.db", dir.path()).await?;
    assert_eq!(store.schema_version().await?, 3);
    store.migrate().await?;
    assert_eq!(store.schema_version().await?, SCHEMA_VERSION);

    let old = RunId::parse("r3")?;
    let tasks = store.tasks(&old).await?;
    let summary: Vec<_> = tasks.iter().map(|t| (t.id, t.phase, t.state)).collect();
    assert_eq!(
        summary,
        [(41, 1, TaskState::Complete), (42, 2, TaskState::Blocked)]
    );
    assert_eq!(
        tasks[0].counts,
        Some(serde_json::json!({"2024-01-01": [1, 1], "2024-01-02": [1, 1]}))
    );
    assert_eq!(tasks[0].lease_epoch, 2);
    assert_eq!(tasks[1].error.as_deref(), Some("phase 1 failed"));
    let cells: Vec<_> = store
        .cells(&old)
        .await?
        .iter()
        .map(|c| (c.task_id, c.date, c.state))
        .collect();
    assert_eq!(
        cells,
        [
            (41, d(1), CellState::Complete),
            (41, d(2), CellState::Complete),
            (42, d(1), CellState::Blocked),
        ]
    );

    // New tasks get ids after the old ones, and move through the rebuilt checks.
    let new = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(3), d(3))]))
        .await?;
    let new_task = store.tasks(&new).await?[0].id;
    assert_eq!(new_task, 43);
    let claim = store.claim(new_task, 0, "node", TTL).await?;
    assert!(claim.is_some(), "the new task is claimable");

    // The checks and the foreign key still refuse what they refused before.
    for bad in [
        "UPDATE tasks SET state = 'done' WHERE id = 41",
        "UPDATE run_cells SET state = 'running' WHERE task_id = 42",
        "INSERT INTO run_cells (run_id, phase, date, task_id, state) \
         VALUES ('r3', 3, '2024-01-01', 999, 'pending')",
    ] {
        assert!(execute(&store, bad).await.is_err(), "accepted: {bad}");
    }
    assert_eq!(pragma::<String>(&store, "integrity_check")?, "ok");
    Ok(())
}

#[tokio::test]
async fn sqlite_memory_stores_are_private_and_closable() -> anyhow::Result<()> {
    let first = Store::connect("sqlite::memory:", Path::new(".")).await?;
    let second = Store::connect("sqlite::memory:", Path::new(".")).await?;
    first.migrate().await?;
    assert_eq!(first.schema_version().await?, SCHEMA_VERSION);
    assert_eq!(second.schema_version().await?, 0);
    let clone = first.clone();
    first.close().await;
    assert!(matches!(clone.list_runs(1).await, Err(StoreError::Closed)));
    Ok(())
}

#[tokio::test]
async fn postgres_sessions_are_bounded() -> anyhow::Result<()> {
    on_postgres(|store| async move {
        let Store::Postgres(pool) = store else {
            bail!("a postgres:// URL must open PostgreSQL");
        };
        let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&pool)
            .await?;
        assert_eq!(timeout, "30s");
        Ok(())
    })
    .await
}

/// A client stalled inside a transaction (paused, cut off) loses its session at the stall limit:
/// the locks it held go to the others, and its own next statement fails as worth a retry.
#[tokio::test]
async fn postgres_a_stalled_transaction_releases_its_locks_at_the_stall_limit() -> anyhow::Result<()>
{
    let options = ConnectOptions {
        stall_limit: Duration::from_millis(500),
        ..Default::default()
    };
    on_postgres_with(options, |store| async move {
        let Store::Postgres(pool) = &store else {
            bail!("a postgres:// URL must open PostgreSQL");
        };
        let limit: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(pool)
            .await?;
        assert_eq!(limit, "500ms");

        let mut stalled = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(17)")
            .execute(&mut *stalled)
            .await?;
        // Another session waits for the lock, and gets it once the stalled one is ended.
        let other = sqlx::PgPool::connect_with(pool.connect_options().as_ref().clone()).await?;
        let started = Instant::now();
        let mut waiting = other.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '20s'")
            .execute(&mut *waiting)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(17)")
            .execute(&mut *waiting)
            .await?;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "the lock came free after {waited:?}"
        );
        waiting.rollback().await?;
        other.close().await;
        // PostgreSQL ended it with 25P03, which the runtime retries on a new connection.
        let error = sqlx::query("SELECT 1")
            .execute(&mut *stalled)
            .await
            .expect_err("the stalled session was ended");
        assert!(
            StoreError::from(error).is_retryable(),
            "a stalled session's error is worth a retry"
        );
        Ok(())
    })
    .await
}

// --- fencing across runs, cell holds, run owners, runners, splits ---------------------------------

/// Every attempt token handed out is greater than all before it, across runs over the same cell,
/// after a retry, a released claim, a requeue of a running run and a rescue of an expired lease.
async fn epochs_grow_across_runs(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let counts = serde_json::json!({"rows": 1});
    let mut tokens = Vec::new();

    let first = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(2))]))
        .await?;
    let a = store.tasks(&first).await?[0].id;
    let claim = store.claim(a, 0, "node", TTL).await?.context("claim")?;
    tokens.push(claim.epoch);
    assert!(
        store
            .release_for_retry(a, claim.epoch, "flaky", Duration::ZERO)
            .await?
    );
    let seen = task_record(&store, a).await?.lease_epoch;
    let claim = store.claim(a, seen, "node", TTL).await?.context("retry")?;
    tokens.push(claim.epoch);
    assert!(store.complete(a, claim.epoch, &counts, "backfill").await?);

    // A later run over the same cells: its task starts at epoch 0, its token does not.
    let second = store
        .create_run(&run_of(RunKind::Heal, vec![task(1, d(1), d(2))]))
        .await?;
    let b = store.tasks(&second).await?[0].id;
    assert_eq!(task_record(&store, b).await?.lease_epoch, 0);
    let claim = store.claim(b, 0, "node", TTL).await?.context("claim b")?;
    tokens.push(claim.epoch);
    assert!(
        store
            .release_for_retry(b, claim.epoch, "interrupted", Duration::ZERO)
            .await?
    );
    let seen = task_record(&store, b).await?.lease_epoch;
    let claim = store
        .claim(b, seen, "node", TTL)
        .await?
        .context("reclaim b")?;
    tokens.push(claim.epoch);
    assert_eq!(store.requeue_running(&second).await?, [b]);
    let seen = task_record(&store, b).await?.lease_epoch;
    let claim = store
        .claim(b, seen, "node", Duration::from_millis(1))
        .await?
        .context("claim after requeue")?;
    tokens.push(claim.epoch);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.requeue_expired(Utc::now()).await?, [b]);
    let seen = task_record(&store, b).await?.lease_epoch;
    let claim = store
        .claim(b, seen, "node", TTL)
        .await?
        .context("rescued")?;
    tokens.push(claim.epoch);
    assert!(store.complete(b, claim.epoch, &counts, "heal").await?);

    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens must strictly increase: {tokens:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_epochs_grow_across_runs() -> anyhow::Result<()> {
    epochs_grow_across_runs(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_epochs_grow_across_runs() -> anyhow::Result<()> {
    on_postgres(epochs_grow_across_runs).await
}

/// A claim is refused while a running task of another run holds one of its cells, says who
/// holds it, and succeeds once the holder completes, fails or gives its claim back, or once the
/// holder's lease expired.
async fn cells_have_one_runner_across_runs(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let counts = serde_json::json!({"rows": 1});
    let first = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(3))]))
        .await?;
    let a = store.tasks(&first).await?[0].id;
    let second = store
        .create_run(&run_of(
            RunKind::Backfill,
            vec![
                task(1, d(3), d(4)),
                task(1, d(5), d(5)),
                task(2, d(1), d(1)),
            ],
        ))
        .await?;
    let tasks = store.tasks(&second).await?;
    let (overlapping, apart, other_phase) = (
        id_of(&tasks, 1, d(3))?,
        id_of(&tasks, 1, d(5))?,
        id_of(&tasks, 2, d(1))?,
    );

    let held = store.claim(a, 0, "node-a", TTL).await?.context("claim a")?;
    assert!(
        store.cell_holders(a).await?.is_empty(),
        "its own holds do not block it"
    );
    assert_eq!(store.claim(overlapping, 0, "node-b", TTL).await?, None);
    let holders = store.cell_holders(overlapping).await?;
    let summary: Vec<_> = holders
        .iter()
        .map(|h| (h.phase, h.date, h.run_id.clone(), h.task_id))
        .collect();
    assert_eq!(summary, [(1, d(3), first.clone(), a)]);
    assert!(holders[0].expires_at > Utc::now());
    // The refused claim wrote nothing: the task is still pending at epoch 0.
    let refused = task_record(&store, overlapping).await?;
    assert_eq!(
        (refused.state, refused.lease_epoch),
        (TaskState::Pending, 0)
    );
    assert!(store.claim(other_phase, 0, "node-b", TTL).await?.is_some());
    let claim_apart = store
        .claim(apart, 0, "node-b", TTL)
        .await?
        .context("apart")?;

    // Refused as a next claim too, without undoing the completion.
    let next = NextClaims {
        limits: &[],
        tasks: &[(overlapping, 0)],
        owner: "node-b",
        ttl: TTL,
    };
    let claims = store
        .complete_then_claim(apart, claim_apart.epoch, &counts, "backfill", &next)
        .await?;
    assert_eq!(claims, Some(vec![None]));
    assert_eq!(task_record(&store, apart).await?.state, TaskState::Complete);

    // A heartbeat renews the holds with the lease; completion drops them.
    assert!(store.heartbeat(a, held.epoch, TTL * 2).await?);
    let renewed = store.cell_holders(overlapping).await?;
    assert!(renewed[0].expires_at > holders[0].expires_at);
    assert!(store.complete(a, held.epoch, &counts, "backfill").await?);
    assert!(store.cell_holders(overlapping).await?.is_empty());
    let claim_b = store
        .claim(overlapping, 0, "node-b", TTL)
        .await?
        .context("free after completion")?;

    // Failing and giving a claim back drop the holds as well.
    let third = store
        .create_run(&run_of(RunKind::Heal, vec![task(1, d(4), d(4))]))
        .await?;
    let c = store.tasks(&third).await?[0].id;
    assert_eq!(store.claim(c, 0, "node-c", TTL).await?, None);
    assert!(store.fail(overlapping, claim_b.epoch, "boom").await?);
    let claim_c = store
        .claim(c, 0, "node-c", TTL)
        .await?
        .context("after fail")?;
    assert!(
        store
            .release_for_retry(c, claim_c.epoch, "interrupted", Duration::ZERO)
            .await?
    );
    assert!(store.cell_holders(c).await?.is_empty());

    // A hold whose lease expired is taken over, with no rescue needed first.
    let seen = task_record(&store, c).await?.lease_epoch;
    store
        .claim(c, seen, "node-c", Duration::from_millis(1))
        .await?
        .context("short lease")?;
    let fourth = store
        .create_run(&run_of(RunKind::Heal, vec![task(1, d(4), d(4))]))
        .await?;
    let e = store.tasks(&fourth).await?[0].id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store.cell_holders(e).await?.is_empty(),
        "an expired hold is not live"
    );
    assert!(store.claim(e, 0, "node-e", TTL).await?.is_some());
    assert_eq!(
        store.cell_holders(c).await?.len(),
        1,
        "now `e` holds the cell"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_cells_have_one_runner_across_runs() -> anyhow::Result<()> {
    cells_have_one_runner_across_runs(Store::connect("sqlite::memory:", Path::new(".")).await?)
        .await
}

#[tokio::test]
async fn postgres_cells_have_one_runner_across_runs() -> anyhow::Result<()> {
    on_postgres(cells_have_one_runner_across_runs).await
}

/// Two claimers on their own connections race for overlapping tasks of two runs: exactly one
/// wins each round.
async fn overlapping_claims_race(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    for round in 0..20 {
        let phase = 100 + round;
        let mut ids = Vec::new();
        for (start, end) in [(d(1), d(3)), (d(3), d(5))] {
            let run = store
                .create_run(&run_of(RunKind::Backfill, vec![task(phase, start, end)]))
                .await?;
            ids.push(store.tasks(&run).await?[0].id);
        }
        let mut claimers = JoinSet::new();
        for (node, task_id) in ids.into_iter().enumerate() {
            let store = store.clone();
            claimers
                .spawn(async move { store.claim(task_id, 0, &format!("node-{node}"), TTL).await });
        }
        let mut wins = 0;
        while let Some(outcome) = claimers.join_next().await {
            wins += usize::from(outcome??.is_some());
        }
        assert_eq!(
            wins, 1,
            "round {round}: exactly one run holds the shared cell"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_overlapping_claims_race() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    overlapping_claims_race(Store::connect("sqlite://race.db", dir.path()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_overlapping_claims_race() -> anyhow::Result<()> {
    on_postgres(overlapping_claims_race).await
}

/// One owner per run: refused while held, taken over by id or after expiry, renewal after a
/// loss is refused, finishing releases.
async fn runs_have_one_owner(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let a = RunOwner {
        id: "host-a:100:1",
        host: "host-a",
        pid: 100,
    };
    let b = RunOwner {
        id: "host-a:200:2",
        host: "host-a",
        pid: 200,
    };
    let run = store
        .create_run_owned(
            &run_of(RunKind::Backfill, vec![task(1, d(1), d(1))]),
            &a,
            TTL,
        )
        .await?;
    let owner = store
        .run(&run)
        .await?
        .context("run")?
        .owner
        .context("owned")?;
    assert_eq!(
        (owner.id.as_str(), owner.host.as_str(), owner.pid),
        (a.id, a.host, a.pid)
    );
    assert!(owner.expires_at > Utc::now());

    // Held: refused, whatever id the caller says it checked, unless it is the owner's.
    for take_over in [None, Some("host-a:999:9")] {
        match store.acquire_run(&run, &b, TTL, take_over).await? {
            Ownership::HeldBy(holder) => assert_eq!(holder, owner),
            Ownership::Acquired => bail!("acquired a run held by a live owner"),
        }
    }
    assert_eq!(
        store.acquire_run(&run, &a, TTL, None).await?,
        Ownership::Acquired
    );
    assert_eq!(
        store.acquire_run(&run, &b, TTL, Some(a.id)).await?,
        Ownership::Acquired,
        "taken over by id"
    );
    assert!(
        !store.renew_run(&run, a.id, TTL).await?,
        "the old owner lost it"
    );
    assert!(!store.release_run(&run, a.id).await?);
    assert!(store.renew_run(&run, b.id, TTL).await?);

    // Expiry: a lapsed lease is taken without a take-over id.
    assert_eq!(
        store
            .acquire_run(&run, &b, Duration::from_millis(1), None)
            .await?,
        Ownership::Acquired
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.acquire_run(&run, &a, TTL, None).await?,
        Ownership::Acquired
    );
    assert!(!store.renew_run(&run, b.id, TTL).await?);
    assert!(store.release_run(&run, a.id).await?);
    assert_eq!(store.run(&run).await?.context("run")?.owner, None);
    assert_eq!(
        store.acquire_run(&run, &b, TTL, None).await?,
        Ownership::Acquired
    );
    assert!(store.finish_run(&run, RunState::Succeeded).await?);
    assert_eq!(
        store.run(&run).await?.context("run")?.owner,
        None,
        "finishing releases"
    );

    // A run created without an owner has none; an unknown run is an error.
    let plain = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(2), d(2))]))
        .await?;
    assert_eq!(store.run(&plain).await?.context("run")?.owner, None);
    let unknown = RunId::parse("no-such-run")?;
    match store.acquire_run(&unknown, &a, TTL, None).await {
        Err(StoreError::UnknownRun { run_id }) => assert_eq!(run_id, unknown),
        other => bail!("expected UnknownRun, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_runs_have_one_owner() -> anyhow::Result<()> {
    runs_have_one_owner(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_runs_have_one_owner() -> anyhow::Result<()> {
    on_postgres(runs_have_one_owner).await
}

/// A task's runner is recorded under its lease, listed while it may be alive (running, or
/// requeued from a holder that may not have stopped it), and forgotten after.
async fn runners_are_recorded(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let run = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(1))]))
        .await?;
    let id = store.tasks(&run).await?[0].id;
    let claim = store.claim(id, 0, "node", TTL).await?.context("claim")?;
    assert!(
        !store
            .record_runner(id, claim.epoch - 1, "host-a", 4242)
            .await?
    );
    assert!(store.record_runner(id, claim.epoch, "host-a", 4242).await?);
    let expected = vec![RunnerRecord {
        task_id: id,
        host: "host-a".to_owned(),
        pgid: 4242,
    }];
    assert_eq!(store.recorded_runners(&run).await?, expected);
    let record = task_record(&store, id).await?;
    assert_eq!(
        (record.runner_host.as_deref(), record.runner_pgid),
        (Some("host-a"), Some(4242))
    );
    assert_eq!(store.requeue_running(&run).await?, [id]);
    assert_eq!(
        store.recorded_runners(&run).await?,
        expected,
        "kept by a requeue"
    );
    assert_eq!(store.forget_runners(&run).await?, 1);
    assert!(store.recorded_runners(&run).await?.is_empty());

    let seen = task_record(&store, id).await?.lease_epoch;
    let claim = store.claim(id, seen, "node", TTL).await?.context("again")?;
    assert!(store.record_runner(id, claim.epoch, "host-a", 4343).await?);
    assert_eq!(
        store.forget_runners(&run).await?,
        0,
        "a running task's runner stays"
    );
    let counts = serde_json::json!({"rows": 1});
    assert!(store.complete(id, claim.epoch, &counts, "backfill").await?);
    assert!(store.recorded_runners(&run).await?.is_empty());
    assert_eq!(task_record(&store, id).await?.runner_pgid, None);
    Ok(())
}

#[tokio::test]
async fn sqlite_runners_are_recorded() -> anyhow::Result<()> {
    runners_are_recorded(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_runners_are_recorded() -> anyhow::Result<()> {
    on_postgres(runners_are_recorded).await
}

fn piece(phase: i64, start: NaiveDate, end: NaiveDate, state: NewTaskState) -> NewTask {
    NewTask {
        state,
        error: (state == NewTaskState::Blocked).then(|| "phase 0 failed on 2024-01-03".to_owned()),
        ..task(phase, start, end)
    }
}

/// A task that has not run is replaced by pieces that cover exactly its dates; its cells follow
/// the pieces, in their states.
async fn tasks_split_into_pieces(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let run = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(5))]))
        .await?;
    let id = store.tasks(&run).await?[0].id;
    let pieces = vec![
        piece(1, d(1), d(2), NewTaskState::Pending),
        piece(1, d(3), d(3), NewTaskState::Blocked),
        piece(1, d(4), d(5), NewTaskState::Pending),
    ];

    // Pieces that do not replace the task exactly are refused, and nothing changes.
    let mut missing = pieces.clone();
    missing.pop();
    let mut overlapping = pieces.clone();
    overlapping[1] = piece(1, d(2), d(3), NewTaskState::Blocked);
    overlapping[1].dates = vec![d(3)];
    let mut other_phase = pieces.clone();
    other_phase[2].phase = 2;
    for bad in [missing, overlapping, other_phase, Vec::new()] {
        match store.split_task(&run, id, 0, &bad).await {
            Err(StoreError::InvalidSplit { task_id, .. }) => assert_eq!(task_id, id),
            other => bail!("expected InvalidSplit, got {other:?}"),
        }
    }
    let other_run = store
        .create_run(&run_of(RunKind::Backfill, vec![task(9, d(1), d(1))]))
        .await?;
    assert!(matches!(
        store.split_task(&other_run, id, 0, &pieces).await,
        Err(StoreError::InvalidSplit { .. })
    ));
    assert_eq!(
        store.split_task(&run, id, 3, &pieces).await?,
        None,
        "stale epoch"
    );
    assert_eq!(store.tasks(&run).await?.len(), 1);

    let ids = store
        .split_task(&run, id, 0, &pieces)
        .await?
        .context("the split applied")?;
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], id, "the first piece keeps the task's id");
    let tasks = store.tasks(&run).await?;
    let summary: Vec<_> = tasks
        .iter()
        .map(|t| (t.id, t.start, t.end, t.state, t.attempt))
        .collect();
    assert_eq!(
        summary,
        [
            (ids[0], d(1), d(2), TaskState::Pending, 0),
            (ids[1], d(3), d(3), TaskState::Blocked, 0),
            (ids[2], d(4), d(5), TaskState::Pending, 0),
        ]
    );
    assert_eq!(
        tasks[1].error.as_deref(),
        Some("phase 0 failed on 2024-01-03")
    );
    assert_eq!(
        tasks[0].lease_epoch, 1,
        "readers of the old task are fenced"
    );
    let cells: Vec<_> = store
        .cells(&run)
        .await?
        .iter()
        .map(|c| (c.date, c.task_id, c.state))
        .collect();
    assert_eq!(
        cells,
        [
            (d(1), ids[0], CellState::Pending),
            (d(2), ids[0], CellState::Pending),
            (d(3), ids[1], CellState::Blocked),
            (d(4), ids[2], CellState::Pending),
            (d(5), ids[2], CellState::Pending),
        ]
    );
    assert_eq!(
        store.split_task(&run, id, 0, &pieces).await?,
        None,
        "split once"
    );

    // The pieces run as tasks: the runnable ones are claimed, the blocked one is not.
    assert!(store.claim(ids[0], 1, "node", TTL).await?.is_some());
    assert!(store.claim(ids[2], 0, "node", TTL).await?.is_some());
    assert_eq!(store.claim(ids[1], 0, "node", TTL).await?, None);
    assert_eq!(store.unblock(&run, &[ids[1]]).await?, 1);
    assert_eq!(cell_state(&store, &run, 1, d(3)).await?, CellState::Pending);
    Ok(())
}

#[tokio::test]
async fn sqlite_tasks_split_into_pieces() -> anyhow::Result<()> {
    tasks_split_into_pieces(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_tasks_split_into_pieces() -> anyhow::Result<()> {
    on_postgres(tasks_split_into_pieces).await
}

/// Migration 5 on a version-4 file with data: the epoch counter starts above every epoch any
/// task holds, so the first token handed out after it is greater than all before; old runs have
/// no owner and old tasks no runner.
#[tokio::test]
async fn sqlite_migration_5_keeps_tokens_growing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let connection = rusqlite::Connection::open(dir.path().join("v4.db"))?;
        for migration in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_lean_events.sql"),
            include_str!("../migrations/sqlite/0003_gap_ledger.sql"),
            include_str!("../migrations/sqlite/0004_checks_without_in_lists.sql"),
        ] {
            connection.execute_batch(migration)?;
        }
        connection.execute_batch(
            "PRAGMA user_version = 4;
             INSERT INTO runs (id, seq, kind, pipeline, request, state, created_at, updated_at)
                 VALUES ('r4', 1, 'backfill', 'p', '{}', 'running', 1, 1);
             INSERT INTO tasks (id, run_id, phase, start_date, end_date, state, attempt,
                                lease_epoch, finished_at, counts)
                 VALUES (41, 'r4', 1, '2024-01-01', '2024-01-01', 'complete', 3, 17, 5, '{}');
             INSERT INTO tasks (id, run_id, phase, start_date, end_date, state, attempt,
                                lease_epoch, lease_owner, lease_expires_at, started_at)
                 VALUES (42, 'r4', 1, '2024-01-02', '2024-01-02', 'running', 1, 9, 'node',
                         99999999999999, 1);
             INSERT INTO run_cells (run_id, phase, date, task_id, state, completed_at)
                 VALUES ('r4', 1, '2024-01-01', 41, 'complete', 5),
                        ('r4', 1, '2024-01-02', 42, 'pending', NULL);",
        )?;
    }
    let store = Store::connect("sqlite://v4.db", dir.path()).await?;
    assert_eq!(store.schema_version().await?, 4);
    store.migrate().await?;
    assert_eq!(store.schema_version().await?, SCHEMA_VERSION);
    store.ensure_current().await?;

    let old = RunId::parse("r4")?;
    assert_eq!(store.run(&old).await?.context("run")?.owner, None);
    let tasks = store.tasks(&old).await?;
    let summary: Vec<_> = tasks
        .iter()
        .map(|t| (t.id, t.state, t.lease_epoch, t.runner_host.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (41, TaskState::Complete, 17, None),
            (42, TaskState::Running, 9, None),
        ]
    );
    // The task running at the upgrade holds no cell: a new run's claim of its cell is not
    // refused by a hold (the run's owner, once the runtime checks owners, keeps it apart).
    let new = store
        .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(2))]))
        .await?;
    let new_task = store.tasks(&new).await?[0].id;
    assert!(store.cell_holders(new_task).await?.is_empty());
    let claim = store
        .claim(new_task, 0, "node", TTL)
        .await?
        .context("claim")?;
    assert_eq!(claim.epoch, 18, "above the highest epoch of version 4");
    assert_eq!(pragma::<String>(&store, "integrity_check")?, "ok");
    Ok(())
}

/// The same on PostgreSQL: a database at version 4 (sqlx's migrator) with data moves to 5.
#[tokio::test]
async fn postgres_migration_5_keeps_tokens_growing() -> anyhow::Result<()> {
    on_postgres(|store| async move {
        let Store::Postgres(pool) = &store else {
            bail!("a postgres:// URL must open PostgreSQL");
        };
        let files = [
            (
                1,
                "init",
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            (
                2,
                "lean events",
                include_str!("../migrations/postgres/0002_lean_events.sql"),
            ),
            (
                3,
                "gap ledger",
                include_str!("../migrations/postgres/0003_gap_ledger.sql"),
            ),
            (
                4,
                "checks without IN lists",
                include_str!("../migrations/postgres/0004_checks_without_in_lists.sql"),
            ),
        ];
        let migrations = files
            .iter()
            .map(|&(version, description, text)| {
                sqlx::migrate::Migration::new(
                    version,
                    description.into(),
                    sqlx::migrate::MigrationType::Simple,
                    sqlx::AssertSqlSafe(text).into_sql_str(),
                    false,
                )
            })
            .collect();
        sqlx::migrate::Migrator::with_migrations(migrations)
            .run(pool)
            .await?;
        assert_eq!(store.schema_version().await?, 4);
        for statement in [
            "INSERT INTO runs (id, kind, pipeline, request, state, created_at, updated_at) \
             VALUES ('r4', 'backfill', 'p', '{}', 'succeeded', 1, 1)",
            "INSERT INTO tasks (run_id, phase, start_date, end_date, state, attempt, \
                                lease_epoch, finished_at, counts) \
             VALUES ('r4', 1, '2024-01-01', '2024-01-01', 'complete', 2, 23, 5, '{}')",
        ] {
            execute(&store, statement).await?;
        }
        store.migrate().await?;
        assert_eq!(store.schema_version().await?, SCHEMA_VERSION);
        let old = RunId::parse("r4")?;
        assert_eq!(store.run(&old).await?.context("run")?.owner, None);
        let new = store
            .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(1))]))
            .await?;
        let new_task = store.tasks(&new).await?[0].id;
        let claim = store
            .claim(new_task, 0, "node", TTL)
            .await?
            .context("claim")?;
        assert_eq!(claim.epoch, 24, "above the highest epoch of version 4");
        Ok(())
    })
    .await
}

fn incoming(phase: i64, date: NaiveDate, key: Option<&str>) -> IncomingEvent {
    IncomingEvent {
        phase,
        date,
        status: "complete".to_owned(),
        source: "http".to_owned(),
        dedup_key: key.map(str::to_owned),
    }
}

/// Events from outside are stored once per key, quarantined ones too; consumers read the log
/// from their saved position; the cells of runs whose owner is alive are active.
async fn inbox(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let ingested = store
        .ingest_events(&[
            incoming(2, d(1), Some("m-1")),
            incoming(2, d(2), None),
            incoming(2, d(1), Some("m-1")),
        ])
        .await?;
    assert!(matches!(ingested[0], Ingested::Stored(_)), "{ingested:?}");
    assert!(matches!(ingested[1], Ingested::Stored(_)), "{ingested:?}");
    assert_eq!(
        ingested[2],
        Ingested::Duplicate,
        "the same key in one batch"
    );
    // A redelivery later: still once. Without a key, every delivery is stored.
    let again = store
        .ingest_events(&[incoming(2, d(1), Some("m-1")), incoming(2, d(2), None)])
        .await?;
    assert_eq!(again[0], Ingested::Duplicate);
    assert!(matches!(again[1], Ingested::Stored(_)));

    assert!(
        store
            .quarantine("pubsub", Some("q-1"), "{", "not JSON")
            .await?
    );
    assert!(
        !store
            .quarantine("pubsub", Some("q-1"), "{", "not JSON")
            .await?
    );
    assert!(store.quarantine("http", None, "[]", "empty").await?);
    let kept = store.quarantined(10).await?;
    assert_eq!(kept.len(), 2);
    assert_eq!(
        (kept[0].source.as_str(), kept[0].reason.as_str()),
        ("http", "empty")
    );
    assert_eq!(kept[1].dedup_key.as_deref(), Some("q-1"));

    // The log, read two at a time from the start, then from a saved position.
    assert_eq!(store.consumer_position("trigger").await?, 0);
    let first = store.events(0, 2).await?;
    assert_eq!(first.len(), 2);
    store.save_consumer_position("trigger", first[1].id).await?;
    let position = store.consumer_position("trigger").await?;
    assert_eq!(position, first[1].id);
    let rest = store.events(position, 10).await?;
    assert_eq!(rest.len(), 1, "three events were stored");
    assert_eq!((rest[0].phase, rest[0].date), (2, d(2)));

    // Active cells: pending cells of a run whose owner holds it.
    let owner = RunOwner {
        id: "node-a",
        host: "host",
        pid: 1,
    };
    let run = store
        .create_run_owned(
            &run_of(RunKind::Trigger, vec![task(3, d(1), d(3))]),
            &owner,
            TTL,
        )
        .await?;
    assert_eq!(store.active_cells(3, d(2), d(9)).await?, vec![d(2), d(3)]);
    assert!(store.active_cells(4, d(1), d(9)).await?.is_empty());
    store.finish_run(&run, RunState::Interrupted).await?;
    store.release_run(&run, owner.id).await?;
    assert!(
        store.active_cells(3, d(1), d(9)).await?.is_empty(),
        "a run nobody owns plans nothing"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_inbox() -> anyhow::Result<()> {
    inbox(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_inbox() -> anyhow::Result<()> {
    on_postgres(inbox).await
}

/// PostgreSQL hands out ids when rows are inserted, not when they commit: an event whose
/// transaction is still open holds back every later one, so a consumer that keeps the last id
/// it read never skips it.
#[tokio::test]
async fn postgres_readers_never_skip_an_event_committed_late() -> anyhow::Result<()> {
    on_postgres(|store| async move {
        store.migrate().await?;
        let Store::Postgres(pool) = &store else {
            bail!("not PostgreSQL");
        };
        let mut slow = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7306231840418816)")
            .execute(&mut *slow)
            .await?;
        sqlx::query(
            "INSERT INTO events (phase, date, status, source, created_at) \
             VALUES (2, '2024-01-01', 'complete', 'slow', 1)",
        )
        .execute(&mut *slow)
        .await?;
        let fast = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .ingest_events(&[incoming(2, d(2), Some("fast"))])
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !fast.is_finished(),
            "the second insert waits for the first commit"
        );
        assert!(store.events(0, 10).await?.is_empty());
        slow.commit().await?;
        fast.await??;
        let seen = store.events(0, 10).await?;
        let sources: Vec<&str> = seen.iter().map(|event| event.source.as_str()).collect();
        assert_eq!(sources, ["slow", "http"]);
        assert!(seen[0].id < seen[1].id);
        Ok(())
    })
    .await
}

/// The alerts outbox moves with the gaps' status, once; ticks only move forward.
async fn alerts_and_ticks(store: Store) -> anyhow::Result<()> {
    store.migrate().await?;
    let gap = DetectedGap {
        phase_from: Some(2),
        phase_to: 3,
        date: d(5),
        age_days: 40,
        found: 0,
        expected: 1,
    };
    store.record_scan(&[gap], &[], None).await?;
    let id = store.gaps(GapFilter::Open).await?[0].id;
    let message = serde_json::json!({"pipeline": "p", "items": []});
    assert_eq!(
        store
            .alert_gaps(&[id], &["slack", "email"], &message, None)
            .await?,
        1
    );
    let open = store.gaps(GapFilter::Open).await?;
    assert_eq!(open[0].healing_status, GapStatus::Alerted);
    assert!(open[0].alerted_at.is_some());
    let pending = store.undelivered_alerts(10).await?;
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].message, message);
    assert!(store.alert_failed(pending[0].id, "503").await?);
    assert!(store.alert_delivered(pending[1].id).await?);
    assert!(
        !store.alert_delivered(pending[1].id).await?,
        "delivered once"
    );
    let left = store.undelivered_alerts(10).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].attempts, left[0].last_error.as_deref()),
        (1, Some("503"))
    );

    assert_eq!(store.last_tick("scan").await?, None);
    let later = Utc::now();
    let earlier = later - chrono::Duration::minutes(5);
    store.save_tick("scan", later).await?;
    store.save_tick("scan", earlier).await?;
    assert_eq!(
        store.last_tick("scan").await?.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis()),
        "a tick never moves back"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_alerts_and_ticks() -> anyhow::Result<()> {
    alerts_and_ticks(Store::connect("sqlite::memory:", Path::new(".")).await?).await
}

#[tokio::test]
async fn postgres_alerts_and_ticks() -> anyhow::Result<()> {
    on_postgres(alerts_and_ticks).await
}

/// Nodes and the leader lease: the store issues terms, one more per change of holder; an old
/// leader's late writes (a tick taken or finished, an alert marked) are refused once its lease
/// moved on; an occurrence it took and never finished is run again by the next leader, once; a
/// dead node's running tasks are fenced and pending again, and its runs left without owner.
async fn nodes_and_leases(store: Store) -> anyhow::Result<()> {
    use gapless_store::{LEADER, LeaseOutcome};
    store.migrate().await?;
    let short = Duration::from_millis(300);
    let a = RunOwner {
        id: "box/1/a",
        host: "box",
        pid: 1,
    };
    let b = RunOwner {
        id: "box/2/b",
        host: "box",
        pid: 2,
    };
    store.register_node(&a, short).await?;
    store.register_node(&b, TTL).await?;
    assert_eq!(store.nodes().await?.len(), 2);

    let LeaseOutcome::Held { fence: fence_a, .. } =
        store.acquire_lease(LEADER, a.id, short, None).await?
    else {
        bail!("the first candidate takes the free lease");
    };
    assert_eq!(fence_a.term, 1);
    match store.acquire_lease(LEADER, b.id, TTL, None).await? {
        LeaseOutcome::HeldBy(current) => assert_eq!(current.holder.as_deref(), Some(a.id)),
        other => bail!("a live lease is refused to another, got {other:?}"),
    }
    match store.acquire_lease(LEADER, a.id, short, None).await? {
        LeaseOutcome::Held { fence, .. } => assert_eq!(fence.term, 1, "a renewal keeps the term"),
        other => bail!("the holder renews, got {other:?}"),
    }
    let report = store.nodes_report(Utc::now()).await?;
    assert_eq!(report.leader.as_deref(), Some(a.id));
    assert!(
        report
            .nodes
            .iter()
            .any(|view| view.leader && view.node.id == a.id)
    );

    // A takes an occurrence and its lease lapses mid-tick; B leads under term 2.
    let first = Utc::now() - chrono::Duration::seconds(10);
    assert_eq!(store.claim_tick("scan", first, &fence_a).await?, Some(1));
    assert_eq!(
        store.claim_tick("scan", first, &fence_a).await?,
        None,
        "an occurrence is taken once per term"
    );
    store
        .record_scan(
            &[DetectedGap {
                phase_from: Some(2),
                phase_to: 3,
                date: d(5),
                age_days: 40,
                found: 0,
                expected: 1,
            }],
            &[],
            None,
        )
        .await?;
    let gap = store.gaps(GapFilter::Open).await?[0].id;
    store
        .alert_gaps(
            &[gap],
            &["webhook"],
            &serde_json::json!({"items": []}),
            None,
        )
        .await?;
    let alert = store.undelivered_alerts(10).await?[0].id;
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let LeaseOutcome::Held { fence: fence_b, .. } =
        store.acquire_lease(LEADER, b.id, TTL, None).await?
    else {
        bail!("an expired lease is taken");
    };
    assert_eq!(fence_b.term, 2, "a new holder, a new term");
    assert!(!store.finish_tick("scan", first, &fence_a).await?, "fenced");
    let later = Utc::now();
    assert_eq!(
        store.claim_tick("scan", later, &fence_a).await?,
        None,
        "fenced"
    );
    assert!(
        !store.alert_delivered_fenced(alert, &fence_a).await?,
        "fenced"
    );
    assert!(
        !store.alert_failed_fenced(alert, "late", &fence_a).await?,
        "fenced"
    );
    assert_eq!(store.undelivered_alerts(10).await?[0].attempts, 0);
    // B runs A's unfinished occurrence again, once, and then the next one.
    let unfinished = store.unfinished_tick("scan", fence_b.term).await?;
    assert_eq!(
        unfinished.map(|at| at.timestamp_millis()),
        Some(first.timestamp_millis())
    );
    assert_eq!(store.claim_tick("scan", first, &fence_b).await?, Some(2));
    assert!(store.finish_tick("scan", first, &fence_b).await?);
    assert_eq!(store.unfinished_tick("scan", fence_b.term + 1).await?, None);
    assert_eq!(
        store.claim_tick("scan", first, &fence_b).await?,
        None,
        "finished: never again"
    );
    assert_eq!(store.claim_tick("scan", later, &fence_b).await?, Some(1));
    assert!(store.finish_tick("scan", later, &fence_b).await?);
    let runs = store.tick_runs("scan").await?;
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].term, runs[0].attempts), (2, 2));
    assert!(store.alert_delivered_fenced(alert, &fence_b).await?);
    assert_eq!(
        store
            .last_tick("scan")
            .await?
            .map(|at| at.timestamp_millis()),
        Some(later.timestamp_millis())
    );

    // A dead holder named by the caller is taken over at once.
    match store.acquire_lease(LEADER, a.id, TTL, Some(b.id)).await? {
        LeaseOutcome::Held { fence, .. } => assert_eq!(fence.term, 3),
        other => bail!("a take-over of a dead holder is granted, got {other:?}"),
    }

    // A's registration lapsed: its running task is fenced and pending again, its run free.
    let run = store
        .create_run_owned(&run_of(RunKind::Heal, vec![task(2, d(1), d(1))]), &a, TTL)
        .await?;
    let task_id = store.tasks(&run).await?[0].id;
    let claim = store
        .claim(task_id, 0, a.id, TTL)
        .await?
        .context("claimable")?;
    store.register_node(&a, Duration::ZERO).await?;
    let dead = store
        .nodes()
        .await?
        .into_iter()
        .find(|node| node.id == a.id)
        .context("A is registered")?;
    assert!(dead.expires_at <= Utc::now());
    // Found dead by its lapsed registration alone: tasks whose leases are live stay (their
    // runners stop only when those could expire).
    assert_eq!(store.reap_node(&dead, false).await?, Some(Vec::new()));
    assert_eq!(
        task_record(&store, task_id).await?.state,
        TaskState::Running
    );
    store.register_node(&a, Duration::ZERO).await?;
    let dead = store
        .nodes()
        .await?
        .into_iter()
        .find(|node| node.id == a.id)
        .context("A is registered again")?;
    // Known gone (a process of the reaper's host, its runners ended): all its tasks go.
    let requeued = store.reap_node(&dead, true).await?.context("reaped")?;
    assert_eq!(requeued, [task_id]);
    assert_eq!(store.reap_node(&dead, true).await?, None, "reaped once");
    assert!(!store.heartbeat(task_id, claim.epoch, TTL).await?, "fenced");
    assert!(
        !store
            .complete(task_id, claim.epoch, &serde_json::json!({}), "late")
            .await?,
        "fenced"
    );
    let record = task_record(&store, task_id).await?;
    assert_eq!(record.state, TaskState::Pending);
    assert!(store.run(&run).await?.context("run")?.owner.is_none());
    assert!(
        !store.node_heartbeat(a.id, TTL).await?,
        "A must register again"
    );
    let report = store.nodes_report(Utc::now()).await?;
    assert_eq!(report.nodes.len(), 1);
    assert_eq!(report.leader, None, "A's leases went with it");
    assert_eq!(report.term, 3);
    store.deregister_node(b.id).await?;
    assert!(store.nodes().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sqlite_nodes_and_leases() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    nodes_and_leases(Store::connect("sqlite://state.db", dir.path()).await?).await
}

#[tokio::test]
async fn postgres_nodes_and_leases() -> anyhow::Result<()> {
    on_postgres(nodes_and_leases).await
}

/// Two nodes racing for one task never wait on each other: a claim skips a task whose row
/// another transaction has locked (`FOR UPDATE SKIP LOCKED`) and is refused at once, and once
/// that transaction ends the task is claimable again.
#[tokio::test]
async fn postgres_a_claim_skips_a_task_another_transaction_is_claiming() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let Some(url) = gapless_testkit::pg_url() else {
        eprintln!("skipped: `GAPLESS_TEST_PG_URL` is not set");
        return Ok(());
    };
    let db = gapless_testkit::fresh_pg_database(&url).await?;
    let store = Store::connect(db.url(), Path::new(".")).await?;
    let outcome = async {
        store.migrate().await?;
        let run = store
            .create_run(&run_of(RunKind::Backfill, vec![task(1, d(1), d(1))]))
            .await?;
        let id = store.tasks(&run).await?[0].id;

        let mut other = sqlx::PgConnection::connect(db.url()).await?;
        let mut claiming = other.begin().await?;
        sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *claiming)
            .await?;
        let refused =
            tokio::time::timeout(Duration::from_secs(5), store.claim(id, 0, "node-a", TTL))
                .await
                .context("the claim waited for the other transaction's row lock")??;
        assert_eq!(refused, None, "a task another transaction holds is skipped");
        assert_eq!(task_record(&store, id).await?.state, TaskState::Pending);
        claiming.rollback().await?;
        other.close().await?;

        let claim = store.claim(id, 0, "node-a", TTL).await?;
        assert!(
            claim.is_some(),
            "claimable once the other transaction ended"
        );
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    db.drop_db().await?;
    outcome
}

/// The leader's writes carry its fence: once another node took the leader lease under a newer
/// term, the old leader's run creation and gap-ledger writes (`create_run_by`, `record_scan`,
/// `trigger_gaps`, `finish_heal`, `alert_gaps`) are refused with `StoreError::Fenced` and
/// leave nothing behind; the new leader's land. A heal run that ended with its gaps still
/// `triggered` (its node died before recording the heal) is found by `ended_heals`, and
/// recording it is idempotent.
async fn leader_writes_are_fenced(store: Store) -> anyhow::Result<()> {
    use gapless_store::{Creator, Fence, LEADER, LeaseOutcome};
    store.migrate().await?;
    let a = RunOwner {
        id: "box/1/a",
        host: "box",
        pid: 1,
    };
    let b = RunOwner {
        id: "box/2/b",
        host: "box",
        pid: 2,
    };
    let LeaseOutcome::Held { fence: old, .. } =
        store.acquire_lease(LEADER, a.id, TTL, None).await?
    else {
        bail!("the first candidate takes the free lease");
    };
    let gap = |day: u32| DetectedGap {
        phase_from: Some(1),
        phase_to: 2,
        date: d(day),
        age_days: 3,
        found: 0,
        expected: 1,
    };
    // Under its live lease, A's writes land.
    let recorded = store
        .record_scan(&[gap(1), gap(2)], &[], Some(&old))
        .await?;
    assert_eq!(recorded.opened, 2);
    let open = store.gaps(GapFilter::Open).await?;
    let (first, second) = (open[0].id, open[1].id);

    // B finds A dead and takes the lease over: term 2.
    let LeaseOutcome::Held { fence: new, .. } =
        store.acquire_lease(LEADER, b.id, TTL, Some(a.id)).await?
    else {
        bail!("a take-over of a dead holder is granted");
    };
    assert_eq!((old.term, new.term), (1, 2));
    let is_fenced = |outcome: Result<_, StoreError>, what: &str, fence: &Fence| match outcome {
        Err(StoreError::Fenced { lease, term }) => {
            assert_eq!((lease.as_str(), term), (LEADER, fence.term), "{what}");
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("{what}: {error}")),
        Ok(_) => Err(anyhow::anyhow!("{what}: written under a stale term")),
    };
    let ledger_before = store.gaps(GapFilter::All).await?;

    // A, woken, tries to create a heal run: nothing is written, not even its tasks or cells.
    let heal = run_of(RunKind::Heal, vec![task(2, d(1), d(1))]);
    let stale = Creator {
        owner: a,
        ttl: TTL,
        fence: Some(&old),
        heals: &[first],
    };
    is_fenced(
        store.create_run_by(&heal, &stale).await.map(drop),
        "run creation",
        &old,
    )?;
    assert!(store.list_runs(10).await?.is_empty(), "no run created");
    is_fenced(
        store
            .record_scan(&[gap(3)], &[(2, d(2))], Some(&old))
            .await
            .map(drop),
        "scan",
        &old,
    )?;
    is_fenced(
        store
            .alert_gaps(&[second], &["webhook"], &serde_json::json!({}), Some(&old))
            .await
            .map(drop),
        "alert",
        &old,
    )?;
    assert!(store.undelivered_alerts(10).await?.is_empty(), "no alert");
    assert_eq!(store.gaps(GapFilter::All).await?, ledger_before);

    // B creates the heal run; its gap goes `triggered` by it in the same transaction.
    let current = Creator {
        owner: b,
        ttl: TTL,
        fence: Some(&new),
        heals: &[first],
    };
    let run = store.create_run_by(&heal, &current).await?;
    let row = |id: i64| {
        let store = store.clone();
        async move {
            store
                .gaps(GapFilter::All)
                .await?
                .into_iter()
                .find(|gap| gap.id == id)
                .with_context(|| format!("no gap {id}"))
        }
    };
    let triggered = row(first).await?;
    assert_eq!(triggered.healing_status, GapStatus::Triggered);
    assert_eq!(triggered.run_id.as_ref(), Some(&run));
    assert_eq!(triggered.attempts, 1);
    is_fenced(
        store
            .trigger_gaps(&[second], &run, Some(&old))
            .await
            .map(drop),
        "trigger",
        &old,
    )?;
    assert_eq!(row(second).await?.healing_status, GapStatus::Pending);

    // The run completes its cell and ends; its node dies before recording the heal.
    let task_id = store.tasks(&run).await?[0].id;
    let claim = store
        .claim(task_id, 0, b.id, TTL)
        .await?
        .context("claimable")?;
    assert!(
        store
            .complete(task_id, claim.epoch, &serde_json::json!({}), "heal")
            .await?
    );
    assert!(store.ended_heals().await?.is_empty(), "still running");
    assert!(store.finish_run(&run, RunState::Succeeded).await?);
    assert_eq!(store.ended_heals().await?, std::slice::from_ref(&run));
    is_fenced(
        store.finish_heal(&run, Some(&old)).await.map(drop),
        "heal record",
        &old,
    )?;
    assert_eq!(row(first).await?.healing_status, GapStatus::Triggered);

    // Under the current term every write lands; recording a heal twice changes nothing.
    assert_eq!(store.finish_heal(&run, Some(&new)).await?, (1, 0));
    let healed = row(first).await?;
    assert_eq!(healed.healing_status, GapStatus::Complete);
    assert!(healed.healed_at.is_some());
    assert_eq!(store.finish_heal(&run, None).await?, (0, 0));
    assert_eq!(row(first).await?, healed);
    assert!(store.ended_heals().await?.is_empty());
    assert_eq!(
        store
            .alert_gaps(&[second], &["webhook"], &serde_json::json!({}), Some(&new))
            .await?,
        1
    );
    assert_eq!(store.undelivered_alerts(10).await?.len(), 1);
    assert_eq!(
        store.trigger_gaps(&[second], &run, Some(&new)).await?,
        1,
        "the current leader triggers"
    );
    let recorded = store
        .record_scan(&[gap(3)], &[(2, d(2))], Some(&new))
        .await?;
    assert_eq!((recorded.opened, recorded.closed), (1, 1));

    // A heal run that ended without completing its cell: its gap fails, with a reason.
    let third = store
        .gaps(GapFilter::Open)
        .await?
        .into_iter()
        .find(|gap| gap.partition_date == d(3))
        .context("the third gap is open")?
        .id;
    let failing = Creator {
        heals: &[third],
        ..current
    };
    let run = store
        .create_run_by(&run_of(RunKind::Heal, vec![task(2, d(3), d(3))]), &failing)
        .await?;
    assert!(store.finish_run(&run, RunState::Failed).await?);
    assert_eq!(store.ended_heals().await?, std::slice::from_ref(&run));
    assert_eq!(store.finish_heal(&run, Some(&new)).await?, (0, 1));
    let failed = row(third).await?;
    assert_eq!(failed.healing_status, GapStatus::Failed);
    assert!(failed.last_error.is_some());
    assert!(store.ended_heals().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sqlite_leader_writes_are_fenced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    leader_writes_are_fenced(Store::connect("sqlite://state.db", dir.path()).await?).await
}

#[tokio::test]
async fn postgres_leader_writes_are_fenced() -> anyhow::Result<()> {
    on_postgres(leader_writes_are_fenced).await
}
