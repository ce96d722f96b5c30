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

/// Most bytes an attempt log keeps by default: the last 8 MiB of the output.
pub const DEFAULT_LOG_LIMIT: u64 = 8 * 1024 * 1024;

/// How a command runs, beyond what it runs: [`run_command`] uses the defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Most bytes the log file ([`CommandSpec::log_path`]) keeps. Output beyond it drops the
    /// oldest part: the file ends as a line saying how many bytes were dropped, then the last
    /// part of the output (up to this many bytes). While the command runs, the log and a
    /// `.1` file beside it hold at most this many bytes together.
    pub log_limit: u64,
    /// Told as soon as the runner has started, before it can do anything: its pid, which is
    /// also its process group id. A caller records it with the task, so that a later process
    /// can make sure the group is gone ([`end_process_group`]) when this one died.
    pub started: Option<tokio::sync::mpsc::UnboundedSender<RunnerStarted>>,
    /// Whether the runner is killed (SIGKILL) when this process dies, even by `kill -9`
    /// (`PR_SET_PDEATHSIG` on Linux). On by default. It costs a `fork` where a `vfork`-style
    /// spawn would do: ~0.3–0.5 ms per runner on a 2-core VM.
    pub die_with_parent: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            log_limit: DEFAULT_LOG_LIMIT,
            started: None,
            die_with_parent: true,
        }
    }
}

/// A runner process that has just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerStarted {
    /// The runner's pid.
    pub pid: u32,
    /// Its process group id: the runner leads a group of its own, so this is its pid too.
    pub process_group: i32,
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
///
/// The log keeps the last [`DEFAULT_LOG_LIMIT`] bytes; [`run_command_with`] takes other
/// [`RunOptions`].
pub async fn run_command(spec: &CommandSpec) -> Result<CommandOutcome, RunError> {
    run_command_with(spec, &RunOptions::default()).await
}

/// [`run_command`] with options: the log's size limit, and a channel told the runner's pid
/// and process group as soon as it starts.
pub async fn run_command_with(
    spec: &CommandSpec,
    options: &RunOptions,
) -> Result<CommandOutcome, RunError> {
    let started = Instant::now();
    let output = run_process(&ProcessSpec {
        argv: &spec.argv,
        cwd: &spec.cwd,
        env: &spec.env,
        timeout: spec.timeout,
        cancel: Some(&spec.cancel),
        log_path: spec.log_path.as_deref(),
        log_limit: options.log_limit,
        started: options.started.as_ref(),
        die_with_parent: options.die_with_parent,
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
    /// Most bytes the log keeps (its tail).
    pub(crate) log_limit: u64,
    /// Told the runner's pid once it has started.
    pub(crate) started: Option<&'a tokio::sync::mpsc::UnboundedSender<RunnerStarted>>,
    /// Set `PR_SET_PDEATHSIG` on the child.
    pub(crate) die_with_parent: bool,
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
    Pending { path: PathBuf, limit: u64 },
    Open(CappedLog),
}

/// A log file that keeps the tail of what is written: when the file reaches half the limit it
/// becomes `<name>.1` (replacing the previous one, whose bytes are dropped) and a new file
/// starts. At the end, if anything was dropped, the two are joined under one line saying how
/// much was dropped. A process killed midway leaves the two files, still within the limit.
struct CappedLog {
    file: std::fs::File,
    path: PathBuf,
    /// Bytes in the current file.
    size: u64,
    /// Half the limit: the most one of the two files holds.
    half: u64,
    /// Bytes in `<name>.1`, when there is one.
    rotated: Option<u64>,
    /// Bytes of output no longer kept.
    dropped: u64,
}

impl Log {
    fn write(&mut self, chunk: &[u8]) {
        if let Log::Pending { path, limit } = self {
            let (path, limit) = (std::mem::take(path), *limit);
            *self = match CappedLog::open(path.clone(), limit) {
                Ok(log) => Log::Open(log),
                Err(error) => {
                    // Losing the log must not fail the task: the tails still tell what happened.
                    tracing::warn!(path = %path.display(), %error, "cannot open the command log; this attempt is not logged");
                    Log::Off
                }
            };
        }
        if let Log::Open(log) = self
            && let Err(error) = log.write(chunk)
        {
            tracing::warn!(path = %log.path.display(), %error, "writing the command log failed; logging stops");
            *self = Log::Off;
        }
    }

    /// Joins a rotated log into one file (only when output was dropped).
    fn finish(self) {
        if let Log::Open(log) = self {
            let path = log.path.clone();
            if let Err(error) = log.finish() {
                tracing::warn!(path = %path.display(), %error, "joining the command log's parts failed; the older part is in the `.1` file");
            }
        }
    }
}

impl CappedLog {
    fn open(path: PathBuf, limit: u64) -> io::Result<Self> {
        let file = open_log(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            path,
            size,
            // Both halves hold something: a limit below 2 bytes still keeps a byte.
            half: (limit / 2).max(1),
            rotated: None,
            dropped: 0,
        })
    }

    fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    fn write(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        let half = usize::try_from(self.half).unwrap_or(usize::MAX);
        if chunk.len() > half {
            // More than a half at once: only its end can be kept.
            let cut = chunk.len() - half;
            self.dropped += cut as u64;
            chunk = &chunk[cut..];
        }
        if self.size > 0 && self.size + chunk.len() as u64 > self.half {
            self.rotate()?;
        }
        std::io::Write::write_all(&mut self.file, chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let rotated = self.rotated_path();
        fs_err::rename(&self.path, &rotated)?;
        self.dropped += self.rotated.replace(self.size).unwrap_or(0);
        self.file = fs_err::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?
            .into_parts()
            .0;
        self.size = 0;
        Ok(())
    }

    /// When output was dropped: `<name>` becomes the dropped-bytes line, the rest of `.1`
    /// from its first full line, and the current part; `.1` goes.
    fn finish(self) -> io::Result<()> {
        if self.dropped == 0 && self.rotated.is_none() {
            return Ok(());
        }
        let rotated_path = self.rotated_path();
        let mut older = match self.rotated {
            Some(_) => fs_err::read(&rotated_path)?,
            None => Vec::new(),
        };
        let mut dropped = self.dropped;
        // Start at a line boundary when one is near: a reader sees whole lines.
        if let Some(newline) = older.iter().take(4096).position(|byte| *byte == b'\n') {
            older.drain(..=newline);
            dropped += newline as u64 + 1;
        }
        let newer = fs_err::read(&self.path)?;
        let joined_path = {
            let mut name = self.path.clone().into_os_string();
            name.push(".joining");
            PathBuf::from(name)
        };
        let mut joined = std::io::BufWriter::new(fs_err::File::create(&joined_path)?);
        let kept = older.len() + newer.len();
        std::io::Write::write_all(
            &mut joined,
            format!(
                "[gapless: {dropped} bytes of earlier output dropped; the last {kept} bytes follow]\n"
            )
            .as_bytes(),
        )?;
        std::io::Write::write_all(&mut joined, &older)?;
        std::io::Write::write_all(&mut joined, &newer)?;
        std::io::Write::flush(&mut joined)?;
        drop(joined);
        fs_err::rename(&joined_path, &self.path)?;
        if self.rotated.is_some() {
            fs_err::remove_file(&rotated_path)?;
        }
        Ok(())
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
        // The log is written unbuffered: nothing is left to flush, only parts to join.
        self.log.finish();
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

/// Makes the runner (the leader of its process group) die with SIGKILL when gapless dies, even
/// by `kill -9`, which leaves no chance to kill the group: `PR_SET_PDEATHSIG`, set in the child
/// between `fork` and `exec`.
///
/// This is the crate's one `unsafe` block: `pre_exec` is unsafe because the closure runs in
/// the forked child of a multi-threaded process, where only async-signal-safe calls are
/// allowed. No safe way exists to run code there (wrapping the program in `setpriv
/// --pdeathsig` would make gapless depend on util-linux and change argv[0] and the pid the
/// caller records).
///
/// The signal is tied to the *thread* that forked, not to the process: when that thread exits,
/// the runner is killed. Runners are spawned from the runtime's task threads: the CLI's
/// current-thread runtime runs them on the main thread, and a multi-threaded runtime's workers
/// live as long as the runtime. Spawning from `spawn_blocking` (threads that exit when idle)
/// would kill runners early; nothing here does.
///
/// The price: with a `pre_exec` closure, the standard library forks instead of using
/// `posix_spawn` (a `vfork`-style clone), and the fork of a multi-threaded runtime costs
/// ~0.3–0.5 ms per runner on a 2-core VM; [`RunOptions::die_with_parent`] turns it off.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes two system calls, prctl(2) and getppid(2), both
    // async-signal-safe; it allocates nothing, takes no lock and touches no state shared with
    // the parent (`parent` is a copied integer).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before prctl: then no signal will ever come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            Ok(())
        });
    }
}

/// Elsewhere no parent-death signal exists; [`end_process_group`] is what remains.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut tokio::process::Command) {}

/// How [`end_process_group`] found and left a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnding {
    /// No live process was in the group.
    AlreadyGone,
    /// It ended after SIGTERM, within the grace period.
    Terminated,
    /// It was still there after the grace period and was killed with SIGKILL.
    Killed,
}

/// Why [`end_process_group`] could not make sure a process group is gone.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// Not a group a runner could have: 0 and 1 would mean the caller's own group or init, and
    /// the caller's own group is never a runner's.
    #[error("process group {group} is not a runner's")]
    NotARunnerGroup {
        /// The group id given.
        group: i32,
    },
    /// Signalling the group failed (for example it belongs to another user).
    #[error("cannot signal process group {group}")]
    Signal {
        /// The group id.
        group: i32,
        /// The error of kill(2).
        #[source]
        source: nix::errno::Errno,
    },
    /// Processes of the group were still alive after SIGKILL (stuck in the kernel).
    #[error("process group {group} survived SIGKILL: pids {pids:?}")]
    Survived {
        /// The group id.
        group: i32,
        /// Its live processes.
        pids: Vec<i32>,
    },
}

/// How long [`end_process_group`] waits after SIGKILL for the processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Makes sure the runner process group `group`, recorded when it started
/// ([`RunOptions::started`]), is gone: SIGTERM to the group if any process of it is alive,
/// `grace` for it to end, then SIGKILL. For a process taking over the work of a dead owner on
/// this host, before it runs the same cells again.
///
/// Group ids are reused, so the caller must know that the recording process (the only one
/// that could have waited for the runner) is dead and that the record is from this host's
/// current boot. Zombies, which hold their group id until reaped, count as gone.
pub async fn end_process_group(group: i32, grace: Duration) -> Result<GroupEnding, KillError> {
    if group <= 1 || nix::unistd::getpgrp().as_raw() == group {
        return Err(KillError::NotARunnerGroup { group });
    }
    if !group_alive(group) {
        return Ok(GroupEnding::AlreadyGone);
    }
    let signal = |signal| match killpg(Pid::from_raw(group), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(KillError::Signal { group, source }),
    };
    signal(Signal::SIGTERM)?;
    if wait_gone(group, grace).await {
        return Ok(GroupEnding::Terminated);
    }
    signal(Signal::SIGKILL)?;
    if wait_gone(group, KILL_WAIT).await {
        return Ok(GroupEnding::Killed);
    }
    Err(KillError::Survived {
        group,
        pids: live_members(group).unwrap_or_default(),
    })
}

/// Whether the process group has a live (not zombie) member.
fn group_alive(group: i32) -> bool {
    match live_members(group) {
        Some(pids) => !pids.is_empty(),
        // No /proc: whether anything, zombies included, is in the group.
        None => !matches!(
            killpg(Pid::from_raw(group), None),
            Err(nix::errno::Errno::ESRCH)
        ),
    }
}

async fn wait_gone(group: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !group_alive(group) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live processes of a group, from `/proc` (`None` where it cannot be read).
fn live_members(group: i32) -> Option<Vec<i32>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process that ended since the listing has no stat any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command name: state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|field| field.parse::<i32>().ok());
        if pgrp == Some(group) && state != Some("Z") && state != Some("X") {
            pids.push(pid);
        }
    }
    Some(pids)
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
        Some(path) => Log::Pending {
            path: path.to_owned(),
            limit: spec.log_limit,
        },
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
    if spec.die_with_parent {
        die_with_parent(&mut command);
    }
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
    if let (Some(started), Some(pid)) = (spec.started, child.id())
        && let Some(group) = group
    {
        // A caller that stopped listening only loses the record.
        let _ = started.send(RunnerStarted {
            pid,
            process_group: group.as_raw(),
        });
    }
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

    use super::{CappedLog, Capture, resolve_with_path};

    #[test]
    fn capped_log_keeps_the_tail_whatever_the_chunks() {
        let dir = tempfile::tempdir().unwrap();
        // A chunk larger than half the limit, then small ones across several rotations.
        let path = dir.path().join("a.log");
        let mut log = CappedLog::open(path.clone(), 10).unwrap();
        log.write(b"0123456789abcdef").unwrap();
        for chunk in [&b"gh"[..], b"ij", b"kl", b"mn"] {
            log.write(chunk).unwrap();
        }
        assert!(std::fs::metadata(dir.path().join("a.log.1")).unwrap().len() <= 5);
        log.finish().unwrap();
        // 24 bytes written: the big chunk's last 5 (`bcdef`) went to `.1`, were replaced by
        // `ghij` at the second rotation; `klmn` is the current part. 8 kept, 16 dropped.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[gapless: 16 bytes of earlier output dropped; the last 8 bytes follow]\nghijklmn"
        );
        assert!(!dir.path().join("a.log.1").exists());

        // Nothing dropped: the file as written, no header.
        let path = dir.path().join("b.log");
        let mut log = CappedLog::open(path.clone(), 100).unwrap();
        log.write(b"one\n").unwrap();
        log.write(b"two\n").unwrap();
        log.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }
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
