//! What a queue tells about itself for `robustd status` (and metrics): jobs per state, and the workers sharing it
//! with their devices, current jobs and last heartbeat.

use serde::Serialize;

use crate::job::JobState;

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
}

impl Counts {
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
        }
    }

    pub fn set(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Queued => self.queued = n,
            JobState::Running => self.running = n,
            JobState::Done => self.done = n,
            JobState::Failed => self.failed = n,
        }
    }
}

/// One worker of a fleet, as its last heartbeat left it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// `queue.worker`, or `<host>-<pid>`.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// What it advertised, e.g. `cuda:0` or `cpu`; a training job takes one of them.
    pub devices: Vec<String>,
    /// Whether it ingests drops from an inbox.
    pub ingest: bool,
    pub version: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    /// The jobs it holds now.
    pub jobs: Vec<WorkerJob>,
}

/// A job a worker runs, with its stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerJob {
    pub id: String,
    pub name: String,
    pub stage: Option<String>,
    pub progress: Option<f64>,
}
