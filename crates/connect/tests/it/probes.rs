//! The command and files probes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gapless_connect::{ProbeError, RunError, command_counts, file_counts};

use crate::support::{jan, script};

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn command_probe_reads_counts() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "probe.sh",
        r#"echo "$1 3"
echo
echo "$2   5"
echo "2023-01-01 7"
echo "$PROBE_EXTRA 1""#,
    );
    let counts = command_counts(
        &argv(&["./probe.sh", "{start}", "{end}"]),
        dir.path(),
        &[("PROBE_EXTRA".into(), "2024-01-02".into())],
        jan(1),
        jan(3),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    // The 2023 line is outside the range and ignored.
    let expected: BTreeMap<_, _> = [(jan(1), 3), (jan(2), 1), (jan(3), 5)].into();
    assert_eq!(counts, expected);
}

#[tokio::test]
async fn command_probe_errors() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "bad.sh",
        "echo '2024-01-01 3'\necho\necho 'games: 7'",
    );
    let error = command_counts(
        &argv(&["./bad.sh"]),
        dir.path(),
        &[],
        jan(1),
        jan(3),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    match &error {
        ProbeError::BadLine {
            line_number, line, ..
        } => {
            assert_eq!((*line_number, line.as_str()), (3, "games: 7"));
        }
        other => panic!("expected a bad line, got {other:?}"),
    }
    assert!(
        error.to_string().contains("line 3") && error.to_string().contains("games: 7"),
        "{error}"
    );
    assert!(!error.is_retryable());

    script(
        dir.path(),
        "fail.sh",
        "echo '2024-01-01 3'\necho 'warehouse unreachable' >&2\nexit 2",
    );
    let error = command_counts(
        &argv(&["./fail.sh"]),
        dir.path(),
        &[],
        jan(1),
        jan(3),
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    match &error {
        ProbeError::Command {
            source:
                RunError::Failed {
                    code: 2,
                    stderr_tail,
                },
            ..
        } => {
            assert!(stderr_tail.contains("warehouse unreachable"));
        }
        other => panic!("expected a failed exit, got {other:?}"),
    }
    assert!(error.is_retryable());

    script(
        dir.path(),
        "slow.sh",
        "sleep 100 & echo $! > child.pid\nwait",
    );
    let started = Instant::now();
    let error = command_counts(
        &argv(&["./slow.sh"]),
        dir.path(),
        &[],
        jan(1),
        jan(3),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            ProbeError::Command {
                source: RunError::Timeout { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    crate::support::assert_gone_soon(crate::support::read_pid(&dir.path().join("child.pid"))).await;

    let error = command_counts(
        &argv(&["./nope.sh"]),
        dir.path(),
        &[],
        jan(1),
        jan(3),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            ProbeError::Command {
                source: RunError::Spawn { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

fn touch(root: &std::path::Path, relative: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"{}").unwrap();
}

#[tokio::test]
async fn files_probe_counts_matching_objects_per_date() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    touch(root, "gcs/boxscores/2024-01-01/a.json");
    touch(root, "gcs/boxscores/2024-01-01/b.json");
    touch(root, "gcs/boxscores/2024-01-01/notes.txt");
    touch(root, "gcs/boxscores/2024-01-01/deeper/c.json");
    std::fs::create_dir_all(root.join("gcs/boxscores/2024-01-02")).unwrap();
    touch(root, "gcs/boxscores/2024-01-02/readme.md");
    for game in 0..5 {
        touch(root, &format!("gcs/boxscores/2024-01-03/game{game}.json"));
    }
    touch(root, "gcs/boxscores/2024-01-09/outside.json");
    touch(root, "gcs/boxscores/not-a-date/x.json");
    let expected: BTreeMap<_, _> = [(jan(1), 2), (jan(3), 5)].into();

    // `{date}` as a whole segment: listed per date; 2024-01-04 has no directory at all.
    let counts = file_counts("gcs/boxscores/{date}/*.json", root, jan(1), jan(4))
        .await
        .unwrap();
    assert_eq!(counts, expected);
    // The same as an absolute path and as a file:// URL.
    let absolute = format!("{}/gcs/boxscores/{{date}}/*.json", root.display());
    assert_eq!(
        file_counts(&absolute, std::path::Path::new("/"), jan(1), jan(4))
            .await
            .unwrap(),
        expected
    );
    let url = format!("file://{absolute}");
    assert_eq!(
        file_counts(&url, std::path::Path::new("/"), jan(1), jan(4))
            .await
            .unwrap(),
        expected
    );
    // A wildcard before `{date}`: the prefix is listed once and bucketed by date.
    let counts = file_counts("gcs/*/{date}/*.json", root, jan(1), jan(4))
        .await
        .unwrap();
    assert_eq!(counts, expected);
    // `?` and a literal file name.
    let counts = file_counts("gcs/boxscores/{date}/game?.json", root, jan(1), jan(4))
        .await
        .unwrap();
    assert_eq!(counts, [(jan(3), 5)].into());
    // A missing tree counts nothing.
    assert!(
        file_counts("nowhere/{date}/*.json", root, jan(1), jan(4))
            .await
            .unwrap()
            .is_empty()
    );

    // `{date}` inside a file name.
    touch(root, "logs/run-2024-01-01-a.log");
    touch(root, "logs/run-2024-01-01-b.log");
    touch(root, "logs/run-2024-01-02-a.log");
    touch(root, "logs/run-2024-01-02.txt");
    touch(root, "logs/run-2024-02-02-a.log");
    let counts = file_counts("logs/run-{date}-*.log", root, jan(1), jan(31))
        .await
        .unwrap();
    assert_eq!(counts, [(jan(1), 2), (jan(2), 1)].into());
    // `{date}` inside a directory name, and twice.
    touch(root, "hive/day=2024-01-05/part-2024-01-05.parquet");
    touch(root, "hive/day=2024-01-05/part-2024-01-06.parquet");
    let counts = file_counts("hive/day={date}/part-{date}.parquet", root, jan(1), jan(31))
        .await
        .unwrap();
    assert_eq!(counts, [(jan(5), 1)].into());
}

/// Local trees are listed in place, as an object store would list them: symbolic links to
/// files and directories count, dangling links and unfinished upload parts (`name#123`) do
/// not, and a link loop ends.
#[tokio::test]
async fn files_probe_follows_links_like_an_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    touch(root, "elsewhere/shared.json");
    touch(root, "elsewhere/day/x.json");
    touch(root, "elsewhere/day/y.json");
    touch(root, "drop/2024-01-01/a.json");
    touch(root, "drop/2024-01-01/part#12");
    touch(root, "drop/2024-01-01/kept#v2");
    std::os::unix::fs::symlink(
        root.join("elsewhere/shared.json"),
        root.join("drop/2024-01-01/linked.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root.join("missing.json"),
        root.join("drop/2024-01-01/dangling.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(root.join("elsewhere/day"), root.join("drop/2024-01-02")).unwrap();
    std::os::unix::fs::symlink(root.join("drop"), root.join("drop/2024-01-01/loop")).unwrap();

    // a.json, kept#v2 and linked.json; the linked directory's two files.
    let counts = file_counts("drop/{date}/*", root, jan(1), jan(3))
        .await
        .unwrap();
    assert_eq!(counts, [(jan(1), 3), (jan(2), 2)].into());
    // Bucketed by date from one listing of the prefix, the same answer.
    let counts = file_counts("dr*/{date}/*", root, jan(1), jan(3))
        .await
        .unwrap();
    assert_eq!(counts, [(jan(1), 3), (jan(2), 2)].into());
}

#[tokio::test]
async fn files_probe_refuses_bad_patterns() {
    let dir = tempfile::tempdir().unwrap();
    for pattern in [
        "gcs/boxscores/*.json",
        "gcs/{start}/{date}/*.json",
        "ftp://host/{date}/x",
        "file://relative/{date}/x",
        "gs:///{date}/x",
    ] {
        let error = file_counts(pattern, dir.path(), jan(1), jan(2))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProbeError::BadPattern { .. }),
            "{pattern}: {error:?}"
        );
        assert!(error.to_string().contains(pattern), "{error}");
    }
}

/// The access time of a directory: reading its entries updates it (relatime does when it is
/// older than the modification time, as [`age_access_time`] makes it); looking up a name in it
/// does not.
fn access_time(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().accessed().unwrap()
}

fn age_access_time(path: &std::path::Path) {
    let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(long_ago))
        .unwrap();
    assert_eq!(access_time(path), long_ago);
}

/// A gate over one date costs the same whatever history sits beside it: with 3 phases × 1,000
/// days of markers in one folder, a pattern without wildcards looks its file up and never reads
/// the folder, and a wildcard pattern reads the folder once, not once per date.
#[tokio::test]
async fn files_gate_does_not_read_the_history_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let markers = root.join("markers");
    let first = chrono::NaiveDate::from_ymd_opt(2021, 1, 1).unwrap();
    for date in first.iter_days().take(1000) {
        for phase in 1..=3 {
            touch(root, &format!("markers/p{phase}-{date}.done"));
        }
    }
    let day = chrono::NaiveDate::from_ymd_opt(2023, 6, 1).unwrap();

    // The detector works on this file system: reading the folder moves its access time.
    age_access_time(&markers);
    let aged = access_time(&markers);
    assert_eq!(std::fs::read_dir(&markers).unwrap().count(), 3000);
    assert_ne!(
        access_time(&markers),
        aged,
        "reading a directory must update its atime here"
    );

    age_access_time(&markers);
    let counts = file_counts("markers/p2-{date}.done", root, day, day)
        .await
        .unwrap();
    assert_eq!(counts, [(day, 1)].into());
    let later = day + chrono::Days::new(400);
    let counts = file_counts("markers/p3-{date}.done", root, day, later)
        .await
        .unwrap();
    // The history ends on 2023-09-27.
    let last = first + chrono::Days::new(999);
    assert_eq!(counts.len(), (last - day).num_days() as usize + 1);
    assert_eq!(
        access_time(&markers),
        aged,
        "a pattern without wildcards read the whole folder"
    );

    // With a wildcard, the folder is the listing: read, and every date answered from it.
    let counts = file_counts(
        "markers/*{date}*.done",
        root,
        day,
        day + chrono::Days::new(2),
    )
    .await
    .unwrap();
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [3, 3, 3]);
    assert_ne!(access_time(&markers), aged);
}
