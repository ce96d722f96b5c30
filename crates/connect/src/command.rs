//! Running programs: the command runner, and the process handling that the command probe and
//! the HTTP runner's token command share.
//!
//! Programs run from an argv array, never through a shell (RELIABILITY.md §3.3), in a process
//! group of their own, so that a timeout or a cancellation kills everything they started:
//! SIGTERM to the group, SIGKILL after a grace period.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runner::RunError;

/// How much of stdout and of stderr a run keeps in memory for messages.
pub(crate) const TAIL_BYTES: usize = 4096;
/// Between SIGTERM to the process group and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the program exits, how long its output may still take to reach end-of-file before
/// whatever still holds the pipes (processes it left behind) is killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A command to run, fully substituted by the caller.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program and arguments. A program with a `/` is relative to `cwd`; a bare name is looked
    /// up in `PATH` (the one in `env` if it sets one).
    pub argv: Vec<String>,
    /// The working directory (the pipeline file's directory).
    pub cwd: PathBuf,
    /// Added to the inherited environment (`GAPLESS_DATE`, …).
    pub env: Vec<(String, String)>,
    /// After this the process group is terminated and the run fails with
    /// [`RunError::Timeout`].
    pub timeout: Duration,
    /// When given, stdout and stderr are appended to this file in full, as they arrive.
    /// Missing parent directories are created.
    pub log_path: Option<PathBuf>,
    /// Cancelling it terminates the process group and fails the run with
    /// [`RunError::Cancelled`].
    pub cancel: CancellationToken,
}

/// A command that exited with status 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The last few KiB of stdout.
    pub stdout_tail: String,
    /// The last few KiB of stderr.
    pub stderr_tail: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs a command to completion, with its output captured, its time bounded and its process
/// group killed on timeout or cancellation.
pub async fn run_command(spec: &CommandSpec) -> Result<CommandOutcome, RunError> {
    let started = Instant::now();
    let output = run_process(&ProcessSpec {
        argv: &spec.argv,
        cwd: &spec.cwd,
        env: &spec.env,
        timeout: spec.timeout,
        cancel: Some(&spec.cancel),
        log_path: spec.log_path.as_deref(),
        stdout_limit: None,
    })
    .await?;
    let stdout_tail = output.stdout.into_string();
    let stderr_tail = output.stderr.into_string();
    check_status(output.status, stderr_tail.clone())?;
    Ok(CommandOutcome {
        stdout_tail,
        stderr_tail,
        elapsed: started.elapsed(),
    })
}

/// Finds the file that running `program` from `cwd` would execute, for pre-flight checks: a
/// program containing `/` is a path (relative to `cwd`), a bare name is looked up in `PATH`.
/// The file must exist and be executable.
pub fn resolve_program(program: &str, cwd: &Path) -> Result<PathBuf, RunError> {
    resolve_with_path(program, cwd, std::env::var_os("PATH").as_deref())
}

fn resolve_with_path(
    program: &str,
    cwd: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, RunError> {
    let spawn_error = |source| RunError::Spawn {
        program: program.to_owned(),
        source,
    };
    if program.is_empty() {
        return Err(spawn_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        )));
    }
    if program.contains('/') {
        let path = cwd.join(program);
        return check_executable(&path).map(|()| path).map_err(spawn_error);
    }
    for dir in std::env::split_paths(path_var.unwrap_or_default()) {
        // An empty PATH entry means the current directory, as for execvp.
        let candidate = cwd.join(dir).join(program);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(spawn_error(io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{program}` not found in PATH"),
    )))
}

fn check_executable(path: &Path) -> io::Result<()> {
    let metadata = fs_err::metadata(path)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("`{}` is not a file", path.display()),
        ));
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("`{}` is not executable", path.display()),
        ));
    }
    Ok(())
}

/// Maps a non-zero exit or a death by signal to its error.
pub(crate) fn check_status(status: ExitStatus, stderr_tail: String) -> Result<(), RunError> {
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(RunError::Failed { code, stderr_tail }),
        (None, Some(signal)) => Err(RunError::Signaled {
            signal,
            stderr_tail,
        }),
        // Neither an exit code nor a signal cannot happen on Unix after `wait`.
        (None, None) => Err(RunError::Failed {
            code: -1,
            stderr_tail,
        }),
    }
}

/// What the shared process runner needs.
pub(crate) struct ProcessSpec<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) cwd: &'a Path,
    pub(crate) env: &'a [(String, String)],
    pub(crate) timeout: Duration,
    pub(crate) cancel: Option<&'a CancellationToken>,
    pub(crate) log_path: Option<&'a Path>,
    /// `None`: keep the tail of stdout. `Some(limit)`: keep all of it up to `limit` bytes.
    pub(crate) stdout_limit: Option<usize>,
}

/// A process that ran to its end, successfully or not.
pub(crate) struct ProcessOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
}

/// Captured output: the last `limit` bytes (tail), or the first `limit` bytes (full).
pub(crate) struct Capture {
    bytes: Vec<u8>,
    limit: usize,
    keep_head: bool,
    overflowed: bool,
}

impl Capture {
    pub(crate) fn tail(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            keep_head: false,
            overflowed: false,
        }
    }

    fn head(limit: usize) -> Self {
        Self {
            keep_head: true,
            ..Self::tail(limit)
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.keep_head {
            let room = self.limit.saturating_sub(self.bytes.len());
            self.bytes
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
            self.overflowed |= chunk.len() > room;
        } else {
            self.bytes.extend_from_slice(chunk);
            // Trim in batches: cheap amortised, bounded at twice the limit.
            if self.bytes.len() > 2 * self.limit {
                let cut = self.bytes.len() - self.limit;
                self.bytes.drain(..cut);
                self.overflowed = true;
            }
        }
    }

    /// Whether output was lost to the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed || (!self.keep_head && self.bytes.len() > self.limit)
    }

    /// The kept bytes, as text; a cut tail starts with `…`.
    pub(crate) fn into_string(self) -> String {
        if self.keep_head {
            return String::from_utf8_lossy(&self.bytes).into_owned();
        }
        let cut = self.bytes.len() > self.limit;
        let mut kept = &self.bytes[self.bytes.len().saturating_sub(self.limit)..];
        if cut || self.overflowed {
            // Don't start in the middle of a UTF-8 character.
            while let Some((&first, rest)) = kept.split_first() {
                if first & 0b1100_0000 != 0b1000_0000 {
                    break;
                }
                kept = rest;
            }
            format!("…{}", String::from_utf8_lossy(kept))
        } else {
            String::from_utf8_lossy(kept).into_owned()
        }
    }

    /// The kept bytes (full capture).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads a child's stdout and stderr concurrently into captures and an optional log file.
struct Pump {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stdout_buffer: Box<[u8]>,
    stderr_buffer: Box<[u8]>,
    stdout_capture: Capture,
    stderr_capture: Capture,
    log: Log,
}

/// The attempt's log file. Created on the first byte of output: a silent attempt leaves no
/// empty file behind, and creating a file costs more than a whole no-op command (ext4 inode
/// allocation measured at ~500 µs in a directory of thousands). Written in place, not through
/// `tokio::fs`: a local write is a copy into the page cache, cheaper than the blocking-pool hop
/// `tokio::fs` makes for every call.
enum Log {
    Off,
    Pending(PathBuf),
    Open(std::fs::File, PathBuf),
}

impl Log {
    fn write(&mut self, chunk: &[u8]) {
        if let Log::Pending(path) = self {
            let path = std::mem::take(path);
            *self = match open_log(&path) {
                Ok(file) => Log::Open(file, path),
                Err(error) => {
                    // Losing the log must not fail the task: the tails still tell what happened.
                    tracing::warn!(path = %path.display(), %error, "cannot open the command log; this attempt is not logged");
                    Log::Off
                }
            };
        }
        if let Log::Open(file, path) = self
            && let Err(error) = std::io::Write::write_all(file, chunk)
        {
            tracing::warn!(path = %path.display(), %error, "writing the command log failed; logging stops");
            *self = Log::Off;
        }
    }
}

async fn read_from<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buffer).await,
        None => std::future::pending().await,
    }
}

impl Pump {
    fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// The next chunk from either stream. Cancel-safe: `read` is, and nothing else happens here.
    async fn next_chunk(&mut self) -> (Stream, io::Result<usize>) {
        tokio::select! {
            result = read_from(&mut self.stdout, &mut self.stdout_buffer) => (Stream::Stdout, result),
            result = read_from(&mut self.stderr, &mut self.stderr_buffer) => (Stream::Stderr, result),
        }
    }

    fn record(&mut self, stream: Stream, result: io::Result<usize>) {
        let (buffer, capture) = match stream {
            Stream::Stdout => (&self.stdout_buffer, &mut self.stdout_capture),
            Stream::Stderr => (&self.stderr_buffer, &mut self.stderr_capture),
        };
        let length = match result {
            Ok(0) => {
                self.close(stream);
                return;
            }
            Ok(length) => length,
            Err(error) => {
                tracing::warn!(%error, "reading a child's output failed");
                self.close(stream);
                return;
            }
        };
        let chunk = &buffer[..length];
        capture.push(chunk);
        self.log.write(chunk);
    }

    fn close(&mut self, stream: Stream) {
        match stream {
            Stream::Stdout => self.stdout = None,
            Stream::Stderr => self.stderr = None,
        }
    }

    /// Reads until both streams end or `deadline` passes; true when they ended.
    async fn drain_until(&mut self, deadline: Instant) -> bool {
        while self.is_open() {
            tokio::select! {
                (stream, result) = self.next_chunk() => self.record(stream, result),
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
        true
    }

    fn finish(self) -> (Capture, Capture) {
        // The log is written unbuffered: nothing is left to flush.
        (self.stdout_capture, self.stderr_capture)
    }
}

fn open_log(path: &Path) -> io::Result<std::fs::File> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        fs_err::create_dir_all(parent)?;
    }
    Ok(fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .into_parts()
        .0)
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    let Some(group) = group else { return };
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(group = group.as_raw(), %signal, %error, "signalling a process group failed")
        }
    }
}

/// Kills a process group with SIGKILL when dropped, unless disarmed.
struct GroupGuard {
    group: Option<Pid>,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.group = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.group, Signal::SIGKILL);
    }
}

enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Spawns `command`, retrying briefly on `ETXTBSY`: a program written just before (a
/// generated script) can still be open for writing in a child another thread forked at that
/// moment, until that child execs; the kernel then refuses to execute it for a few
/// milliseconds.
async fn spawn(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..5 {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    command.spawn()
}

/// Spawns `argv` in a process group of its own and waits for it, pumping its output. Returns
/// the exit status whatever it is; fails only on spawn errors, timeout and cancellation.
pub(crate) async fn run_process(spec: &ProcessSpec<'_>) -> Result<ProcessOutput, RunError> {
    let Some((program, arguments)) = spec.argv.split_first() else {
        return Err(RunError::Spawn {
            program: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        });
    };
    let path_var: Option<OsString> = spec
        .env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| OsString::from(value))
        .or_else(|| std::env::var_os("PATH"));
    let resolved = resolve_with_path(program, spec.cwd, path_var.as_deref())?;
    // Shutdown already under way: start nothing (and create no log file).
    if spec.cancel.is_some_and(CancellationToken::is_cancelled) {
        return Err(RunError::Cancelled);
    }
    let log = match spec.log_path {
        Some(path) => Log::Pending(path.to_owned()),
        None => Log::Off,
    };

    let mut command = tokio::process::Command::new(&resolved);
    command
        .arg0(program)
        .args(arguments)
        .current_dir(spec.cwd)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn(&mut command)
        .await
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    // The child leads its own group, so its pid is the group id.
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    // If this future is dropped midway (the task was aborted), the group dies with it:
    // `kill_on_drop` alone would reach only the leader.
    let mut guard = GroupGuard { group };
    let mut pump = Pump {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        stdout_buffer: vec![0; 8192].into_boxed_slice(),
        stderr_buffer: vec![0; 8192].into_boxed_slice(),
        stdout_capture: match spec.stdout_limit {
            Some(limit) => Capture::head(limit),
            None => Capture::tail(TAIL_BYTES),
        },
        stderr_capture: Capture::tail(TAIL_BYTES),
        log,
    };
    let wait_error = |source| RunError::Wait {
        program: program.clone(),
        source,
    };

    let deadline = Instant::now() + spec.timeout;
    let ending = loop {
        tokio::select! {
            status = child.wait() => break Ending::Exited(status.map_err(wait_error)?),
            (stream, result) = pump.next_chunk(), if pump.is_open() => pump.record(stream, result),
            () = tokio::time::sleep_until(deadline) => break Ending::TimedOut,
            () = cancelled(spec.cancel) => break Ending::Cancelled,
        }
    };

    match ending {
        Ending::Exited(status) => {
            if !pump.drain_until(Instant::now() + DRAIN_GRACE).await {
                // Something the program started still holds its output open: it belongs to the
                // task, and the task is over.
                tracing::warn!(program = %program, "processes left behind by the command still hold its output; killing its process group");
                signal_group(group, Signal::SIGKILL);
                pump.drain_until(Instant::now() + DRAIN_GRACE).await;
            }
            let (stdout, stderr) = pump.finish();
            // The program exited on its own: anything it left running that let go of its
            // output is not ours to kill.
            guard.disarm();
            Ok(ProcessOutput {
                status,
                stdout,
                stderr,
            })
        }
        Ending::TimedOut | Ending::Cancelled => {
            signal_group(group, Signal::SIGTERM);
            let grace_deadline = Instant::now() + KILL_GRACE;
            let mut exited = false;
            while !exited || pump.is_open() {
                tokio::select! {
                    status = child.wait(), if !exited => {
                        if let Err(error) = status {
                            tracing::warn!(%error, "waiting for a terminated command failed");
                        }
                        exited = true;
                    }
                    (stream, result) = pump.next_chunk(), if pump.is_open() => pump.record(stream, result),
                    () = tokio::time::sleep_until(grace_deadline) => break,
                }
            }
            // Whatever is left of the group, including children that ignore SIGTERM.
            signal_group(group, Signal::SIGKILL);
            guard.disarm();
            if !exited {
                let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
            }
            pump.drain_until(Instant::now() + DRAIN_GRACE).await;
            pump.finish();
            Err(match ending {
                Ending::Cancelled => RunError::Cancelled,
                _ => RunError::Timeout {
                    after: spec.timeout,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::ffi::OsStr;
    use std::path::Path;

    use super::{Capture, resolve_with_path};
    use crate::runner::RunError;

    #[test]
    fn tail_capture_keeps_the_end_on_a_character_boundary() {
        let mut capture = Capture::tail(4);
        capture.push("abcdé".as_bytes()); // é is two bytes: 6 bytes in all
        capture.push(b"");
        assert!(capture.overflowed());
        // The last 4 bytes are "cdé"; "…" marks the cut.
        assert_eq!(capture.into_string(), "…cdé");

        let mut capture = Capture::tail(4);
        capture.push("éab".as_bytes());
        capture.push(b"c");
        // Last 4 bytes: the second byte of é, then "abc": the broken character is dropped.
        assert_eq!(capture.into_string(), "…abc");

        let mut capture = Capture::tail(10);
        capture.push(b"short");
        assert!(!capture.overflowed());
        assert_eq!(capture.into_string(), "short");
    }

    #[test]
    fn head_capture_stops_at_the_limit() {
        let mut capture = Capture::head(3);
        capture.push(b"ab");
        capture.push(b"cd");
        assert!(capture.overflowed());
        assert_eq!(capture.bytes(), b"abc");
    }

    #[test]
    fn resolves_bare_names_in_path_and_paths_against_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let plain = bin.join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();

        let path_var = OsStr::new("/nonexistent:bin");
        assert_eq!(
            resolve_with_path("tool", dir.path(), Some(path_var)).unwrap(),
            tool
        );
        assert_eq!(
            resolve_with_path("bin/tool", dir.path(), None).unwrap(),
            tool
        );
        assert_eq!(
            resolve_with_path(tool.to_str().unwrap(), Path::new("/"), None).unwrap(),
            tool
        );
        for (program, kind) in [
            ("missing", std::io::ErrorKind::NotFound),
            ("bin/missing", std::io::ErrorKind::NotFound),
            ("bin/plain", std::io::ErrorKind::PermissionDenied),
            ("bin", std::io::ErrorKind::NotFound),
            ("", std::io::ErrorKind::InvalidInput),
        ] {
            match resolve_with_path(program, dir.path(), Some(path_var)) {
                Err(RunError::Spawn { source, .. }) => assert_eq!(source.kind(), kind, "{program}"),
                other => panic!("{program}: expected a spawn error, got {other:?}"),
            }
        }
    }
}
