//! Re-planning after a failure: exactly which pending cells a failure blocks, and how the
//! pending tasks holding them split so that their other dates still run.
//!
//! The planner ([`crate::plan`]) already blocks cell by cell before a run starts. When a task
//! fails mid-run, the executor calls [`reblock`] with the run's tasks and the cells that will
//! not become complete. It answers, without I/O and deterministically:
//!
//! - which cells of pending tasks can no longer run: a cell is blocked when a cell it needs
//!   (same date, lookback window, self-dependency) is unavailable or blocked, transitively, and
//!   only then. Each comes with its root, the unavailable cell the chain starts from;
//! - how each pending task with blocked dates is replaced: its dates cut into pieces of
//!   consecutive dates that are all runnable or all blocked. A piece never spans a date of the
//!   other kind and lies within its task, so within the phase's `batch_days`;
//! - the run's task list after the replacement, with the dependencies between tasks recomputed
//!   by the rule of [`crate::plan::dependencies`]. A runnable piece never depends on a blocked
//!   or failed task: the executor can block exactly the blocked pieces and run the rest.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::cells::CellRef;
use crate::dates::{Date, DateRange};
use crate::plan::{dependencies_of, phase_indices};
use crate::spec::{PhaseId, Spec};

/// Where a task of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Not started: may be split.
    Pending,
    /// Started: its needs were complete, its cells are expected to become complete.
    Running,
    /// Its cells are complete.
    Complete,
    /// It failed: its cells are unavailable.
    Failed,
    /// It cannot run: its cells are unavailable.
    Blocked,
}

/// One task of a run, as re-planning sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunTask {
    /// Phase.
    pub phase: PhaseId,
    /// Dates covered (consecutive).
    pub range: DateRange,
    /// The cells the task makes complete, inside `range`.
    pub dates: Vec<Date>,
    /// Where it stands.
    pub status: TaskStatus,
}

/// A cell of a pending task that can no longer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Unreachable {
    /// The blocked cell.
    pub cell: CellRef,
    /// The unavailable cell at the start of the chain of needs (the cell itself when it was
    /// given as unavailable).
    pub root: CellRef,
}

/// One part of a split task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Piece {
    /// Its index in [`Reblock::tasks`].
    pub index: usize,
    /// From its first date to its last.
    pub range: DateRange,
    /// Its cells: consecutive dates of the task, ascending.
    pub dates: Vec<Date>,
    /// [`TaskStatus::Pending`] (runs) or [`TaskStatus::Blocked`].
    pub status: TaskStatus,
    /// For a blocked piece, the root of its first date.
    pub root: Option<CellRef>,
}

/// A pending task that lost dates, and the pieces replacing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Split {
    /// The replaced task: its index in the input, which its first piece keeps.
    pub task: usize,
    /// The pieces, by date.
    pub pieces: Vec<Piece>,
}

/// What a failure changes in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reblock {
    /// Cells of pending tasks that can no longer run, by phase (spec order) then date.
    pub blocked: Vec<Unreachable>,
    /// Pending tasks with blocked dates, in input order. A task whose dates are all blocked
    /// is one blocked piece; a task that keeps all its dates is not listed.
    pub splits: Vec<Split>,
    /// The run's tasks after the splits: every input task at its index (a split task's index
    /// holds its first piece), then the further pieces in the order of `splits`.
    pub tasks: Vec<RunTask>,
    /// For each of `tasks`, the indices of the tasks producing cells it needs
    /// ([`crate::plan::dependencies`]).
    pub deps: Vec<Vec<usize>>,
}

/// Why re-planning could not proceed: the task list is not one a run can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReblockError {
    /// A task's phase is not in the spec.
    #[error("task {task} is of phase {phase}, which is not in the pipeline")]
    UnknownPhase {
        /// Index of the task.
        task: usize,
        /// Its phase.
        phase: PhaseId,
    },
    /// A task lists a date outside its range.
    #[error("task {task} ({range}) lists {date}, outside its range")]
    DateOutsideRange {
        /// Index of the task.
        task: usize,
        /// Its range.
        range: DateRange,
        /// The date.
        date: Date,
    },
    /// Two tasks produce the same cell.
    #[error("phase {} {} is in tasks {first} and {second}", .cell.phase, .cell.date)]
    CellTwice {
        /// The cell.
        cell: CellRef,
        /// The first task holding it.
        first: usize,
        /// The second.
        second: usize,
    },
}

/// Given the run's `tasks` and cells that will not become complete (`unavailable`: a failed
/// task's cells, or cells otherwise lost), returns the pending cells that are now blocked and
/// how the pending tasks holding them split. See the module documentation.
///
/// Unavailable cells are `unavailable` and every cell of a [`TaskStatus::Failed`] or
/// [`TaskStatus::Blocked`] task; a cell that is in no task is available (the planner only plans
/// cells whose needs are complete or planned). Only [`TaskStatus::Pending`] tasks change; a
/// pending cell listed in `unavailable` becomes blocked with itself as root. Calling it again
/// with the result's tasks and no new unavailable cells changes nothing.
///
/// Cost: linear in the run's cells times needs (a logarithmic lookup per window), whatever the
/// lookbacks; it runs once per failure.
pub fn reblock(
    spec: &Spec,
    tasks: &[RunTask],
    unavailable: &[CellRef],
) -> Result<Reblock, ReblockError> {
    let index = phase_indices(spec);
    let mut owner: HashMap<CellRef, usize> = HashMap::new();
    // Per phase (spec index): unavailable dates and their roots, and the pending cells.
    let mut lost: Vec<BTreeMap<Date, CellRef>> = vec![BTreeMap::new(); spec.phases.len()];
    let mut pending: Vec<Vec<(Date, usize)>> = vec![Vec::new(); spec.phases.len()];
    for (i, task) in tasks.iter().enumerate() {
        let Some(&p) = index.get(&task.phase) else {
            return Err(ReblockError::UnknownPhase {
                task: i,
                phase: task.phase,
            });
        };
        for &date in &task.dates {
            if !task.range.contains(date) {
                return Err(ReblockError::DateOutsideRange {
                    task: i,
                    range: task.range,
                    date,
                });
            }
            let cell = CellRef {
                phase: task.phase,
                date,
            };
            if let Some(first) = owner.insert(cell, i) {
                return Err(ReblockError::CellTwice {
                    cell,
                    first,
                    second: i,
                });
            }
            match task.status {
                TaskStatus::Failed | TaskStatus::Blocked => {
                    lost[p].insert(date, cell);
                }
                TaskStatus::Pending => pending[p].push((date, i)),
                TaskStatus::Running | TaskStatus::Complete => {}
            }
        }
    }
    for cell in unavailable {
        if let Some(&p) = index.get(&cell.phase) {
            lost[p].insert(cell.date, *cell);
        }
    }

    // Phases in spec order (needs first), dates ascending (self-dependencies look back): every
    // window is final when a cell is judged.
    let mut blocked = Vec::new();
    let mut roots: HashMap<CellRef, CellRef> = HashMap::new();
    for (p, phase) in spec.phases.iter().enumerate() {
        let mut cells = std::mem::take(&mut pending[p]);
        cells.sort_unstable();
        for (date, _) in cells {
            let cell = CellRef {
                phase: phase.id,
                date,
            };
            let root = if let Some(root) = lost[p].get(&date) {
                Some(*root)
            } else {
                phase.needs.iter().find_map(|need| {
                    let q = *index.get(&need.phase)?;
                    let window = need.window(phase.id);
                    let from = crate::dates::add_days(date, window.start);
                    let to = crate::dates::add_days(date, window.end - 1);
                    if from > to {
                        return None;
                    }
                    lost[q].range(from..=to).next_back().map(|(_, root)| *root)
                })
            };
            if let Some(root) = root {
                lost[p].insert(date, root);
                roots.insert(cell, root);
                blocked.push(Unreachable { cell, root });
            }
        }
    }

    let mut result: Vec<RunTask> = tasks.to_vec();
    let mut splits = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        if task.status != TaskStatus::Pending {
            continue;
        }
        let mut dates = task.dates.clone();
        dates.sort_unstable();
        let root_of = |date: Date| {
            roots
                .get(&CellRef {
                    phase: task.phase,
                    date,
                })
                .copied()
        };
        if dates.iter().all(|date| root_of(*date).is_none()) {
            continue;
        }
        let mut pieces: Vec<Piece> = Vec::new();
        for date in dates {
            let root = root_of(date);
            let status = if root.is_some() {
                TaskStatus::Blocked
            } else {
                TaskStatus::Pending
            };
            match pieces.last_mut() {
                Some(piece) if piece.status == status => {
                    piece.dates.push(date);
                    piece.range = DateRange::new(piece.range.start(), date)
                        .unwrap_or(DateRange::single(date));
                }
                _ => pieces.push(Piece {
                    index: 0,
                    range: DateRange::single(date),
                    dates: vec![date],
                    status,
                    root,
                }),
            }
        }
        for (k, piece) in pieces.iter_mut().enumerate() {
            let replacement = RunTask {
                phase: task.phase,
                range: piece.range,
                dates: piece.dates.clone(),
                status: piece.status,
            };
            if k == 0 {
                piece.index = i;
                result[i] = replacement;
            } else {
                piece.index = result.len();
                result.push(replacement);
            }
        }
        splits.push(Split { task: i, pieces });
    }
    let cells: Vec<(PhaseId, &[Date])> = result
        .iter()
        .map(|task| (task.phase, task.dates.as_slice()))
        .collect();
    let deps = dependencies_of(spec, &cells);
    Ok(Reblock {
        blocked,
        splits,
        tasks: result,
        deps,
    })
}

#[cfg(test)]
mod tests;
