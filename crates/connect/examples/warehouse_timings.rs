//! Prints the per-call cost of the warehouse on a SQLite WAL file (synchronous=FULL), on the
//! one-thread runtime the CLI uses. Timings, not a test:
//! `cargo run --release -p gapless-connect --example warehouse_timings`.
//!
//! Each call works on a date of its own, as a backfill task does: the INSERT adds one row for
//! that date and the probe counts that date, so every round does the same work.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use gapless_connect::{ScriptParams, Warehouse};

const ROUNDS: u32 = 2_000;
const INSERT: &str = "INSERT INTO t (d, x) VALUES (:start, 1)";
const PROBE: &str = "SELECT d, COUNT(*) FROM t WHERE d BETWEEN :start AND :end GROUP BY d";

fn micros_per_call(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(ROUNDS)
}

/// The `round`-th date of the `series`-th block of dates: no two loops share a date.
fn day(series: u32, round: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|first| {
            first.checked_add_days(chrono::Days::new(u64::from(series * 10_000 + round)))
        })
        .expect("every date the loops use is within chrono's range")
}

fn on(date: NaiveDate) -> ScriptParams {
    ScriptParams {
        start: date,
        end: date,
        date: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let warehouse =
        Warehouse::connect("sqlite://w.db", &[], dir.path(), Duration::from_secs(10)).await?;
    warehouse
        .execute_script(
            "CREATE TABLE t (d TEXT NOT NULL, x INTEGER NOT NULL); CREATE INDEX t_d ON t (d)",
            &on(day(0, 0)),
        )
        .await?;
    // Warm up: connections, statement caches, page cache, the blocking pool.
    for round in 0..200 {
        warehouse.execute_script(INSERT, &on(day(0, round))).await?;
        warehouse
            .counts(PROBE, day(0, round), day(0, round))
            .await?;
    }

    // The floor of any design that leaves the async worker: one blocking-pool round trip.
    let started = Instant::now();
    for _ in 0..ROUNDS {
        tokio::task::spawn_blocking(|| ()).await?;
    }
    let hop = micros_per_call(started.elapsed());

    let started = Instant::now();
    for round in 0..ROUNDS {
        warehouse.execute_script(INSERT, &on(day(1, round))).await?;
    }
    let script = micros_per_call(started.elapsed());

    let started = Instant::now();
    for round in 0..ROUNDS {
        let counts = warehouse
            .counts(PROBE, day(1, round), day(1, round))
            .await?;
        anyhow::ensure!(counts.len() == 1, "the probe found {} dates", counts.len());
    }
    let counts = micros_per_call(started.elapsed());

    // A validated runner without the gated script: the script, then the probe.
    let started = Instant::now();
    for round in 0..ROUNDS {
        warehouse.execute_script(INSERT, &on(day(2, round))).await?;
        warehouse
            .counts(PROBE, day(2, round), day(2, round))
            .await?;
    }
    let script_then_counts = micros_per_call(started.elapsed());

    eprintln!("spawn_blocking round trip:                        {hop:8.1} µs/call");
    eprintln!("execute_script (1 INSERT, WAL, synchronous=FULL): {script:8.1} µs/call");
    eprintln!("counts (indexed, 1 date, 1 row):                  {counts:8.1} µs/call");
    eprintln!("execute_script + counts:                          {script_then_counts:8.1} µs/pair");
    // The validated runner as one call: script, probe and gate in one transaction.
    let started = Instant::now();
    for round in 0..ROUNDS {
        warehouse
            .execute_script_gated(
                INSERT,
                &on(day(3, round)),
                Duration::from_secs(10),
                &[PROBE],
                |counts| {
                    if counts[0].len() == 1 {
                        Ok(())
                    } else {
                        Err(())
                    }
                },
            )
            .await?
            .map_err(|()| anyhow::anyhow!("gate rejected"))?;
    }
    let gated = micros_per_call(started.elapsed());
    eprintln!("execute_script_gated (1 INSERT, 1 probe):         {gated:8.1} µs/call");
    warehouse.close().await;
    Ok(())
}
