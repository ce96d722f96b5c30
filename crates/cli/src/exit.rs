//! Exit codes are part of the API (SPEC.md "Command line").

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Every requested cell complete (or not expected).
    Success,
    /// Some cell failed or stayed blocked.
    Incomplete,
    /// Usage or pipeline-file error: nothing ran.
    Usage,
    /// The state store, warehouse or another part of the infrastructure failed.
    Infrastructure,
    /// Interrupted; resumable.
    Interrupted,
}

impl Exit {
    /// The process exit status.
    pub(crate) fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Incomplete => 1,
            Exit::Usage => 2,
            Exit::Infrastructure => 3,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// An error that is the user's to fix before anything runs: exit 2. `rendered` is printed as
/// is (pipeline-file diagnostics are already formatted).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct UsageError {
    pub(crate) message: String,
    pub(crate) rendered: bool,
}

impl UsageError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            rendered: false,
        }
    }

    pub(crate) fn rendered(text: String) -> Self {
        Self {
            message: text,
            rendered: true,
        }
    }

    pub(crate) fn render(&self) -> String {
        if self.rendered {
            self.message.trim_end().to_owned()
        } else {
            format!("error: {}", self.message)
        }
    }
}
