//! Runs one claimed job to its end, on the blocking thread the daemon gives it: links to an existing identical
//! result (dedupe, or a resume that finds its own result already published), else prepares the staging directory,
//! calls the [`JobRunner`], assembles and validates `report.yaml`, publishes the result and files the job in
//! `done/`; a failure files it in `failed/` with `error.yaml`; a shutdown leaves it in `running/` to resume.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::spool::{IndexEntry, Spool};
use crate::config::Config;
use crate::durable;
use crate::job::outcome::ArtifactError;
use crate::job::{
    now_rfc3339, CancelReason, CancelToken, Job, JobContext, JobError, JobOutcome, JobRunner,
    JobState, Progress, ERROR_FILE,
};
use crate::report::{self, error_chain, ErrorReport, FileRef, JobInfo, Report, REPORT_FILE};
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
    /// Stopped for a shutdown; still in `running/`, resumed at the next start.
    Interrupted {
        id: String,
    },
}

/// The shared pieces every job needs.
#[derive(Clone)]
pub struct Executor {
    pub spool: Spool,
    pub store: Store,
    pub runner: Arc<dyn JobRunner>,
}

impl Executor {
    /// Runs a job already claimed into `running/`. Never panics: a panicking runner is a failed job.
    pub fn execute(&self, job: Job, cancel: CancelToken, progress: Progress) -> Finished {
        let id = job.id().to_owned();
        match self.try_execute(&job, cancel, progress) {
            Ok(finished) => finished,
            Err(failure) => self.fail(&job, failure).unwrap_or_else(|e| {
                tracing::error!(job = %id, "cannot file the failed job: {e}");
                Finished::Failed {
                    id,
                    stage: "spool".into(),
                    cause: e.to_string(),
                }
            }),
        }
    }

    fn try_execute(
        &self,
        job: &Job,
        cancel: CancelToken,
        progress: Progress,
    ) -> Result<Finished, Failure> {
        if let Some(existing) = self.existing_result(job) {
            return self
                .link(job, existing)
                .map_err(|e| Failure::new("publish", &*e, None));
        }
        let config = job.load_config().map_err(|e| {
            Failure::new(
                "config",
                &e,
                Some("the job's config.yaml in the spool is unreadable".into()),
            )
        })?;
        let record = &job.record;
        let staging = self
            .store
            .prepare_staging(record)
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
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.runner.run(job, &ctx)));
        let outcome = match outcome {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(JobError::Cancelled(CancelReason::Shutdown))) => {
                tracing::info!(job = %record.id, "interrupted by shutdown; it resumes at the next start");
                return Ok(Finished::Interrupted {
                    id: record.id.clone(),
                });
            }
            Ok(Err(JobError::Cancelled(CancelReason::Timeout))) => {
                return Err(Failure::from_chain(
                    progress
                        .stage_times()
                        .last()
                        .map(|s| s.name.as_str())
                        .unwrap_or("run"),
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
                return Err(Failure::from_chain(&stage, error_chain(&*source), hint));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
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
        let result_dir = self
            .store
            .publish(record)
            .map_err(|e| Failure::new("publish", &e, None))?;
        self.store.remove_checkpoints(&record.key);
        self.finish_done(job, &result_dir, None)
            .map_err(|e| Failure::new("spool", &*e, None))?;
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
        let entry = self.spool.index_lookup(&job.record.key)?;
        let owner = self.store.published_by(&entry.result_dir)?;
        Some((entry.result_dir, owner))
    }

    fn link(
        &self,
        job: &Job,
        (existing, owner): (PathBuf, String),
    ) -> Result<Finished, Box<dyn std::error::Error>> {
        let id = job.id().to_owned();
        let result_dir = self.store.link_existing(&job.record, &existing)?;
        if owner == id {
            self.finish_done(job, &result_dir, None)?;
            return Ok(Finished::Done { id, result_dir });
        }
        tracing::info!(job = %id, of = %owner, "identical to an earlier job: linked to its result");
        self.finish_done(job, &result_dir, Some(owner.clone()))?;
        Ok(Finished::Deduplicated {
            id,
            of: owner,
            result_dir,
        })
    }

    fn finish_done(
        &self,
        job: &Job,
        result_dir: &Path,
        dedup_of: Option<String>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut record = job.record.clone();
        record.result_dir = Some(result_dir.to_path_buf());
        record.stage = None;
        record.progress = Some(1.0);
        record.dedup_of = dedup_of.clone();
        if dedup_of.is_none() {
            self.spool.index_store(
                &record.key,
                &IndexEntry {
                    job: record.id.clone(),
                    result_dir: result_dir.to_path_buf(),
                },
            )?;
        }
        // The model is kept once, in the result directory (published before this point, so a crash here still
        // finds the result at the next start and needs no model).
        for path in std::iter::once(job.model_path()).chain(job.companion_paths()) {
            let _ = std::fs::remove_file(path);
        }
        self.spool.finish(job, record, JobState::Done)?;
        Ok(())
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
        };
        let timing = progress.timing(
            record.queued_at.clone(),
            record.started_at.clone().unwrap_or_else(now_rfc3339),
            started.elapsed().as_secs_f64(),
        );
        outcome.into_report(config, staging, original_model, Some(job_info), timing)
    }

    /// Files the job in `failed/` with its error.yaml.
    fn fail(&self, job: &Job, failure: Failure) -> Result<Finished, Box<dyn std::error::Error>> {
        let record = &job.record;
        tracing::warn!(job = %record.id, stage = %failure.stage, "job failed: {}", failure.chain.join(": "));
        self.store.discard_staging(record);
        self.store.remove_checkpoints(&record.key);
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
        );
        error.write(&job.dir.join(ERROR_FILE))?;
        let mut rec = record.clone();
        rec.error = Some(error.cause.clone());
        self.spool.finish(job, rec, JobState::Failed)?;
        Ok(Finished::Failed {
            id: record.id.clone(),
            stage: error.stage,
            cause: error.cause,
        })
    }
}

/// A failure on its way to error.yaml.
struct Failure {
    stage: String,
    chain: Vec<String>,
    hint: Option<String>,
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
        }
    }
}
