//! Helpers shared by the integration tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// A date in January 2024.
pub(crate) fn jan(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, day).unwrap()
}

/// Writes an executable `#!/bin/sh` script into `dir`.
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// PostgreSQL URL for the tests. `None` means skip, unless `GAPLESS_REQUIRE_EXTERNAL=1` (CI),
/// where a missing URL fails the test so that a skip cannot hide.
pub(crate) fn pg_url() -> Option<String> {
    match std::env::var("GAPLESS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("GAPLESS_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "GAPLESS_REQUIRE_EXTERNAL=1 but GAPLESS_TEST_PG_URL is not set"
            );
            eprintln!("GAPLESS_TEST_PG_URL is not set: skipping the PostgreSQL test");
            None
        }
    }
}

/// A name unique to this test run, usable as an SQL identifier.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Whether the process is gone (or a zombie nobody reaped: PID 1 in a container may not).
fn is_gone(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true),
    }
}

/// Polls, for up to 5 s, until the process is gone.
pub(crate) async fn assert_gone_soon(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a pid that a script wrote into a file.
pub(crate) fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Polls, for up to 5 s, until a script has written a pid into `path`.
pub(crate) async fn wait_for_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
