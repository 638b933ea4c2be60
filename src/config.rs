//! The robustd configuration: serde structs mirroring `configs/default.yaml` (every key documented there), strict
//! parsing (`deny_unknown_fields`) with line/column errors, and partial overrides for per-model sidecar files.
//!
//! YAML goes through `serde_norway`, a maintained fork of the archived `serde_yaml` with the same API; its errors
//! carry locations and its loader refuses alias ("billion laughs") expansion bombs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod queue;

pub use queue::{DatabaseUrl, MigrateMode, QueueBackend, QueueSpec, DATABASE_URL_ENV};

/// The documented defaults, embedded so the binary needs no file to run and `default.yaml` cannot drift from
/// `Config::default()` (a test checks they are equal).
pub const DEFAULT_YAML: &str = include_str!("../configs/default.yaml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    ParseNoLocation { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub paths: Paths,
    pub runtime: Runtime,
    pub model: ModelSpec,
    pub dataset: DatasetSpec,
    pub threat: ThreatModel,
    pub eval: EvalSpec,
    pub train: TrainSpec,
    pub memorization: MemorizationSpec,
    pub daemon: DaemonSpec,
    pub limits: Limits,
    /// Daemon-wide: the job queue (and, for a fleet, the shared store). Left out of the serialized config while
    /// it is the default, and out of every job's config, so it never changes a content key.
    #[serde(skip_serializing_if = "QueueSpec::is_default")]
    pub queue: QueueSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Inbox watched for dropped models.
    pub watch: PathBuf,
    /// Results: `models/<name>/<sha12>/`.
    pub models: PathBuf,
    /// Job spool, checkpoints and caches.
    pub state: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads for libtorch and onnxruntime; 0 = one per core.
    pub threads: usize,
    /// Path to libonnxruntime.so; null = `$ROBUSTD_ORT_LIB`, then the project venv.
    pub ort_library: Option<PathBuf>,
    /// Master seed for sampling, attacks and training.
    pub seed: u64,
}

/// How the model expects its input; normalization is applied inside the forward path so attacks work in [0,1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Per-channel mean subtracted inside the model's forward path; null = the dataset profile's (or none).
    pub mean: Option<Vec<f32>>,
    /// Per-channel std; null = the dataset profile's (or none).
    pub std: Option<Vec<f32>>,
    /// `auto` (from the ONNX input shape), `nchw`, `nhwc`, or `flat` (an MLP taking N x C*H*W).
    pub input_layout: InputLayout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputLayout {
    Auto,
    Nchw,
    Nhwc,
    Flat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSpec {
    /// `fashion-mnist`, `mnist`, `cifar10`, `cifar100`, or `npz`.
    pub name: String,
    /// Directory (IDX, CIFAR) or file (npz); null = the standard location for the name.
    pub path: Option<PathBuf>,
    /// Training samples used for fine-tuning and memorization; 0 = all.
    pub train_samples: usize,
    /// Test samples evaluated (first N of the test split); 0 = all.
    pub eval_samples: usize,
    /// Take a seeded random subset instead of the first N.
    pub random_subset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreatModel {
    pub norm: Norm,
    /// Radius in [0,1] pixel space.
    pub eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Attacks run in order; each later one only on points still robust (AutoAttack order).
    pub attacks: Vec<String>,
    pub pgd: PgdSpec,
    /// APGD iterations (Croce & Hein 2020).
    pub apgd_steps: usize,
    /// Square attack query budget per sample.
    pub square_queries: usize,
    /// Square attack initial fraction of pixels changed.
    pub square_p_init: f64,
    /// Radii for the robust-accuracy-vs-eps curve (PGD only).
    pub eps_curve: Vec<f64>,
    /// Batch size for evaluation and attacks; 0 = automatic within `limits.job_memory_mb`.
    pub batch_size: usize,
    /// Exit code 3 from `robustd eval` when worst-case robust accuracy is below this; null = never.
    pub min_robust_acc: Option<f64>,
    /// `ensemble` (AutoAttack: each attack only on points still robust) or `standalone` (every attack on every
    /// clean-correct point, so per-attack numbers compare with other tools').
    pub mode: EvalMode,
}

/// How the configured attacks share the samples (see `eval::Mode`, which this selects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    Ensemble,
    Standalone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgdSpec {
    pub steps: usize,
    pub restarts: usize,
    /// Step size as a fraction of eps (2.5 * eps / steps is the Madry default).
    pub step_size_factor: f64,
    pub random_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Standard,
    PgdAt,
    Trades,
    Bat,
    BatReweightOnly,
    BatRegOnly,
    /// Evaluate only; no fine-tuning.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    pub method: Method,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    /// PGD used to craft training examples.
    pub pgd: PgdSpec,
    /// TRADES trade-off weight.
    pub trades_beta: f64,
    pub bat: BatSpec,
    /// `none`, or `crop-flip` (random crop with 4-pixel padding + horizontal flip); `auto` picks by dataset.
    pub augmentation: String,
    /// Fraction of training samples held out for validation (best checkpoint, early stopping).
    pub val_fraction: f64,
    /// Epochs without robust-validation improvement before stopping; 0 = never stop early.
    pub early_stop_patience: usize,
    /// `false` freezes BatchNorm running stats and affine parameters.
    pub train_batchnorm: bool,
    /// On CUDA: automatic mixed precision.
    pub amp: bool,
    /// On CUDA: channels-last memory format.
    pub channels_last: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSpec {
    /// `sgd` or `adam`.
    pub name: String,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// `cosine`, `piecewise` (x0.1 at 50% and 75%), or `constant`.
    pub schedule: String,
    pub warmup_epochs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatSpec {
    /// Exponent of the stop-gradient adversarial confidence weight on atypical samples.
    pub beta: f64,
    /// Weight of the discrimination regularizer.
    pub lambda: f64,
    pub w_min: Option<f64>,
    pub w_max: Option<f64>,
    /// `memorization` (estimator), `holdout` (K=2 half split), or a path to imported scores.
    pub atypicality: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorizationSpec {
    /// Number of subset models.
    pub k: usize,
    pub subset_ratio: f64,
    /// mem(i) above this marks a training sample atypical.
    pub threshold: f64,
    /// Training samples scored (first N of the training split); 0 = all.
    pub train_samples: usize,
    pub epochs: usize,
    /// Peak learning rate of the subset models, which train from fresh weights (`train.optimizer.lr` is meant for
    /// fine-tuning a trained model and is usually too small for that); the rest of `train.optimizer` applies.
    pub lr: f64,
    /// Train the subset models adversarially instead of with standard training.
    pub adversarial: bool,
    /// Harmful atypical samples listed in the report and shown in the image grid.
    pub harmful_top: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSpec {
    /// A dropped file is taken once its size and mtime are unchanged for this long.
    pub stable_ms: u64,
    /// Full rescan interval, the fallback for missed events and network filesystems.
    pub rescan_ms: u64,
    /// Evaluation-only jobs that may run at once (training jobs: one per device).
    pub eval_concurrency: usize,
    /// Use a polling watcher instead of inotify.
    pub poll: bool,
    /// What a job does: `pipeline` (evaluate, fine-tune, evaluate again) or `triage` (a quick look: load through
    /// onnxruntime, check it is a classifier, measure forward throughput; `inspect` is its former name).
    pub runner: JobRunnerKind,
    /// How long a dropped model waits for an external-data file it references before it fails (seconds).
    pub companion_wait_s: u64,
    /// The read-only HTTP face: metrics, health, the JSON API and the dashboard.
    pub http: HttpSpec,
}

/// `daemon.http` (served by src/http/).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSpec {
    /// Address served; null = no HTTP server. Any address but loopback needs `token_file`.
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token every request must carry (`Authorization: Bearer <token>`); required when
    /// `listen` is not a loopback address, and enforced on loopback too when set.
    pub token_file: Option<PathBuf>,
    /// Requests answered per second, all clients together (bursts up to twice that); the rest get 429.
    pub requests_per_s: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRunnerKind {
    Pipeline,
    #[serde(alias = "inspect")]
    Triage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest model accepted, external data included (bytes); checked before a file is read.
    pub max_model_bytes: u64,
    /// Most graph nodes accepted.
    pub max_nodes: usize,
    /// Most elements in one tensor: initializers at load, and every tensor the interpreter builds (shape
    /// arguments of Reshape/Expand/ConstantOfShape/Tile/Range/Pad are checked before anything is allocated).
    pub max_tensor_elements: u64,
    /// Memory budget per job (MiB); sizes evaluation batches automatically.
    pub job_memory_mb: u64,
    /// Wall-clock limit per job (seconds); 0 = none.
    pub job_timeout_s: u64,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            watch: "watch".into(),
            models: "models".into(),
            state: "state".into(),
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            threads: 0,
            ort_library: None,
            seed: 0,
        }
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            mean: None,
            std: None,
            input_layout: InputLayout::Auto,
        }
    }
}

impl DatasetSpec {
    /// The first `train_samples` training and `eval_samples` test samples of the dataset `name` at its standard
    /// location (0 = all).
    pub fn first(name: &str, train_samples: usize, eval_samples: usize) -> Self {
        Self {
            name: name.into(),
            path: None,
            train_samples,
            eval_samples,
            random_subset: false,
        }
    }
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: "fashion-mnist".into(),
            path: None,
            train_samples: 10_000,
            eval_samples: 1000,
            random_subset: false,
        }
    }
}

impl Default for ThreatModel {
    fn default() -> Self {
        Self {
            norm: Norm::Linf,
            eps: 0.1,
        }
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            attacks: vec![
                "pgd".into(),
                "apgd-ce".into(),
                "apgd-dlr".into(),
                "square".into(),
            ],
            pgd: PgdSpec {
                steps: 20,
                restarts: 1,
                step_size_factor: 0.125,
                random_start: true,
            },
            apgd_steps: 100,
            square_queries: 1000,
            square_p_init: 0.3,
            eps_curve: vec![0.0, 0.025, 0.05, 0.1, 0.15],
            batch_size: 0,
            min_robust_acc: None,
            mode: EvalMode::Ensemble,
        }
    }
}

impl Default for PgdSpec {
    fn default() -> Self {
        Self {
            steps: 10,
            restarts: 1,
            step_size_factor: 0.25,
            random_start: true,
        }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            method: Method::Bat,
            epochs: 3,
            batch_size: 128,
            optimizer: OptimizerSpec::default(),
            pgd: PgdSpec {
                steps: 7,
                restarts: 1,
                step_size_factor: 0.25,
                random_start: true,
            },
            trades_beta: 6.0,
            bat: BatSpec::default(),
            augmentation: "auto".into(),
            val_fraction: 0.1,
            early_stop_patience: 0,
            train_batchnorm: false,
            amp: false,
            channels_last: false,
        }
    }
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            name: "sgd".into(),
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: "cosine".into(),
            warmup_epochs: 0,
        }
    }
}

impl Default for BatSpec {
    fn default() -> Self {
        Self {
            beta: 1.0,
            lambda: 1.0,
            w_min: None,
            w_max: None,
            atypicality: "memorization".into(),
        }
    }
}

impl Default for MemorizationSpec {
    fn default() -> Self {
        Self {
            k: 8,
            subset_ratio: 0.7,
            threshold: 0.15,
            train_samples: 5000,
            epochs: 3,
            lr: 0.05,
            adversarial: false,
            harmful_top: 24,
        }
    }
}

impl Default for DaemonSpec {
    fn default() -> Self {
        Self {
            stable_ms: 500,
            rescan_ms: 5000,
            eval_concurrency: 1,
            poll: false,
            runner: JobRunnerKind::Pipeline,
            companion_wait_s: 3600,
            http: HttpSpec::default(),
        }
    }
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            token_file: None,
            requests_per_s: 50,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_model_bytes: 2 << 30,
            max_nodes: 100_000,
            max_tensor_elements: 1 << 28,
            job_memory_mb: 4096,
            job_timeout_s: 86_400,
        }
    }
}

impl Config {
    /// Parses a complete config document; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = parse_yaml(text, origin)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// The config file if given, else the embedded defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::default()),
        }
    }

    /// Applies a sidecar document (any subset of the keys) on top of this config, then validates the result.
    pub fn with_overrides(&self, yaml: &str, origin: &Path) -> Result<Self, ConfigError> {
        let base = serde_norway::to_value(self).map_err(|e| ConfigError::ParseNoLocation {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let patch: serde_norway::Value = parse_yaml(yaml, origin)?;
        if let Some(tag) = first_tag(&patch) {
            return Err(ConfigError::ParseNoLocation {
                path: origin.to_path_buf(),
                message: format!(
                    "YAML tag `{tag}` is not accepted: a config holds plain values (an unknown tag would otherwise be silently ignored)"
                ),
            });
        }
        // An empty document (an empty or comment-only sidecar) overrides nothing.
        let merged = if patch.is_null() {
            base
        } else {
            merge_yaml(base, patch)
        };
        let cfg: Config =
            serde_norway::from_value(merged).map_err(|e| ConfigError::ParseNoLocation {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks ranges serde cannot express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            message,
        };
        if !(0.0..=1.0).contains(&self.threat.eps) || !self.threat.eps.is_finite() {
            return Err(bad(
                "threat.eps",
                format!("{} is outside [0, 1] (pixel space)", self.threat.eps),
            ));
        }
        if let Some(e) = self
            .eval
            .eps_curve
            .iter()
            .find(|e| !(0.0..=1.0).contains(*e))
        {
            return Err(bad("eval.eps_curve", format!("{e} is outside [0, 1]")));
        }
        if !(0.0..1.0).contains(&self.memorization.subset_ratio)
            || self.memorization.subset_ratio <= 0.0
        {
            return Err(bad(
                "memorization.subset_ratio",
                format!("{} is not in (0, 1)", self.memorization.subset_ratio),
            ));
        }
        if !(self.memorization.lr.is_finite() && self.memorization.lr > 0.0) {
            return Err(bad(
                "memorization.lr",
                format!("{} is not a positive learning rate", self.memorization.lr),
            ));
        }
        let http = &self.daemon.http;
        if http
            .listen
            .is_some_and(|a| !a.ip().is_loopback() && http.token_file.is_none())
        {
            return Err(bad(
                "daemon.http.token_file",
                "is required when daemon.http.listen is not a loopback address".into(),
            ));
        }
        if http.requests_per_s == 0 {
            return Err(bad(
                "daemon.http.requests_per_s",
                "must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.train.val_fraction) {
            return Err(bad(
                "train.val_fraction",
                format!("{} is not in [0, 1)", self.train.val_fraction),
            ));
        }
        if self.train.batch_size == 0 {
            return Err(bad("train.batch_size", "must be at least 1".into()));
        }
        if let (Some(lo), Some(hi)) = (self.train.bat.w_min, self.train.bat.w_max) {
            if lo > hi {
                return Err(bad(
                    "train.bat.w_min",
                    format!("w_min {lo} is above w_max {hi}"),
                ));
            }
        }
        if let (Some(m), Some(s)) = (&self.model.mean, &self.model.std) {
            if m.len() != s.len() {
                return Err(bad(
                    "model.std",
                    format!("{} values but model.mean has {}", s.len(), m.len()),
                ));
            }
        }
        if self
            .model
            .std
            .as_ref()
            .is_some_and(|s| s.iter().any(|v| *v <= 0.0 || !v.is_finite()))
        {
            return Err(bad(
                "model.std",
                "every std must be a positive finite number".into(),
            ));
        }
        for attack in &self.eval.attacks {
            if !KNOWN_ATTACKS.contains(&attack.as_str()) {
                return Err(bad(
                    "eval.attacks",
                    format!(
                        "unknown attack `{attack}` (known: {})",
                        KNOWN_ATTACKS.join(", ")
                    ),
                ));
            }
        }
        for (key, value, max) in self.work_bounds() {
            if value > max {
                return Err(bad(
                    key,
                    format!("{value} is more than the most accepted, {max}"),
                ));
            }
        }
        if !self.train.optimizer.lr.is_finite() || self.train.optimizer.lr < 0.0 {
            return Err(bad(
                "train.optimizer.lr",
                format!("{} is not a finite number >= 0", self.train.optimizer.lr),
            ));
        }
        if !["sgd", "adam"].contains(&self.train.optimizer.name.as_str()) {
            return Err(bad(
                "train.optimizer.name",
                format!("`{}`: expected sgd or adam", self.train.optimizer.name),
            ));
        }
        if !["cosine", "piecewise", "constant"].contains(&self.train.optimizer.schedule.as_str()) {
            return Err(bad(
                "train.optimizer.schedule",
                format!(
                    "`{}`: expected cosine, piecewise or constant",
                    self.train.optimizer.schedule
                ),
            ));
        }
        if let Err((key, message)) = self.queue.check() {
            return Err(bad(key, message));
        }
        if !["auto", "none", "crop-flip"].contains(&self.train.augmentation.as_str()) {
            return Err(bad(
                "train.augmentation",
                format!(
                    "`{}`: expected auto, none or crop-flip",
                    self.train.augmentation
                ),
            ));
        }
        Ok(())
    }

    /// Counts that set how much work a job does, with the most accepted of each: far above any useful setting,
    /// they keep a typo or a hostile sidecar from asking for years of computation (`limits.job_timeout_s` bounds
    /// the rest).
    fn work_bounds(&self) -> [(&'static str, u64, u64); 12] {
        let n = |v: usize| v as u64;
        [
            ("eval.pgd.steps", n(self.eval.pgd.steps), 10_000),
            ("eval.pgd.restarts", n(self.eval.pgd.restarts), 100),
            ("eval.apgd_steps", n(self.eval.apgd_steps), 10_000),
            (
                "eval.square_queries",
                n(self.eval.square_queries),
                1_000_000,
            ),
            ("eval.eps_curve", n(self.eval.eps_curve.len()), 100),
            ("eval.attacks", n(self.eval.attacks.len()), 32),
            ("train.epochs", n(self.train.epochs), 10_000),
            ("train.pgd.steps", n(self.train.pgd.steps), 10_000),
            ("train.pgd.restarts", n(self.train.pgd.restarts), 100),
            ("memorization.k", n(self.memorization.k), 1_000),
            ("memorization.epochs", n(self.memorization.epochs), 10_000),
            (
                "train.optimizer.warmup_epochs",
                n(self.train.optimizer.warmup_epochs),
                10_000,
            ),
        ]
    }

    /// Stable hash of the resolved config (dedupe key together with the model's sha256).
    pub fn hash_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_norway::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// The resolved config as YAML (what `robustd check-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// The config a job keeps (its `config.yaml`, its content key): this one without the daemon's `queue`
    /// section, which says how workers reach each other and holds the database URL.
    pub fn for_job(&self) -> Self {
        Self {
            queue: QueueSpec::default(),
            ..self.clone()
        }
    }

    /// The resolved config for people to read: the `queue` section shown even at its defaults, the database
    /// password redacted.
    pub fn to_display_yaml(&self) -> String {
        let mut value = serde_norway::to_value(self).unwrap_or(serde_norway::Value::Null);
        if let (Some(map), Ok(mut queue)) =
            (value.as_mapping_mut(), serde_norway::to_value(&self.queue))
        {
            if let (Some(q), Some(url)) = (queue.as_mapping_mut(), &self.queue.url) {
                q.insert("url".into(), url.redacted().into());
            }
            map.insert("queue".into(), queue);
        }
        serde_norway::to_string(&value).unwrap_or_default()
    }
}

/// Attack names accepted in `eval.attacks` and `--attacks`.
pub const KNOWN_ATTACKS: &[&str] = &[
    "fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "square",
];

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    serde_norway::from_str(text).map_err(|e| match e.location() {
        Some(loc) => ConfigError::Parse {
            path: origin.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            message: e.to_string(),
        },
        None => ConfigError::ParseNoLocation {
            path: origin.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// The first explicit YAML tag (`!name`) anywhere in a document.
fn first_tag(value: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value;
    match value {
        Value::Tagged(t) => Some(t.tag.to_string()),
        Value::Sequence(items) => items.iter().find_map(first_tag),
        Value::Mapping(map) => map
            .iter()
            .find_map(|(k, v)| first_tag(k).or_else(|| first_tag(v))),
        _ => None,
    }
}

/// Deep-merges `patch` into `base`: mappings merge key by key, anything else replaces.
fn merge_yaml(base: serde_norway::Value, patch: serde_norway::Value) -> serde_norway::Value {
    use serde_norway::Value;
    match (base, patch) {
        (Value::Mapping(mut b), Value::Mapping(p)) => {
            for (k, v) in p {
                let merged = match b.remove(&k) {
                    Some(old) => merge_yaml(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, p) => p,
    }
}
