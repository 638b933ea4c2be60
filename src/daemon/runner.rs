//! The pipeline boundary: the [`JobRunner`] trait the daemon calls on a dedicated blocking thread, the
//! [`JobContext`] it hands over (resolved config, output and checkpoint directories, cancellation, progress),
//! and what a runner returns. A runner does the science and fills report sections; the daemon does the
//! bookkeeping (copying the model, environment, artifacts digests, timing, publishing, the spool).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use thiserror::Error;

use super::job::Job;
use crate::config::Config;
use crate::report::{
    DatasetInfo, Evaluation, Memorization, ModelInfo, StageTime, Summary, Training,
};

/// Runs one job. Called on a blocking thread of its own (tch tensors are `Send` but not `Sync`: keep them inside
/// `run`). Implementations check [`JobContext::cancel`] between batches/epochs and return
/// [`JobError::Cancelled`] promptly (the daemon gives a running job 10 s to checkpoint after SIGTERM).
pub trait JobRunner: Send + Sync + 'static {
    /// Short name recorded in reports (`inspect`, `pipeline`).
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

/// What a successful run produced: the report sections it owns. The daemon adds environment, artifacts (with
/// digests), job and timing, and writes `report.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub summary: Summary,
    pub model: ModelInfo,
    pub dataset: Option<DatasetInfo>,
    pub evaluation: Option<Evaluation>,
    pub memorization: Option<Memorization>,
    pub training: Option<Training>,
    /// Relative to the output directory.
    pub fine_tuned_model: Option<String>,
    pub plots: Vec<String>,
    pub per_sample: Option<String>,
    pub training_log: Option<String>,
}

impl JobOutcome {
    /// An outcome with the two sections every runner fills; the optional ones start empty.
    pub fn new(summary: Summary, model: ModelInfo) -> Self {
        Self {
            summary,
            model,
            dataset: None,
            evaluation: None,
            memorization: None,
            training: None,
            fine_tuned_model: None,
            plots: Vec::new(),
            per_sample: None,
            training_log: None,
        }
    }
}

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
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shutdown => "daemon shutting down",
            Self::Timeout => "job timeout (limits.job_timeout_s)",
        })
    }
}

/// A cheap, cloneable cancellation flag checked by runners between batches and epochs. [`CancelToken::flag`]
/// exposes it as the plain `AtomicBool` the training loop polls.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    reason: AtomicU8,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::Shutdown => 1,
            CancelReason::Timeout => 2,
        };
        let _ = self
            .0
            .reason
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.0.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<CancelReason> {
        match self.0.reason.load(Ordering::SeqCst) {
            1 => Some(CancelReason::Shutdown),
            2 => Some(CancelReason::Timeout),
            _ => None,
        }
    }

    /// The flag long-running loops poll (set together with the reason).
    pub fn flag(&self) -> &AtomicBool {
        &self.0.cancelled
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// `Err(JobError::Cancelled)` once cancelled: `ctx.cancel.check()?` between batches.
    pub fn check(&self) -> Result<(), JobError> {
        match self.reason() {
            Some(reason) => Err(JobError::Cancelled(reason)),
            None => Ok(()),
        }
    }
}

/// One progress update as the daemon sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    pub stage: String,
    /// Fraction of the stage done, in [0, 1].
    pub fraction: f64,
    /// True when the stage just changed.
    pub new_stage: bool,
}

type ProgressSink = Arc<dyn Fn(&ProgressUpdate) + Send + Sync>;
type EvalDetailSink = Arc<dyn Fn(&crate::eval::Progress) + Send + Sync>;

/// Reports the current stage and how far it is; the daemon turns updates into the job record and the systemd
/// STATUS line, and the stage changes into the report's `timing.stages`.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Mutex<ProgressState>>,
    sink: ProgressSink,
    /// Per-batch evaluation progress (stage, samples done) for a terminal progress bar; the daemon has none.
    eval_detail: Option<EvalDetailSink>,
}

struct ProgressState {
    stage: Option<(String, Instant)>,
    finished: Vec<StageTime>,
}

impl Progress {
    pub fn new(sink: impl Fn(&ProgressUpdate) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ProgressState {
                stage: None,
                finished: Vec::new(),
            })),
            sink: Arc::new(sink),
            eval_detail: None,
        }
    }

    /// Also hands every evaluation progress report, as the evaluation protocol gives it, to `sink` (the CLI
    /// draws its progress bar from these).
    pub fn with_eval_detail(
        mut self,
        sink: impl Fn(&crate::eval::Progress) + Send + Sync + 'static,
    ) -> Self {
        self.eval_detail = Some(Arc::new(sink));
        self
    }

    /// Forwards one evaluation progress report to the detail sink, if there is one.
    pub fn eval_detail(&self, p: &crate::eval::Progress) {
        if let Some(sink) = &self.eval_detail {
            sink(p);
        }
    }

    /// A reporter that goes nowhere (for runners used outside the daemon).
    pub fn silent() -> Self {
        Self::new(|_| {})
    }

    /// Starts a stage (ending the previous one's timer).
    pub fn stage(&self, name: &str) {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some((prev, since)) = st.stage.take() {
            st.finished.push(StageTime {
                name: prev,
                seconds: now.duration_since(since).as_secs_f64(),
            });
        }
        st.stage = Some((name.to_owned(), now));
        drop(st);
        (self.sink)(&ProgressUpdate {
            stage: name.to_owned(),
            fraction: 0.0,
            new_stage: true,
        });
    }

    /// How far the current stage is, in [0, 1].
    pub fn fraction(&self, fraction: f64) {
        let stage = match &self.lock().stage {
            Some((s, _)) => s.clone(),
            None => return,
        };
        (self.sink)(&ProgressUpdate {
            stage,
            fraction: fraction.clamp(0.0, 1.0),
            new_stage: false,
        });
    }

    /// Seconds per stage so far, in order (the current stage counted up to now).
    pub fn stage_times(&self) -> Vec<StageTime> {
        let st = self.lock();
        let mut out = st.finished.clone();
        if let Some((name, since)) = &st.stage {
            out.push(StageTime {
                name: name.clone(),
                seconds: since.elapsed().as_secs_f64(),
            });
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
