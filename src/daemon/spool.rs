//! The crash-safe job spool in `paths.state`: one directory per job under `queued/`, `running/`, `done/` or
//! `failed/`, moved between them by atomic renames (a job is claimed by renaming it into `running/`). New jobs are
//! assembled in `incoming/` and renamed into `queued/` only when complete. `index/<key>.yaml` maps a dedupe key to
//! the finished result.
//!
//! At startup [`Spool::recover`] puts jobs left in `running/` back in `queued/` (they resume from their
//! checkpoints) and finishes or undoes half-built `incoming/` jobs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::durable::{
    self, create_dir_all, move_file, rename_durable, write_yaml_atomic, WriteError,
};
use crate::job::{now_rfc3339, Job, JobRecord, JobState, CONFIG_FILE, ERROR_FILE, JOB_FILE};
use crate::report::ErrorReport;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job {id} is not in {dir}/")]
    Missing { id: String, dir: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const INCOMING: &str = "incoming";
const INDEX: &str = "index";

/// Where a finished key's result lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub job: String,
    pub result_dir: PathBuf,
}

/// Files to move into a new job directory: `(source, name inside the job directory)`.
pub type DropFiles = Vec<(PathBuf, String)>;

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

/// What startup recovery did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Jobs found in `running/` and put back in the queue to resume.
    pub resumed: Vec<String>,
    /// Half-built jobs completed into `queued/`.
    pub completed_incoming: Vec<String>,
    /// Files of half-built jobs put back into the inbox.
    pub returned_to_inbox: Vec<PathBuf>,
}

impl Spool {
    /// Opens (creating) the spool under `state`.
    pub fn open(state: &Path) -> Result<Self, SpoolError> {
        for sub in [INCOMING, INDEX]
            .into_iter()
            .chain(JobState::ALL.iter().map(|s| s.dir_name()))
        {
            create_dir_all(&state.join(sub))?;
        }
        Ok(Self {
            root: state.to_path_buf(),
        })
    }

    /// Opens an existing spool without creating anything (for `robustd status`).
    pub fn existing(state: &Path) -> Option<Self> {
        state
            .join(JobState::Queued.dir_name())
            .is_dir()
            .then(|| Self {
                root: state.to_path_buf(),
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self, state: JobState) -> PathBuf {
        self.root.join(state.dir_name())
    }

    /// Startup: resume `running/`, settle `incoming/`.
    pub fn recover(&self, inbox: &Path) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        let incoming = self.root.join(INCOMING);
        for dir in subdirs(&incoming)? {
            let id = file_name(&dir);
            let complete = Job::read(&dir).is_ok_and(|j| j.model_path().is_file());
            if complete {
                rename_durable(&dir, &self.state_dir(JobState::Queued).join(&id))?;
                rec.completed_incoming.push(id);
                continue;
            }
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = entry.file_name();
                let meta = name == JOB_FILE
                    || name == CONFIG_FILE
                    || durable::is_temp_name(&name.to_string_lossy());
                if !meta {
                    let back = inbox.join(&name);
                    move_file(&entry.path(), &back)?;
                    rec.returned_to_inbox.push(back);
                }
            }
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        for job in self.list(JobState::Running) {
            let id = job.id().to_owned();
            let mut record = job.record.clone();
            record.state = JobState::Queued;
            record.stage = None;
            record.progress = None;
            write_yaml_atomic(&job.record_path(), &record)?;
            rename_durable(&job.dir, &self.state_dir(JobState::Queued).join(&id))?;
            rec.resumed.push(id);
        }
        Ok(rec)
    }

    /// Jobs in one state, oldest first (ids start with their intake time). Unreadable records are skipped with a
    /// warning.
    pub fn list(&self, state: JobState) -> Vec<Job> {
        let mut jobs: Vec<Job> = subdirs(&self.state_dir(state))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|dir| match Job::read(&dir) {
                Ok(mut job) => {
                    job.record.state = state;
                    Some(job)
                }
                Err(e) => {
                    tracing::warn!("skipping unreadable job record: {e}");
                    None
                }
            })
            .collect();
        jobs.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        jobs
    }

    /// Creates a queued job: the record and resolved config are written, the dropped files moved in, and the
    /// directory renamed into `queued/` in one step.
    pub fn enqueue(
        &self,
        record: JobRecord,
        config_yaml: &str,
        files: DropFiles,
    ) -> Result<Job, SpoolError> {
        self.assemble(record, Some(config_yaml), files, None, JobState::Queued)
    }

    /// Files a drop that cannot become a job straight into `failed/`, with its `error.yaml`.
    pub fn reject(
        &self,
        record: JobRecord,
        files: DropFiles,
        error: &ErrorReport,
    ) -> Result<Job, SpoolError> {
        self.assemble(record, None, files, Some(error), JobState::Failed)
    }

    fn assemble(
        &self,
        mut record: JobRecord,
        config_yaml: Option<&str>,
        files: DropFiles,
        error: Option<&ErrorReport>,
        state: JobState,
    ) -> Result<Job, SpoolError> {
        let building = self.root.join(INCOMING).join(&record.id);
        create_dir_all(&building)?;
        if let Some(cfg) = config_yaml {
            durable::write_atomic(&building.join(CONFIG_FILE), cfg.as_bytes())?;
        }
        if let Some(err) = error {
            err.write(&building.join(ERROR_FILE))?;
            record.error = Some(err.cause.clone());
            record.finished_at = Some(now_rfc3339());
        }
        record.state = state;
        write_yaml_atomic(&building.join(JOB_FILE), &record)?;
        let mut moved: Vec<(&Path, PathBuf)> = Vec::new();
        let result = (|| {
            for (src, name) in &files {
                let dst = building.join(name);
                move_file(src, &dst)?;
                moved.push((src, dst));
            }
            durable::sync_dir(&building).map_err(io_err(&building))?;
            let dir = self.state_dir(state).join(&record.id);
            rename_durable(&building, &dir)?;
            Ok(dir)
        })();
        match result {
            Ok(dir) => Ok(Job { record, dir }),
            Err(e) => {
                // Put the drop back as it was (disk full, permissions): the inbox retries it later.
                for (src, dst) in moved.iter().rev() {
                    if let Err(back) = move_file(dst, src) {
                        tracing::error!("cannot return {} to the inbox: {back}", dst.display());
                    }
                }
                let _ = std::fs::remove_dir_all(&building);
                Err(e)
            }
        }
    }

    /// Claims a queued job: `queued/<id>` → `running/<id>`, counting the attempt.
    pub fn claim(&self, job: &Job) -> Result<Job, SpoolError> {
        let mut record = job.record.clone();
        record.state = JobState::Running;
        record.attempts += 1;
        record.started_at = Some(now_rfc3339());
        record.stage = None;
        record.progress = None;
        self.move_job(job, record, JobState::Running)
    }

    /// Ends a running job in `done/` or `failed/` with its final record.
    pub fn finish(
        &self,
        job: &Job,
        mut record: JobRecord,
        state: JobState,
    ) -> Result<Job, SpoolError> {
        record.state = state;
        record.finished_at = Some(now_rfc3339());
        self.move_job(job, record, state)
    }

    /// Rewrites a job's record in place (progress).
    pub fn save(&self, job: &Job) -> Result<(), SpoolError> {
        Ok(write_yaml_atomic(&job.record_path(), &job.record)?)
    }

    fn move_job(&self, job: &Job, record: JobRecord, to: JobState) -> Result<Job, SpoolError> {
        if !job.dir.is_dir() {
            return Err(SpoolError::Missing {
                id: record.id.clone(),
                dir: job.record.state.dir_name(),
            });
        }
        write_yaml_atomic(&job.record_path(), &record)?;
        let dir = self.state_dir(to).join(&record.id);
        rename_durable(&job.dir, &dir)?;
        Ok(Job { record, dir })
    }

    pub fn index_lookup(&self, key: &str) -> Option<IndexEntry> {
        let text = std::fs::read_to_string(self.index_path(key)).ok()?;
        serde_norway::from_str(&text).ok()
    }

    pub fn index_store(&self, key: &str, entry: &IndexEntry) -> Result<(), SpoolError> {
        Ok(write_yaml_atomic(&self.index_path(key), entry)?)
    }

    fn index_path(&self, key: &str) -> PathBuf {
        self.root.join(INDEX).join(format!("{key}.yaml"))
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::job::{JobKind, JOB_SCHEMA};

    fn record(id: &str) -> JobRecord {
        JobRecord {
            schema: JOB_SCHEMA.into(),
            id: id.into(),
            name: "m".into(),
            dropped_as: "m.onnx".into(),
            model_file: "m.onnx".into(),
            companions: vec![],
            sidecar: false,
            model_sha256: "a".repeat(64),
            config_sha256: "b".repeat(64),
            key: "c".repeat(64),
            kind: JobKind::Eval,
            state: JobState::Queued,
            attempts: 0,
            detected_at: None,
            queued_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            stage: None,
            progress: None,
            result_dir: None,
            dedup_of: None,
            error: None,
        }
    }

    #[test]
    fn jobs_move_through_the_states_by_rename_and_running_ones_are_requeued_at_startup() {
        let tmp = tempfile::tempdir().unwrap();
        let (inbox, state) = (tmp.path().join("watch"), tmp.path().join("state"));
        std::fs::create_dir_all(&inbox).unwrap();
        let spool = Spool::open(&state).unwrap();
        std::fs::write(inbox.join("m.onnx"), b"model").unwrap();
        let job = spool
            .enqueue(
                record("j1"),
                "{}",
                vec![(inbox.join("m.onnx"), "m.onnx".into())],
            )
            .unwrap();
        assert!(!inbox.join("m.onnx").exists());
        assert_eq!(std::fs::read(job.model_path()).unwrap(), b"model");
        let running = spool.claim(&job).unwrap();
        assert_eq!(running.record.attempts, 1);
        assert!(running.dir.starts_with(spool.state_dir(JobState::Running)));
        // A restart finds it in running/ and puts it back in the queue, attempts kept.
        let rec = spool.recover(&inbox).unwrap();
        assert_eq!(rec.resumed, vec!["j1".to_string()]);
        let queued = spool.list(JobState::Queued);
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].record.attempts, 1);
        let again = spool.claim(&queued[0]).unwrap();
        assert_eq!(again.record.attempts, 2);
        let done = spool
            .finish(&again, again.record.clone(), JobState::Done)
            .unwrap();
        assert_eq!(spool.list(JobState::Done), vec![done]);
        assert!(spool.list(JobState::Running).is_empty());
    }

    #[test]
    fn half_built_jobs_are_completed_or_returned_to_the_inbox() {
        let tmp = tempfile::tempdir().unwrap();
        let (inbox, state) = (tmp.path().join("watch"), tmp.path().join("state"));
        std::fs::create_dir_all(&inbox).unwrap();
        let spool = Spool::open(&state).unwrap();
        // Complete: record and model present (the crash came before the final rename).
        let complete = state.join("incoming/j1");
        std::fs::create_dir_all(&complete).unwrap();
        write_yaml_atomic(&complete.join(JOB_FILE), &record("j1")).unwrap();
        std::fs::write(complete.join("m.onnx"), b"model").unwrap();
        // Incomplete: the record, and a companion moved in before the model.
        let partial = state.join("incoming/j2");
        std::fs::create_dir_all(&partial).unwrap();
        write_yaml_atomic(&partial.join(JOB_FILE), &record("j2")).unwrap();
        std::fs::write(partial.join("m2.onnx.data"), b"weights").unwrap();
        let rec = spool.recover(&inbox).unwrap();
        assert_eq!(rec.completed_incoming, vec!["j1".to_string()]);
        assert_eq!(rec.returned_to_inbox, vec![inbox.join("m2.onnx.data")]);
        assert_eq!(
            std::fs::read(inbox.join("m2.onnx.data")).unwrap(),
            b"weights"
        );
        assert_eq!(spool.list(JobState::Queued).len(), 1);
        assert_eq!(
            std::fs::read_dir(state.join("incoming")).unwrap().count(),
            0
        );
    }
}
