//! Validation: a [`RawSpec`] checked into a [`Spec`], every problem collected as a
//! [`Diagnostic`] that points at the file.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::graph::topological_order;
use super::raw::{RawHttp, RawNeed, RawPhaseRef, RawReport, RawSource, RawSpec};
use super::{
    Alerts, DEFAULT_DUE, DEFAULT_STATE_OUTAGE, DEFAULT_STATE_URL, DEFAULT_TIMEOUT, Email, Expect,
    FileSource, Healing, HttpRunner, MAX_BATCH_DAYS, MAX_DUE, MAX_HEALING_WINDOW,
    MAX_LOOKBACK_DAYS, MAX_REALERT_AFTER, MAX_STATE_OUTAGE, MAX_TIMEOUT, Need, Phase, PhaseId,
    ReportPeriod, ReportSettings, Rollback, Runner, Source, Spec, StateSync, Warehouse, redact_url,
};
use crate::dates::{self, Date};
use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::template::{self, Placeholder};

/// Parses and validates a pipeline file. `files` resolves `sql_file` keys.
pub fn parse(source: &str, files: &dyn FileSource) -> Result<Spec, Vec<Diagnostic>> {
    // serde stops at the first unknown key or value of the wrong type. To report them all at
    // once, each such `key = value` line is blanked (with spaces, so every offset stays the
    // same) in a working copy and the parse tried again; then the rest of the file is validated
    // as usual. A key whose value does not end on its line (an inline table, a multi-line
    // string) cannot be blanked that way: the errors found so far are reported.
    let mut text = source.to_owned();
    let mut found: Vec<Diagnostic> = Vec::new();
    // The keys blanked so far: a "missing field" for one of them is an effect of the blanking.
    let mut blanked: Vec<String> = Vec::new();
    let raw: RawSpec = loop {
        match toml::from_str(&text) {
            Ok(raw) => break raw,
            Err(error) => {
                let span = error.span().unwrap_or(0..0);
                let message = error.message();
                let missing_blanked = missing_field(message)
                    .is_some_and(|field| blanked.iter().any(|key| key == field));
                let per_key = message.contains("unknown field")
                    || message.contains("invalid type")
                    || message.contains("invalid value")
                    || message.contains("invalid length")
                    || missing_field(message).is_some();
                if missing_blanked || (!per_key && !found.is_empty()) {
                    // An effect of the blanking: report what was found before it.
                    return Err(sorted(found));
                }
                found.push(toml_error_diagnostic(message, span.clone()));
                if !per_key || found.len() >= MAX_KEY_ERRORS {
                    return Err(sorted(found));
                }
                let Some(key) = blank_key_line(&mut text, span.start) else {
                    return Err(sorted(found));
                };
                blanked.push(key);
            }
        }
    };
    match check(raw, files, Some(source)) {
        Ok(spec) if found.is_empty() => Ok(spec),
        Ok(_) => Err(sorted(found)),
        Err(mut diagnostics) => {
            diagnostics.extend(found);
            Err(sorted(diagnostics))
        }
    }
}

fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(Diagnostic::position);
    diagnostics
}

/// The field of serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// Blanks the `key = value` line holding byte `at`, and returns its key (the last dotted part:
/// `sql` for `check.sql`); `None`, leaving `text` as it was, when that line is not a whole
/// `key = value` (a table header, a value that goes on past the line).
fn blank_key_line(text: &mut String, at: usize) -> Option<String> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |newline| newline + 1);
    let end = text
        .get(at..)?
        .find('\n')
        .map_or(text.len(), |offset| at + offset);
    let line = &text[start..end];
    let (key, value) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let well_formed = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let value = value.trim();
    // A value that opens on this line must close on it too.
    let closed = ["[", "{", "\"\"\"", "\'\'\'"]
        .iter()
        .all(|open| !value.starts_with(open))
        || value.len() > 1
            && matches!(
                (value.chars().next(), value.chars().last()),
                (Some('['), Some(']')) | (Some('{'), Some('}'))
            );
    if !well_formed || !closed {
        return None;
    }
    let key = key.rsplit('.').next().unwrap_or(key).to_owned();
    text.replace_range(start..end, &" ".repeat(end - start));
    Some(key)
}

/// The most unknown keys and values of the wrong type one parse reports.
const MAX_KEY_ERRORS: usize = 50;

fn toml_error_diagnostic(message: &str, span: Range<usize>) -> Diagnostic {
    let mut message = message.trim().trim_end_matches('.').to_owned();
    // serde names Rust's types; a pipeline file has TOML's.
    for (rust, toml) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected struct ", "expected a table "),
    ] {
        message = message.replace(rust, toml);
    }
    let hint = message.contains("unknown field").then(|| {
        const REFERENCE: &str =
            "the pipeline file reference lists every key: docs/pipeline-file.md";
        match unknown_key_suggestion(&message) {
            Some(key) => format!("did you mean `{key}`? ({REFERENCE})"),
            None => REFERENCE.to_owned(),
        }
    });
    let first_line = message.lines().next().unwrap_or_default().to_owned();
    let mut diagnostic = Diagnostic::new(first_line, span);
    diagnostic.hint = hint;
    diagnostic
}

/// The known key closest to the unknown one in serde's "unknown field `x`, expected one of `a`,
/// `b`" (or "expected `a`").
fn unknown_key_suggestion(message: &str) -> Option<String> {
    let (head, expected) = message.split_once("expected")?;
    let unknown = head.split('`').nth(1)?;
    let keys = expected.split('`').skip(1).step_by(2);
    did_you_mean(unknown, keys).map(str::to_owned)
}

struct Validator<'a> {
    diagnostics: Vec<Diagnostic>,
    files: &'a dyn FileSource,
    /// The pipeline file's text, when known: lets a diagnostic point inside a string value.
    source: Option<&'a str>,
    /// The warehouse's SQL dialect, for checking SQL texts' parameters.
    dialect: crate::sql::Dialect,
}

impl Validator<'_> {
    fn error(&mut self, message: impl Into<String>, span: Range<usize>) {
        self.diagnostics.push(Diagnostic::new(message, span));
    }

    fn error_hint(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        hint: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::new(message, span).with_hint(hint));
    }

    fn template(&mut self, value: &Spanned<String>, allowed: &[Placeholder], context: &str) {
        // Spans of strings include the quotes; the template offset is one byte in for a basic
        // string. Multi-line and literal strings are close enough to point at the value.
        let base = value.span().start + 1;
        match template::placeholders(value.get_ref()) {
            Ok(used) => {
                for placeholder in used {
                    if !allowed.contains(&placeholder) {
                        let names: Vec<String> = allowed
                            .iter()
                            .map(|p| format!("{{{}}}", p.name()))
                            .collect();
                        self.error_hint(
                            format!(
                                "placeholder `{{{}}}` is not available in {context}",
                                placeholder.name()
                            ),
                            value.span(),
                            format!("available here: {}", names.join(", ")),
                        );
                    }
                }
            }
            Err(error) => {
                let span = base + error.span.start..base + error.span.end;
                let hint = error.unknown.as_deref().and_then(|unknown| {
                    did_you_mean(unknown, allowed.iter().map(|p| p.name()))
                        .map(|name| format!("did you mean `{{{name}}}`?"))
                });
                let names: Vec<String> = allowed
                    .iter()
                    .map(|p| format!("{{{}}}", p.name()))
                    .collect();
                let hint = hint.unwrap_or_else(|| format!("available here: {}", names.join(", ")));
                self.error_hint(format!("{} in {context}", error.message), span, hint);
            }
        }
    }

    fn argv(
        &mut self,
        argv: &Spanned<Vec<Spanned<String>>>,
        allowed: &[Placeholder],
        context: &str,
    ) -> Option<Vec<String>> {
        if argv.get_ref().is_empty() {
            self.error(
                format!("{context} is empty: give the program and its arguments"),
                argv.span(),
            );
            return None;
        }
        if argv.get_ref()[0].get_ref().contains('{') {
            self.error(
                format!("{context}: the program name cannot hold a placeholder"),
                argv.get_ref()[0].span(),
            );
        }
        for element in argv.get_ref() {
            self.template(element, allowed, context);
        }
        Some(argv.get_ref().iter().map(|s| s.get_ref().clone()).collect())
    }

    /// Reads and checks the SQL of `context` (`run`, `check`, …), inline or from its file.
    /// `no_date` is why `:date` has no value in this context, when it has none.
    fn sql(
        &mut self,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        context: &str,
        no_date: Option<&str>,
    ) -> Option<String> {
        if let Some(sql) = inline {
            if sql.get_ref().trim().is_empty() {
                self.error("SQL is empty", sql.span());
                return None;
            }
            let text = self.sql_parameters(sql.get_ref(), sql.span(), None)?;
            if let Some(why) = no_date {
                let dates = self.date_params(&text);
                if !dates.is_empty() {
                    for at in dates {
                        let span = self.inside_string(sql.span(), at);
                        self.error_hint(
                            format!("`:date` is not available in `{context}.sql`"),
                            span,
                            why,
                        );
                    }
                    return None;
                }
            }
            return Some(text);
        }
        let file = file?;
        match self.files.read(file.get_ref()) {
            Ok(text) if text.trim().is_empty() => {
                self.error(
                    format!("SQL file `{}` is empty", file.get_ref()),
                    file.span(),
                );
                None
            }
            Ok(text) => {
                let text = self.sql_parameters(&text, file.span(), Some(file.get_ref()))?;
                if let Some(why) = no_date {
                    let dates = self.date_params(&text);
                    if !dates.is_empty() {
                        let named = SourceFile {
                            path: file.get_ref().clone(),
                            text: text.clone(),
                            named_at: file.span(),
                        };
                        for at in dates {
                            self.diagnostics.push(
                                Diagnostic::new(
                                    format!("`:date` is not available in `{context}.sql_file`"),
                                    at,
                                )
                                .with_hint(why)
                                .in_file(named.clone()),
                            );
                        }
                        return None;
                    }
                }
                Some(text)
            }
            Err(reason) => {
                self.error_hint(
                    format!("cannot read SQL file `{}`", file.get_ref()),
                    file.span(),
                    reason,
                );
                None
            }
        }
    }

    /// Checks that SQL only uses `:start`, `:end` and `:date`, which gapless binds: a typo like
    /// `:ned` is a pipeline-file error, not a failure at 3 a.m.
    fn sql_parameters(
        &mut self,
        text: &str,
        span: Range<usize>,
        file: Option<&str>,
    ) -> Option<String> {
        match crate::sql::prepare(text, self.dialect) {
            Ok(_) => Some(text.to_owned()),
            Err(error) => {
                let message = match file {
                    Some(file) => format!("in SQL file `{file}`: {error}"),
                    None => format!("in SQL: {error}"),
                };
                self.error_hint(
                    message,
                    span,
                    "values reach SQL only as the bound parameters :start, :end and :date",
                );
                None
            }
        }
    }

    /// Where `text` (SQL that prepares) uses `:date`.
    fn date_params(&self, text: &str) -> Vec<Range<usize>> {
        crate::sql::param_spans(text, self.dialect)
            .unwrap_or_default()
            .into_iter()
            .filter(|(param, _)| *param == crate::sql::Param::Date)
            .map(|(_, span)| span)
            .collect()
    }

    /// The span in the pipeline file of bytes `inner` of the string value at `value` (its span
    /// includes the quotes), or the whole value when the file's text is not at hand.
    fn inside_string(&self, value: Range<usize>, inner: Range<usize>) -> Range<usize> {
        match self.source {
            Some(source) => {
                string_position(source, value.clone(), inner.start)
                    ..string_position(source, value, inner.end)
            }
            None => value,
        }
    }

    /// Validates a source-like table. `allowed` names the keys permitted in this context.
    fn source(
        &mut self,
        raw: &Spanned<RawSource>,
        context: &str,
        allowed: &[&str],
        placeholders: &[Placeholder],
    ) -> Option<SourceLike> {
        let table = raw.get_ref();
        let present: Vec<(&str, Range<usize>)> = [
            ("sql", table.sql.as_ref().map(Spanned::span)),
            ("sql_file", table.sql_file.as_ref().map(Spanned::span)),
            ("command", table.command.as_ref().map(Spanned::span)),
            ("files", table.files.as_ref().map(Spanned::span)),
            ("http", table.http.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|span| (key, span)))
        .collect();
        let mut ok = true;
        for (key, span) in &present {
            if !allowed.contains(key) {
                ok = false;
                self.error_hint(
                    format!("`{context}.{key}` is not supported"),
                    span.clone(),
                    format!(
                        "`{context}` takes one of: {}",
                        allowed
                            .iter()
                            .filter(|k| **k != "min")
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if let Some(min) = &table.min
            && !allowed.contains(&"min")
        {
            ok = false;
            self.error(format!("`{context}.min` is not supported"), min.span());
        }
        if present.len() > 1 {
            let keys: Vec<String> = present.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.error(
                format!("`{context}` has {}; give exactly one", keys.join(" and ")),
                present[1].1.clone(),
            );
            return None;
        }
        if !ok {
            return None;
        }
        let Some((key, _)) = present.first() else {
            return Some(SourceLike::None);
        };
        match *key {
            "sql" | "sql_file" => {
                let no_date = (!placeholders.contains(&Placeholder::Date)).then(|| {
                    if placeholders.contains(&Placeholder::Phase) {
                        "a task of this phase covers up to `batch_days` dates: use `:start` and `:end`"
                    } else {
                        "this SQL counts rows over a range of dates: use `:start` and `:end`"
                    }
                });
                self.sql(
                    table.sql.as_ref(),
                    table.sql_file.as_ref(),
                    context,
                    no_date,
                )
                .map(SourceLike::Sql)
            }
            "command" => table
                .command
                .as_ref()
                .and_then(|argv| self.argv(argv, placeholders, &format!("`{context}.command`")))
                .map(SourceLike::Command),
            "files" => {
                let pattern = table.files.as_ref()?;
                self.template(pattern, &[Placeholder::Date], &format!("`{context}.files`"));
                if !pattern.get_ref().contains("{date}") {
                    self.error_hint(
                        format!("`{context}.files` pattern has no `{{date}}`"),
                        pattern.span(),
                        "the pattern must say where the date goes, like \"landing/{date}/*.json\"",
                    );
                    return None;
                }
                Some(SourceLike::Files(pattern.get_ref().clone()))
            }
            "http" => {
                let http = table.http.as_ref()?;
                self.http(http, placeholders, context).map(SourceLike::Http)
            }
            _ => None,
        }
    }

    fn http(
        &mut self,
        raw: &Spanned<RawHttp>,
        placeholders: &[Placeholder],
        context: &str,
    ) -> Option<HttpRunner> {
        let http = raw.get_ref();
        let url = http.url.get_ref();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok {
            self.error(
                format!("`{context}.http.url` must start with http:// or https://"),
                http.url.span(),
            );
            return None;
        }
        // The host is fixed by the spec: no placeholder may reach it (no SSRF through values).
        let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
        let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('{') {
            self.error(
                format!("`{context}.http.url`: placeholders may not appear in the host"),
                http.url.span(),
            );
        }
        self.template(&http.url, placeholders, &format!("`{context}.http.url`"));
        if let Some(body) = &http.body {
            self.template(body, placeholders, &format!("`{context}.http.body`"));
        }
        let method = http
            .method
            .as_ref()
            .map_or_else(|| "POST".to_owned(), |m| m.get_ref().to_ascii_uppercase());
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str())
            && let Some(m) = &http.method
        {
            self.error(
                format!("unsupported HTTP method `{}`", m.get_ref()),
                m.span(),
            );
        }
        let token_command = http
            .token_command
            .as_ref()
            .and_then(|argv| self.argv(argv, &[], &format!("`{context}.http.token_command`")));
        Some(HttpRunner {
            method,
            url: url.clone(),
            body: http.body.as_ref().map(|b| b.get_ref().clone()),
            headers: http
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            token_command,
        })
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str, max: Duration) -> Option<Duration> {
        match dates::parse_duration(value.get_ref()) {
            Ok(duration) if duration.is_zero() => {
                self.error(format!("`{what}` must be greater than zero"), value.span());
                None
            }
            Ok(duration) if duration > max => {
                self.error(
                    format!(
                        "`{what}` is {}; it must be at most {}",
                        dates::format_duration(duration),
                        dates::format_duration(max)
                    ),
                    value.span(),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(format!("`{what}`: {error}"), value.span());
                None
            }
        }
    }

    /// A `due` value: a duration from zero (due as soon as the date begins) to [`MAX_DUE`].
    fn due(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        match dates::parse_duration(value.get_ref()) {
            Ok(duration) if duration > MAX_DUE => {
                self.error_hint(
                    format!(
                        "`{what}` is {}; it must be at most {}",
                        dates::format_duration(duration),
                        dates::format_duration(MAX_DUE)
                    ),
                    value.span(),
                    "`due` is measured from the start of the date: \"1d\" means from the next day on",
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(format!("`{what}`: {error}"), value.span());
                None
            }
        }
    }

    fn bounded(
        &mut self,
        value: &Spanned<i64>,
        what: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<u32> {
        let v = *value.get_ref();
        if range.contains(&v) {
            u32::try_from(v).ok()
        } else {
            self.error(
                format!(
                    "`{what}` is {v}; it must be between {} and {}",
                    range.start(),
                    range.end()
                ),
                value.span(),
            );
            None
        }
    }
}

/// `[report]`: `period` is `month` (the default), `year` or `season`; `season_start` (`MM-DD`)
/// goes with `season` and only with it.
fn report_settings(v: &mut Validator<'_>, raw: &Spanned<RawReport>) -> ReportSettings {
    let report = raw.get_ref();
    let season_start = report.season_start.as_ref().and_then(|start| {
        let parsed = parse_month_day(start.get_ref());
        if parsed.is_none() {
            v.error_hint(
                format!(
                    "`report.season_start` is not a month and day that every year has: `{}`",
                    start.get_ref()
                ),
                start.span(),
                "write it as MM-DD, like \"07-01\" for a season from July 1 to June 30",
            );
        }
        parsed
    });
    let period = match report.period.as_ref() {
        None => "month",
        Some(period) => period.get_ref().as_str(),
    };
    let period_span = report.period.as_ref().map_or(raw.span(), Spanned::span);
    match period {
        "month" | "year" => {
            if let Some(start) = &report.season_start {
                v.error_hint(
                    format!("`report.season_start` is set but the period is `{period}`"),
                    start.span(),
                    "set period = \"season\" to report by season, or remove season_start",
                );
            }
            ReportSettings {
                period: if period == "month" {
                    ReportPeriod::Month
                } else {
                    ReportPeriod::Year
                },
            }
        }
        "season" => match (season_start, &report.season_start) {
            (Some((month, day)), _) => ReportSettings {
                period: ReportPeriod::Season { month, day },
            },
            (None, Some(_)) => ReportSettings::default(),
            (None, None) => {
                v.error_hint(
                    "`report.period = \"season\"` needs `season_start`",
                    period_span,
                    "add season_start = \"MM-DD\", like \"07-01\" for a season from July 1 to June 30",
                );
                ReportSettings::default()
            }
        },
        other => {
            v.error_hint(
                format!("unknown `report.period` value `{other}`"),
                period_span,
                "use \"month\" (the default), \"year\" or \"season\" (with season_start = \"MM-DD\")",
            );
            ReportSettings::default()
        }
    }
}

/// `07-01` → `(7, 1)`; a day that exists in every year (February 29 does not).
fn parse_month_day(text: &str) -> Option<(u32, u32)> {
    let (month, day) = text.split_once('-')?;
    if month.len() != 2 || day.len() != 2 {
        return None;
    }
    let month: u32 = month.parse().ok()?;
    let day: u32 = day.parse().ok()?;
    Date::from_ymd_opt(2023, month, day).map(|_| (month, day))
}

enum SourceLike {
    None,
    Sql(String),
    Command(Vec<String>),
    Files(String),
    Http(HttpRunner),
}

/// The byte of `source` that byte `offset` of the decoded TOML string at `span` (quotes
/// included) comes from: escapes and the newline after a multi-line string's opening quotes are
/// accounted for, so a diagnostic can point inside the string.
fn string_position(source: &str, span: Range<usize>, offset: usize) -> usize {
    let Some(raw) = source.get(span.clone()) else {
        return span.start;
    };
    let (quote, basic) = if raw.starts_with("\"\"\"") {
        (3, true)
    } else if raw.starts_with("'''") {
        (3, false)
    } else if raw.starts_with('"') {
        (1, true)
    } else if raw.starts_with('\'') {
        (1, false)
    } else {
        return span.start;
    };
    let mut at = quote;
    if quote == 3 {
        if raw[at..].starts_with("\r\n") {
            at += 2;
        } else if raw[at..].starts_with('\n') {
            at += 1;
        }
    }
    let mut decoded = 0;
    while decoded < offset {
        let Some(rest) = raw.get(at..) else { break };
        let Some(first) = rest.chars().next() else {
            break;
        };
        if basic && first == '\\' {
            let escape = rest[1..].chars().next().unwrap_or(' ');
            let (raw_len, decoded_len) = match escape {
                'u' | 'U' => {
                    let digits = if escape == 'u' { 4 } else { 8 };
                    let value = rest
                        .get(2..2 + digits)
                        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                        .and_then(char::from_u32)
                        .map_or(1, char::len_utf8);
                    (2 + digits, value)
                }
                ' ' | '\t' | '\r' | '\n' => {
                    // A line-ending backslash: it and the whitespace after it decode to nothing.
                    let skipped = rest[1..]
                        .find(|c: char| !c.is_whitespace())
                        .map_or(rest.len(), |n| n + 1);
                    (skipped, 0)
                }
                other => (1 + other.len_utf8(), 1),
            };
            at = (at + raw_len).min(raw.len());
            decoded += decoded_len;
        } else {
            at += first.len_utf8();
            decoded += first.len_utf8();
        }
    }
    span.start + at
}

const RANGE_PLACEHOLDERS: &[Placeholder] = &[Placeholder::Start, Placeholder::End];
const TASK_PLACEHOLDERS: &[Placeholder] = &[
    Placeholder::Date,
    Placeholder::Start,
    Placeholder::End,
    Placeholder::Phase,
    Placeholder::RunId,
];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

fn is_phase_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.chars().all(|c| c.is_ascii_digit())
}

/// Validates a parsed file into a [`Spec`], collecting every problem.
pub fn validate(raw: RawSpec, files: &dyn FileSource) -> Result<Spec, Vec<Diagnostic>> {
    check(raw, files, None)
}

/// [`validate`], with the pipeline file's text when there is one.
fn check(
    raw: RawSpec,
    files: &dyn FileSource,
    source: Option<&str>,
) -> Result<Spec, Vec<Diagnostic>> {
    let url = raw
        .warehouse
        .as_ref()
        .map(|w| w.get_ref().url.get_ref().as_str());
    let dialect = match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            crate::sql::Dialect::Postgres
        }
        Some(url) if url.starts_with("bigquery://") => crate::sql::Dialect::BigQuery,
        _ => crate::sql::Dialect::Sqlite,
    };
    let mut v = Validator {
        diagnostics: Vec::new(),
        files,
        source,
        dialect,
    };
    let pipeline = raw.pipeline.get_ref();

    let name = pipeline.name.get_ref().trim().to_owned();
    if name.is_empty() {
        v.error("`pipeline.name` is empty", pipeline.name.span());
    }
    let start = match dates::parse_date(pipeline.start.get_ref()) {
        Ok(date) => Some(date),
        Err(error) => {
            v.error(format!("`pipeline.start`: {error}"), pipeline.start.span());
            None
        }
    };
    let calendar = pipeline.calendar.as_ref().and_then(|calendar| {
        match v.source(
            calendar,
            "pipeline.calendar",
            &["sql", "sql_file", "command"],
            RANGE_PLACEHOLDERS,
        )? {
            SourceLike::Sql(sql) => Some(Source::Sql(sql)),
            SourceLike::Command(argv) => Some(Source::Command(argv)),
            SourceLike::None => {
                v.error(
                    "`pipeline.calendar` needs `sql`, `sql_file` or `command`",
                    calendar.span(),
                );
                None
            }
            SourceLike::Files(_) | SourceLike::Http(_) => None,
        }
    });

    let warehouse = raw.warehouse.as_ref().and_then(|w| {
        let w_ref = w.get_ref();
        let url = w_ref.url.get_ref();
        let is_sqlite = url.starts_with("sqlite:");
        let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let is_bigquery = url.starts_with("bigquery://");
        if !is_sqlite && !is_postgres && !is_bigquery {
            v.error_hint(
                format!("unsupported warehouse URL `{}`", redact_url(url)),
                w_ref.url.span(),
                "use sqlite://path/to/file.db, postgres://user@host/db or bigquery://PROJECT?location=US",
            );
            return None;
        }
        let maximum_bytes_billed = w_ref.maximum_bytes_billed.as_ref().and_then(|limit| {
            if !is_bigquery {
                v.error_hint(
                    "`warehouse.maximum_bytes_billed` only applies to BigQuery",
                    limit.span(),
                    "SQLite and PostgreSQL do not bill by bytes",
                );
                return None;
            }
            match u64::try_from(*limit.get_ref()) {
                Ok(bytes) if bytes > 0 => Some(bytes),
                _ => {
                    v.error(
                        "`warehouse.maximum_bytes_billed` must be a positive number of bytes",
                        limit.span(),
                    );
                    None
                }
            }
        });
        let mut attach = Vec::new();
        for (schema, path) in &w_ref.attach {
            if !is_sqlite {
                v.error_hint(
                    "`warehouse.attach` only applies to SQLite",
                    path.span(),
                    "on PostgreSQL, schemas are part of the database",
                );
                continue;
            }
            if !is_identifier(schema) || schema.eq_ignore_ascii_case("main") || schema.eq_ignore_ascii_case("temp") {
                v.error(
                    format!("`{schema}` cannot be an attached schema name: use letters, digits and `_`, not `main` or `temp`"),
                    path.span(),
                );
                continue;
            }
            attach.push((schema.clone(), path.get_ref().clone()));
        }
        Some(Warehouse {
            url: url.clone(),
            attach,
            maximum_bytes_billed,
        })
    });

    let state_url = raw.state.as_ref().and_then(|s| s.url.as_ref()).map_or_else(
        || DEFAULT_STATE_URL.to_owned(),
        |u| {
            let url = u.get_ref();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                v.error_hint(
                    format!("unsupported state URL `{}`", redact_url(url)),
                    u.span(),
                    "use sqlite://path/to/state.db or postgres://user@host/db",
                );
            }
            url.clone()
        },
    );
    let state_sync = raw
        .state
        .as_ref()
        .and_then(|s| s.sync.as_ref())
        .map_or(StateSync::Normal, |sync| match sync.get_ref().as_str() {
            "normal" => StateSync::Normal,
            "full" => StateSync::Full,
            other => {
                v.error_hint(
                    format!("unknown `state.sync` value `{other}`"),
                    sync.span(),
                    "use \"normal\" (the default: commits survive a crash of gapless) or \"full\" (fsync every commit)",
                );
                StateSync::Normal
            }
        });
    let state_outage = raw
        .state
        .as_ref()
        .and_then(|s| s.outage.as_ref())
        .and_then(|outage| v.duration(outage, "state.outage", MAX_STATE_OUTAGE))
        .unwrap_or(DEFAULT_STATE_OUTAGE);
    let pipeline_due = pipeline
        .due
        .as_ref()
        .and_then(|d| v.due(d, "pipeline.due"))
        .unwrap_or(DEFAULT_DUE);
    let listen = raw
        .server
        .as_ref()
        .and_then(|s| s.listen.as_ref())
        .map(|l| l.get_ref().clone());

    // Phases: ids and names first, so needs can be resolved.
    let mut ids: HashMap<i64, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    if raw.phase.is_empty() {
        v.error_hint(
            "the pipeline has no phases",
            raw.pipeline.span(),
            "add at least one [[phase]] table",
        );
    }
    for (index, phase) in raw.phase.iter().enumerate() {
        let p = phase.get_ref();
        let id = *p.id.get_ref();
        if !(1..=i64::from(u16::MAX)).contains(&id) {
            v.error(
                format!("phase id {id} is out of range: use 1 to 65535"),
                p.id.span(),
            );
        } else if let Some(&first) = ids.get(&id) {
            let first_name = raw.phase[first].get_ref().name.get_ref();
            v.error(
                format!("duplicate phase id {id} (also used by phase `{first_name}`)"),
                p.id.span(),
            );
        } else {
            ids.insert(id, index);
        }
        let name = p.name.get_ref();
        if !is_phase_name(name) {
            v.error_hint(
                format!("phase name `{name}` is not valid"),
                p.name.span(),
                "use lowercase letters, digits, `_` and `-`, not only digits",
            );
        } else if names.contains_key(name) {
            v.error(format!("duplicate phase name `{name}`"), p.name.span());
        } else {
            names.insert(name.clone(), index);
        }
    }
    let phase_names: Vec<String> = raw
        .phase
        .iter()
        .map(|p| p.get_ref().name.get_ref().clone())
        .collect();

    let mut phases: Vec<Phase> = Vec::new();
    let mut need_spans: HashMap<u32, Range<usize>> = HashMap::new();
    for phase in &raw.phase {
        let p = phase.get_ref();
        let context_name = p.name.get_ref();
        let id = u32::try_from(*p.id.get_ref()).unwrap_or(0);
        let mut needs = Vec::new();
        for need in &p.needs {
            let (reference, lookback) = match need.get_ref() {
                RawNeed::Id(id) => (RawPhaseRef::Id(*id), 0),
                RawNeed::Name(name) => (RawPhaseRef::Name(name.clone()), 0),
                RawNeed::Table(table) => (
                    match &table.phase {
                        RawPhaseRef::Id(id) => RawPhaseRef::Id(*id),
                        RawPhaseRef::Name(name) => RawPhaseRef::Name(name.clone()),
                    },
                    table.lookback_days,
                ),
            };
            let target = match &reference {
                RawPhaseRef::Id(needed) => ids.get(needed).copied().or_else(|| {
                    let known: Vec<String> = ids.keys().map(ToString::to_string).collect();
                    let mut known = known;
                    known.sort();
                    v.error_hint(
                        format!("phase `{context_name}` needs unknown phase {needed}"),
                        need.span(),
                        format!("phases are: {}", known.join(", ")),
                    );
                    None
                }),
                RawPhaseRef::Name(needed) => names.get(needed).copied().or_else(|| {
                    let hint = did_you_mean(needed, phase_names.iter().map(String::as_str))
                        .map_or_else(
                            || format!("phases are: {}", phase_names.join(", ")),
                            |name| format!("did you mean `{name}`?"),
                        );
                    v.error_hint(
                        format!("phase `{context_name}` needs unknown phase `{needed}`"),
                        need.span(),
                        hint,
                    );
                    None
                }),
            };
            if !(0..=i64::from(MAX_LOOKBACK_DAYS)).contains(&lookback) {
                v.error(
                    format!(
                        "`lookback_days` is {lookback}; it must be between 0 and {MAX_LOOKBACK_DAYS}"
                    ),
                    need.span(),
                );
                continue;
            }
            let Some(target) = target else { continue };
            let target_id = u32::try_from(*raw.phase[target].get_ref().id.get_ref()).unwrap_or(0);
            if target_id == id && lookback == 0 {
                v.error_hint(
                    format!("phase `{context_name}` needs itself on the same date: a cycle"),
                    need.span(),
                    "a phase may need its own earlier dates: { phase = N, lookback_days = 1 }",
                );
                continue;
            }
            let lookback = u32::try_from(lookback).unwrap_or(0);
            if let Some(existing) = needs
                .iter_mut()
                .find(|n: &&mut Need| n.phase.0 == target_id)
            {
                existing.lookback_days = existing.lookback_days.max(lookback);
            } else {
                needs.push(Need {
                    phase: PhaseId(target_id),
                    lookback_days: lookback,
                });
            }
            need_spans.entry(id).or_insert_with(|| need.span());
        }

        let batch_days = p
            .batch_days
            .as_ref()
            .and_then(|b| v.bounded(b, "batch_days", 1..=i64::from(MAX_BATCH_DAYS)))
            .unwrap_or(1);
        let run_placeholders: Vec<Placeholder> = if batch_days > 1 {
            TASK_PLACEHOLDERS
                .iter()
                .copied()
                .filter(|p| *p != Placeholder::Date)
                .collect()
        } else {
            TASK_PLACEHOLDERS.to_vec()
        };
        let run = p.run.as_ref().and_then(|run| {
            match v.source(run, "run", &["command", "sql", "sql_file", "http"], &run_placeholders)? {
                SourceLike::Command(argv) => Some(Runner::Command(argv)),
                SourceLike::Sql(sql) => Some(Runner::Sql(sql)),
                SourceLike::Http(http) => Some(Runner::Http(http)),
                SourceLike::None => {
                    v.error_hint(
                        format!("phase `{context_name}` has an empty `run`"),
                        run.span(),
                        "give run.command, run.sql, run.sql_file or run.http; omit `run` for a phase gapless only observes",
                    );
                    None
                }
                SourceLike::Files(_) => None,
            }
        });
        let check = match &p.check {
            None => {
                v.error_hint(
                    format!("phase `{context_name}` has no `check`"),
                    p.name.span(),
                    "gapless counts rows to know what is complete: add check.sql, check.command or check.files",
                );
                None
            }
            Some(check) => match v.source(
                check,
                "check",
                &["sql", "sql_file", "command", "files"],
                RANGE_PLACEHOLDERS,
            ) {
                Some(SourceLike::Sql(sql)) => Some(Source::Sql(sql)),
                Some(SourceLike::Command(argv)) => Some(Source::Command(argv)),
                Some(SourceLike::Files(pattern)) => Some(Source::Files(pattern)),
                Some(SourceLike::None) => {
                    v.error(
                        format!("phase `{context_name}`: `check` is empty"),
                        check.span(),
                    );
                    None
                }
                Some(SourceLike::Http(_)) | None => None,
            },
        };
        let expect = match &p.expect {
            None => Some(Expect {
                source: None,
                min: 1,
            }),
            Some(expect) => {
                let min = match &expect.get_ref().min {
                    Some(min) if *min.get_ref() < 1 => {
                        v.error("`expect.min` must be at least 1", min.span());
                        1
                    }
                    Some(min) => *min.get_ref(),
                    None => 1,
                };
                match v.source(
                    expect,
                    "expect",
                    &["sql", "sql_file", "command", "min"],
                    RANGE_PLACEHOLDERS,
                ) {
                    Some(SourceLike::Sql(sql)) => Some(Expect {
                        source: Some(Source::Sql(sql)),
                        min,
                    }),
                    Some(SourceLike::Command(argv)) => Some(Expect {
                        source: Some(Source::Command(argv)),
                        min,
                    }),
                    Some(SourceLike::None) => Some(Expect { source: None, min }),
                    _ => None,
                }
            }
        };
        let rollback = p.rollback.as_ref().and_then(|rollback| {
            match v.source(
                rollback,
                "rollback",
                &["sql", "sql_file", "command"],
                &run_placeholders,
            )? {
                SourceLike::Sql(sql) => Some(Rollback::Sql(sql)),
                SourceLike::Command(argv) => Some(Rollback::Command(argv)),
                _ => None,
            }
        });
        if p.run.is_none()
            && let Some(rollback) = &p.rollback
        {
            v.error(
                format!("phase `{context_name}` has a `rollback` but no `run`"),
                rollback.span(),
            );
        }
        let retries = p
            .retries
            .as_ref()
            .and_then(|r| v.bounded(r, "retries", 0..=100))
            .unwrap_or(0);
        let timeout = p
            .timeout
            .as_ref()
            .and_then(|t| v.duration(t, "timeout", MAX_TIMEOUT))
            .unwrap_or(DEFAULT_TIMEOUT);
        let concurrency = p
            .concurrency
            .as_ref()
            .and_then(|c| v.bounded(c, "concurrency", 1..=1_024))
            .unwrap_or(1);
        let due = p
            .due
            .as_ref()
            .and_then(|d| v.due(d, "due"))
            .unwrap_or(pipeline_due);
        if let (Some(check), Some(expect)) = (check, expect) {
            phases.push(Phase {
                id: PhaseId(id),
                name: p.name.get_ref().clone(),
                description: p.description.clone(),
                needs,
                run,
                batch_days,
                check,
                expect,
                rollback,
                retries,
                timeout,
                concurrency,
                due,
            });
        }
    }

    let healing = raw.healing.as_ref().map_or_else(Healing::default, |h| {
        let defaults = Healing::default();
        Healing {
            scan: h.scan.as_ref().map_or(defaults.scan, |s| {
                if let Err(error) = crate::spec::parse_cron(s.get_ref()) {
                    v.error_hint(
                        format!(
                            "`healing.scan` is not a cron expression: `{}`: {error}",
                            s.get_ref()
                        ),
                        s.span(),
                        "five fields (minute hour day-of-month month day-of-week, like \"0 * * * *\"), or six with seconds first (\"*/30 * * * * *\")",
                    );
                }
                s.get_ref().clone()
            }),
            lookback: h
                .lookback
                .as_ref()
                .and_then(|d| v.duration(d, "healing.lookback", MAX_HEALING_WINDOW))
                .unwrap_or(defaults.lookback),
            auto_heal_max_age: h
                .auto_heal_max_age
                .as_ref()
                .and_then(|d| v.duration(d, "healing.auto_heal_max_age", MAX_HEALING_WINDOW))
                .unwrap_or(defaults.auto_heal_max_age),
            max_attempts: h
                .max_attempts
                .as_ref()
                .and_then(|m| v.bounded(m, "healing.max_attempts", 1..=100))
                .unwrap_or(defaults.max_attempts),
            realert_after: h
                .realert_after
                .as_ref()
                .and_then(|d| v.duration(d, "healing.realert_after", MAX_REALERT_AFTER))
                .unwrap_or(defaults.realert_after),
            timezone: h.timezone.as_ref().map_or(defaults.timezone, |zone| {
                zone.get_ref().parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
                    v.error_hint(
                        format!("`healing.timezone`: `{}` is not a time zone", zone.get_ref()),
                        zone.span(),
                        "an IANA name such as \"Europe/Paris\" or \"America/New_York\", or \"UTC\"",
                    );
                    chrono_tz::UTC
                })
            }),
        }
    });
    let alerts = raw
        .alerts
        .as_ref()
        .map_or_else(Alerts::default, |a| Alerts {
            slack_webhook_env: a.slack_webhook_env.clone(),
            webhook_url_env: a.webhook_url_env.clone(),
            email: a.email.as_ref().map(|e| {
                let e_ref = e.get_ref();
                if !e_ref.smtp.starts_with("smtp://") && !e_ref.smtp.starts_with("smtps://") {
                    v.error(
                        "`alerts.email.smtp` must be an smtp:// or smtps:// URL",
                        e.span(),
                    );
                }
                if e_ref.to.is_empty() {
                    v.error("`alerts.email.to` has no recipients", e.span());
                }
                Email {
                    smtp: e_ref.smtp.clone(),
                    from: e_ref.from.clone(),
                    to: e_ref.to.clone(),
                }
            }),
        });

    let report = raw
        .report
        .as_ref()
        .map_or_else(ReportSettings::default, |r| report_settings(&mut v, r));

    // Cycles across phases (self-dependencies with a lookback are fine and excluded).
    let ordered = match topological_order(&phases) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<String> = cycle
                .iter()
                .filter_map(|id| {
                    phases
                        .iter()
                        .find(|p| p.id == *id)
                        .map(|p| format!("`{}`", p.name))
                })
                .collect();
            let span = cycle
                .first()
                .and_then(|id| need_spans.get(&id.0).cloned())
                .unwrap_or(0..0);
            v.error_hint(
                format!(
                    "phases depend on each other in a cycle: {}",
                    names.join(" → ")
                ),
                span,
                "a phase can only need phases that do not need it back",
            );
            phases.clone()
        }
    };

    let mut spec = Spec {
        name,
        description: pipeline.description.clone(),
        start: start.unwrap_or(Date::MIN),
        calendar,
        due: pipeline_due,
        warehouse,
        state_url,
        state_sync,
        state_outage,
        listen,
        phases: ordered,
        healing,
        alerts,
        report,
    };
    if spec.uses_sql() && spec.warehouse.is_none() {
        v.error_hint(
            "some phase uses SQL but there is no [warehouse]",
            raw.pipeline.span(),
            "add [warehouse] url = \"sqlite://warehouse.db\" (or postgres://…)",
        );
    }
    if v.diagnostics.is_empty() {
        spec.phases.shrink_to_fit();
        Ok(spec)
    } else {
        v.diagnostics.sort_by_key(Diagnostic::position);
        Err(v.diagnostics)
    }
}
