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
/// In rounds: each round takes every phase whose needs are all ordered, in file order. Linear
/// in phases and needs (Kahn's algorithm), so a chain of thousands of phases validates fast.
pub(super) fn topological_order(phases: &[Phase]) -> Result<Vec<Phase>, Vec<PhaseId>> {
    let index: HashMap<PhaseId, usize> =
        phases.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut waiting_on: Vec<usize> = vec![0; phases.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); phases.len()];
    for (i, phase) in phases.iter().enumerate() {
        for need in phase.needs.iter().filter(|n| n.phase != phase.id) {
            if let Some(&q) = index.get(&need.phase) {
                waiting_on[i] += 1;
                dependents[q].push(i);
            }
        }
    }
    let mut ordered: Vec<Phase> = Vec::with_capacity(phases.len());
    // Stable: among ready phases, file order.
    let mut ready: Vec<usize> = (0..phases.len()).filter(|&i| waiting_on[i] == 0).collect();
    while !ready.is_empty() {
        let mut next = Vec::new();
        for &i in &ready {
            ordered.push(phases[i].clone());
            for &j in &dependents[i] {
                waiting_on[j] -= 1;
                if waiting_on[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        ready = next;
    }
    if ordered.len() < phases.len() {
        let remaining: BTreeSet<PhaseId> = phases
            .iter()
            .enumerate()
            .filter(|(i, _)| waiting_on[*i] > 0)
            .map(|(_, p)| p.id)
            .collect();
        return Err(cycle_members(phases, &remaining));
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
