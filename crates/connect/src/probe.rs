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

mod cloud;

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
    /// A bucket's client could not be set up: unreadable or malformed credentials, a bad
    /// endpoint.
    #[error("cannot set up `{location}`: {reason}")]
    Bucket {
        /// `gs://bucket` or `s3://bucket`.
        location: String,
        /// What was wrong, naming the variable or file it came from.
        reason: String,
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
    /// Looking up a local path failed (other than its absence).
    #[error("cannot read `{}`", .path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Listing objects or looking one up failed.
    #[error("cannot read objects under `{location}`")]
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
            Self::Store { .. } | Self::List { .. } | Self::Stat { .. } => true,
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
        log_limit: crate::command::DEFAULT_LOG_LIMIT,
        started: None,
        die_with_parent: true,
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
/// `file:///abs/…`, `gs://bucket/…` or `s3://bucket/…` (credentials the usual way: see
/// [`cloud`]). Path segments may
/// hold `*` (any run of characters but `/`) and `?` (one character); `{date}` may stand alone as
/// a segment or inside one (`day={date}`, `run-{date}-*.log`) and may repeat. A missing
/// directory counts 0.
///
/// The cost follows the dates asked for, not what else is stored: the pattern is walked
/// segment by segment with each date substituted. A segment without a wildcard is a name, not
/// a listing, so a pattern without wildcards costs one stat (`HEAD` on a bucket) per date. A
/// segment with a wildcard lists the directory it stands in, one level only, once for all the
/// dates that reach that directory: `markers/*{date}*.done` lists `markers` once per call,
/// `gcs/boxscores/{date}/*.json` lists one directory per date. Nothing is listed recursively
/// and there is no request per object. The caller bounds the time it may take
/// (`tokio::time::timeout`).
pub async fn file_counts(
    pattern: &str,
    base_dir: &Path,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<BTreeMap<NaiveDate, i64>, ProbeError> {
    let (tree, segments) = parse_pattern(pattern, base_dir)?;
    let (counts, io) = walk(&tree, &segments, start, end).await?;
    tracing::debug!(
        pattern,
        %start,
        %end,
        listings = io.listings,
        stats = io.stats,
        "files probe"
    );
    Ok(counts)
}

/// Where a files pattern's paths live, and its segments below that root.
fn parse_pattern(pattern: &str, base_dir: &Path) -> Result<(Tree, Vec<String>), ProbeError> {
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
    let segments: Vec<String> = path_text
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !segments.iter().any(|segment| segment.contains("{date}")) {
        return Err(bad("no `{date}` in the pattern"));
    }
    if segments
        .iter()
        .any(|segment| segment.replace("{date}", "").contains(['{', '}']))
    {
        return Err(bad("only `{date}` may appear in braces"));
    }
    let tree = match (scheme, bucket) {
        (Some(scheme @ ("gs" | "s3")), Some(bucket)) => {
            // Every segment must make a valid object path once substituted: checked here, with
            // a sample date, so that a bad pattern fails before any request.
            let sample = segments.join("/").replace("{date}", "2000-01-01");
            StorePath::parse(&sample)
                .map_err(|error| bad(&format!("invalid object path: {error}")))?;
            Tree::Store {
                store: cloud::store(scheme, bucket)?,
                location: format!("{scheme}://{bucket}"),
            }
        }
        _ if path_text.starts_with('/') => Tree::Local(PathBuf::from("/")),
        _ => Tree::Local(base_dir.to_owned()),
    };
    Ok((tree, segments))
}

/// Where a files probe looks: a local directory (listed in place, in blocking jobs:
/// `LocalFileSystem::list` would stat every file for metadata the probe never reads) or an
/// object store.
enum Tree {
    Local(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        /// `gs://bucket`, for messages.
        location: String,
    },
}

/// The names one level below a directory.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<String>,
    directories: Vec<String>,
}

/// What a walk cost: directory listings (one level each) and single-path lookups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Io {
    listings: usize,
    stats: usize,
}

impl Tree {
    /// Lists each directory (path segments below the root) one level deep.
    async fn list(&self, directories: Vec<Vec<String>>) -> Result<Vec<Listing>, ProbeError> {
        match self {
            Tree::Local(root) => {
                let tree = root.clone();
                blocking(root, move || {
                    directories
                        .iter()
                        .map(|parts| local_list(&join(&tree, parts)))
                        .collect()
                })
                .await
            }
            Tree::Store { store, location } => {
                let mut found: Vec<Listing> = Vec::new();
                found.resize_with(directories.len(), Listing::default);
                // Owned state per request: a borrowing closure makes the future not `Send`.
                let mut listings = futures::stream::iter(directories.into_iter().enumerate())
                    .map(|(index, parts)| {
                        let (store, location) = (Arc::clone(store), location.clone());
                        async move {
                            let listing = cloud::list(&*store, &location, &parts).await?;
                            Ok::<_, ProbeError>((index, listing))
                        }
                    })
                    .buffer_unordered(LIST_CONCURRENCY);
                while let Some(result) = listings.next().await {
                    let (index, listing) = result?;
                    found[index] = listing;
                }
                Ok(found)
            }
        }
    }

    /// Whether each path (segments below the root) is a file.
    async fn stat(&self, paths: Vec<Vec<String>>) -> Result<Vec<bool>, ProbeError> {
        match self {
            Tree::Local(root) => {
                let tree = root.clone();
                blocking(root, move || {
                    paths
                        .iter()
                        .map(|parts| local_is_file(&join(&tree, parts)))
                        .collect()
                })
                .await
            }
            Tree::Store { store, location } => {
                let mut found = vec![false; paths.len()];
                let mut heads = futures::stream::iter(paths.into_iter().enumerate())
                    .map(|(index, parts)| {
                        let (store, location) = (Arc::clone(store), location.clone());
                        async move {
                            let exists = cloud::is_file(&*store, &location, &parts).await?;
                            Ok::<_, ProbeError>((index, exists))
                        }
                    })
                    .buffer_unordered(LIST_CONCURRENCY);
                while let Some(result) = heads.next().await {
                    let (index, exists) = result?;
                    found[index] = exists;
                }
                Ok(found)
            }
        }
    }
}

fn join(root: &Path, parts: &[String]) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(parts);
    path
}

/// Runs local file system calls on the blocking pool; `root` names the tree in the error of a
/// job that panicked.
async fn blocking<T: Send + 'static>(
    root: &Path,
    job: impl FnOnce() -> Result<T, ProbeError> + Send + 'static,
) -> Result<T, ProbeError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|error| ProbeError::List {
            directory: root.to_owned(),
            source: std::io::Error::other(error),
        })?
}

/// Counts, per date in `[start, end]`, the paths below `tree` that match `segments` with the
/// date substituted, walking level by level: at each level, the directories (and at the last,
/// the files) that some date can still match.
async fn walk(
    tree: &Tree,
    segments: &[String],
    start: NaiveDate,
    end: NaiveDate,
) -> Result<(BTreeMap<NaiveDate, i64>, Io), ProbeError> {
    let mut io = Io::default();
    let mut found = BTreeMap::<NaiveDate, usize>::new();
    // The directories reached so far, each with the dates whose pattern led there (sorted).
    let mut reached: BTreeMap<Vec<String>, Vec<NaiveDate>> = BTreeMap::new();
    if start <= end {
        reached.insert(
            Vec::new(),
            start.iter_days().take_while(|day| *day <= end).collect(),
        );
    }
    for (index, segment) in segments.iter().enumerate() {
        if reached.is_empty() {
            break;
        }
        let last = index + 1 == segments.len();
        let mut next = BTreeMap::<Vec<String>, Vec<NaiveDate>>::new();
        // Dates never make a wildcard: this holds for every substitution of the segment.
        if segment.contains(['*', '?']) {
            let (directories, dates): (Vec<_>, Vec<_>) =
                std::mem::take(&mut reached).into_iter().unzip();
            io.listings += directories.len();
            let listings = tree.list(directories.clone()).await?;
            for ((directory, dates), listing) in directories.iter().zip(&dates).zip(listings) {
                let names = if last {
                    listing.files
                } else {
                    listing.directories
                };
                for name in names {
                    for date in matching_dates(segment, &name, dates) {
                        if last {
                            *found.entry(date).or_default() += 1;
                        } else {
                            let mut child = directory.clone();
                            child.push(name.clone());
                            next.entry(child).or_default().push(date);
                        }
                    }
                }
            }
        } else {
            for (directory, dates) in std::mem::take(&mut reached) {
                for date in dates {
                    let mut child = directory.clone();
                    child.push(substitute(segment, date));
                    next.entry(child).or_default().push(date);
                }
            }
            if last {
                let (paths, dates): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut next).into_iter().unzip();
                io.stats += paths.len();
                for (is_file, dates) in tree.stat(paths).await?.into_iter().zip(dates) {
                    if is_file {
                        for date in dates {
                            *found.entry(date).or_default() += 1;
                        }
                    }
                }
            }
        }
        for dates in next.values_mut() {
            dates.sort_unstable();
            dates.dedup();
        }
        reached = next;
    }
    let counts = found
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(date, count)| (date, i64::try_from(count).unwrap_or(i64::MAX)))
        .collect();
    Ok((counts, io))
}

/// The dates among `dates` (sorted) for which `name` matches `segment` with `{date}`
/// substituted. A segment with `{date}` can only match a name that holds the date's text, so
/// the candidates come from the name, not from the (possibly long) list of dates.
fn matching_dates(segment: &str, name: &str, dates: &[NaiveDate]) -> Vec<NaiveDate> {
    if !segment.contains("{date}") {
        return if wildcard_match(segment, name) {
            dates.to_vec()
        } else {
            Vec::new()
        };
    }
    // The literal text before the first wildcard or `{date}`: a cheap filter, run on every name
    // of a folder that may hold the files of every other day.
    let literal_end = segment.find(['*', '?', '{']).unwrap_or(segment.len());
    if !name.starts_with(&segment[..literal_end]) {
        return Vec::new();
    }
    // `{date}` before any wildcard sits right after that literal text; otherwise anywhere.
    let positions = if segment[literal_end..].starts_with("{date}") {
        literal_end..literal_end + 1
    } else {
        0..name.len().saturating_sub(9)
    };
    let mut candidates: Vec<NaiveDate> = positions
        .filter_map(|at| name.get(at..at + 10))
        .filter(|text| looks_like_date(text.as_bytes()))
        .filter_map(parse_iso_date)
        .filter(|date| dates.binary_search(date).is_ok())
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates.retain(|date| wildcard_match(&substitute(segment, *date), name));
    candidates
}

/// `dddd-dd-dd`, before the real parse.
fn looks_like_date(text: &[u8]) -> bool {
    text.len() == 10
        && text.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        })
}

/// The files and directories directly in `directory`, as an object store would list them:
/// symbolic links followed, names that are not UTF-8 or that look like an unfinished multipart
/// upload (`name#123`, which `object_store` hides) left out. A missing directory is an empty
/// listing.
fn local_list(directory: &Path) -> Result<Listing, ProbeError> {
    let list_error = |source| ProbeError::List {
        directory: directory.to_owned(),
        source,
    };
    let mut listing = Listing::default();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if is_absent(&error) => return Ok(listing),
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
        if file_type.is_dir() {
            listing.directories.push(name);
        } else if file_type.is_file() && !is_upload_part(&name) {
            listing.files.push(name);
        }
    }
    Ok(listing)
}

/// Whether `path` is a file (symbolic links followed), as [`local_list`] would list it.
fn local_is_file(path: &Path) -> Result<bool, ProbeError> {
    if path
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(is_upload_part)
    {
        return Ok(false);
    }
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(metadata.is_file()),
        Err(error) if is_absent(&error) => Ok(false),
        Err(source) => Err(ProbeError::Stat {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Errors that mean "nothing there": a missing path, a file where a directory was expected, a
/// dangling or looping link.
fn is_absent(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    ) || error.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32)
}

/// `object_store`'s local store hides `name#digits` files: parts of an unfinished upload.
fn is_upload_part(name: &str) -> bool {
    name.split_once('#').is_some_and(|(_, suffix)| {
        !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_digit())
    })
}

fn substitute(segment: &str, date: NaiveDate) -> String {
    segment.replace("{date}", &date.to_string())
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

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use chrono::NaiveDate;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use object_store::path::Path as StorePath;

    use super::{Io, Tree, matching_dates, parse_count_lines, walk, wildcard_match};

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
    fn dates_are_found_inside_names() {
        let all: Vec<NaiveDate> = (1..=31).map(day).collect();
        assert_eq!(
            matching_dates("run-{date}-*.log", "run-2024-01-05-a.log", &all),
            [day(5)]
        );
        assert!(matching_dates("run-{date}-*.log", "run-2024-01-05.log", &all).is_empty());
        assert!(matching_dates("run-{date}-*.log", "run-2024-13-05-a.log", &all).is_empty());
        // Only the dates asked for.
        assert!(matching_dates("run-{date}-*.log", "run-2024-01-05-a.log", &[day(6)]).is_empty());
        // A name holding two dates matches the pattern of each.
        assert_eq!(
            matching_dates("*{date}*", "2024-01-02-to-2024-01-03", &all),
            [day(2), day(3)]
        );
        // `{date}` after a literal prefix: found at its place only.
        assert_eq!(
            matching_dates("p1-{date}*", "p1-2024-01-07.done", &all),
            [day(7)]
        );
        assert!(matching_dates("p1-{date}*", "p2-2024-01-07.done", &all).is_empty());
        assert!(matching_dates("p1-{date}*", "p1-x2024-01-07.done", &all).is_empty());
        assert_eq!(matching_dates("{date}", "2024-01-09", &all), [day(9)]);
        // Without `{date}`, one match decides for every date.
        assert_eq!(
            matching_dates("*.json", "x.json", &all[..2]),
            [day(1), day(2)]
        );
        assert!(matching_dates("*.json", "x.txt", &all).is_empty());
    }

    fn put(root: &Path, relative: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"{}").unwrap();
    }

    /// A history of `days` days: 3 phases' markers in one folder, and one directory per day.
    fn history(days: u64) -> Vec<String> {
        let first = NaiveDate::from_ymd_opt(2021, 1, 1).unwrap();
        let mut files = Vec::new();
        for date in first.iter_days().take(usize::try_from(days).unwrap()) {
            for phase in 1..=3 {
                files.push(format!("markers/p{phase}-{date}.done"));
            }
            files.push(format!("out/{date}/a.json"));
            files.push(format!("out/{date}/b.json"));
        }
        files
    }

    /// The patterns of a gate over one date or a few, and what each may cost, whatever the
    /// history: stats for names, one listing per directory a wildcard stands in.
    fn expectations() -> Vec<(&'static str, u32, Io, i64)> {
        vec![
            (
                "markers/p2-{date}.done",
                1,
                Io {
                    listings: 0,
                    stats: 1,
                },
                1,
            ),
            (
                "markers/p2-{date}.done",
                5,
                Io {
                    listings: 0,
                    stats: 5,
                },
                1,
            ),
            (
                "markers/*{date}*.done",
                1,
                Io {
                    listings: 1,
                    stats: 0,
                },
                3,
            ),
            (
                "markers/*{date}*.done",
                5,
                Io {
                    listings: 1,
                    stats: 0,
                },
                3,
            ),
            (
                "out/{date}/*.json",
                5,
                Io {
                    listings: 5,
                    stats: 0,
                },
                2,
            ),
            (
                "out/{date}/a.json",
                5,
                Io {
                    listings: 0,
                    stats: 5,
                },
                1,
            ),
            // A wildcard above `{date}`: the root once, then each date's directory.
            (
                "o*/{date}/*.json",
                2,
                Io {
                    listings: 3,
                    stats: 0,
                },
                2,
            ),
        ]
    }

    fn history_end() -> NaiveDate {
        NaiveDate::from_ymd_opt(2021, 1, 1).unwrap()
    }

    #[tokio::test]
    async fn a_gate_costs_the_same_whatever_the_history_on_disk() {
        for days in [10, 400] {
            let dir = tempfile::tempdir().unwrap();
            for file in history(days) {
                put(dir.path(), &file);
            }
            let tree = Tree::Local(dir.path().to_owned());
            for (pattern, span, cost, per_date) in expectations() {
                let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
                let start = history_end();
                let end = start + chrono::Days::new(u64::from(span) - 1);
                let (counts, io) = walk(&tree, &segments, start, end).await.unwrap();
                assert_eq!(io, cost, "{pattern} over {span} days, history {days}");
                let expected: BTreeMap<_, _> = start
                    .iter_days()
                    .take_while(|date| *date <= end)
                    .map(|date| (date, per_date))
                    .collect();
                assert_eq!(counts, expected, "{pattern}");
            }
        }
    }

    #[tokio::test]
    async fn a_gate_on_a_bucket_lists_one_level_and_heads_names() {
        let store = InMemory::new();
        for file in history(30) {
            store
                .put(&StorePath::parse(&file).unwrap(), b"{}".to_vec().into())
                .await
                .unwrap();
        }
        let tree = Tree::Store {
            store: Arc::new(store),
            location: "memory://test".into(),
        };
        for (pattern, span, cost, per_date) in expectations() {
            let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
            let start = history_end();
            let end = start + chrono::Days::new(u64::from(span) - 1);
            let (counts, io) = walk(&tree, &segments, start, end).await.unwrap();
            assert_eq!(io, cost, "{pattern} over {span} days");
            assert_eq!(counts.len(), usize::try_from(span).unwrap(), "{pattern}");
            assert!(
                counts.values().all(|count| *count == per_date),
                "{pattern}: {counts:?}"
            );
        }
        // Missing names and prefixes count nothing.
        for pattern in [
            "nowhere/{date}/*.json",
            "markers/zz-{date}.done",
            "out/{date}/zz.json",
        ] {
            let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
            let (counts, _) = walk(&tree, &segments, history_end(), history_end())
                .await
                .unwrap();
            assert!(counts.is_empty(), "{pattern}");
        }
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
