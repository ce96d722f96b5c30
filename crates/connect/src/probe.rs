//! Probes outside the warehouse: a command that prints counts, and objects matching a pattern in
//! a directory or a bucket.
//!
//! Both return the count per date for a whole range in one go. Dates with nothing are absent
//! from the map (a count of 0), as in [`crate::Warehouse::counts`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;

use crate::command::{ProcessSpec, check_status, run_process};
use crate::parse_iso_date;
use crate::runner::RunError;

/// Most bytes a probe command may print: a decade of dates is ~60 KiB.
const PROBE_STDOUT_LIMIT: usize = 16 * 1024 * 1024;
/// Per-date listings under way at once.
const LIST_CONCURRENCY: usize = 8;

/// Errors of the command and files probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe command did not run to a zero exit (spawn, exit status, timeout).
    #[error("probe command `{program}` failed")]
    Command {
        /// The program as given in argv.
        program: String,
        /// How it failed; [`RunError::Failed`] carries the stderr tail.
        #[source]
        source: RunError,
    },
    /// A line of the probe command's output is not `YYYY-MM-DD COUNT`.
    #[error(
        "probe command `{program}` printed `{line}` on line {line_number}; expected `YYYY-MM-DD COUNT`"
    )]
    BadLine {
        /// The program as given in argv.
        program: String,
        /// 1-based line number in its stdout.
        line_number: usize,
        /// The line, trimmed.
        line: String,
    },
    /// The probe command printed more than gapless reads.
    #[error("probe command `{program}` printed more than {limit} bytes")]
    OutputTooLarge {
        /// The program as given in argv.
        program: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// A files pattern gapless cannot use.
    #[error("invalid files pattern `{pattern}`: {reason}")]
    BadPattern {
        /// The pattern as configured.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bucket pattern whose object store is not compiled into this build.
    #[error(
        "`{scheme}://` patterns are not supported by this build; enable the `{feature}` feature"
    )]
    NotCompiled {
        /// `gs` or `s3`.
        scheme: &'static str,
        /// The cargo feature of `gapless-connect` that adds it.
        feature: &'static str,
    },
    /// Listing a local directory failed.
    #[error("cannot list `{}`", .directory.display())]
    List {
        /// The directory.
        directory: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Listing objects failed.
    #[error("cannot list objects under `{location}`")]
    Store {
        /// The directory or bucket prefix.
        location: String,
        /// The object store error.
        #[source]
        source: object_store::Error,
    },
}

impl ProbeError {
    /// Whether probing again may succeed: command timeouts and failures, and listing errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Command { source, .. } => source.is_retryable(),
            Self::Store { .. } | Self::List { .. } => true,
            _ => false,
        }
    }
}

/// Runs a probe command (argv, no shell, in `cwd`) with `{start}` and `{end}` substituted into its
/// arguments, and reads `YYYY-MM-DD COUNT` lines from its stdout. Blank lines are ignored; dates
/// outside `[start, end]` are ignored; repeated dates are summed. A non-zero exit fails with the
/// stderr tail; on timeout the process group is killed.
pub async fn command_counts(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    start: NaiveDate,
    end: NaiveDate,
    timeout: Duration,
) -> Result<BTreeMap<NaiveDate, i64>, ProbeError> {
    let start_text = start.to_string();
    let end_text = end.to_string();
    let argv: Vec<String> = argv
        .iter()
        .map(|argument| {
            argument
                .replace("{start}", &start_text)
                .replace("{end}", &end_text)
        })
        .collect();
    let program = argv.first().cloned().unwrap_or_default();
    let command_error = |source| ProbeError::Command {
        program: program.clone(),
        source,
    };
    let output = run_process(&ProcessSpec {
        argv: &argv,
        cwd,
        env,
        timeout,
        cancel: None,
        log_path: None,
        stdout_limit: Some(PROBE_STDOUT_LIMIT),
    })
    .await
    .map_err(command_error)?;
    check_status(output.status, output.stderr.into_string()).map_err(command_error)?;
    if output.stdout.overflowed() {
        return Err(ProbeError::OutputTooLarge {
            program,
            limit: PROBE_STDOUT_LIMIT,
        });
    }
    parse_count_lines(&String::from_utf8_lossy(output.stdout.bytes()), start, end).map_err(
        |(line_number, line)| ProbeError::BadLine {
            program,
            line_number,
            line,
        },
    )
}

/// Parses `YYYY-MM-DD COUNT` lines; an error is the 1-based line number and the line.
fn parse_count_lines(
    text: &str,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<BTreeMap<NaiveDate, i64>, (usize, String)> {
    let mut counts = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = match (fields.next(), fields.next(), fields.next()) {
            (Some(date), Some(count), None) => {
                parse_iso_date(date).zip(count.parse::<i64>().ok().filter(|count| *count >= 0))
            }
            _ => None,
        };
        let Some((date, count)) = parsed else {
            return Err((index + 1, line.to_owned()));
        };
        if date >= start && date <= end {
            let total: &mut i64 = counts.entry(date).or_default();
            *total = total.saturating_add(count);
        }
    }
    Ok(counts)
}

/// Counts, for every date in `[start, end]`, the objects whose path matches `pattern` with
/// `{date}` replaced by the date.
///
/// `pattern` is a path relative to `base_dir` (`gcs/boxscores/{date}/*.json`), an absolute path,
/// `file:///abs/…`, `gs://bucket/…` or `s3://bucket/…` (the last two need the `gcp`/`aws`
/// features; credentials come from the usual `GOOGLE_*`/`AWS_*` variables). Path segments may
/// hold `*` (any run of characters but `/`) and `?` (one character); `{date}` may stand alone as
/// a segment or inside one (`day={date}`, `run-{date}-*.log`) and may repeat. A missing
/// directory counts 0.
///
/// When the first segment after the fixed prefix holds `{date}` and no wildcard, only that
/// date's subtree is listed, per date; otherwise the fixed prefix is listed once and objects are
/// bucketed by the date in their path. Either way there is no request per object. The caller
/// bounds the time it may take (`tokio::time::timeout`).
pub async fn file_counts(
    pattern: &str,
    base_dir: &Path,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<BTreeMap<NaiveDate, i64>, ProbeError> {
    let bad = |reason: &str| ProbeError::BadPattern {
        pattern: pattern.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, path_text) = match pattern.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, pattern),
    };
    let (bucket, path_text) = match scheme {
        None | Some("file") => (None, path_text),
        Some("gs" | "s3") => {
            let (bucket, rest) = path_text.split_once('/').unwrap_or((path_text, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            (Some(bucket), rest)
        }
        Some(_) => return Err(bad("expected a path, `file://`, `gs://` or `s3://`")),
    };
    if scheme == Some("file") && !path_text.starts_with('/') {
        return Err(bad(
            "a `file://` pattern needs an absolute path (`file:///…`)",
        ));
    }
    let segments: Vec<&str> = path_text.split('/').filter(|s| !s.is_empty()).collect();
    let Some(dynamic) = segments.iter().position(|segment| is_dynamic(segment)) else {
        return Err(bad("no `{date}` in the pattern"));
    };
    if !segments.iter().any(|segment| segment.contains("{date}")) {
        return Err(bad("no `{date}` in the pattern"));
    }
    if segments
        .iter()
        .any(|segment| segment.replace("{date}", "").contains(['{', '}']))
    {
        return Err(bad("only `{date}` may appear in braces"));
    }
    let glob = Glob {
        segments: segments[dynamic..]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };
    let fixed = &segments[..dynamic];

    let mut counts = BTreeMap::new();
    if start > end {
        return Ok(counts);
    }
    let dates: Vec<NaiveDate> = start.iter_days().take_while(|day| *day <= end).collect();
    let first = &glob.segments[0];
    // `{date}` fixes the first dynamic segment: list that subtree, per date.
    let per_date = glob.segments.len() > 1 && !first.contains(['*', '?']);

    let (store, prefix, location): (Arc<dyn ObjectStore>, StorePath, String) =
        match (scheme, bucket) {
            (Some(scheme @ ("gs" | "s3")), Some(bucket)) => {
                let store = cloud_store(scheme, bucket)?;
                let prefix = StorePath::parse(fixed.join("/"))
                    .map_err(|error| bad(&format!("invalid object path: {error}")))?;
                (
                    store,
                    prefix,
                    format!("{scheme}://{bucket}/{}", fixed.join("/")),
                )
            }
            _ => {
                let relative = PathBuf::from(fixed.join("/"));
                let root = if path_text.starts_with('/') {
                    Path::new("/").join(relative)
                } else {
                    base_dir.join(relative)
                };
                // Local files are listed in place, in one blocking job: `LocalFileSystem::list`
                // would stat every file for metadata the probe never reads.
                let segments = glob.segments.clone();
                let found = tokio::task::spawn_blocking(move || {
                    if per_date {
                        let rest = &segments[1..];
                        dates
                            .into_iter()
                            .map(|date| {
                                let directory = root.join(substitute(&segments[0], date));
                                let names = local_list(&directory, rest.len())?;
                                let count = names
                                    .iter()
                                    .filter(|parts| Glob::matches_with(rest, parts, date))
                                    .count();
                                Ok((date, count))
                            })
                            .collect::<Result<Vec<_>, ProbeError>>()
                    } else {
                        let glob = Glob { segments };
                        let mut found = BTreeMap::<NaiveDate, usize>::new();
                        for parts in local_list(&root, glob.segments.len())? {
                            if let Some(date) = glob.date_of(&parts)
                                && date >= start
                                && date <= end
                            {
                                *found.entry(date).or_default() += 1;
                            }
                        }
                        Ok(found.into_iter().collect())
                    }
                })
                .await
                .map_err(|error| ProbeError::List {
                    directory: PathBuf::from(path_text),
                    source: std::io::Error::other(error),
                })??;
                for (date, count) in found {
                    if count > 0 {
                        counts.insert(date, i64::try_from(count).unwrap_or(i64::MAX));
                    }
                }
                return Ok(counts);
            }
        };

    if per_date {
        let mut listings = futures::stream::iter(dates)
            .map(|date| {
                let store = Arc::clone(&store);
                let directory = substitute(first, date);
                let subtree = prefix.clone().join(directory.as_str());
                let rest = &glob.segments[1..];
                let location = &location;
                async move {
                    let names = list(&*store, &subtree, location).await?;
                    let count = names
                        .iter()
                        .filter(|parts| Glob::matches_with(rest, parts, date))
                        .count();
                    Ok::<_, ProbeError>((date, count))
                }
            })
            .buffer_unordered(LIST_CONCURRENCY);
        while let Some(result) = listings.next().await {
            let (date, count) = result?;
            if count > 0 {
                counts.insert(date, i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    } else {
        for parts in list(&*store, &prefix, &location).await? {
            if let Some(date) = glob.date_of(&parts)
                && date >= start
                && date <= end
            {
                *counts.entry(date).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// The files under `directory` down to `depth` levels, as their path segments below it, as an
/// object store would list them: symbolic links followed, names that are not UTF-8 or that
/// look like an unfinished multipart upload (`name#123`, which `object_store` hides) left out.
/// A missing directory is an empty listing. Only paths exactly `depth` segments deep can match
/// the pattern, so deeper levels are never read (which also bounds symbolic-link loops).
fn local_list(directory: &Path, depth: usize) -> Result<Vec<Vec<String>>, ProbeError> {
    let mut files = Vec::new();
    let mut pending: Vec<(PathBuf, Vec<String>)> = vec![(directory.to_owned(), Vec::new())];
    while let Some((path, parts)) = pending.pop() {
        let list_error = |source| ProbeError::List {
            directory: path.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(error) => return Err(list_error(error)),
        };
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let mut file_type = entry.file_type().map_err(list_error)?;
            if file_type.is_symlink() {
                match std::fs::metadata(entry.path()) {
                    Ok(target) => file_type = target.file_type(),
                    // A dangling link is not a file.
                    Err(_) => continue,
                }
            }
            let mut child = parts.clone();
            child.push(name);
            if file_type.is_dir() {
                if child.len() < depth {
                    pending.push((entry.path(), child));
                }
            } else if file_type.is_file()
                && child.len() == depth
                && !child.last().is_some_and(|name| is_upload_part(name))
            {
                files.push(child);
            }
        }
    }
    Ok(files)
}

/// `object_store`'s local store hides `name#digits` files: parts of an unfinished upload.
fn is_upload_part(name: &str) -> bool {
    name.split_once('#').is_some_and(|(_, suffix)| {
        !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_digit())
    })
}

fn is_dynamic(segment: &str) -> bool {
    segment.contains("{date}") || segment.contains(['*', '?'])
}

fn substitute(segment: &str, date: NaiveDate) -> String {
    segment.replace("{date}", &date.to_string())
}

fn cloud_store(scheme: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>, ProbeError> {
    let (scheme, feature, compiled) = match scheme {
        "gs" => ("gs", "gcp", cfg!(feature = "gcp")),
        _ => ("s3", "aws", cfg!(feature = "aws")),
    };
    if !compiled {
        return Err(ProbeError::NotCompiled { scheme, feature });
    }
    let location = format!("{scheme}://{bucket}");
    let url = url::Url::parse(&location).map_err(|error| ProbeError::BadPattern {
        pattern: location.clone(),
        reason: error.to_string(),
    })?;
    // The builders read credentials from these, as their `from_env` constructors would.
    let options = std::env::vars()
        .filter(|(key, _)| key.starts_with("GOOGLE_") || key.starts_with("AWS_"))
        .map(|(key, value)| (key.to_ascii_lowercase(), value));
    let (store, _) = object_store::parse_url_opts(&url, options)
        .map_err(|source| ProbeError::Store { location, source })?;
    Ok(Arc::from(store))
}

/// Lists every object under `prefix`, as its path segments below `prefix`. A missing
/// directory is an empty listing.
async fn list(
    store: &dyn ObjectStore,
    prefix: &StorePath,
    location: &str,
) -> Result<Vec<Vec<String>>, ProbeError> {
    let mut stream = store.list(Some(prefix));
    let mut names = Vec::new();
    while let Some(item) = stream.next().await {
        let meta = match item {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => break,
            Err(source) => {
                return Err(ProbeError::Store {
                    location: location.to_owned(),
                    source,
                });
            }
        };
        if let Some(parts) = meta.location.prefix_match(prefix) {
            names.push(parts.map(|part| part.as_ref().to_owned()).collect());
        }
    }
    Ok(names)
}

/// The dynamic part of a files pattern: one glob per path segment.
struct Glob {
    segments: Vec<String>,
}

impl Glob {
    /// Whether `parts` match `segments` with `{date}` standing for `date`.
    fn matches_with(segments: &[String], parts: &[String], date: NaiveDate) -> bool {
        segments.len() == parts.len()
            && segments
                .iter()
                .zip(parts)
                .all(|(segment, part)| wildcard_match(&substitute(segment, date), part))
    }

    /// The date for which `parts` match the pattern, if any.
    fn date_of(&self, parts: &[String]) -> Option<NaiveDate> {
        if parts.len() != self.segments.len() {
            return None;
        }
        // Candidate dates come from where the first `{date}` could sit in its part.
        let index = self.segments.iter().position(|s| s.contains("{date}"))?;
        let part = &parts[index];
        (0..part.len().saturating_sub(9))
            .filter_map(|at| part.get(at..at + 10).and_then(parse_iso_date))
            .find(|date| Self::matches_with(&self.segments, parts, *date))
    }
}

/// Matches `text` against `pattern` with `*` (any run of characters) and `?` (one character).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::NaiveDate;

    use super::{Glob, parse_count_lines, wildcard_match};

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 1, d).unwrap()
    }

    #[test]
    fn wildcards() {
        for (pattern, text, expected) in [
            ("*.json", "a.json", true),
            ("*.json", ".json", true),
            ("*.json", "a.json.tmp", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxb", true),
            ("*a*b", "xxbxxa", false),
            ("exact", "exact", true),
            ("exact", "exacto", false),
            ("*", "", true),
            ("ü?", "üx", true),
        ] {
            assert_eq!(
                wildcard_match(pattern, text),
                expected,
                "{pattern} vs {text}"
            );
        }
    }

    #[test]
    fn dates_are_found_inside_segments() {
        let glob = Glob {
            segments: vec!["run-{date}-*.log".into()],
        };
        assert_eq!(glob.date_of(&["run-2024-01-05-a.log".into()]), Some(day(5)));
        assert_eq!(glob.date_of(&["run-2024-01-05.log".into()]), None);
        assert_eq!(glob.date_of(&["run-2024-13-05-a.log".into()]), None);
        let nested = Glob {
            segments: vec!["{date}".into(), "*.json".into()],
        };
        assert_eq!(
            nested.date_of(&["2024-01-03".into(), "x.json".into()]),
            Some(day(3))
        );
        assert_eq!(
            nested.date_of(&["2024-01-03".into(), "sub".into(), "x.json".into()]),
            None
        );
    }

    #[test]
    fn count_lines() {
        let text = "2024-01-01 3\n\n  2024-01-02\t0 \n2024-01-01 2\n2023-12-31 9\n";
        let counts = parse_count_lines(text, day(1), day(2)).unwrap();
        assert_eq!(counts, [(day(1), 5), (day(2), 0)].into_iter().collect());
        for (text, line_number) in [
            ("2024-01-01 3\nnonsense\n", 2),
            ("2024-01-01\n", 1),
            ("2024-01-01 3 4\n", 1),
            ("\n2024-01-01 -1\n", 2),
            ("2024-1-1 3\n", 1),
            ("2024-01-01 x\n", 1),
        ] {
            let (number, _) = parse_count_lines(text, day(1), day(2)).unwrap_err();
            assert_eq!(number, line_number, "{text:?}");
        }
    }
}
