//! A job and its record: the YAML file (`job.yaml`) kept in the job's directory beside its inputs (the model, its
//! external data, the sidecar and the resolved config), updated at every state change and as the runner reports
//! progress. The queue that holds the job is authoritative for its state (the folder spool: the directory it sits
//! in, `queued/`, `running/`, `done/` or `failed/`); the record's `state` mirrors it for readers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Method};
use crate::durable::{read_yaml, ReadError};

/// The value of the `schema` key of every job record.
pub const JOB_SCHEMA: &str = "robustd.job/v1";
/// File name of the record inside a job directory.
pub const JOB_FILE: &str = "job.yaml";
/// The resolved config (daemon config + sidecar) the job runs with, fixed at intake so a reload cannot change a
/// queued or resumed job.
pub const CONFIG_FILE: &str = "config.yaml";
/// The sidecar as dropped.
pub const SIDECAR_FILE: &str = "sidecar.yaml";
/// Why a job failed (in `failed/<id>/`).
pub const ERROR_FILE: &str = "error.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] = [Self::Queued, Self::Running, Self::Done, Self::Failed];

    /// The spool subdirectory holding jobs in this state.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// What a job needs from the machine: training jobs run one per device, evaluation-only ones up to
/// `daemon.eval_concurrency` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Eval,
    Train,
}

impl JobKind {
    pub fn of(config: &Config) -> Self {
        if config.train.method == Method::None {
            Self::Eval
        } else {
            Self::Train
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub schema: String,
    pub id: String,
    /// Sanitized model name: the `<name>` of `models/<name>/`.
    pub name: String,
    /// The file name as dropped (printable form).
    pub dropped_as: String,
    /// The model's file name inside the job directory (`<name>.onnx`).
    pub model_file: String,
    /// External-data files, under the names the model references.
    #[serde(default)]
    pub companions: Vec<String>,
    #[serde(default)]
    pub sidecar: bool,
    pub model_sha256: String,
    pub config_sha256: String,
    /// Dedupe key: sha256 over the model's, its companions' and the config's digests.
    pub key: String,
    pub kind: JobKind,
    pub state: JobState,
    /// Times the job was started (a resume after a restart counts again).
    #[serde(default)]
    pub attempts: u32,
    /// When the daemon first saw the dropped file (the drop-to-start latency is `started_at - detected_at`).
    #[serde(default)]
    pub detected_at: Option<String>,
    pub queued_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub progress: Option<f64>,
    /// `models/<name>/<key12>` once done.
    #[serde(default)]
    pub result_dir: Option<PathBuf>,
    /// Set when this drop was identical to an earlier job's (same key): the id of that job.
    #[serde(default)]
    pub dedup_of: Option<String>,
    /// One-line cause when failed (details in error.yaml).
    #[serde(default)]
    pub error: Option<String>,
    /// The device the daemon leased to the job while it runs (`cpu`, `cuda:1`); the job's `runtime.device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The worker running (or that last ran) the job, when the queue is shared by several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl JobRecord {
    /// A new queued job `id` for the model `name` (`<name>.onnx` in the job), dropped as `dropped_as`; its digests,
    /// key and kind are filled in once intake has read the files.
    pub fn new(id: String, name: String, dropped_as: String) -> Self {
        Self {
            schema: JOB_SCHEMA.into(),
            id,
            model_file: format!("{name}.onnx"),
            name,
            dropped_as,
            companions: Vec::new(),
            sidecar: false,
            model_sha256: String::new(),
            config_sha256: String::new(),
            key: String::new(),
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
            device: None,
            worker: None,
        }
    }

    /// First 12 hex digits of the key: the `<key12>` of `models/<name>/<key12>/`.
    pub fn key12(&self) -> &str {
        super::key::key12(&self.key)
    }
}

/// A job: its record and the directory holding it (model, companions, sidecar, config, record).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub record: JobRecord,
    pub dir: PathBuf,
    /// The lease token of this claim, when the queue holds claims under leases: a worker that lost the lease (it
    /// expired and another worker claimed the job) can no longer heartbeat, complete or fail the job.
    pub lease: Option<i64>,
}

impl Job {
    /// A job in `dir` not held under a lease.
    pub fn new(record: JobRecord, dir: PathBuf) -> Self {
        Self {
            record,
            dir,
            lease: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The model file the runner loads (its external data sits beside it).
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.record.model_file)
    }

    pub fn companion_paths(&self) -> Vec<PathBuf> {
        self.record
            .companions
            .iter()
            .map(|c| self.dir.join(c))
            .collect()
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join(JOB_FILE)
    }

    /// The resolved config stored at intake.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(&self.dir.join(CONFIG_FILE))
    }

    /// The `job` span its log lines run in: `job_id`, `model`, `device` and (as the job moves on) `stage`, so
    /// under systemd every line carries the journald fields JOB_ID, MODEL, DEVICE, STAGE.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "job",
            job_id = %self.id(),
            model = %self.record.name,
            device = %self.device(),
            stage = tracing::field::Empty
        )
    }

    /// The config the job runs with: the resolved config, on the device the daemon's pool leased to the job.
    pub fn run_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = self.load_config()?;
        if let Some(device) = &self.record.device {
            config.runtime.device = device.clone();
        }
        Ok(config)
    }

    /// The device the job's config asks for, as reports name it (`cpu`, `cuda:0`); the spec itself if it is
    /// invalid (the job then fails and says why).
    pub fn device(&self) -> String {
        // The device the daemon's pool leased to the job, when it leased one.
        if let Some(device) = &self.record.device {
            return device.clone();
        }
        let spec = self
            .load_config()
            .map(|c| c.runtime.device)
            .unwrap_or_else(|_| "cpu".into());
        crate::runtime::parse_device(&spec)
            .map(crate::runtime::device_name)
            .unwrap_or(spec)
    }

    /// Reads a job from its directory.
    pub fn read(dir: &Path) -> Result<Self, ReadError> {
        let record: JobRecord = read_yaml(&dir.join(JOB_FILE))?;
        Ok(Self::new(record, dir.to_path_buf()))
    }
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
