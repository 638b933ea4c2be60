//! The job queue: the record of truth for which jobs exist and what state each is in. The daemon's service loop,
//! its intake and `robustd status` use it only through the [`Queue`] trait; [`Spool`] (a crash-safe folder in
//! `paths.state`) is the embedded implementation, and [`open`] is where a configuration chooses one.
//!
//! A job's life: [`Queue::enqueue`] (or [`Queue::reject`] for a drop that cannot become a job) → [`Queue::claim`]
//! by a worker with a free slot → [`Queue::heartbeat`] while it runs → [`Queue::complete`], [`Queue::fail`] or
//! [`Queue::requeue`]. Identical jobs (same content key, [`crate::job::key`]) are deduplicated through the published
//! results the queue keeps per key ([`Queue::published`]): a claim skips a key that is running, and the second
//! job is then answered from the first one's result. A backend shared by several workers holds each claim under a
//! lease: it renews the lease in `heartbeat`, refuses `complete`/`fail` from a worker that lost it, and returns a
//! job whose worker vanished to the queue in [`Queue::recover`] or on its own.

pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::durable::{ReadError, WriteError};
use crate::job::{Job, JobKind, JobRecord, JobState};
use crate::report::ErrorReport;

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
}

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

    /// Ends a running job as done, its result published in `result_dir`. Unless it was answered from another job's
    /// result (`dedup_of`), that result becomes the key's [`Published`] one. The job's inputs are dropped: the
    /// result keeps the model.
    fn complete(
        &self,
        job: &Job,
        result_dir: &Path,
        dedup_of: Option<&str>,
    ) -> Result<Job, QueueError>;

    /// Ends a running job as failed, with its error (`error.yaml`).
    fn fail(&self, job: &Job, error: &ErrorReport) -> Result<Job, QueueError>;

    /// Puts a running job back in the queue, attempts kept (its worker stops without finishing it).
    fn requeue(&self, job: &Job) -> Result<Job, QueueError>;

    /// The published result of a content key, if a job with that key finished.
    fn published(&self, key: &str) -> Option<Published>;

    /// Jobs in one state, oldest first.
    fn list(&self, state: JobState) -> Result<Vec<Job>, QueueError>;

    /// How many jobs wait in the queue.
    fn queued(&self) -> usize;
}

/// The queue a configuration asks for: the folder spool in `paths.state`.
pub fn open(config: &Config) -> Result<Arc<dyn Queue>, QueueError> {
    Ok(Arc::new(Spool::open(&config.paths.state)?))
}
