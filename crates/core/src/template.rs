//! `{placeholder}` templates in argv elements, URLs, bodies and file patterns.
//!
//! Values substituted are only ever validated ISO dates, phase ids and run ids (see
//! RELIABILITY.md §3.3): the template syntax is fixed and unknown names are spec errors, so a
//! typo like `{stat}` is caught at `gapless check`, not at 3 a.m. Only `{lowercase_name}` is a
//! placeholder; other braces (JSON bodies) are literal.

use std::ops::Range;

/// A placeholder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The task's date (its first date for a batch).
    Date,
    /// First date of the task.
    Start,
    /// Last date of the task.
    End,
    /// The phase id.
    Phase,
    /// The run id.
    RunId,
}

impl Placeholder {
    /// Every placeholder, for messages.
    pub const ALL: [Placeholder; 5] = [
        Placeholder::Date,
        Placeholder::Start,
        Placeholder::End,
        Placeholder::Phase,
        Placeholder::RunId,
    ];

    /// The name as written between braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Date => "date",
            Placeholder::Start => "start",
            Placeholder::End => "end",
            Placeholder::Phase => "phase",
            Placeholder::RunId => "run_id",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A problem in a template, with the byte range inside the template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// Byte range inside the template.
    pub span: Range<usize>,
    /// The name that was not recognised, for suggestions.
    pub unknown: Option<String>,
}

/// A `{name}` token at the start of `text`: `name` is lowercase letters and `_`. Anything else
/// after a `{` (JSON like `{"start_date": …}`) is literal text, so bodies need no escaping.
fn token(text: &str) -> Option<&str> {
    let rest = text.strip_prefix('{')?;
    let close = rest.find('}')?;
    let name = &rest[..close];
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(name)
}

/// Returns the placeholders used in `template`, or the first unknown one.
pub fn placeholders(template: &str) -> Result<Vec<Placeholder>, TemplateError> {
    let mut found = Vec::new();
    for (i, _) in template.match_indices('{') {
        let Some(name) = token(&template[i..]) else {
            continue;
        };
        match Placeholder::from_name(name) {
            Some(placeholder) => found.push(placeholder),
            None => {
                return Err(TemplateError {
                    message: format!("unknown placeholder `{{{name}}}`"),
                    span: i..i + name.len() + 2,
                    unknown: Some(name.to_owned()),
                });
            }
        }
    }
    Ok(found)
}

/// Values for substitution. Every field is already validated (dates are dates).
#[derive(Debug, Clone)]
pub struct Values<'a> {
    /// `{date}`.
    pub date: String,
    /// `{start}`.
    pub start: String,
    /// `{end}`.
    pub end: String,
    /// `{phase}`.
    pub phase: String,
    /// `{run_id}`.
    pub run_id: &'a str,
}

/// Substitutes placeholders. Templates were validated with [`placeholders`] when the spec was
/// loaded; anything unrecognised is left as written.
pub fn substitute(template: &str, values: &Values<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(name) = token(tail)
            && let Some(placeholder) = Placeholder::from_name(name)
        {
            out.push_str(match placeholder {
                Placeholder::Date => &values.date,
                Placeholder::Start => &values.start,
                Placeholder::End => &values.end,
                Placeholder::Phase => &values.phase,
                Placeholder::RunId => values.run_id,
            });
            rest = &tail[name.len() + 2..];
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_rejects() {
        assert_eq!(
            placeholders("--start={start} {end}"),
            Ok(vec![Placeholder::Start, Placeholder::End])
        );
        let error = placeholders("x{stat}y").unwrap_err();
        assert_eq!(error.span, 1..7);
        assert_eq!(error.unknown.as_deref(), Some("stat"));
        assert!(placeholders("{\"a\": {\"b\": 1}}").unwrap().is_empty());
        assert!(placeholders("{start").unwrap().is_empty());
    }

    #[test]
    fn substitutes() {
        let values = Values {
            date: "2024-01-01".into(),
            start: "2024-01-01".into(),
            end: "2024-01-31".into(),
            phase: "3".into(),
            run_id: "r1",
        };
        assert_eq!(
            substitute(
                r#"{"s":"{start}","e":{"end":"{end}"},"p":{phase}}"#,
                &values
            ),
            r#"{"s":"2024-01-01","e":{"end":"2024-01-31"},"p":3}"#
        );
    }
}
