//! Prints µs per state-store call on a SQLite file, in both sync modes. Timings, not a test:
//! `cargo run --release -p gapless-store --example store_timings [tasks]`.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use gapless_store::{NewRun, NewTask, NewTaskState, RunKind, Store, SyncMode};

const TTL: Duration = Duration::from_secs(60);

fn run_of(tasks: usize) -> anyhow::Result<NewRun> {
    let first = NaiveDate::from_ymd_opt(2020, 1, 1).ok_or_else(|| anyhow::anyhow!("date"))?;
    let tasks = first
        .iter_days()
        .take(tasks)
        .map(|date| NewTask {
            phase: 1,
            start: date,
            end: date,
            dates: vec![date],
            state: NewTaskState::Pending,
            error: None,
        })
        .collect();
    Ok(NewRun {
        kind: RunKind::Backfill,
        pipeline: "timings".to_owned(),
        request: serde_json::json!({}),
        tasks,
    })
}

fn per_call(started: Instant, calls: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / calls as f64
}

async fn measure(dir: &Path, mode: SyncMode, tasks: usize) -> anyhow::Result<()> {
    let store = Store::connect_with(
        "sqlite://state.db",
        dir,
        gapless_store::ConnectOptions {
            sync: mode,
            ..Default::default()
        },
    )
    .await?;
    store.migrate().await?;

    let started = Instant::now();
    let run = store.create_run(&run_of(tasks)?).await?;
    let create_big = started.elapsed();
    let ids: Vec<i64> = store.tasks(&run).await?.iter().map(|t| t.id).collect();

    let started = Instant::now();
    let mut epochs = Vec::with_capacity(ids.len());
    for &id in &ids {
        let claim = store.claim(id, 0, "node", TTL).await?;
        epochs.push(claim.ok_or_else(|| anyhow::anyhow!("claim lost"))?.epoch);
    }
    let claim = per_call(started, ids.len());

    let started = Instant::now();
    for (&id, &epoch) in ids.iter().zip(&epochs) {
        anyhow::ensure!(store.heartbeat(id, epoch, TTL).await?);
    }
    let heartbeat = per_call(started, ids.len());

    let counts = serde_json::json!({"rows": 1});
    let started = Instant::now();
    for (&id, &epoch) in ids.iter().zip(&epochs) {
        anyhow::ensure!(store.complete(id, epoch, &counts, "backfill").await?);
    }
    let complete = per_call(started, ids.len());

    let started = Instant::now();
    for _ in 0..100 {
        store.create_run(&run_of(1)?).await?;
    }
    let create_small = per_call(started, 100);

    let started = Instant::now();
    for _ in 0..100 {
        store.flush().await?;
    }
    let flush = per_call(started, 100);

    let started = Instant::now();
    for &id in &ids {
        anyhow::ensure!(store.task(id).await?.is_some());
    }
    let read = per_call(started, ids.len());

    println!(
        "{mode:?}: claim {claim:.1} µs, heartbeat {heartbeat:.1} µs, complete {complete:.1} µs, \
         task read {read:.1} µs, create_run (1 task) {create_small:.1} µs, \
         create_run ({tasks} tasks) {:.1} ms, flush {flush:.1} µs",
        create_big.as_secs_f64() * 1e3
    );
    store.close().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let tasks = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(3000);
    // Next to the build, not in /tmp: tmpfs would make every fsync free.
    let base = std::env::current_dir()?;
    for mode in [SyncMode::Normal, SyncMode::Full] {
        let dir = tempfile::tempdir_in(&base)?;
        measure(dir.path(), mode, tasks).await?;
    }
    Ok(())
}
