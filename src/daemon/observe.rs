//! What people watching the daemon see of a job, around [`Executor::execute`] on the job's thread: a `job` span
//! carrying `job_id`, `model`, `device` and (as the job moves on) `stage`, so every log line of the job has them
//! (journald fields JOB_ID, MODEL, DEVICE, STAGE under systemd), and the job's metrics once it ends (or once intake refused the drop).

use std::sync::Arc;
use std::time::Instant;

use super::executor::{Executor, Finished};
use super::intake::Intake;
use crate::durable::read_yaml;
use crate::http::metrics::{Metrics, Outcome};
use crate::job::{CancelToken, Job, Progress, ERROR_FILE};
use crate::report::ErrorReport;

/// Runs the job inside its span and records how it ended.
pub fn execute(
    exec: &Executor,
    job: Job,
    cancel: CancelToken,
    progress: Progress,
    metrics: &Arc<Metrics>,
) -> Finished {
    let device = job.device();
    let span = job.span();
    let _entered = span.enter();
    let started = Instant::now();
    let finished = exec.execute(job, cancel, progress.clone());
    let (outcome, failed_stage) = match &finished {
        Finished::Done { .. } => (Outcome::Done, None),
        Finished::Deduplicated { .. } => (Outcome::Deduplicated, None),
        Finished::Failed { stage, .. } => (Outcome::Failed, Some(stage.as_str())),
        Finished::Interrupted { .. } => (Outcome::Interrupted, None),
        Finished::Abandoned { .. } => (Outcome::Abandoned, None),
    };
    metrics.job_finished(
        outcome,
        failed_stage,
        started.elapsed(),
        &progress.stage_times(),
        &device,
    );
    finished
}

/// Counts a drop intake refused (it never became a running job) as a failure in its stage (from its
/// `error.yaml`). Runs on the intake thread.
pub fn intake_done(outcome: &Intake, metrics: &Metrics) {
    if let Intake::Rejected(job) = outcome {
        let stage = read_yaml::<ErrorReport>(&job.dir.join(ERROR_FILE))
            .map(|e| e.stage)
            .unwrap_or_else(|_| "intake".into());
        metrics.job_rejected(&stage);
    }
}

/// Records the stage on the current job span (a no-op outside one).
pub fn stage_changed(stage: &str) {
    tracing::Span::current().record("stage", stage);
}
