//! Runs one claimed job to its end, on the blocking thread the daemon gives it: links to an existing identical
//! result (dedupe, or a resume that finds its own result already published), else prepares the staging directory in
//! the store, calls the [`JobRunner`], assembles and validates `report.yaml`, publishes the result and completes the
//! job in the queue; a failure fails it there with its `error.yaml`; a shutdown gives it back to the queue, to resume.
//! When the queue holds claims under leases and this worker lost its lease (it stalled, another worker took the job
//! over), the job ends here without publishing, failing or removing anything: it is the other worker's now.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::durable;
use crate::failpoint;
use crate::isolation::ProcessError;
use crate::job::outcome::ArtifactError;
use crate::job::{
    now_rfc3339, CancelReason, CancelToken, Job, JobContext, JobError, JobOutcome, JobRunner,
    Progress,
};
use crate::queue::{Queue, QueueError};
use crate::report::{
    self, error_chain, ErrorReport, FileRef, JobInfo, ProcessInfo, Report, REPORT_FILE,
};
use crate::store::Store;

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Done {
        id: String,
        result_dir: PathBuf,
    },
    /// Identical to an earlier job (same model, companions and config): linked to its result.
    Deduplicated {
        id: String,
        of: String,
        result_dir: PathBuf,
    },
    Failed {
        id: String,
        stage: String,
        cause: String,
    },
    /// Stopped for a shutdown; still running in the queue, resumed at the next start.
    Interrupted {
        id: String,
    },
    /// Stopped because another worker took the job over (this one lost its lease), or because the queue could not
    /// record the end; the job is left to the queue.
    Abandoned {
        id: String,
        why: String,
    },
}

/// The shared pieces every job needs.
#[derive(Clone)]
pub struct Executor {
    pub queue: Arc<dyn Queue>,
    pub store: Store,
    pub runner: Arc<dyn JobRunner>,
}

impl Executor {
    /// Runs a job already claimed from the queue. Never panics: a panicking runner is a failed job.
    pub fn execute(&self, job: Job, cancel: CancelToken, progress: Progress) -> Finished {
        let id = job.id().to_owned();
        match self.try_execute(&job, cancel, progress) {
            Ok(finished) => finished,
            Err(failure) => match self.fail(&job, failure) {
                Ok(finished) => finished,
                Err(e) if abandons(&e) => self.abandon(&job, &e),
                Err(e) => {
                    tracing::error!(job = %id, "cannot file the failed job: {e}");
                    Finished::Failed {
                        id,
                        stage: "queue".into(),
                        cause: e.to_string(),
                    }
                }
            },
        }
    }

    /// Leaves a job this worker can no longer end to the queue (see [`abandons`]).
    fn abandon(&self, job: &Job, error: &QueueError) -> Finished {
        tracing::warn!(job = %job.id(), "{error}; this worker leaves the job to the queue");
        self.store.discard_staging(job);
        Finished::Abandoned {
            id: job.id().to_owned(),
            why: error.to_string(),
        }
    }

    fn try_execute(
        &self,
        job: &Job,
        cancel: CancelToken,
        progress: Progress,
    ) -> Result<Finished, Failure> {
        failpoint::point(failpoint::JOB_CLAIMED);
        if let Some(existing) = self.existing_result(job) {
            return self.link(job, existing);
        }
        let config = job.run_config().map_err(|e| {
            Failure::new(
                "config",
                &e,
                Some("the job's config.yaml in the queue is unreadable".into()),
            )
        })?;
        let record = &job.record;
        let staging = self
            .store
            .prepare_staging(job)
            .map_err(|e| Failure::new("publish", &e, None))?;
        let original = self.copy_original(job, &staging)?;
        let ctx = JobContext {
            config,
            output_dir: staging.clone(),
            checkpoint_dir: self.store.checkpoint_dir(&record.key),
            cancel: cancel.clone(),
            progress: progress.clone(),
            attempt: record.attempts,
        };
        durable::create_dir_all(&ctx.checkpoint_dir)
            .map_err(|e| Failure::new("checkpoint", &e, None))?;
        failpoint::point(failpoint::JOB_STAGED);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.runner.run(job, &ctx)));
        let outcome = match outcome {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(JobError::Cancelled(CancelReason::Shutdown))) => {
                tracing::info!(job = %record.id, "interrupted by shutdown; it resumes at the next start");
                self.store.discard_staging(job);
                if let Err(e) = self.queue.release(job) {
                    tracing::warn!(job = %record.id, "cannot give the job back to the queue: {e}");
                }
                return Ok(Finished::Interrupted {
                    id: record.id.clone(),
                });
            }
            Ok(Err(JobError::Cancelled(CancelReason::LeaseLost))) => {
                return Ok(self.abandon(
                    job,
                    &QueueError::LeaseLost {
                        id: record.id.clone(),
                    },
                ));
            }
            Ok(Err(JobError::Cancelled(CancelReason::Timeout))) => {
                return Err(Failure::from_chain(
                    progress
                        .stage_times()
                        .last()
                        .map(|s| s.name.as_str())
                        .unwrap_or("starting"),
                    vec![format!(
                        "job timed out after {:.0} s",
                        started.elapsed().as_secs_f64()
                    )],
                    Some(
                        "raise limits.job_timeout_s (0 = no limit) or make the job smaller".into(),
                    ),
                ))
            }
            Ok(Err(JobError::Failed {
                stage,
                source,
                hint,
            })) => {
                let mut failure = Failure::from_chain(&stage, error_chain(&*source), hint);
                // A job whose process crashed: how it ended goes into error.yaml.
                failure.process = source
                    .downcast_ref::<ProcessError>()
                    .map(|e| Box::new(e.info.clone()));
                return Err(failure);
            }
            Err(panic) => {
                let message = crate::job::error::panic_message(&*panic);
                return Err(Failure::from_chain(
                    progress
                        .stage_times()
                        .last()
                        .map(|s| s.name.as_str())
                        .unwrap_or("run"),
                    vec![format!("internal error (panic): {message}")],
                    Some("this is a robustd bug: please report it with the model".into()),
                ));
            }
        };
        progress.stage("report");
        let report = self
            .assemble(
                job,
                &ctx.config,
                outcome,
                original,
                &staging,
                &progress,
                started,
            )
            .map_err(|e| Failure::new("report", &e, None))?;
        let report_path = staging.join(REPORT_FILE);
        durable::write_yaml_atomic(&report_path, &report)
            .map_err(|e| Failure::new("report", &e, None))?;
        report::validate_report_file(&report_path).map_err(|e| {
            Failure::new(
                "report",
                &e,
                Some("the runner produced an inconsistent report: a robustd bug".into()),
            )
        })?;
        failpoint::point(failpoint::JOB_REPORT_WRITTEN);
        // The checkpoints go with the publishing, before the queue marks the job done: once the result is in
        // place, a resume (a kill before the mark) finds it and needs them no more.
        let mut publish = || {
            let dir = self.store.publish(job)?;
            self.store.remove_checkpoints(&record.key);
            failpoint::point(failpoint::JOB_PUBLISHED);
            Ok(dir)
        };
        let result_dir = match self.queue.complete(job, &mut publish, None) {
            Ok(done) => done
                .record
                .result_dir
                .unwrap_or_else(|| self.store.result_dir(record)),
            Err(e) if abandons(&e) => return Ok(self.abandon(job, &e)),
            Err(QueueError::Publish(e)) => return Err(Failure::new("publish", &e, None)),
            Err(e) => return Err(Failure::new("queue", &e, None)),
        };
        failpoint::point(failpoint::JOB_DONE);
        Ok(Finished::Done {
            id: record.id.clone(),
            result_dir,
        })
    }

    /// A published result with this job's key: its own (the daemon stopped between publishing and filing the
    /// job) or an identical earlier job's.
    fn existing_result(&self, job: &Job) -> Option<(PathBuf, String)> {
        let own = self.store.result_dir(&job.record);
        if let Some(owner) = self.store.published_by(&own) {
            return Some((own, owner));
        }
        let entry = self.queue.published(&job.record.key)?;
        let owner = self.store.published_by(&entry.result_dir)?;
        Some((entry.result_dir, owner))
    }

    fn link(&self, job: &Job, (existing, owner): (PathBuf, String)) -> Result<Finished, Failure> {
        let id = job.id().to_owned();
        let dedup_of = (owner != id).then_some(owner);
        // A resume that finds its own result published (killed between publishing and the done-mark) leaves
        // checkpoints behind; the result makes them useless either way.
        let mut publish = || {
            let dir = self.store.link_existing(&job.record, &existing)?;
            self.store.remove_checkpoints(&job.record.key);
            Ok(dir)
        };
        let linked = self.queue.complete(job, &mut publish, dedup_of.as_deref());
        let result_dir = match linked {
            Ok(done) => done
                .record
                .result_dir
                .unwrap_or_else(|| self.store.result_dir(&job.record)),
            Err(e) if abandons(&e) => return Ok(self.abandon(job, &e)),
            Err(QueueError::Publish(e)) => return Err(Failure::new("publish", &e, None)),
            Err(e) => return Err(Failure::new("publish", &e, None)),
        };
        if let Some(of) = &dedup_of {
            tracing::info!(job = %id, of = %of, "identical to an earlier job: linked to its result");
        }
        Ok(match dedup_of {
            None => Finished::Done { id, result_dir },
            Some(of) => Finished::Deduplicated { id, of, result_dir },
        })
    }

    /// Copies the dropped model (and companions) next to the report.
    fn copy_original(&self, job: &Job, staging: &Path) -> Result<FileRef, Failure> {
        for companion in &job.record.companions {
            durable::copy_atomic(&job.dir.join(companion), &staging.join(companion))
                .map_err(|e| Failure::new("publish", &e, None))?;
        }
        let dest = staging.join(&job.record.model_file);
        let bytes = durable::copy_atomic(&job.model_path(), &dest)
            .map_err(|e| Failure::new("publish", &e, None))?;
        Ok(FileRef {
            path: job.record.model_file.clone(),
            sha256: job.record.model_sha256.clone(),
            bytes: Some(bytes),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        job: &Job,
        config: &Config,
        outcome: JobOutcome,
        original_model: FileRef,
        staging: &Path,
        progress: &Progress,
        started: Instant,
    ) -> Result<Report, ArtifactError> {
        let record = &job.record;
        let job_info = JobInfo {
            id: record.id.clone(),
            config_sha256: record.config_sha256.clone(),
            attempts: record.attempts,
            runner: self.runner.name().to_owned(),
            limits: None,
        };
        let timing = progress.timing(
            record.queued_at.clone(),
            record.started_at.clone().unwrap_or_else(now_rfc3339),
            started.elapsed().as_secs_f64(),
        );
        outcome.into_report(config, staging, original_model, Some(job_info), timing)
    }

    /// Fails the job in the queue with its error.yaml.
    fn fail(&self, job: &Job, failure: Failure) -> Result<Finished, QueueError> {
        let record = &job.record;
        tracing::warn!(job = %record.id, stage = %failure.stage, "job failed: {}", failure.chain.join(": "));
        self.store.discard_staging(job);
        // The cause names the file, whichever layer failed (a dataset or evaluation error does not know it).
        let mut chain = failure.chain;
        let names_file = chain
            .iter()
            .any(|m| m.contains(&record.dropped_as) || m.contains(&record.model_file));
        if !names_file {
            chain.insert(0, record.dropped_as.clone());
        }
        let hint = failure.hint.unwrap_or_else(|| {
            format!(
                "`robustd inspect {}` shows how robustd reads the model; `robustd check-config` checks a config",
                record.dropped_as
            )
        });
        let error = ErrorReport::from_chain(
            &record.dropped_as,
            Some(&record.id),
            &failure.stage,
            chain,
            Some(hint),
        )
        .with_process(failure.process.map(|p| *p));
        // The queue removes the checkpoints while the job is still this worker's (see `Queue::fail`).
        self.queue.fail(job, &error, &mut || {
            self.store.remove_checkpoints(&record.key)
        })?;
        Ok(Finished::Failed {
            id: record.id.clone(),
            stage: error.stage,
            cause: error.cause,
        })
    }
}

/// Whether a queue error means this worker can no longer end the job: its lease was lost, or the queue's database
/// could not be reached to record the end. The job is then left to the queue (another worker, or this one later,
/// takes it up again and finds a result already published).
fn abandons(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::LeaseLost { .. } | QueueError::Postgres(_)
    )
}

/// A failure on its way to error.yaml.
struct Failure {
    stage: String,
    chain: Vec<String>,
    hint: Option<String>,
    process: Option<Box<ProcessInfo>>,
}

impl Failure {
    fn new(stage: &str, error: &(dyn std::error::Error + 'static), hint: Option<String>) -> Self {
        Self::from_chain(stage, error_chain(error), hint)
    }

    fn from_chain(stage: &str, chain: Vec<String>, hint: Option<String>) -> Self {
        Self {
            stage: stage.to_owned(),
            chain,
            hint,
            process: None,
        }
    }
}
