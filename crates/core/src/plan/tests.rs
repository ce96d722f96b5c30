//! Planner tests: worked examples and the invariants as properties.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::cells::{Observations, PhaseObservation, classify};
use crate::dates::{add_days, midday, parse_date};
use crate::spec::{NoFiles, parse};

fn d(s: &str) -> Date {
    parse_date(s).unwrap()
}

fn nba_like() -> Spec {
    parse(
        r#"
[pipeline]
name = "t"
start = "2024-01-01"

[[phase]]
id = 2
name = "raw"
check.command = ["probe"]

[[phase]]
id = 3
name = "analytics"
needs = [2]
run.command = ["run3", "{start}", "{end}"]
batch_days = 3
check.command = ["probe"]

[[phase]]
id = 4
name = "precompute"
needs = [{ phase = 3, lookback_days = 2 }]
run.command = ["run4", "{start}", "{end}"]
check.command = ["probe"]
"#,
        &NoFiles,
    )
    .unwrap()
}

/// Observations where `complete[phase]` lists the complete dates (count 1, expected 1).
fn observe(range: DateRange, complete: &[(u32, &[&str])]) -> Observations {
    let mut phases = HashMap::new();
    for (phase, dates) in complete {
        phases.insert(
            PhaseId(*phase),
            PhaseObservation {
                counts: dates.iter().map(|s| (d(s), 1)).collect(),
                expected: None,
            },
        );
    }
    Observations {
        range,
        calendar: None,
        phases,
    }
}

#[test]
fn plans_missing_cells_downstream_in_order() {
    let spec = nba_like();
    let range = DateRange::new(d("2024-01-01"), d("2024-01-06")).unwrap();
    let all = [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
        "2024-01-06",
    ];
    let observations = observe(range, &[(2, &all), (3, &all[..3]), (4, &all[..2])]);
    let matrix = classify(&spec, &observations, midday(d("2024-01-06")));
    let plan = plan(
        &spec,
        &matrix,
        &Request {
            range,
            phases: [PhaseId(3), PhaseId(4)].into(),
            force: false,
        },
    )
    .unwrap();
    let tasks: Vec<(u32, String, Vec<usize>)> = plan
        .tasks
        .iter()
        .map(|t| (t.phase.0, t.range.to_string(), t.deps.clone()))
        .collect();
    assert_eq!(
        tasks,
        vec![
            (3, "2024-01-04..2024-01-06".to_owned(), vec![]),
            (4, "2024-01-03".to_owned(), vec![]),
            (4, "2024-01-04".to_owned(), vec![0]),
            (4, "2024-01-05".to_owned(), vec![0]),
            (4, "2024-01-06".to_owned(), vec![0]),
        ]
    );
    assert_eq!(plan.phases[0].skipped_complete, 3);
    assert!(plan.blocked.is_empty());
    insta::assert_snapshot!(crate::render::plan_text(&plan));
}

#[test]
fn blocked_cells_name_their_root() {
    let spec = nba_like();
    let range = DateRange::new(d("2024-01-01"), d("2024-01-04")).unwrap();
    let all = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"];
    // Phase 3 is missing on 01-02 and is not part of the request: phase 4 can't run on
    // 01-02..01-04 (lookback 2 reaches back to 01-02).
    let observations = observe(
        range,
        &[(2, &all), (3, &["2024-01-01", "2024-01-03", "2024-01-04"])],
    );
    let matrix = classify(&spec, &observations, midday(d("2024-01-04")));
    let plan = plan(
        &spec,
        &matrix,
        &Request {
            range,
            phases: [PhaseId(4)].into(),
            force: false,
        },
    )
    .unwrap();
    assert_eq!(plan.tasks.len(), 1);
    assert_eq!(plan.tasks[0].range.to_string(), "2024-01-01");
    let messages: Vec<String> = plan.blocked.iter().map(BlockedCell::describe).collect();
    assert_eq!(
        messages,
        vec![
            "phase 4 2024-01-02 blocked: phase 3 2024-01-02 missing and not in this backfill",
            "phase 4 2024-01-03 blocked: phase 3 2024-01-02 missing and not in this backfill",
            "phase 4 2024-01-04 blocked: phase 3 2024-01-02 missing and not in this backfill",
        ]
    );
    insta::assert_snapshot!(crate::render::plan_text(&plan));
}

#[test]
fn source_gaps_block_everything_downstream() {
    let spec = nba_like();
    let range = DateRange::new(d("2024-01-01"), d("2024-01-02")).unwrap();
    let observations = observe(range, &[(2, &["2024-01-01"])]);
    // On the 3rd, when both dates are due.
    let matrix = classify(&spec, &observations, midday(d("2024-01-03")));
    let plan = plan(
        &spec,
        &matrix,
        &Request {
            range,
            phases: [PhaseId(2), PhaseId(3), PhaseId(4)].into(),
            force: false,
        },
    )
    .unwrap();
    let messages: Vec<String> = plan.blocked.iter().map(BlockedCell::describe).collect();
    assert_eq!(
        messages,
        vec![
            "phase 2 2024-01-02 missing: its phase has no runner, so gapless cannot produce it",
            "phase 3 2024-01-02 blocked: phase 2 2024-01-02 missing and its phase has no runner",
            "phase 4 2024-01-02 blocked: phase 2 2024-01-02 missing and its phase has no runner",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

#[derive(Debug, Clone)]
struct Case {
    spec: Spec,
    observations: Observations,
    request: Request,
    today: Date,
}

fn arbitrary_case() -> impl Strategy<Value = Case> {
    let phases = 1_usize..5;
    phases
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(
                    (
                        any::<u8>(),
                        0_u32..4,
                        any::<bool>(),
                        1_u32..5,
                        any::<bool>(),
                    ),
                    n,
                ),
                proptest::collection::vec(0_i64..4, n * 20),
                proptest::collection::vec(any::<bool>(), 20),
                proptest::collection::vec(any::<bool>(), n),
                any::<bool>(),
                0_usize..10,
                10_usize..20,
            )
        })
        .prop_map(
            |(n, shapes, counts, calendar, requested, force, from, to)| {
                let mut toml = String::from("[pipeline]\nname = \"p\"\nstart = \"2024-01-03\"\n");
                for (i, (needs_mask, lookback, self_dep, batch, runnable)) in
                    shapes.iter().enumerate()
                {
                    toml.push_str(&format!(
                        "\n[[phase]]\nid = {}\nname = \"p{}\"\n",
                        i + 1,
                        i + 1
                    ));
                    let mut needs: Vec<String> = (0..i)
                        .filter(|j| needs_mask & (1 << j) != 0)
                        .map(|j| format!("{{ phase = {}, lookback_days = {} }}", j + 1, lookback))
                        .collect();
                    if *self_dep {
                        needs.push(format!("{{ phase = {}, lookback_days = 1 }}", i + 1));
                    }
                    toml.push_str(&format!("needs = [{}]\n", needs.join(", ")));
                    if *runnable {
                        toml.push_str("run.command = [\"x\"]\n");
                    }
                    toml.push_str(&format!(
                        "batch_days = {batch}\ncheck.command = [\"c\"]\nexpect.min = 2\n"
                    ));
                }
                let spec = parse(&toml, &NoFiles).unwrap();
                let range = DateRange::new(d("2024-01-01"), d("2024-01-20")).unwrap();
                let mut phases = HashMap::new();
                for p in 0..n {
                    let counts: BTreeMap<Date, i64> = (0..20)
                        .map(|i| (add_days(range.start(), i as i64), counts[p * 20 + i]))
                        .collect();
                    phases.insert(
                        PhaseId(p as u32 + 1),
                        PhaseObservation {
                            counts,
                            expected: None,
                        },
                    );
                }
                let calendar: BTreeSet<Date> = (0..20)
                    .filter(|i| calendar[*i] || *i % 3 == 0)
                    .map(|i| add_days(range.start(), i as i64))
                    .collect();
                let mut selected: BTreeSet<PhaseId> = (0..n)
                    .filter(|p| requested[*p])
                    .map(|p| PhaseId(p as u32 + 1))
                    .collect();
                if selected.is_empty() {
                    selected.insert(PhaseId(n as u32));
                }
                Case {
                    spec,
                    observations: Observations {
                        range,
                        calendar: Some(calendar),
                        phases,
                    },
                    request: Request {
                        range: DateRange::new(
                            add_days(range.start(), from as i64),
                            add_days(range.start(), to as i64),
                        )
                        .unwrap(),
                        phases: selected,
                        force,
                    },
                    today: d("2024-01-18"),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_keep_their_invariants(case in arbitrary_case()) {
        let matrix = classify(&case.spec, &case.observations, midday(case.today));
        let plan = plan(&case.spec, &matrix, &case.request).unwrap();
        let mut producer: HashMap<(PhaseId, Date), usize> = HashMap::new();
        for (i, task) in plan.tasks.iter().enumerate() {
            let phase = case.spec.phase(task.phase).unwrap();
            // Batches: at most batch_days long, only planned or not-expected dates inside.
            prop_assert!(task.range.len() <= phase.batch_days as usize);
            for date in task.range.iter() {
                let state = matrix.cell(task.phase, date).unwrap().state;
                prop_assert!(task.dates.contains(&date) || state == CellState::NotExpected,
                    "task {} spans {date} in state {state:?}", task.range);
            }
            for date in &task.dates {
                // No cell twice.
                prop_assert!(producer.insert((task.phase, *date), i).is_none(), "cell produced twice");
                let state = matrix.cell(task.phase, *date).unwrap().state;
                // Only missing unless forced; never a not-expected cell.
                prop_assert!(state != CellState::NotExpected);
                prop_assert!(case.request.force || state != CellState::Complete);
                prop_assert!(case.request.range.contains(*date));
                prop_assert!(case.request.phases.contains(&task.phase));
            }
            // Deps only point backwards.
            prop_assert!(task.deps.iter().all(|dep| *dep < i));
        }
        // Every needed cell is satisfied already or produced by an earlier task that is a dep.
        for (i, task) in plan.tasks.iter().enumerate() {
            let phase = case.spec.phase(task.phase).unwrap();
            for date in &task.dates {
                for need in &phase.needs {
                    let window = need.window(phase.id);
                    for offset in window {
                        let needed = add_days(*date, offset);
                        if needed < matrix.range().start() {
                            continue;
                        }
                        match producer.get(&(need.phase, needed)) {
                            Some(j) if *j == i => prop_assert!(need.phase == task.phase),
                            Some(j) => prop_assert!(*j < i && task.deps.contains(j),
                                "task {i} needs cell from task {j} without depending on it"),
                            None => {
                                let state = matrix.cell(need.phase, needed).unwrap().state;
                                prop_assert!(state.satisfies(), "needed {needed} of phase {} is {state:?}", need.phase);
                            }
                        }
                    }
                }
            }
        }
        // Every requested cell in range is planned, skipped (complete / not expected) or blocked.
        let blocked: BTreeSet<(PhaseId, Date)> = plan.blocked.iter().map(|b| (b.cell.phase, b.cell.date)).collect();
        for phase in &case.spec.phases {
            if !case.request.phases.contains(&phase.id) { continue; }
            for date in case.request.range.iter() {
                let state = matrix.cell(phase.id, date).unwrap().state;
                let planned = producer.contains_key(&(phase.id, date));
                let accounted = planned || blocked.contains(&(phase.id, date))
                    || state == CellState::NotExpected
                    || (state == CellState::Complete && (!case.request.force || phase.run.is_none()));
                prop_assert!(accounted, "phase {} {date} ({state:?}) neither planned, skipped nor blocked", phase.id);
                prop_assert!(!(planned && blocked.contains(&(phase.id, date))));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded planning.

/// `phases` phases in a chain, each needing the previous one with a 30-day lookback.
fn long_chain(phases: u32, start: &str) -> Spec {
    let mut toml = format!("[pipeline]\nname = \"chain\"\nstart = \"{start}\"\n");
    for id in 1..=phases {
        toml.push_str(&format!(
            "\n[[phase]]\nid = {id}\nname = \"p{id}\"\nrun.command = [\"x\"]\ncheck.command = [\"c\"]\n"
        ));
        if id > 1 {
            toml.push_str(&format!(
                "needs = [{{ phase = {}, lookback_days = 30 }}]\n",
                id - 1
            ));
        }
    }
    parse(&toml, &NoFiles).unwrap()
}

#[test]
fn one_date_of_a_thousand_phase_chain_observes_one_window() {
    let spec = long_chain(1_000, "2000-01-01");
    let date = d("2024-06-01");
    let range = observation_range(&spec, DateRange::single(date));
    // One 30-day window before the date, not 1,000 chained windows (82 years).
    assert_eq!(range.to_string(), "2024-05-02..2024-06-01");
    // Every phase complete before the date, missing on it.
    let mut phases = HashMap::new();
    for phase in &spec.phases {
        let counts = range
            .iter()
            .filter(|day| *day < date)
            .map(|day| (day, 1))
            .collect();
        phases.insert(
            phase.id,
            PhaseObservation {
                counts,
                expected: None,
            },
        );
    }
    let observations = Observations {
        range,
        calendar: None,
        phases,
    };
    let matrix = classify(&spec, &observations, midday(date));
    let cells_examined = matrix.phases().len() * matrix.range().len();
    assert_eq!(cells_examined, 31_000);
    let plan = plan(
        &spec,
        &matrix,
        &Request {
            range: DateRange::single(date),
            phases: spec.phases.iter().map(|p| p.id).collect(),
            force: false,
        },
    )
    .unwrap();
    assert_eq!(plan.tasks.len(), 1_000);
    assert!(plan.blocked.is_empty());
    for (i, task) in plan.tasks.iter().enumerate().skip(1) {
        assert_eq!(task.deps, vec![i - 1]);
    }
}

#[test]
fn observation_range_stops_at_the_pipeline_start() {
    let spec = long_chain(3, "2024-05-20");
    let range = observation_range(&spec, DateRange::single(d("2024-06-01")));
    assert_eq!(range.to_string(), "2024-05-20..2024-06-01");
    // A request before the start is observed as asked.
    let early = DateRange::new(d("2024-05-01"), d("2024-05-03")).unwrap();
    assert_eq!(observation_range(&spec, early), early);
    // No lookback at all: just the request.
    let flat = parse(
        "[pipeline]\nname = \"f\"\nstart = \"2000-01-01\"\n\n[[phase]]\nid = 1\nname = \"a\"\ncheck.command = [\"c\"]\n",
        &NoFiles,
    )
    .unwrap();
    assert_eq!(
        observation_range(&flat, DateRange::single(d("2024-06-01"))).to_string(),
        "2024-06-01"
    );
}

#[test]
fn dependencies_ignore_folded_dates_no_cell_needs() {
    // Phase 2's task spans 01-01..01-09 but only runs 01-01 and 01-09 (the days between expect
    // nothing of phase 2); phase 1's task producing 01-05 is not needed by any of its cells.
    let spec = parse(
        r#"
[pipeline]
name = "t"
start = "2024-01-01"

[[phase]]
id = 1
name = "a"
run.command = ["x"]
check.command = ["c"]

[[phase]]
id = 2
name = "b"
needs = [1]
run.command = ["x"]
batch_days = 10
check.command = ["c"]
"#,
        &NoFiles,
    )
    .unwrap();
    let task = |phase: u32, start: &str, end: &str, dates: &[&str]| PlannedTask {
        phase: PhaseId(phase),
        range: DateRange::new(d(start), d(end)).unwrap(),
        dates: dates.iter().map(|s| d(s)).collect(),
        deps: Vec::new(),
    };
    let tasks = vec![
        task(1, "2024-01-01", "2024-01-01", &["2024-01-01"]),
        task(1, "2024-01-05", "2024-01-05", &["2024-01-05"]),
        task(2, "2024-01-01", "2024-01-09", &["2024-01-01", "2024-01-09"]),
    ];
    assert_eq!(dependencies(&spec, &tasks), vec![vec![], vec![], vec![0]]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Observing only [`observation_range`] classifies the requested cells and plans exactly
    /// as observing the whole chain of lookbacks does.
    #[test]
    fn one_lookback_window_plans_like_the_whole_chain(case in arbitrary_case()) {
        let wide = classify(&case.spec, &case.observations, midday(case.today));
        let narrow_observations = Observations {
            range: observation_range(&case.spec, case.request.range),
            ..case.observations.clone()
        };
        prop_assert!(case.observations.range.contains(narrow_observations.range.start()));
        let narrow = classify(&case.spec, &narrow_observations, midday(case.today));
        for phase in &case.spec.phases {
            for date in case.request.range.iter() {
                prop_assert_eq!(
                    wide.cell(phase.id, date).unwrap(),
                    narrow.cell(phase.id, date).unwrap()
                );
            }
        }
        let wide_plan = plan(&case.spec, &wide, &case.request).unwrap();
        let narrow_plan = plan(&case.spec, &narrow, &case.request).unwrap();
        prop_assert_eq!(&wide_plan.tasks, &narrow_plan.tasks);
        let cells = |plan: &Plan| plan.blocked.iter().map(|b| b.cell).collect::<Vec<_>>();
        prop_assert_eq!(cells(&wide_plan), cells(&narrow_plan));
    }
}

#[test]
fn a_partly_blocked_batch_runs_its_runnable_dates_split_at_the_blocked_ones() {
    // Phase 2 (10-day batches) needs phase 1, a source missing on 01-04 and 01-05: its batch
    // 01-01..01-10 runs 01-01..01-03 and 01-06..01-10; its 2-day-lookback dependent phase 3
    // loses 01-04..01-07 only.
    let spec = parse(
        r#"
[pipeline]
name = "t"
start = "2024-01-01"

[[phase]]
id = 1
name = "source"
check.command = ["c"]

[[phase]]
id = 2
name = "analytics"
needs = [1]
run.command = ["x"]
batch_days = 10
check.command = ["c"]

[[phase]]
id = 3
name = "rolling"
needs = [{ phase = 2, lookback_days = 2 }]
run.command = ["x"]
batch_days = 10
check.command = ["c"]
"#,
        &NoFiles,
    )
    .unwrap();
    let range = DateRange::new(d("2024-01-01"), d("2024-01-10")).unwrap();
    let source: Vec<String> = range
        .iter()
        .filter(|day| *day != d("2024-01-04") && *day != d("2024-01-05"))
        .map(|day| day.to_string())
        .collect();
    let source: Vec<&str> = source.iter().map(String::as_str).collect();
    let observations = observe(range, &[(1, &source)]);
    let matrix = classify(&spec, &observations, midday(d("2024-01-10")));
    let plan = plan(
        &spec,
        &matrix,
        &Request {
            range,
            phases: [PhaseId(2), PhaseId(3)].into(),
            force: false,
        },
    )
    .unwrap();
    let tasks: Vec<(u32, String, Vec<usize>)> = plan
        .tasks
        .iter()
        .map(|t| (t.phase.0, t.range.to_string(), t.deps.clone()))
        .collect();
    assert_eq!(
        tasks,
        vec![
            (2, "2024-01-01..2024-01-03".to_owned(), vec![]),
            (2, "2024-01-06..2024-01-10".to_owned(), vec![]),
            (3, "2024-01-01..2024-01-03".to_owned(), vec![0]),
            (3, "2024-01-08..2024-01-10".to_owned(), vec![1]),
        ]
    );
    let blocked: Vec<String> = plan
        .blocked
        .iter()
        .map(|b| format!("{} {}", b.cell.phase, b.cell.date))
        .collect();
    assert_eq!(
        blocked,
        [
            "2 2024-01-04",
            "2 2024-01-05",
            "3 2024-01-04",
            "3 2024-01-05",
            "3 2024-01-06",
            "3 2024-01-07"
        ]
    );
}
