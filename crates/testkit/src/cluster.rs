//! A private PostgreSQL cluster for tests that restart the server under a running gapless:
//! `initdb` in a temporary directory, started with `pg_ctl` on a free loopback port, restarted
//! and stopped at will, removed when dropped. Uses the server binaries of the installed
//! PostgreSQL (`/usr/lib/postgresql/N/bin`); as root it runs them as the `postgres` user, which
//! `initdb` requires.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A running private cluster ([`PgCluster::start`]).
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Creates and starts a cluster with trust authentication on 127.0.0.1. `None` when no
    /// PostgreSQL server binaries are installed (the caller gates on [`crate::pg_url`] first,
    /// so that CI, which has them, never skips).
    pub fn start() -> anyhow::Result<Option<Self>> {
        let Some(bin) = server_bin() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("gapless-pg-").tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()))?;
        }
        let port = free_port()?;
        let cluster = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            path_str(cluster.dir.path())?
        );
        let log = cluster.dir.path().join("server.log");
        cluster.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &options,
                "-l",
                path_str(&log)?,
                "-w",
                "start",
            ],
        )?;
        Ok(Some(cluster))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server (fast shutdown: every session is ended), waiting until it accepts
    /// connections again.
    pub fn restart(&self) -> anyhow::Result<()> {
        let data = self.data();
        self.pg(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "fast", "-w", "restart"],
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(self.dir.path());
        run(&mut command)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data()).map(str::to_owned) {
            let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// The newest installed PostgreSQL's server binaries.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `command` to its end with its output in a temporary file, not a pipe: the server that
/// `pg_ctl start` leaves running would hold a pipe open, and reading it to its end would wait
/// for the server to stop.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let mut log = tempfile::tempfile()?;
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        log.rewind()?;
        log.read_to_string(&mut text)?;
        bail!("{command:?} failed: {text}");
    }
    Ok(())
}
