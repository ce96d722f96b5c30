//! The `--phases` list: ids, names and ranges (`2-5`), comma separated.

use std::collections::BTreeSet;

use crate::diagnostic::did_you_mean;
use crate::spec::{PhaseId, Spec};

/// Why a phase list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// An element names no phase.
    #[error(
        "`{item}` is not a phase{}; the phases are {}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        list_phases(phases)
    )]
    Unknown {
        /// The element.
        item: String,
        /// A close phase name or id.
        suggestion: Option<String>,
        /// Every phase of the pipeline, by id and name.
        phases: Vec<(PhaseId, String)>,
    },
    /// A range whose end is before its start.
    #[error("phase range `{item}` is reversed")]
    Reversed {
        /// The element.
        item: String,
    },
    /// Nothing selected.
    #[error("the phase list is empty")]
    Empty,
}

/// `1 `raw`, 2 `load``: the phases as `--phases` takes them.
fn list_phases(phases: &[(PhaseId, String)]) -> String {
    phases
        .iter()
        .map(|(id, name)| format!("{id} `{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a phase list against `spec`. `None` selects every phase.
pub fn select(spec: &Spec, list: Option<&str>) -> Result<BTreeSet<PhaseId>, SelectError> {
    let Some(list) = list else {
        return Ok(spec.phases.iter().map(|p| p.id).collect());
    };
    let mut selected = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let resolve = |word: &str| -> Result<PhaseId, SelectError> {
            let word = word.trim();
            if let Ok(number) = word.parse::<u32>()
                && spec.phase(PhaseId(number)).is_some()
            {
                return Ok(PhaseId(number));
            }
            if let Some(phase) = spec.phases.iter().find(|p| p.name == word) {
                return Ok(phase.id);
            }
            let names = spec.phases.iter().map(|p| p.name.as_str());
            Err(SelectError::Unknown {
                item: word.to_owned(),
                suggestion: did_you_mean(word, names).map(str::to_owned),
                phases: spec.phases.iter().map(|p| (p.id, p.name.clone())).collect(),
            })
        };
        match item.split_once('-') {
            Some((from, to))
                if !from.is_empty()
                    && !to.is_empty()
                    && spec.phases.iter().all(|p| p.name != item) =>
            {
                let (from, to) = (resolve(from)?, resolve(to)?);
                if to < from {
                    return Err(SelectError::Reversed {
                        item: item.to_owned(),
                    });
                }
                selected.extend(
                    spec.phases
                        .iter()
                        .map(|p| p.id)
                        .filter(|id| *id >= from && *id <= to),
                );
            }
            _ => {
                selected.insert(resolve(item)?);
            }
        }
    }
    if selected.is_empty() {
        return Err(SelectError::Empty);
    }
    Ok(selected)
}
