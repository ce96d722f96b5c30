//! The phases as a graph: dependency order and cycles (used by validation), how far chains of
//! needs reach back, and who depends on whom.

use std::collections::{BTreeSet, HashMap};

use super::{Phase, PhaseId, Spec};

impl Spec {
    /// The most days any chain of needs reaches back from a date: how far before a requested
    /// range probes must look so lookback windows can be judged.
    pub fn max_total_lookback(&self) -> i64 {
        let mut reach: HashMap<PhaseId, i64> = HashMap::new();
        for phase in &self.phases {
            let own = phase
                .needs
                .iter()
                .map(|need| {
                    let upstream = if need.phase == phase.id {
                        0
                    } else {
                        reach.get(&need.phase).copied().unwrap_or(0)
                    };
                    i64::from(need.lookback_days) + upstream
                })
                .max()
                .unwrap_or(0);
            reach.insert(phase.id, own);
        }
        // A self-dependency chains back indefinitely; one window is enough to judge the first
        // requested date, since earlier dates were judged when they were planned.
        reach.values().copied().max().unwrap_or(0)
    }

    /// Phases that directly need `id` (excluding itself).
    pub fn dependents(&self, id: PhaseId) -> impl Iterator<Item = &Phase> {
        self.phases
            .iter()
            .filter(move |p| p.id != id && p.needs.iter().any(|n| n.phase == id))
    }
}

/// Phases ordered so each comes after the phases it needs; on a cycle, the phases in it.
pub(super) fn topological_order(phases: &[Phase]) -> Result<Vec<Phase>, Vec<PhaseId>> {
    let mut remaining: BTreeSet<PhaseId> = phases.iter().map(|p| p.id).collect();
    let mut ordered: Vec<Phase> = Vec::with_capacity(phases.len());
    while !remaining.is_empty() {
        // Stable: among ready phases, file order.
        let ready: Vec<&Phase> = phases
            .iter()
            .filter(|p| remaining.contains(&p.id))
            .filter(|p| {
                p.needs
                    .iter()
                    .all(|n| n.phase == p.id || !remaining.contains(&n.phase))
            })
            .collect();
        if ready.is_empty() {
            return Err(cycle_members(phases, &remaining));
        }
        for phase in ready {
            remaining.remove(&phase.id);
            ordered.push(phase.clone());
        }
    }
    Ok(ordered)
}

/// Walks needs from a remaining phase until a phase repeats: that loop is the cycle.
fn cycle_members(phases: &[Phase], remaining: &BTreeSet<PhaseId>) -> Vec<PhaseId> {
    let by_id: HashMap<PhaseId, &Phase> = phases.iter().map(|p| (p.id, p)).collect();
    let Some(&first) = remaining.iter().next() else {
        return Vec::new();
    };
    let mut path = vec![first];
    let mut current = first;
    loop {
        let next = by_id.get(&current).and_then(|p| {
            p.needs
                .iter()
                .map(|n| n.phase)
                .find(|id| *id != current && remaining.contains(id))
        });
        let Some(next) = next else { return path };
        if let Some(position) = path.iter().position(|id| *id == next) {
            let mut cycle = path[position..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
        current = next;
    }
}
