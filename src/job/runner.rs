//! The runner boundary: the [`JobRunner`] trait a scheduler (the daemon) calls on a dedicated blocking thread, and
//! the [`JobContext`] it hands over (resolved config, output and checkpoint directories, cancellation, progress). A runner does the science and fills report sections; the scheduler does the bookkeeping
//! (copying the model, environment, artifacts digests, timing, publishing, the queue).

use std::path::PathBuf;

use super::cancel::CancelToken;
use super::error::JobError;
use super::outcome::JobOutcome;
use super::progress::Progress;
use super::record::Job;
use crate::config::Config;

/// Runs one job. Called on a blocking thread of its own (tch tensors are `Send` but not `Sync`: keep them inside
/// `run`). Implementations check [`JobContext::cancel`] between batches/epochs and return
/// [`JobError::Cancelled`] promptly (the daemon gives a running job 10 s to checkpoint after SIGTERM).
pub trait JobRunner: Send + Sync + 'static {
    /// Short name recorded in reports (`triage`, `pipeline`).
    fn name(&self) -> &'static str;
    fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, JobError>;
}

/// Everything a runner gets besides the job.
pub struct JobContext {
    /// The resolved config: the daemon's config with the job's sidecar applied, frozen at intake.
    pub config: Config,
    /// Where the runner writes its files (fine-tuned ONNX, plots, CSV, npz); published atomically as
    /// `models/<name>/<key12>/` when the job succeeds. Holds a copy of the original model already. Paths the
    /// runner reports in [`JobOutcome`] are relative to it.
    pub output_dir: PathBuf,
    /// Survives restarts of the daemon (keyed by the job's dedupe key); removed when the job succeeds.
    pub checkpoint_dir: PathBuf,
    /// Set on SIGTERM (checkpoint and return) or when `limits.job_timeout_s` passes.
    pub cancel: CancelToken,
    pub progress: Progress,
    /// 1 on the first run; higher when resumed after a restart.
    pub attempt: u32,
}
