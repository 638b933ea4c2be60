//! The job queue: the record of truth for which jobs exist and what state each is in. The daemon's service loop,
//! its intake and `robustd status` use it only through the [`Queue`] trait; [`Spool`] (a crash-safe folder in
//! `paths.state`) is the embedded implementation, [`postgres::PgQueue`] the one a fleet of workers shares, and
//! [`open`] is where a configuration (`queue.backend`) chooses one.
//!
//! A job's life: [`Queue::enqueue`] (or [`Queue::reject`] for a drop that cannot become a job) → [`Queue::claim`]
//! by a worker with a free slot → [`Queue::heartbeat`] while it runs → [`Queue::complete`], [`Queue::fail`] or
//! [`Queue::requeue`]. Identical jobs (same content key, [`crate::job::key`]) are deduplicated through the published
//! results the queue keeps per key ([`Queue::published`]): a claim skips a key that is running, and the second
//! job is then answered from the first one's result. A backend shared by several workers holds each claim under a
//! lease: it renews the lease while the job runs, refuses `heartbeat`/`complete`/`fail` from a worker that lost it
//! ([`QueueError::LeaseLost`]; the publish itself runs inside `complete`, fenced), and gives a job whose worker
//! vanished to another worker once the lease expires.

pub mod fleet;
pub mod postgres;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, QueueBackend};
use crate::durable::{ReadError, WriteError};
use crate::job::{Job, JobKind, JobRecord, JobState};
use crate::report::ErrorReport;
use crate::store::Store;

pub use fleet::{Counts, WorkerInfo, WorkerJob};
pub use postgres::{PgError, PgQueue};
pub use spool::Spool;

#[derive(Debug, Error)]
pub enum QueueError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("job {id} is not in {dir}/")]
    Missing { id: String, dir: &'static str },
    /// The claim's lease expired and another worker holds the job now: this worker may not change it.
    #[error("job {id}: lease lost (another worker took the job over)")]
    LeaseLost { id: String },
    /// Publishing the result inside [`Queue::complete`] failed (nothing was recorded).
    #[error("cannot publish the result: {0}")]
    Publish(WriteError),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// Publishes a finished job's result in the store and returns its directory; [`Queue::complete`] calls it while it
/// holds the job (for a leased backend: inside the transaction that checked the lease).
pub type Publish<'a> = &'a mut dyn FnMut() -> Result<PathBuf, WriteError>;

/// Removes what a failed job leaves that only its resume needed; see [`Queue::fail`].
pub type Cleanup<'a> = &'a mut dyn FnMut();

/// Files that become a new job's inputs: `(source, name inside the job)`. They are moved, so they leave the inbox.
pub type DropFiles = Vec<(PathBuf, String)>;

/// The published result of a content key: which job produced it, and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub job: String,
    pub result_dir: PathBuf,
}

/// What a worker can take now.
#[derive(Debug, Clone, Default)]
pub struct Claimable {
    /// Job kinds with a free slot on this worker (one training job per device, `daemon.eval_concurrency`
    /// evaluation-only ones).
    pub kinds: Vec<JobKind>,
    /// Content keys of the jobs this worker runs: a job with the same key waits for them, then dedupes against
    /// their result. (A shared backend also skips keys running on other workers.)
    pub busy_keys: Vec<String>,
}

impl Claimable {
    pub fn admits(&self, record: &JobRecord) -> bool {
        self.kinds.contains(&record.kind) && !self.busy_keys.contains(&record.key)
    }
}

/// What startup recovery did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Jobs found running (their worker stopped) and put back in the queue to resume.
    pub resumed: Vec<String>,
    /// Half-enqueued jobs completed into the queue.
    pub completed_incoming: Vec<String>,
    /// Files of half-enqueued jobs put back into the inbox.
    pub returned_to_inbox: Vec<PathBuf>,
}

/// A job queue. Methods block (file or network I/O); the service loop calls them from its own thread.
pub trait Queue: Send + Sync + 'static {
    /// Startup, before the first claim: settles what a crash left behind — jobs left running go back to the queue
    /// (they resume from their checkpoints), half-enqueued ones are completed or their files returned to `inbox`.
    fn recover(&self, inbox: &Path) -> Result<Recovery, QueueError>;

    /// A new queued job: its record, its resolved config (YAML) and its input files, moved in.
    fn enqueue(
        &self,
        record: JobRecord,
        config_yaml: &str,
        files: DropFiles,
    ) -> Result<Job, QueueError>;

    /// A drop that cannot become a job, filed as failed with its error and its files (moved in).
    fn reject(
        &self,
        record: JobRecord,
        files: DropFiles,
        error: &ErrorReport,
    ) -> Result<Job, QueueError>;

    /// Claims the oldest queued job that `can` admits, counting the attempt; `None` when there is none.
    fn claim(&self, can: &Claimable) -> Result<Option<Job>, QueueError>;

    /// A running job's stage and progress (in its record), reported as it runs; a backend with leases renews the
    /// claim's lease here and fails when it was lost.
    fn heartbeat(&self, job: &Job) -> Result<(), QueueError>;

    /// Ends a running job as done: calls `publish` (which puts the result in place) while it still holds the job —
    /// a leased backend first checks, in the same transaction, that the lease is still this worker's, so a worker
    /// that lost it never publishes ([`QueueError::LeaseLost`]). Unless the job was answered from another job's
    /// result (`dedup_of`), its result becomes the key's [`Published`] one. The job's inputs are dropped: the
    /// result keeps the model.
    fn complete(
        &self,
        job: &Job,
        publish: Publish<'_>,
        dedup_of: Option<&str>,
    ) -> Result<Job, QueueError>;

    /// Ends a running job as failed, with its error (`error.yaml`), and calls `cleanup` (which removes what only
    /// this job's resume needed) only if the job was still this worker's: the spool, one owner, calls it before
    /// the job shows as failed, so nobody sees a failed job with its checkpoints still there; a leased backend
    /// calls it after the fenced mark succeeded, so a worker that lost the job never removes what the worker that
    /// took it over resumes from.
    fn fail(&self, job: &Job, error: &ErrorReport, cleanup: Cleanup<'_>)
        -> Result<Job, QueueError>;

    /// Puts a running job back in the queue, attempts kept (its worker stops without finishing it).
    fn requeue(&self, job: &Job) -> Result<Job, QueueError>;

    /// A shutdown interrupted a running job: a shared queue gives it back now, so another worker resumes it from
    /// its checkpoints; the spool keeps it in `running/` for this daemon's next start.
    fn release(&self, _job: &Job) -> Result<(), QueueError> {
        Ok(())
    }

    /// The published result of a content key, if a job with that key finished.
    fn published(&self, key: &str) -> Option<Published>;

    /// Jobs in one state, oldest first.
    fn list(&self, state: JobState) -> Result<Vec<Job>, QueueError>;

    /// How many jobs wait in the queue (as last seen; cheap).
    fn queued(&self) -> usize;

    /// The latest `n` jobs in one state, newest first (by when they finished, for done and failed jobs).
    fn recent(&self, state: JobState, n: usize) -> Result<Vec<Job>, QueueError> {
        let mut jobs = self.list(state)?;
        jobs.sort_by(|a, b| b.record.finished_at.cmp(&a.record.finished_at));
        jobs.truncate(n);
        Ok(jobs)
    }

    /// Jobs per state (for `robustd status` and metrics).
    fn counts(&self) -> Result<Counts, QueueError> {
        let mut counts = Counts::default();
        for state in JobState::ALL {
            counts.set(state, self.list(state)?.len() as u64);
        }
        Ok(counts)
    }

    /// The workers sharing this queue, with their devices, jobs and last heartbeat (empty for a queue one daemon
    /// owns).
    fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        Ok(Vec::new())
    }

    /// Fires when new work may be claimable (a shared queue: a notification from another node); the daemon
    /// then claims at once instead of at its next tick.
    fn wakeup(&self) -> Arc<tokio::sync::Notify> {
        Arc::new(tokio::sync::Notify::new())
    }

    /// Running jobs of this worker whose lease was found lost (another worker took them over): the daemon
    /// cancels them at its next tick. Empty for a queue without leases.
    fn lost_leases(&self) -> Vec<String> {
        Vec::new()
    }

    /// Lease tokens of jobs running now anywhere: their staging directories in a shared store are in use.
    fn live_leases(&self) -> Result<Vec<i64>, QueueError> {
        Ok(Vec::new())
    }

    /// The worker stops (clean shutdown): a shared queue takes it off the fleet.
    fn close(&self) {}
}

/// The queue a worker uses, as `queue.backend` asks: the folder spool in `paths.state`, or the PostgreSQL queue
/// (connected, its schema checked or migrated, this worker registered with `devices`). Errors are meant to stop
/// the worker before it starts anything.
pub fn open(config: &Config, devices: &[String]) -> Result<Arc<dyn Queue>, QueueError> {
    match config.queue.backend {
        QueueBackend::Spool => Ok(Arc::new(Spool::open(&config.paths.state)?)),
        QueueBackend::Postgres => Ok(Arc::new(PgQueue::open_worker(config, devices)?)),
    }
}

/// The queue for a client that reads or submits (`robustd status`, `robustd submit`): `None` when the spool was
/// never created (nothing ran with this config); the PostgreSQL queue must exist with a current schema.
pub fn connect(config: &Config) -> Result<Option<Arc<dyn Queue>>, QueueError> {
    match config.queue.backend {
        QueueBackend::Spool => {
            Ok(Spool::existing(&config.paths.state).map(|s| Arc::new(s) as Arc<dyn Queue>))
        }
        QueueBackend::Postgres => Ok(Some(Arc::new(PgQueue::open_client(config)?))),
    }
}

/// The artifact store the queue's jobs use: local (`paths.models`, checkpoints in `paths.state`) for the spool; for
/// a shared queue, results in `paths.models` and checkpoints in the shared store (`queue.shared`), both on the
/// mount every worker sees.
pub fn store(config: &Config) -> Result<Store, WriteError> {
    match (&config.queue.backend, &config.queue.shared) {
        (QueueBackend::Postgres, Some(shared)) => Store::open(
            &config.paths.models,
            &shared.join(postgres::CHECKPOINTS_DIR),
        ),
        _ => Store::local(&config.paths),
    }
}
