//! Re-planning tests: the story of issue 11 and, as a property, a small executor built on the
//! planner and [`reblock`] that runs exactly the cells whose needs all completed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::cells::{CellState, Completeness, Observations, PhaseObservation, classify};
use crate::dates::{add_days, midday, parse_date};
use crate::plan::{Plan, Request, plan};
use crate::spec::{NoFiles, parse};

fn d(s: &str) -> Date {
    parse_date(s).unwrap()
}

fn cell(phase: u32, date: &str) -> CellRef {
    CellRef {
        phase: PhaseId(phase),
        date: d(date),
    }
}

/// The run's tasks as the executor holds them after planning: planned tasks pending, blocked
/// cells as one-date blocked tasks.
fn run_tasks(plan: &Plan) -> Vec<RunTask> {
    let mut tasks: Vec<RunTask> = plan
        .tasks
        .iter()
        .map(|task| RunTask {
            phase: task.phase,
            range: task.range,
            dates: task.dates.clone(),
            status: TaskStatus::Pending,
        })
        .collect();
    tasks.extend(plan.blocked.iter().map(|blocked| RunTask {
        phase: blocked.cell.phase,
        range: DateRange::single(blocked.cell.date),
        dates: vec![blocked.cell.date],
        status: TaskStatus::Blocked,
    }));
    tasks
}

fn summary(tasks: &[RunTask]) -> Vec<(u32, String, TaskStatus)> {
    tasks
        .iter()
        .map(|t| (t.phase.0, t.range.to_string(), t.status))
        .collect()
}

/// Ingest in 7-day batches, analytics in 10-day batches on it, a downstream phase with a
/// 2-day lookback on analytics, and a self-dependent season phase; no games on 2024-01-12.
#[test]
fn a_failed_ingest_batch_blocks_only_the_cells_that_need_it() {
    let spec = parse(
        r#"
[pipeline]
name = "story"
start = "2024-01-01"

[[phase]]
id = 1
name = "ingest"
run.command = ["ingest"]
batch_days = 7
check.command = ["c"]

[[phase]]
id = 2
name = "analytics"
needs = [1]
run.command = ["analytics"]
batch_days = 10
check.command = ["c"]

[[phase]]
id = 3
name = "downstream"
needs = [{ phase = 2, lookback_days = 2 }]
run.command = ["downstream"]
batch_days = 10
check.command = ["c"]

[[phase]]
id = 4
name = "season"
needs = [2, { phase = 4, lookback_days = 1 }]
run.command = ["season"]
batch_days = 10
check.command = ["c"]
"#,
        &NoFiles,
    )
    .unwrap();
    let range = DateRange::new(d("2024-01-01"), d("2024-01-20")).unwrap();
    let observations = Observations {
        range,
        calendar: Some(range.iter().filter(|day| *day != d("2024-01-12")).collect()),
        phases: HashMap::new(),
    };
    let matrix = classify(&spec, &observations, midday(d("2024-01-31")));
    let planned = plan(
        &spec,
        &matrix,
        &Request {
            range,
            phases: spec.phases.iter().map(|p| p.id).collect(),
            force: false,
        },
    )
    .unwrap();
    let mut tasks = run_tasks(&planned);
    assert_eq!(
        summary(&tasks),
        vec![
            (1, "2024-01-01..2024-01-07".to_owned(), TaskStatus::Pending),
            (1, "2024-01-08..2024-01-14".to_owned(), TaskStatus::Pending),
            (1, "2024-01-15..2024-01-20".to_owned(), TaskStatus::Pending),
            (2, "2024-01-01..2024-01-10".to_owned(), TaskStatus::Pending),
            (2, "2024-01-11..2024-01-20".to_owned(), TaskStatus::Pending),
            (3, "2024-01-01..2024-01-10".to_owned(), TaskStatus::Pending),
            (3, "2024-01-11..2024-01-20".to_owned(), TaskStatus::Pending),
            (4, "2024-01-01..2024-01-10".to_owned(), TaskStatus::Pending),
            (4, "2024-01-11..2024-01-20".to_owned(), TaskStatus::Pending),
        ]
    );
    // The first ingest batch fails (the gate found 2024-01-03 short).
    tasks[0].status = TaskStatus::Failed;
    let result = reblock(&spec, &tasks, &[cell(1, "2024-01-03")]).unwrap();

    assert_eq!(
        summary(&result.tasks),
        vec![
            (1, "2024-01-01..2024-01-07".to_owned(), TaskStatus::Failed),
            (1, "2024-01-08..2024-01-14".to_owned(), TaskStatus::Pending),
            (1, "2024-01-15..2024-01-20".to_owned(), TaskStatus::Pending),
            // Analytics loses the failed week only, and runs 01-08..01-10.
            (2, "2024-01-01..2024-01-07".to_owned(), TaskStatus::Blocked),
            (2, "2024-01-11..2024-01-20".to_owned(), TaskStatus::Pending),
            // Downstream also loses 01-08 and 01-09, whose 2-day lookback reaches 01-07.
            (3, "2024-01-01..2024-01-09".to_owned(), TaskStatus::Blocked),
            (3, "2024-01-11..2024-01-20".to_owned(), TaskStatus::Pending),
            // The season phase needs its previous date: blocked until the off day 01-12.
            (4, "2024-01-01..2024-01-10".to_owned(), TaskStatus::Blocked),
            (4, "2024-01-11".to_owned(), TaskStatus::Blocked),
            (2, "2024-01-08..2024-01-10".to_owned(), TaskStatus::Pending),
            (3, "2024-01-10".to_owned(), TaskStatus::Pending),
            (4, "2024-01-13..2024-01-20".to_owned(), TaskStatus::Pending),
        ]
    );
    assert_eq!(
        result
            .splits
            .iter()
            .map(|s| (s.task, s.pieces.iter().map(|p| p.index).collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        vec![
            (3, vec![3, 9]),
            (5, vec![5, 10]),
            (7, vec![7]),
            (8, vec![8, 11])
        ]
    );
    let blocked: BTreeMap<CellRef, CellRef> =
        result.blocked.iter().map(|b| (b.cell, b.root)).collect();
    assert_eq!(blocked.len(), 7 + 9 + 11);
    assert_eq!(blocked[&cell(4, "2024-01-11")], cell(1, "2024-01-07"));
    assert_eq!(blocked[&cell(3, "2024-01-09")], cell(1, "2024-01-07"));
    assert_eq!(blocked[&cell(2, "2024-01-03")], cell(1, "2024-01-03"));
    assert!(!blocked.contains_key(&cell(2, "2024-01-08")));
    assert!(!blocked.contains_key(&cell(4, "2024-01-13")));
    // Runnable pieces wait for runnable tasks only.
    assert_eq!(result.deps[9], vec![1]);
    assert_eq!(result.deps[10], vec![9]);
    assert_eq!(result.deps[11], vec![4]);
    assert_eq!(result.deps[6], vec![4, 9]);
    // Nothing new is unavailable: nothing changes.
    let again = reblock(&spec, &result.tasks, &[]).unwrap();
    assert_eq!(again.tasks, result.tasks);
    assert!(again.blocked.is_empty() && again.splits.is_empty());
}

#[test]
fn tasks_a_run_cannot_hold_are_refused() {
    let spec = parse(
        "[pipeline]\nname = \"t\"\nstart = \"2024-01-01\"\n\n[[phase]]\nid = 1\nname = \"a\"\nrun.command = [\"x\"]\ncheck.command = [\"c\"]\n",
        &NoFiles,
    )
    .unwrap();
    let task = |phase: u32, start: &str, end: &str, dates: &[&str]| RunTask {
        phase: PhaseId(phase),
        range: DateRange::new(d(start), d(end)).unwrap(),
        dates: dates.iter().map(|s| d(s)).collect(),
        status: TaskStatus::Pending,
    };
    assert_eq!(
        reblock(
            &spec,
            &[task(9, "2024-01-01", "2024-01-01", &["2024-01-01"])],
            &[]
        ),
        Err(ReblockError::UnknownPhase {
            task: 0,
            phase: PhaseId(9)
        })
    );
    let outside = reblock(
        &spec,
        &[task(1, "2024-01-01", "2024-01-02", &["2024-01-03"])],
        &[],
    );
    assert_eq!(
        outside.unwrap_err().to_string(),
        "task 0 (2024-01-01..2024-01-02) lists 2024-01-03, outside its range"
    );
    let twice = reblock(
        &spec,
        &[
            task(1, "2024-01-01", "2024-01-02", &["2024-01-01", "2024-01-02"]),
            task(1, "2024-01-02", "2024-01-02", &["2024-01-02"]),
        ],
        &[],
    );
    assert_eq!(
        twice.unwrap_err().to_string(),
        "phase 1 2024-01-02 is in tasks 0 and 1"
    );
}

// ---------------------------------------------------------------------------------------------
// Property: a small executor on the planner and `reblock` runs exactly the cells whose needs
// all completed.

const DAYS: usize = 30;

#[derive(Debug, Clone)]
struct Case {
    spec: Spec,
    observations: Observations,
    request: Request,
    /// Cells whose task fails when it runs.
    fails: BTreeSet<CellRef>,
}

fn arbitrary_case() -> impl Strategy<Value = Case> {
    (1_usize..6)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(
                    (
                        any::<u8>(),
                        proptest::collection::vec(0_u32..5, 6),
                        0_u32..4,
                        1_u32..8,
                        0_u8..6,
                    ),
                    n,
                ),
                proptest::collection::vec(0_i64..3, n * DAYS),
                proptest::collection::vec(any::<bool>(), DAYS),
                proptest::collection::vec(0_u8..8, n * DAYS),
                any::<u8>(),
                0_usize..12,
                12_usize..DAYS,
            )
        })
        .prop_map(
            |(n, shapes, counts, calendar, fails, requested, from, to)| {
                let mut toml = String::from("[pipeline]\nname = \"p\"\nstart = \"2024-01-03\"\n");
                for (i, (needs_mask, lookbacks, self_lookback, batch, runner)) in
                    shapes.iter().enumerate()
                {
                    toml.push_str(&format!(
                        "\n[[phase]]\nid = {}\nname = \"p{}\"\n",
                        i + 1,
                        i + 1
                    ));
                    let mut needs: Vec<String> = (0..i)
                        .filter(|j| needs_mask & (1 << j) != 0)
                        .map(|j| {
                            format!("{{ phase = {}, lookback_days = {} }}", j + 1, lookbacks[j])
                        })
                        .collect();
                    if *self_lookback > 0 {
                        needs.push(format!(
                            "{{ phase = {}, lookback_days = {self_lookback} }}",
                            i + 1
                        ));
                    }
                    toml.push_str(&format!("needs = [{}]\n", needs.join(", ")));
                    // Most phases have a runner; some are sources gapless only observes.
                    if *runner != 0 {
                        toml.push_str("run.command = [\"x\"]\n");
                    }
                    toml.push_str(&format!(
                        "batch_days = {batch}\ncheck.command = [\"c\"]\nexpect.min = 2\n"
                    ));
                }
                let spec = parse(&toml, &NoFiles).unwrap();
                let range = DateRange::new(d("2024-01-01"), d("2024-01-30")).unwrap();
                let mut phases = HashMap::new();
                let mut failing = BTreeSet::new();
                for p in 0..n {
                    let id = PhaseId(p as u32 + 1);
                    let counts: BTreeMap<Date, i64> = (0..DAYS)
                        .map(|i| (add_days(range.start(), i as i64), counts[p * DAYS + i]))
                        .collect();
                    phases.insert(
                        id,
                        PhaseObservation {
                            counts,
                            expected: None,
                        },
                    );
                    for i in (0..DAYS).filter(|i| fails[p * DAYS + i] == 0) {
                        failing.insert(CellRef {
                            phase: id,
                            date: add_days(range.start(), i as i64),
                        });
                    }
                }
                let calendar: BTreeSet<Date> = (0..DAYS)
                    .filter(|i| calendar[*i] || i % 4 == 0)
                    .map(|i| add_days(range.start(), i as i64))
                    .collect();
                // Two runs in three request every phase.
                let mut selected: BTreeSet<PhaseId> = (0..n)
                    .filter(|p| requested % 3 == 0 && requested & (1 << (p + 2)) != 0)
                    .map(|p| PhaseId(p as u32 + 1))
                    .collect();
                if selected.is_empty() {
                    selected = (1..=n as u32).map(PhaseId).collect();
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
                        force: false,
                    },
                    fails: failing,
                }
            },
        )
}

/// What the simulated run did.
struct Simulated {
    /// Cells whose task ran (complete or failed).
    ran: BTreeSet<CellRef>,
    /// Cells whose task failed.
    failed: BTreeSet<CellRef>,
    /// Cells `reblock` reported blocked, with their roots.
    newly_blocked: Vec<Unreachable>,
    /// The tasks at the end.
    tasks: Vec<RunTask>,
}

fn satisfied(matrix: &Completeness, cell: CellRef) -> bool {
    matrix
        .cell(cell.phase, cell.date)
        .is_none_or(|c| c.state.satisfies())
}

/// Runs the plan: repeatedly the first pending task whose dependencies are all complete; a
/// task with a failing cell fails, and `reblock` re-plans the run.
fn simulate(case: &Case, matrix: &Completeness, planned: &Plan) -> Result<Simulated, String> {
    let mut tasks = run_tasks(planned);
    let mut deps: Vec<Vec<usize>> = planned.tasks.iter().map(|t| t.deps.clone()).collect();
    deps.resize(tasks.len(), Vec::new());
    let mut complete: BTreeSet<CellRef> = BTreeSet::new();
    let mut simulated = Simulated {
        ran: BTreeSet::new(),
        failed: BTreeSet::new(),
        newly_blocked: Vec::new(),
        tasks: Vec::new(),
    };
    while let Some(i) = (0..tasks.len()).find(|&i| {
        tasks[i].status == TaskStatus::Pending
            && deps[i]
                .iter()
                .all(|&j| tasks[j].status == TaskStatus::Complete)
    }) {
        let task = tasks[i].clone();
        let phase = case.spec.phase(task.phase).unwrap();
        // Independently of the task graph: everything each cell needs is complete now.
        for date in &task.dates {
            for need in &phase.needs {
                for offset in need.window(phase.id) {
                    let needed = CellRef {
                        phase: need.phase,
                        date: add_days(*date, offset),
                    };
                    let produced_in_run = tasks
                        .iter()
                        .any(|t| t.phase == needed.phase && t.dates.contains(&needed.date));
                    // A batch is one runner invocation: a self-dependency inside it is met by
                    // the batch itself.
                    let ok = if needed.phase == task.phase && task.dates.contains(&needed.date) {
                        true
                    } else if produced_in_run {
                        complete.contains(&needed)
                    } else {
                        satisfied(matrix, needed)
                    };
                    if !ok {
                        return Err(format!(
                            "phase {} {date} ran before phase {} {} was complete",
                            task.phase, needed.phase, needed.date
                        ));
                    }
                }
            }
        }
        let cells: Vec<CellRef> = task
            .dates
            .iter()
            .map(|date| CellRef {
                phase: task.phase,
                date: *date,
            })
            .collect();
        simulated.ran.extend(cells.iter().copied());
        if cells.iter().any(|c| case.fails.contains(c)) {
            tasks[i].status = TaskStatus::Failed;
            simulated.failed.extend(cells.iter().copied());
            let result = reblock(&case.spec, &tasks, &cells).map_err(|e| e.to_string())?;
            simulated.newly_blocked.extend(result.blocked);
            tasks = result.tasks;
            deps = result.deps;
        } else {
            tasks[i].status = TaskStatus::Complete;
            complete.extend(cells);
        }
    }
    simulated.tasks = tasks;
    Ok(simulated)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn exactly_the_cells_whose_needs_completed_run(case in arbitrary_case()) {
        let today = d("2024-01-30");
        let matrix = classify(&case.spec, &case.observations, midday(today));
        let planned = plan(&case.spec, &matrix, &case.request).unwrap();
        let simulated = simulate(&case, &matrix, &planned);
        prop_assert!(simulated.is_ok(), "{}", simulated.err().unwrap_or_default());
        let simulated = simulated.unwrap();

        // Nothing is left waiting: every task ran, failed or is blocked.
        for task in &simulated.tasks {
            prop_assert!(
                matches!(task.status, TaskStatus::Complete | TaskStatus::Failed | TaskStatus::Blocked),
                "phase {} {} left {:?}", task.phase, task.range, task.status
            );
        }
        // Batches stay within batch_days, hold only their own dates or dates expecting
        // nothing, and no cell is in two tasks.
        let mut holder: BTreeMap<CellRef, usize> = BTreeMap::new();
        for (i, task) in simulated.tasks.iter().enumerate() {
            let phase = case.spec.phase(task.phase).unwrap();
            prop_assert!(task.range.len() <= phase.batch_days as usize);
            for date in task.range.iter() {
                let state = matrix.cell(task.phase, date).unwrap().state;
                prop_assert!(task.dates.contains(&date) || state == CellState::NotExpected);
            }
            for date in &task.dates {
                let c = CellRef { phase: task.phase, date: *date };
                prop_assert!(holder.insert(c, i).is_none(), "phase {} {date} in two tasks", task.phase);
            }
        }

        // The oracle, from the spec's needs and the observations alone: a requested cell that
        // is not complete runs iff its phase has a runner and every cell it needs completed
        // (was complete, or ran and did not fail). The one exception is a self-dependency on
        // a date of the same batch: one runner invocation produces both, so it is met when the
        // batch runs, whether or not the batch then fails.
        let completed = |c: CellRef| {
            if simulated.ran.contains(&c) {
                !simulated.failed.contains(&c)
            } else {
                satisfied(&matrix, c)
            }
        };
        let mut expected_blocked = BTreeSet::new();
        for phase in &case.spec.phases {
            for date in case.observations.range.iter() {
                let c = CellRef { phase: phase.id, date };
                let wanted = case.request.phases.contains(&phase.id)
                    && case.request.range.contains(date)
                    && !satisfied(&matrix, c);
                let same_batch = |x: CellRef| {
                    x.phase == c.phase && simulated.ran.contains(&c) && holder.get(&x) == holder.get(&c)
                };
                let needs_completed = phase.needs.iter().all(|need| {
                    need.window(phase.id).all(|offset| {
                        let x = CellRef { phase: need.phase, date: add_days(date, offset) };
                        completed(x) || same_batch(x)
                    })
                });
                let should_run = wanted && phase.run.is_some() && needs_completed;
                prop_assert_eq!(
                    simulated.ran.contains(&c), should_run,
                    "phase {} {}: ran {}, needs completed {}", phase.id, date,
                    simulated.ran.contains(&c), needs_completed
                );
                if wanted && !should_run {
                    expected_blocked.insert(c);
                }
            }
        }
        // The blocked cells are exactly those: blocked when planned or by a failure, never both,
        // and a failure's root is a cell that failed.
        let at_plan: BTreeSet<CellRef> = planned.blocked.iter().map(|b| b.cell).collect();
        let by_failure: BTreeSet<CellRef> = simulated.newly_blocked.iter().map(|b| b.cell).collect();
        prop_assert_eq!(by_failure.len(), simulated.newly_blocked.len());
        prop_assert!(at_plan.is_disjoint(&by_failure));
        let all_blocked: BTreeSet<CellRef> = at_plan.union(&by_failure).copied().collect();
        prop_assert_eq!(&all_blocked, &expected_blocked);
        for blocked in &simulated.newly_blocked {
            prop_assert!(simulated.failed.contains(&blocked.root));
        }
        let held_blocked: BTreeSet<CellRef> = simulated
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Blocked)
            .flat_map(|t| t.dates.iter().map(|date| CellRef { phase: t.phase, date: *date }))
            .collect();
        prop_assert_eq!(&held_blocked, &expected_blocked);
    }
}
