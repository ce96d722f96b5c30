//! The pure planner and state classification at scale: 20 phases × 3,650 days (73,000 cells)
//! and 100 phases × 10,000 days (1M cells). `cargo bench -p gapless-core --bench planner`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gapless_core::cells::{Observations, PhaseObservation, classify};
use gapless_core::dates::{Date, DateRange, add_days, midday};
use gapless_core::plan::{Request, plan};
use gapless_core::spec::{NoFiles, PhaseId, Spec, parse};

/// A chain of `phases` phases; every fifth needs a 30-day lookback, batches of 31 days.
fn spec(phases: u32) -> Spec {
    let mut toml = String::from("[pipeline]\nname = \"bench\"\nstart = \"1990-01-01\"\n");
    for id in 1..=phases {
        toml.push_str(&format!("\n[[phase]]\nid = {id}\nname = \"p{id}\"\n"));
        if id > 1 {
            let lookback = if id % 5 == 0 { 30 } else { 0 };
            toml.push_str(&format!(
                "needs = [{{ phase = {}, lookback_days = {lookback} }}]\n",
                id - 1
            ));
            toml.push_str("run.command = [\"run\", \"{start}\", \"{end}\"]\nbatch_days = 31\n");
        }
        toml.push_str("check.command = [\"probe\"]\n");
    }
    parse(&toml, &NoFiles).expect("bench spec is valid")
}

/// Observations where the first half of each phase's dates is complete and 1 in 50 dates of
/// that half is missing, so the plan has real work, lookback windows and blocked cells.
fn observations(spec: &Spec, days: usize) -> (Observations, Date) {
    let start = Date::from_ymd_opt(1990, 1, 1).expect("valid date");
    let end = add_days(start, days as i64 - 1);
    let range = DateRange::new(start, end).expect("valid range");
    let phases = spec
        .phases
        .iter()
        .map(|phase| {
            let counts = range
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < days / 2 && !(i + phase.id.0 as usize).is_multiple_of(50))
                .map(|(_, date)| (date, 1))
                .collect();
            (
                phase.id,
                PhaseObservation {
                    counts,
                    expected: None,
                },
            )
        })
        .collect::<HashMap<_, _>>();
    (
        Observations {
            range,
            calendar: None,
            phases,
        },
        end,
    )
}

fn bench(c: &mut Criterion) {
    for (phases, days, label) in [(20, 3_650, "73k cells"), (100, 10_000, "1M cells")] {
        let spec = spec(phases);
        let (observations, today) = observations(&spec, days);
        let request = Request {
            range: observations.range,
            phases: spec
                .phases
                .iter()
                .map(|p| p.id)
                .filter(|id| *id != PhaseId(1))
                .collect(),
            force: false,
        };
        let mut group = c.benchmark_group(label);
        group.sample_size(10);
        group.bench_function("classify", |b| {
            b.iter(|| black_box(classify(&spec, black_box(&observations), midday(today))));
        });
        let matrix = classify(&spec, &observations, midday(today));
        group.bench_function("plan", |b| {
            b.iter(|| black_box(plan(&spec, black_box(&matrix), &request).expect("plans")));
        });
        group.bench_function("classify+plan", |b| {
            b.iter(|| {
                let matrix = classify(&spec, black_box(&observations), midday(today));
                black_box(plan(&spec, &matrix, &request).expect("plans"))
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
