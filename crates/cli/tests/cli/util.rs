//! A pipeline in a temporary directory, and the binary run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub(crate) const TODAY: &str = "2024-03-31";

/// How long [`Project::run`] lets one command run: far past the slowest (the demo on the
/// BigQuery emulator, 8 minutes in a debug build).
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

pub(crate) struct Project {
    pub(crate) dir: tempfile::TempDir,
}

impl Project {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.write(name, text);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gapless"));
        command
            .current_dir(self.path())
            .args(args)
            .env("GAPLESS_TODAY", TODAY)
            .env_remove("GAPLESS_PIPELINE")
            .env_remove("GAPLESS_STATE_URL")
            .env_remove("RUST_LOG");
        command
    }

    /// `bin/count.sh [FOLDER]`: prints `NAME 1` for each file in FOLDER (default `out`), so
    /// that a check counts one row per date whose file exists.
    pub(crate) fn count_script(&self) {
        self.script(
            "bin/count.sh",
            "#!/bin/sh\nfor f in \"${1:-out}\"/*; do [ -e \"$f\" ] || exit 0; echo \"$(basename \"$f\") 1\"; done\n",
        );
    }

    /// Runs the binary to its end, its output; fails the test when it runs past [`RUN_LIMIT`]
    /// (it is killed then), so that a hang is a failure that names the command.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let (finished, waiting) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let timed_out = waiting.recv_timeout(RUN_LIMIT) == Err(RecvTimeoutError::Timeout);
            if timed_out {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            timed_out
        });
        let output = child.wait_with_output().unwrap();
        let _ = finished.send(());
        let timed_out = watchdog.join().unwrap();
        assert!(
            !timed_out,
            "`gapless {}` ran past {RUN_LIMIT:?} and was killed; its stderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub(crate) async fn sqlite(&self, file: &str) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(self.path().join(file))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Runs `sql` (no parameters) on a pool.
pub(crate) async fn exec(pool: &SqlitePool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// One integer.
pub(crate) async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

/// Waits up to a minute for `path` to exist (a runner writes it once it started), failing the
/// test with `what` otherwise.
pub(crate) fn wait_for(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
