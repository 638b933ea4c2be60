//! The job contract, shared by whoever schedules work (the daemon's service loop, the CLI commands) and whoever
//! does it (the pipeline, the triage runner); it depends on neither side.
//!
//! - [`record`]: a job and its record (`job.yaml`): identity, inputs, content digests, state, attempts, times.
//! - [`key`]: the content key that names a run's result and dedupes identical drops.
//! - [`runner`]: the [`JobRunner`] trait and the [`JobContext`] a run gets; [`error`]: [`JobError`], how a run
//!   fails or is cancelled.
//! - [`outcome`]: [`JobOutcome`], the report sections a successful run returns.
//! - [`cancel`]: [`CancelToken`]; [`progress`]: [`Progress`] and stage timing.

// Code the daemon runs unattended must not panic on bad input: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cancel;
pub mod error;
pub mod key;
pub mod outcome;
pub mod progress;
pub mod record;
pub mod runner;

pub use cancel::CancelToken;
pub use error::{CancelReason, JobError};
pub use key::{content_key, key12};
pub use outcome::JobOutcome;
pub use progress::{Progress, ProgressUpdate};
pub use record::{
    now_rfc3339, Job, JobKind, JobRecord, JobState, CONFIG_FILE, ERROR_FILE, JOB_FILE, JOB_SCHEMA,
    SIDECAR_FILE,
};
pub use runner::{JobContext, JobRunner};
