//! How a run ends without an outcome: cancelled (and why), or failed in a named stage with its cause and a hint.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum JobError {
    /// The cancel token fired; on shutdown the job stays in `running/` and resumes at the next start.
    #[error("job cancelled ({0})")]
    Cancelled(CancelReason),
    #[error("{source}")]
    Failed {
        /// Stage that failed (`load`, `validate`, `forward`, `eval_before`, ...).
        stage: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// What the user can do about it.
        hint: Option<String>,
    },
}

impl JobError {
    pub fn failed(
        stage: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Failed {
            stage: stage.to_owned(),
            source: source.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let Self::Failed { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }

    pub fn stage(&self) -> &str {
        match self {
            Self::Cancelled(_) => "cancelled",
            Self::Failed { stage, .. } => stage,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The daemon is stopping (SIGTERM/SIGINT): checkpoint, the job resumes at the next start.
    Shutdown,
    /// `limits.job_timeout_s` passed: the job fails.
    Timeout,
    /// The queue's lease on the job was lost (this worker stalled past it and another worker took the job over):
    /// stop without publishing or failing anything; the job belongs to the other worker now.
    LeaseLost,
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shutdown => "daemon shutting down",
            Self::Timeout => "job timeout (limits.job_timeout_s)",
            Self::LeaseLost => "lease lost: another worker took the job over",
        })
    }
}

/// What a runner's panic said (its `&str` or `String` payload), for the job's error report.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
