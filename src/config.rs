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
    /// Daemon-wide allow-list of directories a sidecar's `dataset.path` must lie inside (after resolving
    /// symlinks); empty = a sidecar may not name a dataset path at all.
    pub datasets: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// `auto`, `cpu`, `cuda` or `cuda:N`: the device of CLI commands; in the daemon, the device a job runs on is
    /// leased from `devices` and written here.
    pub device: String,
    /// The daemon's devices: `auto` (every CUDA device libtorch sees, else the CPU; or the one `device` names when
    /// it names one), `cpu`, or a list `[cuda:0, cuda:1]`. One training job runs per device at a time.
    pub devices: crate::device::DevicesSpec,
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
    /// Per-channel mean subtracted inside the model's forward path; null = the dataset profile's (or none). A
    /// preset name (`imagenet`, `cifar10`, ...: [`crate::data::normalization_preset`]) is read as its values.
    #[serde(deserialize_with = "preset_or_values::mean")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std; null = the dataset profile's (or none); a preset name as for `mean`.
    #[serde(deserialize_with = "preset_or_values::std")]
    pub std: Option<Vec<f32>>,
    /// `auto` (from the ONNX input shape), `nchw`, `nhwc`, or `flat` (an MLP taking N x C*H*W).
    pub input_layout: InputLayout,
    /// How image files (`dataset.name: folder | manifest`) are brought to the model's input size.
    pub preprocess: PreprocessSpec,
}

/// Image-file preprocessing, as the model's own training code did it (torchvision's `Resize` + `CenterCrop` on
/// PIL images); applied before the [0,1] pixel tensor that attacks perturb. In-RAM formats (IDX, CIFAR, npz) are
/// stored at their size and do not use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessSpec {
    /// `shorter-side` (resize the shorter side to `resize_size`, keep the aspect, center-crop to the input size),
    /// `exact` (resize to the input size, aspect not kept), or `none` (files must already have the input size).
    pub resize: ResizeMode,
    /// Shorter side after resizing, before the center crop (torchvision `Resize(256)` + `CenterCrop(224)`);
    /// null = the larger input side (no margin cropped beyond the aspect).
    pub resize_size: Option<u32>,
    /// `bilinear` or `bicubic`, antialiased when shrinking (Pillow's resampling, as torchvision on PIL images).
    pub interpolation: Interpolation,
    /// `[H, W]` the images are brought to; null = the model's input size (from the ONNX input).
    pub size: Option<[u32; 2]>,
    /// Area range of `train.augmentation: random-resized-crop` (torchvision `RandomResizedCrop(scale=...)`).
    pub random_crop_scale: [f64; 2],
    /// Aspect-ratio range of the random resized crop (`ratio=...`).
    pub random_crop_ratio: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    ShorterSide,
    Exact,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
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
    /// `fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `npz`, `folder` or `manifest`.
    pub name: String,
    /// Directory (IDX, CIFAR, folder, manifest) or file (npz); null = the standard location for the name.
    pub path: Option<PathBuf>,
    /// Folder/manifest class names in label order; null = the sorted class folder names (torchvision
    /// `ImageFolder`), or numbered classes for a manifest.
    pub classes: Option<Vec<String>>,
    /// What an unreadable or corrupt image file does: `fail` the job naming the file, or `skip` it (counted in the
    /// report).
    pub corrupt: CorruptPolicy,
    /// Directory for decoded, preprocessed images keyed by file content (folder/manifest); null = no cache.
    pub cache: Option<PathBuf>,
    /// Image decode threads (folder/manifest); 0 = `runtime.threads`, or one per core.
    pub loader_threads: usize,
    /// Training samples used for fine-tuning and memorization; 0 = all.
    pub train_samples: usize,
    /// Test samples evaluated (first N of the test split); 0 = all.
    pub eval_samples: usize,
    /// Take a seeded random subset instead of the first N.
    pub random_subset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptPolicy {
    Fail,
    Skip,
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
    /// The attack suite: `fast` (the attacks and budgets below) or one of AutoAttack's, whose attacks and budgets
    /// are fixed (see `eval::preset`).
    pub preset: EvalPreset,
    /// Attacks run in order; each later one only on points still robust (AutoAttack order). `fast` only.
    pub attacks: Vec<String>,
    pub pgd: PgdSpec,
    /// APGD iterations (Croce & Hein 2020).
    pub apgd_steps: usize,
    /// APGD runs per sample (per target for APGD-T); later ones only on samples not yet broken.
    pub apgd_restarts: usize,
    /// Target classes of APGD-T and FAB-T (the highest-ranked wrong classes), capped at classes − 1.
    pub target_classes: usize,
    /// FAB / FAB-T iterations.
    pub fab_steps: usize,
    /// Square attack query budget per sample.
    pub square_queries: usize,
    /// Square attack initial fraction of pixels changed.
    pub square_p_init: f64,
    /// Radii for the robust-accuracy-vs-eps curve (PGD only).
    pub eps_curve: Vec<f64>,
    /// How the curve is measured: `sweep` (from the attacks' verdict at `threat.eps` outward, each sample attacked
    /// only until its verdict changes) or `independent` (`eval.pgd` on every clean-correct sample at every radius).
    pub curve_protocol: CurveProtocol,
    /// PGD steps per radius of the `sweep` curve (step size scaled to keep `eval.pgd`'s total travel).
    pub curve_steps: usize,
    /// Where the `sweep` curve's PGD starts a sample: `warm` (from the point the sweep already has for it: its
    /// adversarial example from a larger radius, projected, or the last iterate of the attack it withstood at a
    /// smaller one) or `random` (`eval.pgd.random_start`).
    pub curve_start: CurveStart,
    /// Batch size for evaluation and attacks; 0 = automatic within `limits.job_memory_mb`.
    pub batch_size: usize,
    /// Exit code 3 from `robustd eval` when worst-case robust accuracy is below this; null = never.
    pub min_robust_acc: Option<f64>,
    /// What `min_robust_acc` is compared with: the measured accuracy (`point`) or the lower end of its 95 %
    /// Clopper–Pearson interval (`lower-bound`).
    pub gate: Gate,
    /// `ensemble` (AutoAttack: each attack only on points still robust) or `standalone` (every attack on every
    /// clean-correct point, so per-attack numbers compare with other tools').
    pub mode: EvalMode,
    /// The adversarial examples kept (`adversarial.npz`) and drawn (`plots/adversarial.png`).
    pub examples: ExamplesSpec,
    /// On CUDA: the attacks' forward and gradient passes (and clean accuracy) in bfloat16 autocast; false keeps
    /// them in float32 (the default: robust accuracies are then comparable with float32 references).
    pub amp: bool,
}

/// Named attack suites (`eval.preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalPreset {
    /// `eval.attacks` with the budgets of the `eval` block (defaults: PGD-20, APGD-CE, APGD-DLR, Square 1000).
    Fast,
    /// AutoAttack "standard" (RobustBench): APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square 5000 queries.
    AutoattackStandard,
    /// AutoAttack "plus": APGD-CE and APGD-DLR (5 restarts), FAB (5 restarts), Square 5000, APGD-T, FAB-T.
    AutoattackPlus,
    /// AutoAttack "rand", for randomized models: APGD-CE and APGD-DLR with EOT over 20 samples.
    AutoattackRand,
}

/// What `eval.min_robust_acc` gates on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    Point,
    LowerBound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExamplesSpec {
    /// Broken samples whose adversarial example is saved in `adversarial.npz` (the lowest dataset indices); 0 =
    /// no file.
    pub max: usize,
    /// Examples drawn in the PNG grid (one row each: original, magnified perturbation, adversarial); 0 = no grid.
    pub grid: usize,
}

/// How the robust-accuracy-vs-eps curve is measured (`eval.curve_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveProtocol {
    /// The configured attacks' verdict at `threat.eps`, then each sample attacked at the radii outward from it
    /// until its verdict changes (a break holds at every larger radius; a hold is taken to hold at every smaller
    /// one), with `eval.curve_steps` steps: about one attack's cost.
    Sweep,
    /// `eval.pgd` on every clean-correct sample at every radius, each radius on its own.
    Independent,
}

/// Where the `sweep` curve's PGD starts a sample (`eval.curve_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveStart {
    /// From the point the sweep already has for the sample: below `threat.eps` its adversarial example from the
    /// next larger radius projected onto the ball (the projection that just failed to fool the model), above it
    /// the last iterate of the attack it withstood at the next smaller radius. A sample with no such point (its
    /// point did not fit the memory budget) starts as `eval.pgd.random_start` says.
    Warm,
    /// As `eval.pgd.random_start` says, the same for every radius.
    Random,
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
    /// On CUDA: bfloat16 autocast for the training steps (the PGD that crafts examples, and the loss).
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

/// How the memorization module scores training samples (`memorization.estimator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// One model from fresh weights; score `1 − mean p(y|x)` over its training passes (`memorization.epochs`).
    LearningSpeed,
    /// K subset models trained until they fit their subsets; score `E[p(y|x) | in] − E[p(y|x) | out]`.
    FeldmanZhang,
    /// Two half models; score `1 − p(y|x)` under the half model that never saw the sample.
    Holdout,
    /// Scores read from `memorization.scores`.
    Import,
}

impl Estimator {
    /// The name in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::LearningSpeed => "learning-speed",
            Estimator::FeldmanZhang => "feldman-zhang",
            Estimator::Holdout => "holdout",
            Estimator::Import => "import",
        }
    }

    /// τ when `memorization.threshold` is null, each estimator's scores living on their own scale: a fixed value,
    /// or `None` for learning-speed, whose scores only rank (how high they run depends on how fast the model learns
    /// at all): its τ is the 90th percentile of the run's scores, so the top decile is atypical.
    pub fn default_threshold(self) -> Option<f64> {
        match self {
            Estimator::LearningSpeed => None,
            Estimator::FeldmanZhang | Estimator::Import => Some(0.15),
            Estimator::Holdout => Some(0.5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorizationSpec {
    /// `learning-speed`, `feldman-zhang`, `holdout` or `import`.
    pub estimator: Estimator,
    /// A score above this marks a training sample atypical; null = the estimator's own
    /// ([`Estimator::default_threshold`]; resolved per run by `memo::Estimate::threshold`).
    pub threshold: Option<f64>,
    /// Training samples scored (first N of the training split); 0 = all.
    pub train_samples: usize,
    /// Learning-speed: epochs of the one model (each one counted). Holdout: epochs of each half model.
    pub epochs: usize,
    /// Peak learning rate of the models the estimators train from fresh weights (`train.optimizer.lr` is meant for
    /// fine-tuning a trained model and is usually too small for that); the rest of `train.optimizer` applies.
    pub lr: f64,
    /// Train the estimators' models adversarially instead of with standard training.
    pub adversarial: bool,
    /// Feldman–Zhang: number of subset models.
    pub k: usize,
    /// Feldman–Zhang: share of the scored samples each subset model sees.
    pub subset_ratio: f64,
    /// Feldman–Zhang: a subset model stops once its training accuracy on its subset reaches this.
    pub fit_target: f64,
    /// Feldman–Zhang: the most epochs a subset model trains to reach `fit_target`.
    pub max_epochs: usize,
    /// Import: the score file (`.npy` by source index, `.npz#KEY`, or `.csv` `index,score`).
    pub scores: Option<String>,
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
    /// Evaluation-only jobs that may run at once on each device of `runtime.devices` (training jobs: one per
    /// device).
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
            datasets: Vec::new(),
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            devices: crate::device::DevicesSpec::Auto,
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
            preprocess: PreprocessSpec::default(),
        }
    }
}

impl Default for PreprocessSpec {
    fn default() -> Self {
        Self {
            resize: ResizeMode::ShorterSide,
            resize_size: None,
            interpolation: Interpolation::Bilinear,
            size: None,
            random_crop_scale: [0.08, 1.0],
            random_crop_ratio: [0.75, 4.0 / 3.0],
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
            ..Self::default()
        }
    }
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: "fashion-mnist".into(),
            path: None,
            classes: None,
            corrupt: CorruptPolicy::Fail,
            cache: None,
            loader_threads: 0,
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
            preset: EvalPreset::Fast,
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
            apgd_restarts: 1,
            target_classes: 9,
            fab_steps: 100,
            square_queries: 1000,
            square_p_init: 0.3,
            eps_curve: vec![0.0, 0.025, 0.05, 0.1, 0.15],
            curve_protocol: CurveProtocol::Sweep,
            curve_steps: 5,
            curve_start: CurveStart::Warm,
            batch_size: 0,
            min_robust_acc: None,
            gate: Gate::Point,
            mode: EvalMode::Ensemble,
            examples: ExamplesSpec::default(),
            amp: false,
        }
    }
}

impl Default for ExamplesSpec {
    fn default() -> Self {
        Self { max: 500, grid: 8 }
    }
}

impl EvalSpec {
    /// The keys that choose attacks or budgets and apply to the `fast` preset only, with whether each differs from
    /// its default (an AutoAttack preset fixes them: a changed one is a contradiction, not something to ignore).
    fn fast_only_keys_changed(&self) -> Vec<&'static str> {
        let d = Self::default();
        [
            ("eval.attacks", self.attacks != d.attacks),
            ("eval.apgd_steps", self.apgd_steps != d.apgd_steps),
            ("eval.apgd_restarts", self.apgd_restarts != d.apgd_restarts),
            (
                "eval.target_classes",
                self.target_classes != d.target_classes,
            ),
            ("eval.fab_steps", self.fab_steps != d.fab_steps),
            (
                "eval.square_queries",
                self.square_queries != d.square_queries,
            ),
            ("eval.square_p_init", self.square_p_init != d.square_p_init),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
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
            estimator: Estimator::LearningSpeed,
            threshold: None,
            train_samples: 0,
            epochs: 8,
            lr: 0.05,
            adversarial: false,
            k: 8,
            subset_ratio: 0.7,
            fit_target: 0.99,
            max_epochs: 60,
            scores: None,
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
        if self.eval.curve_steps == 0 {
            return Err(bad(
                "eval.curve_steps",
                "0 steps would attack nothing; use 1 or more".into(),
            ));
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
        if !(self.memorization.fit_target > 0.0 && self.memorization.fit_target <= 1.0) {
            return Err(bad(
                "memorization.fit_target",
                format!("{} is not in (0, 1]", self.memorization.fit_target),
            ));
        }
        if let Some(t) = self.memorization.threshold.filter(|t| !t.is_finite()) {
            return Err(bad(
                "memorization.threshold",
                format!("{t} is not a number"),
            ));
        }
        for (key, value) in [
            ("memorization.epochs", self.memorization.epochs),
            ("memorization.max_epochs", self.memorization.max_epochs),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        if self.memorization.estimator == Estimator::Import && self.memorization.scores.is_none() {
            return Err(bad(
                "memorization.scores",
                "the import estimator needs a score file (memorization.scores: PATH[.npz#KEY])"
                    .into(),
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
        if self.eval.preset != EvalPreset::Fast {
            if let Some(key) = self.eval.fast_only_keys_changed().first() {
                return Err(bad(
                    key,
                    format!(
                        "eval.preset {} fixes the attacks and their budgets; set eval.preset: fast to choose them",
                        serde_norway::to_string(&self.eval.preset)
                            .unwrap_or_default()
                            .trim()
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
        if !crate::data::AUGMENTATIONS.contains(&self.train.augmentation.as_str()) {
            return Err(bad(
                "train.augmentation",
                format!(
                    "`{}`: expected {}",
                    self.train.augmentation,
                    crate::data::AUGMENTATIONS.join(", ")
                ),
            ));
        }
        self.validate_preprocess(origin)?;
        Ok(())
    }

    /// The image-file preprocessing keys: sizes, the random-crop ranges, and class names.
    fn validate_preprocess(&self, origin: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            message,
        };
        let p = &self.model.preprocess;
        if p.resize_size.is_some_and(|s| s == 0 || s > MAX_IMAGE_SIDE) {
            return Err(bad(
                "model.preprocess.resize_size",
                format!("must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
        if p.size
            .is_some_and(|s| s.iter().any(|&v| v == 0 || v > MAX_IMAGE_SIDE))
        {
            return Err(bad(
                "model.preprocess.size",
                format!("both sides must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
        let [lo, hi] = p.random_crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(bad(
                "model.preprocess.random_crop_scale",
                format!("[{lo}, {hi}] is not a range inside (0, 1]"),
            ));
        }
        let [lo, hi] = p.random_crop_ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(bad(
                "model.preprocess.random_crop_ratio",
                format!("[{lo}, {hi}] is not a positive range"),
            ));
        }
        if let Some(classes) = &self.dataset.classes {
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = classes.iter().find(|c| !seen.insert(c.as_str())) {
                return Err(bad(
                    "dataset.classes",
                    format!("class `{dup}` is listed twice"),
                ));
            }
            if classes.is_empty() {
                return Err(bad("dataset.classes", "the list is empty".into()));
            }
        }
        Ok(())
    }

    /// Counts that set how much work a job does, with the most accepted of each: far above any useful setting,
    /// they keep a typo or a hostile sidecar from asking for years of computation (`limits.job_timeout_s` bounds
    /// the rest).
    fn work_bounds(&self) -> [(&'static str, u64, u64); 19] {
        let n = |v: usize| v as u64;
        [
            ("eval.pgd.steps", n(self.eval.pgd.steps), 10_000),
            ("eval.pgd.restarts", n(self.eval.pgd.restarts), 100),
            ("eval.apgd_steps", n(self.eval.apgd_steps), 10_000),
            ("eval.apgd_restarts", n(self.eval.apgd_restarts), 100),
            ("eval.target_classes", n(self.eval.target_classes), 1_000),
            ("eval.fab_steps", n(self.eval.fab_steps), 10_000),
            ("eval.examples.max", n(self.eval.examples.max), 100_000),
            ("eval.examples.grid", n(self.eval.examples.grid), 256),
            (
                "eval.square_queries",
                n(self.eval.square_queries),
                1_000_000,
            ),
            ("eval.eps_curve", n(self.eval.eps_curve.len()), 100),
            ("eval.curve_steps", n(self.eval.curve_steps), 10_000),
            ("eval.attacks", n(self.eval.attacks.len()), 32),
            ("train.epochs", n(self.train.epochs), 10_000),
            ("train.pgd.steps", n(self.train.pgd.steps), 10_000),
            ("train.pgd.restarts", n(self.train.pgd.restarts), 100),
            ("memorization.k", n(self.memorization.k), 1_000),
            ("memorization.epochs", n(self.memorization.epochs), 10_000),
            (
                "memorization.max_epochs",
                n(self.memorization.max_epochs),
                10_000,
            ),
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

/// Largest image side `model.preprocess` accepts (pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// `model.mean`/`model.std`: a list of numbers, null, or the name of a normalization preset.
mod preset_or_values {
    use serde::{de::Error, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Setting {
        Preset(String),
        Values(Vec<f32>),
    }

    fn read<'de, D: Deserializer<'de>>(d: D, std: bool) -> Result<Option<Vec<f32>>, D::Error> {
        match Option::<Setting>::deserialize(d)? {
            None => Ok(None),
            Some(Setting::Values(v)) => Ok(Some(v)),
            Some(Setting::Preset(name)) => match crate::data::normalization_preset(&name) {
                Some((mean, sd)) => Ok(Some(if std { sd } else { mean })),
                None => Err(D::Error::custom(format!(
                    "unknown normalization preset `{name}` (known: {}; or a list of numbers)",
                    crate::data::normalization_presets().join(", ")
                ))),
            },
        }
    }

    pub fn mean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
        read(d, false)
    }

    pub fn std<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
        read(d, true)
    }
}

/// Attack names accepted in `eval.attacks` and `--attacks`.
pub const KNOWN_ATTACKS: &[&str] = &[
    "fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square",
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
