//! The error of the task runners (command and HTTP) and what the runtime does with it.

use std::io;
use std::time::Duration;

/// Why a runner (a command, an HTTP call, or a token command) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started: not found, not executable, or the spawn failed.
    #[error("cannot start `{program}`")]
    Spawn {
        /// The program as given in argv.
        program: String,
        /// Why; the message names the path that was tried.
        #[source]
        source: io::Error,
    },
    /// Waiting for the child process failed.
    #[error("cannot wait for `{program}`")]
    Wait {
        /// The program as given in argv.
        program: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The runner did not finish in time; a command's whole process group was killed.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The run was cancelled (shutdown); a command's whole process group was killed.
    #[error("cancelled")]
    Cancelled,
    /// The command exited with a non-zero status.
    #[error("command exited with status {code}{}", last_line(.stderr_tail))]
    Failed {
        /// The exit status.
        code: i32,
        /// The last few KiB of its stderr.
        stderr_tail: String,
    },
    /// The command was killed by a signal it did not get from gapless.
    #[error("command was killed by signal {signal}{}", last_line(.stderr_tail))]
    Signaled {
        /// The signal number.
        signal: i32,
        /// The last few KiB of its stderr.
        stderr_tail: String,
    },
    /// The HTTP endpoint answered with a status other than 2xx.
    #[error("HTTP status {status}{}", last_line(.body_tail))]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
        /// The last few KiB of the response body.
        body_tail: String,
        /// 5xx and 429 are worth retrying; other statuses are not.
        retryable: bool,
    },
    /// The HTTP request failed before a status arrived (connection, TLS, protocol).
    #[error("HTTP request to `{url}` failed")]
    Http {
        /// The URL.
        url: String,
        /// The client error (without the URL, which is above).
        #[source]
        source: reqwest::Error,
        /// Connection and transport errors are worth retrying; request-building errors not.
        retryable: bool,
    },
    /// The HTTP request could not be built from the spec.
    #[error("invalid HTTP request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The token command failed.
    #[error("token command failed")]
    TokenCommand {
        /// How it failed.
        #[source]
        source: Box<RunError>,
    },
    /// The token command succeeded but printed nothing.
    #[error("token command printed no token")]
    EmptyToken,
}

impl RunError {
    /// Whether running again may succeed. Timeouts, failed exits, signals, 5xx/429 and transport
    /// errors are; cancellation, a missing program, a bad spec and 4xx are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Spawn { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
            ),
            Self::Wait { .. }
            | Self::Timeout { .. }
            | Self::Failed { .. }
            | Self::Signaled { .. } => true,
            Self::HttpStatus { retryable, .. } | Self::Http { retryable, .. } => *retryable,
            Self::TokenCommand { source } => source.is_retryable(),
            Self::Cancelled | Self::InvalidRequest { .. } | Self::EmptyToken => false,
        }
    }

    /// The captured tail of stderr (commands) or of the response body (HTTP), if any.
    pub fn output_tail(&self) -> Option<&str> {
        match self {
            Self::Failed { stderr_tail, .. } | Self::Signaled { stderr_tail, .. } => {
                Some(stderr_tail)
            }
            Self::HttpStatus { body_tail, .. } => Some(body_tail),
            Self::TokenCommand { source } => source.output_tail(),
            _ => None,
        }
    }
}

/// `: <last non-empty line>` of captured output, for one-line error messages.
fn last_line(tail: &str) -> String {
    match tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
    {
        Some(line) => {
            let line: String = line.chars().take(200).collect();
            format!(": {line}")
        }
        None => String::new(),
    }
}
