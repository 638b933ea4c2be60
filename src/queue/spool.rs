//! The folder spool, the embedded [`Queue`]: a crash-safe directory tree in `paths.state` with one directory per
//! job (its record, resolved config and input files) under `queued/`, `running/`, `done/` or `failed/`, moved
//! between them by atomic renames (a job is claimed by renaming it into `running/`). New jobs are assembled in
//! `incoming/` and renamed into `queued/` only when complete. `index/<key>.yaml` holds a content key's published
//! result. One daemon owns a spool; `robustd status` reads it from outside.
//!
//! [`Queue::recover`] puts jobs left in `running/` back in `queued/` (they resume from their checkpoints) and
//! finishes or undoes half-built `incoming/` jobs (their files go back to the inbox under the names they came with,
//! recorded in the job's `sources.yaml` before any was moved). The queued jobs are also kept in memory, oldest first, so a claim
//! does not list the directory.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Claimable, Cleanup, DropFiles, Publish, Published, Queue, QueueError, Recovery};
use crate::durable::{self, create_dir_all, move_file, rename_durable, write_yaml_atomic};
use crate::failpoint;
use crate::job::{now_rfc3339, Job, JobRecord, JobState, CONFIG_FILE, ERROR_FILE, JOB_FILE};
use crate::report::ErrorReport;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const INCOMING: &str = "incoming";
const INDEX: &str = "index";
/// In a job being assembled: the inbox name of each file whose name in the job differs (the sidecar).
const SOURCES: &str = "sources.yaml";

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    /// The jobs in `queued/`, oldest first.
    queue: Mutex<VecDeque<Job>>,
}

impl Spool {
    /// Opens (creating) the spool under `state`.
    pub fn open(state: &Path) -> Result<Self, QueueError> {
        for sub in [INCOMING, INDEX]
            .into_iter()
            .chain(JobState::ALL.iter().map(|s| s.dir_name()))
        {
            create_dir_all(&state.join(sub))?;
        }
        let spool = Self::at(state);
        spool.reload_queue()?;
        Ok(spool)
    }

    /// Opens an existing spool without creating anything (for `robustd status`).
    pub fn existing(state: &Path) -> Option<Self> {
        state
            .join(JobState::Queued.dir_name())
            .is_dir()
            .then(|| Self::at(state))
    }

    fn at(state: &Path) -> Self {
        Self {
            root: state.to_path_buf(),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    pub fn state_dir(&self, state: JobState) -> PathBuf {
        self.root.join(state.dir_name())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory queue from `queued/`.
    fn reload_queue(&self) -> Result<(), QueueError> {
        let queued = self.list(JobState::Queued)?;
        *self.queue() = queued.into();
        Ok(())
    }

    fn assemble(
        &self,
        mut record: JobRecord,
        config_yaml: Option<&str>,
        files: DropFiles,
        error: Option<&ErrorReport>,
        state: JobState,
    ) -> Result<Job, QueueError> {
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
        // Where each file came from, so that a half-built job goes back to the inbox under its own names (the
        // sidecar is `sidecar.yaml` here, `<model>.yaml` there).
        let sources: BTreeMap<&str, &str> = files
            .iter()
            .filter_map(|(src, name)| {
                let original = src.file_name()?.to_str()?;
                (original != name).then_some((name.as_str(), original))
            })
            .collect();
        if !sources.is_empty() {
            write_yaml_atomic(&building.join(SOURCES), &sources)?;
        }
        let mut moved: Vec<(&Path, PathBuf)> = Vec::new();
        let result = (|| {
            for (src, name) in &files {
                let dst = building.join(name);
                move_file(src, &dst)?;
                moved.push((src, dst));
                failpoint::point(failpoint::INTAKE_FILE_MOVED);
            }
            durable::sync_dir(&building).map_err(io_err(&building))?;
            failpoint::point(failpoint::INTAKE_ASSEMBLED);
            let dir = self.state_dir(state).join(&record.id);
            rename_durable(&building, &dir)?;
            Ok(dir)
        })();
        match result {
            Ok(dir) => Ok(Job::new(record, dir)),
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

    /// Claims this queued job: `queued/<id>` → `running/<id>`, counting the attempt.
    fn claim_job(&self, job: &Job) -> Result<Job, QueueError> {
        let mut record = job.record.clone();
        record.state = JobState::Running;
        record.attempts += 1;
        record.started_at = Some(now_rfc3339());
        record.stage = None;
        record.progress = None;
        self.move_job(job, record, JobState::Running)
    }

    /// Ends a running job in `done/` or `failed/` with its final record.
    fn finish(&self, job: &Job, mut record: JobRecord, state: JobState) -> Result<Job, QueueError> {
        record.state = state;
        record.finished_at = Some(now_rfc3339());
        self.move_job(job, record, state)
    }

    fn move_job(&self, job: &Job, record: JobRecord, to: JobState) -> Result<Job, QueueError> {
        if !job.dir.is_dir() {
            return Err(QueueError::Missing {
                id: record.id.clone(),
                dir: job.record.state.dir_name(),
            });
        }
        write_yaml_atomic(&job.record_path(), &record)?;
        let dir = self.state_dir(to).join(&record.id);
        rename_durable(&job.dir, &dir)?;
        Ok(Job::new(record, dir))
    }

    fn index_path(&self, key: &str) -> PathBuf {
        self.root.join(INDEX).join(format!("{key}.yaml"))
    }

    /// Puts a half-built job's files back into the inbox under the names they came with ([`SOURCES`]) and
    /// removes it.
    fn return_to_inbox(
        &self,
        dir: &Path,
        inbox: &Path,
        rec: &mut Recovery,
    ) -> Result<(), QueueError> {
        let sources: BTreeMap<String, String> =
            durable::read_yaml(&dir.join(SOURCES)).unwrap_or_default();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            let name = entry.file_name();
            let meta = name == JOB_FILE
                || name == CONFIG_FILE
                || name == SOURCES
                || durable::is_temp_name(&name.to_string_lossy());
            if !meta {
                let original = name
                    .to_str()
                    .and_then(|n| sources.get(n))
                    .map(std::ffi::OsString::from);
                let back = inbox.join(original.as_ref().unwrap_or(&name));
                move_file(&entry.path(), &back)?;
                rec.returned_to_inbox.push(back);
            }
        }
        std::fs::remove_dir_all(dir).map_err(io_err(dir))
    }
}

impl Queue for Spool {
    fn recover(&self, inbox: &Path) -> Result<Recovery, QueueError> {
        let mut rec = Recovery::default();
        remove_temp_files(&self.root.join(INDEX));
        let incoming = self.root.join(INCOMING);
        for dir in subdirs(&incoming)? {
            let id = file_name(&dir);
            let complete = Job::read(&dir).is_ok_and(|j| j.model_path().is_file());
            if complete {
                rename_durable(&dir, &self.state_dir(JobState::Queued).join(&id))?;
                rec.completed_incoming.push(id);
            } else {
                self.return_to_inbox(&dir, inbox, &mut rec)?;
            }
        }
        for job in self.list(JobState::Running)? {
            let id = job.id().to_owned();
            remove_temp_files(&job.dir);
            self.requeue(&job)?;
            rec.resumed.push(id);
        }
        self.reload_queue()?;
        Ok(rec)
    }

    fn enqueue(
        &self,
        record: JobRecord,
        config_yaml: &str,
        files: DropFiles,
    ) -> Result<Job, QueueError> {
        let job = self.assemble(record, Some(config_yaml), files, None, JobState::Queued)?;
        self.queue().push_back(job.clone());
        Ok(job)
    }

    fn reject(
        &self,
        record: JobRecord,
        files: DropFiles,
        error: &ErrorReport,
    ) -> Result<Job, QueueError> {
        self.assemble(record, None, files, Some(error), JobState::Failed)
    }

    fn claim(&self, can: &Claimable) -> Result<Option<Job>, QueueError> {
        let mut queue = self.queue();
        let Some(at) = queue.iter().position(|job| can.admits(&job.record)) else {
            return Ok(None);
        };
        let Some(job) = queue.remove(at) else {
            return Ok(None);
        };
        // A job that cannot be claimed leaves the in-memory queue (its directory is looked at again at the next
        // start), so the next claim moves on.
        self.claim_job(&job).map(Some)
    }

    fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        Ok(write_yaml_atomic(&job.record_path(), &job.record)?)
    }

    fn complete(
        &self,
        job: &Job,
        publish: Publish<'_>,
        dedup_of: Option<&str>,
    ) -> Result<Job, QueueError> {
        // One daemon owns the spool: nobody else can hold the job while it publishes.
        let result_dir = publish().map_err(QueueError::Publish)?;
        let mut record = job.record.clone();
        record.result_dir = Some(result_dir.clone());
        record.stage = None;
        record.progress = Some(1.0);
        record.dedup_of = dedup_of.map(str::to_owned);
        if dedup_of.is_none() {
            let published = Published {
                job: record.id.clone(),
                result_dir,
            };
            write_yaml_atomic(&self.index_path(&record.key), &published)?;
        }
        failpoint::point(failpoint::SPOOL_COMPLETE_INDEXED);
        // The model is kept once, in the result directory (published before this point, so a crash here still
        // finds the result at the next start and needs no model).
        for path in std::iter::once(job.model_path()).chain(job.companion_paths()) {
            let _ = std::fs::remove_file(path);
        }
        self.finish(job, record, JobState::Done)
    }

    fn fail(
        &self,
        job: &Job,
        error: &ErrorReport,
        cleanup: Cleanup<'_>,
    ) -> Result<Job, QueueError> {
        error.write(&job.dir.join(ERROR_FILE))?;
        // One daemon owns the spool: the job is still its own here.
        cleanup();
        let mut record = job.record.clone();
        record.error = Some(error.cause.clone());
        self.finish(job, record, JobState::Failed)
    }

    fn requeue(&self, job: &Job) -> Result<Job, QueueError> {
        let mut record = job.record.clone();
        record.state = JobState::Queued;
        record.stage = None;
        record.progress = None;
        self.move_job(job, record, JobState::Queued)
    }

    fn published(&self, key: &str) -> Option<Published> {
        durable::read_yaml(&self.index_path(key)).ok()
    }

    /// Oldest first (ids start with their intake time); unreadable records are skipped with a warning.
    fn list(&self, state: JobState) -> Result<Vec<Job>, QueueError> {
        let mut jobs: Vec<Job> = subdirs(&self.state_dir(state))?
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
        Ok(jobs)
    }

    fn queued(&self) -> usize {
        self.queue().len()
    }
}

/// Removes the temporary files of atomic writes a kill interrupted (a record being rewritten) from a job's directory.
fn remove_temp_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if durable::is_temp_name(&entry.file_name().to_string_lossy()) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, QueueError> {
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
    use crate::job::JobKind;

    fn record(id: &str) -> JobRecord {
        JobRecord {
            model_sha256: "a".repeat(64),
            config_sha256: "b".repeat(64),
            key: "c".repeat(64),
            ..JobRecord::new(id.into(), "m".into(), "m.onnx".into())
        }
    }

    fn any() -> Claimable {
        Claimable {
            kinds: vec![JobKind::Eval, JobKind::Train],
            busy_keys: Vec::new(),
        }
    }

    #[test]
    fn an_assembled_job_records_where_its_renamed_files_came_from() {
        let tmp = tempfile::tempdir().unwrap();
        let (inbox, state) = (tmp.path().join("watch"), tmp.path().join("state"));
        std::fs::create_dir_all(&inbox).unwrap();
        let spool = Spool::open(&state).unwrap();
        let (model, sidecar) = (inbox.join("m.onnx"), inbox.join("m.yaml"));
        std::fs::write(&model, b"model").unwrap();
        std::fs::write(&sidecar, b"{}").unwrap();
        let files = vec![
            (sidecar, crate::job::SIDECAR_FILE.to_owned()),
            (model, "m.onnx".to_owned()),
        ];
        let job = spool.enqueue(record("j1"), "{}", files).unwrap();
        let sources: BTreeMap<String, String> = durable::read_yaml(&job.dir.join(SOURCES)).unwrap();
        assert_eq!(
            sources,
            BTreeMap::from([(crate::job::SIDECAR_FILE.to_owned(), "m.yaml".to_owned())])
        );
    }

    fn enqueue_model(spool: &Spool, inbox: &Path, record: JobRecord) -> Job {
        let file = inbox.join(&record.model_file);
        std::fs::write(&file, b"model").unwrap();
        let name = record.model_file.clone();
        spool.enqueue(record, "{}", vec![(file, name)]).unwrap()
    }

    #[test]
    fn jobs_move_through_the_states_by_rename_and_running_ones_are_requeued_at_startup() {
        let tmp = tempfile::tempdir().unwrap();
        let (inbox, state) = (tmp.path().join("watch"), tmp.path().join("state"));
        std::fs::create_dir_all(&inbox).unwrap();
        let spool = Spool::open(&state).unwrap();
        let job = enqueue_model(&spool, &inbox, record("j1"));
        assert!(!inbox.join("m.onnx").exists());
        assert_eq!(std::fs::read(job.model_path()).unwrap(), b"model");
        assert_eq!(spool.queued(), 1);
        let running = spool.claim(&any()).unwrap().unwrap();
        assert_eq!(running.record.attempts, 1);
        assert!(running.dir.starts_with(spool.state_dir(JobState::Running)));
        assert_eq!(spool.queued(), 0);
        // A restart finds it in running/ and puts it back in the queue, attempts kept.
        let reopened = Spool::open(&state).unwrap();
        let rec = reopened.recover(&inbox).unwrap();
        assert_eq!(rec.resumed, vec!["j1".to_string()]);
        let queued = reopened.list(JobState::Queued).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].record.attempts, 1);
        let again = reopened.claim(&any()).unwrap().unwrap();
        assert_eq!(again.record.attempts, 2);
        let result = tmp.path().join("models/m/cccccccccccc");
        let done = reopened
            .complete(&again, &mut || Ok(result.clone()), None)
            .unwrap();
        assert_eq!(reopened.list(JobState::Done).unwrap(), vec![done.clone()]);
        assert!(reopened.list(JobState::Running).unwrap().is_empty());
        // The result is the key's published one, and the job no longer holds the model (the result does).
        let published = reopened.published(&done.record.key).unwrap();
        assert_eq!(published.job, "j1");
        assert_eq!(published.result_dir, result);
        assert_eq!(done.record.result_dir, Some(result));
        assert!(!done.model_path().exists());
    }

    #[test]
    fn a_claim_takes_the_oldest_job_that_a_free_slot_and_the_busy_keys_admit() {
        let tmp = tempfile::tempdir().unwrap();
        let (inbox, state) = (tmp.path().join("watch"), tmp.path().join("state"));
        std::fs::create_dir_all(&inbox).unwrap();
        let spool = Spool::open(&state).unwrap();
        let mut train = record("j1");
        train.kind = JobKind::Train;
        enqueue_model(&spool, &inbox, train);
        enqueue_model(&spool, &inbox, record("j2"));
        let mut other_key = record("j3");
        other_key.key = "d".repeat(64);
        enqueue_model(&spool, &inbox, other_key);
        let only_eval = Claimable {
            kinds: vec![JobKind::Eval],
            busy_keys: Vec::new(),
        };
        assert_eq!(spool.claim(&only_eval).unwrap().unwrap().id(), "j2");
        let busy = Claimable {
            busy_keys: vec!["c".repeat(64)],
            ..any()
        };
        assert_eq!(spool.claim(&busy).unwrap().unwrap().id(), "j3");
        assert!(spool.claim(&busy).unwrap().is_none(), "j1's key is busy");
        assert_eq!(spool.queued(), 1);
        let running = spool.claim(&any()).unwrap().unwrap();
        assert_eq!(running.id(), "j1");
        // A failed job keeps its error next to its files.
        let error =
            ErrorReport::from_chain("m.onnx", Some("j1"), "load", vec!["broken".into()], None);
        let failed = spool.fail(&running, &error, &mut || {}).unwrap();
        assert!(failed.dir.starts_with(spool.state_dir(JobState::Failed)));
        assert_eq!(failed.record.error.as_deref(), Some(error.cause.as_str()));
        assert!(failed.dir.join(ERROR_FILE).is_file() && failed.model_path().is_file());
        assert!(spool.published(&failed.record.key).is_none());
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
        // Incomplete: the record, and the sidecar and a companion moved in before the model (killed in the
        // middle of `assemble`, which wrote where each file came from first).
        let partial = state.join("incoming/j2");
        std::fs::create_dir_all(&partial).unwrap();
        write_yaml_atomic(&partial.join(JOB_FILE), &record("j2")).unwrap();
        write_yaml_atomic(
            &partial.join(SOURCES),
            &BTreeMap::from([(crate::job::SIDECAR_FILE, "m2.yaml")]),
        )
        .unwrap();
        std::fs::write(
            partial.join(crate::job::SIDECAR_FILE),
            b"train: {epochs: 2}",
        )
        .unwrap();
        std::fs::write(partial.join("m2.onnx.data"), b"weights").unwrap();
        let mut rec = spool.recover(&inbox).unwrap();
        assert_eq!(rec.completed_incoming, vec!["j1".to_string()]);
        rec.returned_to_inbox.sort();
        assert_eq!(
            rec.returned_to_inbox,
            vec![inbox.join("m2.onnx.data"), inbox.join("m2.yaml")]
        );
        assert_eq!(
            std::fs::read(inbox.join("m2.onnx.data")).unwrap(),
            b"weights"
        );
        assert_eq!(
            std::fs::read(inbox.join("m2.yaml")).unwrap(),
            b"train: {epochs: 2}"
        );
        assert_eq!(spool.list(JobState::Queued).unwrap().len(), 1);
        assert_eq!(spool.queued(), 1);
        assert_eq!(
            std::fs::read_dir(state.join("incoming")).unwrap().count(),
            0
        );
    }
}
