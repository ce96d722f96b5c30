//! The event JSON every source carries: `{"phase": 3, "date": "2024-01-15", "status": "complete"}`,
//! with `phase` an id or a name and an optional `id` that is the same on every delivery.

use gapless_core::spec::{PhaseId, Spec};
use gapless_store::IncomingEvent;
use serde_json::Value;

/// The statuses an event may carry. Only `complete` moves downstream cells; `failed` is kept
/// for the record.
pub const STATUSES: [&str; 2] = ["complete", "failed"];

/// What is wrong with an event, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field, as a path into the body: `phase`, `[2].date`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// An error of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error for an element of an array: `[2].date`.
    pub(crate) fn at(self, index: usize) -> Self {
        Self {
            field: format!("[{index}].{}", self.field),
            reason: self.reason,
        }
    }
}

/// Reads one event of `spec`'s pipeline from `value`. `source` and `dedup_key` are the
/// transport's (`dedup_key` defaults to the event's own `id` field, prefixed by the source).
pub fn parse(
    spec: &Spec,
    value: &Value,
    source: &str,
    dedup_key: Option<String>,
) -> Result<IncomingEvent, FieldError> {
    let Some(object) = value.as_object() else {
        return Err(FieldError::new(
            "event",
            format!(
                "expected an object like {{\"phase\": 3, \"date\": \"2024-01-15\", \"status\": \"complete\"}}, found {}",
                kind(value)
            ),
        ));
    };
    for key in object.keys() {
        if !["phase", "date", "status", "id"].contains(&key.as_str()) {
            return Err(FieldError::new(
                key.as_str(),
                "unknown field; an event has `phase`, `date`, `status` and an optional `id`",
            ));
        }
    }
    let phase = match object.get("phase") {
        None => return Err(FieldError::new("phase", "missing")),
        Some(Value::Number(number)) => {
            let id = number
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| FieldError::new("phase", format!("no phase has id {number}")))?;
            spec.phase(PhaseId(id))
                .ok_or_else(|| FieldError::new("phase", format!("no phase has id {id}")))?
        }
        Some(Value::String(name)) => spec
            .phases
            .iter()
            .find(|phase| phase.name == *name)
            .ok_or_else(|| FieldError::new("phase", format!("no phase is named `{name}`")))?,
        Some(other) => {
            return Err(FieldError::new(
                "phase",
                format!("expected a phase id or name, found {}", kind(other)),
            ));
        }
    };
    let date = match object.get("date") {
        None => return Err(FieldError::new("date", "missing")),
        Some(Value::String(text)) => gapless_core::dates::parse_date(text)
            .map_err(|_| FieldError::new("date", format!("`{text}` is not a date (YYYY-MM-DD)")))?,
        Some(other) => {
            return Err(FieldError::new(
                "date",
                format!("expected a date string (YYYY-MM-DD), found {}", kind(other)),
            ));
        }
    };
    if date < spec.start {
        return Err(FieldError::new(
            "date",
            format!("{date} is before the pipeline's start, {}", spec.start),
        ));
    }
    let status = match object.get("status") {
        None => "complete".to_owned(),
        Some(Value::String(status)) if STATUSES.contains(&status.as_str()) => status.clone(),
        Some(other) => {
            return Err(FieldError::new(
                "status",
                format!("expected `complete` or `failed`, found {other}"),
            ));
        }
    };
    let own_id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 512 => Some(id.clone()),
        Some(Value::Number(id)) => Some(id.to_string()),
        Some(_) => {
            return Err(FieldError::new(
                "id",
                "expected a non-empty string of at most 512 bytes",
            ));
        }
    };
    Ok(IncomingEvent {
        phase: i64::from(phase.id.0),
        date,
        status,
        source: source.to_owned(),
        dedup_key: dedup_key.or_else(|| own_id.map(|id| format!("{source}:{id}"))),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
