//! Bounded planning (issue 11, T27): a chain of N phases, each needing the previous one with a
//! 30-day lookback, planned for one date, from parsing the pipeline file to the plan. Prints
//! the time of each step and the peak resident memory of a process that does only this.
//!
//! `cargo bench -p gapless-core --bench chain` measures 1,000 and 10,000 phases, each in a
//! fresh child process so one size's peak does not hide the other's;
//! `cargo bench -p gapless-core --bench chain -- 5000` measures the sizes given.

// A measuring harness, not part of the pure library: it reads the clock, `/proc/self/status`
// for the peak memory, and starts itself once per size.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use gapless_core::cells::{Observations, PhaseObservation, classify};
use gapless_core::dates::{Date, DateRange, add_days, midday};
use gapless_core::plan::{Request, observation_range, plan};
use gapless_core::spec::{NoFiles, parse};

const CHILD: &str = "GAPLESS_CHAIN_BENCH_PHASES";

fn pipeline_file(phases: u32) -> String {
    let mut toml = String::from("[pipeline]\nname = \"chain\"\nstart = \"1990-01-01\"\n");
    for id in 1..=phases {
        toml.push_str(&format!(
            "\n[[phase]]\nid = {id}\nname = \"p{id}\"\nrun.command = [\"run\", \"{{start}}\", \"{{end}}\"]\ncheck.command = [\"probe\"]\n"
        ));
        if id > 1 {
            toml.push_str(&format!(
                "needs = [{{ phase = {}, lookback_days = 30 }}]\n",
                id - 1
            ));
        }
    }
    toml
}

/// Peak resident set of this process, from `/proc/self/status` (Linux), in MiB.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn measure(phases: u32) {
    let toml = pipeline_file(phases);
    let started = Instant::now();
    let spec = parse(&toml, &NoFiles).expect("bench pipeline is valid");
    let parsed = started.elapsed();

    let date = Date::from_ymd_opt(2024, 6, 1).expect("valid date");
    let requested = DateRange::single(date);
    let started = Instant::now();
    let range = observation_range(&spec, requested);
    // What the probes return: every phase complete before the date, missing on it.
    let counts: std::collections::BTreeMap<Date, i64> = (1..=30)
        .map(|back| (add_days(date, -back), 1))
        .filter(|(day, _)| range.contains(*day))
        .collect();
    let observations = Observations {
        range,
        calendar: None,
        phases: spec
            .phases
            .iter()
            .map(|phase| {
                (
                    phase.id,
                    PhaseObservation {
                        counts: counts.clone(),
                        expected: None,
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
    };
    let matrix = classify(&spec, &observations, midday(date));
    let request = Request {
        range: requested,
        phases: spec.phases.iter().map(|p| p.id).collect(),
        force: false,
    };
    let planned = plan(&spec, &matrix, &request).expect("plans");
    let planning = started.elapsed();
    black_box(&planned);
    println!(
        "{phases:>6} phases: parse {:>8.1} ms, observe range {} days, classify+plan {:>8.1} ms, {} tasks, peak {:.0} MiB",
        parsed.as_secs_f64() * 1e3,
        range.len(),
        planning.as_secs_f64() * 1e3,
        planned.tasks.len(),
        peak_mib().unwrap_or(f64::NAN),
    );
}

fn main() {
    if let Ok(phases) = std::env::var(CHILD) {
        measure(phases.parse().expect("phase count"));
        return;
    }
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    let exe = std::env::current_exe().expect("bench executable");
    for phases in sizes {
        let status = Command::new(&exe)
            .env(CHILD, phases.to_string())
            .status()
            .expect("runs the bench child");
        assert!(status.success(), "bench child for {phases} phases failed");
    }
}
