//! The typed robustd report, schema `robustd.report/v1`. Field order is the order in the YAML file: the summary
//! comes first so a person learns the verdict in ten seconds; every later stage of the pipeline fills its own
//! optional section (evaluation, memorization, training) and leaves the others alone.

use serde::{Deserialize, Serialize};

/// The value of the `schema` key of every report this version writes.
pub const REPORT_SCHEMA: &str = "robustd.report/v1";
/// The report's file name inside a result directory.
pub const REPORT_FILE: &str = "report.yaml";
/// How `summary.scope` begins for a model robustd could only evaluate through onnxruntime's scores.
pub const SCORE_BASED_SCOPE: &str = "score-based evaluation only:";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: String,
    pub summary: Summary,
    pub model: ModelInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetInfo>,
    pub environment: EnvironmentInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memorization: Option<Memorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    pub artifacts: Artifacts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobInfo>,
    pub timing: Timing,
}

/// The ten-second block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// The model's file name as dropped.
    pub model: String,
    pub verdict: Verdict,
    pub threat_model: ThreatModelInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<AccuracySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<AccuracySummary>,
    /// Share of training samples with memorization score above the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atypical_share: Option<f64>,
    /// How far robustd could go with this model, when not all the way (a float16 or quantized model: how it was
    /// attacked and fine-tuned; a graph it cannot differentiate: `score-based evaluation only: <ops> not
    /// supported`). Absent for a float32 model evaluated white-box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub artifacts: SummaryArtifacts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Fine-tuning raised worst-case robust accuracy.
    Improved,
    Unchanged,
    Degraded,
    /// No fine-tuning ran (method `none`, or only the model was inspected).
    EvaluationOnly,
    Failed,
}

impl Verdict {
    /// The verdict of a fine-tuning run from worst-case robust accuracy before and after: `improved` when it rose
    /// by more than `tolerance`, `degraded` when it fell by more, `unchanged` otherwise.
    pub fn compare(robust_before: f64, robust_after: f64, tolerance: f64) -> Self {
        if robust_after > robust_before + tolerance {
            Self::Improved
        } else if robust_after < robust_before - tolerance {
            Self::Degraded
        } else {
            Self::Unchanged
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreatModelInfo {
    /// `linf` or `l2`.
    pub norm: String,
    pub eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccuracySummary {
    #[serde(serialize_with = "crate::eval::result::rounded::accuracy")]
    pub clean_acc: f64,
    /// 95 % Clopper–Pearson interval of `clean_acc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_acc_ci95: Option<crate::eval::stats::Interval>,
    #[serde(serialize_with = "crate::eval::result::rounded::accuracy")]
    pub robust_acc_worst: f64,
    /// 95 % Clopper–Pearson interval of `robust_acc_worst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust_acc_worst_ci95: Option<crate::eval::stats::Interval>,
    /// The attack suite (`eval.preset`) the robust accuracy comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Fine-tuning method (the `after` block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryArtifacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned_model: Option<String>,
    #[serde(default)]
    pub plots: Vec<String>,
}

/// What the model is; `inputs`/`outputs` as onnxruntime reports them, symbolic dims by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub file: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ir_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Number of scalar weights in the graph's initializers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<u64>,
    #[serde(default)]
    pub external_data: Vec<FileRef>,
    /// The forward pass the daemon ran to check the model before any evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_check: Option<ForwardCheck>,
    /// The shipped form of the graph and what robustd did with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<ModelForm>,
}

/// The shipped form of a graph (precision, quantization, onnxruntime contrib ops) and how robustd worked with
/// it: where gradients came from, who gave the verdicts, how (or whether) it was fine-tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelForm {
    /// Element type of the weights: `float32`, `float16`, `bfloat16`.
    pub precision: String,
    /// `qdq`, `qoperator` or `dynamic` (onnxruntime.quantization's formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Non-default-domain ops with their node counts, e.g. `com.microsoft::FusedConv (2 nodes)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contrib_ops: Vec<String>,
    /// Ops robustd cannot interpret or differentiate; non-empty means score-based evaluation only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported_ops: Vec<String>,
    /// Where attack gradients came from (`none` for score-based evaluation).
    pub gradients: String,
    /// Which engine judged every sample.
    pub verdicts: String,
    /// How the model was (or would be) fine-tuned, or why it is not.
    pub fine_tuning: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Dim>,
    pub dtype: String,
}

/// One dimension: a number, or a symbol (`batch`) for a dynamic one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardCheck {
    /// Inputs fed (`zeros`, `uniform[0,1)` ...).
    pub inputs: Vec<String>,
    pub batch: u64,
    /// Logit shape returned.
    pub output_shape: Vec<i64>,
    pub all_finite: bool,
    pub max_abs_logit: f64,
    /// Samples passed through onnxruntime in total (the sanity batches and the throughput probe).
    pub samples: u64,
    /// Forward throughput of the probe on this machine (onnxruntime, `runtime.threads`).
    pub samples_per_second: f64,
    /// Set when the probe resumed from a checkpoint after a restart: samples already done then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_sample: Option<u64>,
    #[serde(serialize_with = "crate::eval::result::rounded::seconds")]
    pub seconds: f64,
}

/// A file next to the report (relative path) and its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub path: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<u64>,
    /// How the evaluated samples were chosen, e.g. `first 1000 of test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_samples: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Image-file datasets (`folder`, `manifest`): where the files are, the fingerprint, the whole preprocessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<DatasetFiles>,
}

/// The record of an image-file dataset: enough to find the same files and turn them into the same tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFiles {
    /// `folder` or `manifest`.
    pub format: String,
    pub root: String,
    /// SHA-256 over the class names and every file's relative path, size and label, split by split in index
    /// order: the same fingerprint means the same samples under the same indices.
    pub fingerprint: String,
    /// The folder or manifest of each split.
    pub train_source: String,
    pub test_source: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Resize, crop, interpolation and output size, applied before the [0,1] pixels the attacks perturb; the
    /// normalization is `normalization` above.
    pub preprocessing: crate::data::Preprocess,
    /// Decoder: the crates and versions that read the files.
    pub decoder: String,
    pub decode_threads: usize,
    pub prefetch_batches: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Files left out as unreadable or corrupt (`dataset.corrupt: skip`).
    pub skipped: SkippedFiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedFiles {
    pub count: u64,
    /// The first few, relative to the root, with the cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentInfo {
    pub robustd: String,
    pub libtorch: String,
    pub onnxruntime: String,
    pub device: String,
    /// The device's hardware: the GPU model (`NVIDIA H200`, `unknown` when the driver cannot say) or the CPU's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    /// The onnxruntime execution provider the job's sessions ran on (`CUDAExecutionProvider (cuda:0)`,
    /// `CPUExecutionProvider`, with the reason when a GPU job fell back to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime_provider: Option<String>,
    /// The arithmetic of the attacks and of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    pub threads: usize,
    pub seed: u64,
}

/// `environment.precision`: `fp32` or `bf16-autocast` (CUDA only, `eval.amp` / `train.amp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precision {
    pub attacks: String,
    pub training: String,
    /// Channels-last memory format in training (`train.channels_last`, CUDA only).
    pub channels_last: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<EvalBlock>,
    /// The same protocol (attacks, seeds, samples) on the fine-tuned model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<EvalBlock>,
}

/// One evaluation (before or after fine-tuning): the evaluation module's result, serialized as is.
pub type EvalBlock = crate::eval::EvalResult;

/// Typical vs atypical samples (by memorization or consistency score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<GroupPair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<GroupPair>,
    /// Training samples in ten rank groups of their score (1 = lowest 10 %, 10 = highest): accuracy against
    /// memorization in finer steps than the typical/atypical split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_deciles: Vec<DecileAccuracy>,
}

/// One rank decile of the training scores: its score range and the model's accuracy on it (`robust` = accuracy
/// on the PGD examples of these training samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecileAccuracy {
    /// 1..=10.
    pub decile: u8,
    /// Lowest and highest score in the decile.
    pub min_score: f64,
    pub max_score: f64,
    pub samples: u64,
    pub clean: f64,
    pub robust: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPair {
    pub typical: GroupAccuracy,
    pub atypical: GroupAccuracy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAccuracy {
    pub samples: u64,
    pub clean: f64,
    pub robust: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memorization {
    /// `learning-speed`, `feldman-zhang`, `holdout`, or `imported`.
    pub estimator: String,
    /// Models the estimator trained: K subset models, 2 half models, 1 for learning-speed, 0 for imported scores.
    pub models: u64,
    /// Share of the scored samples each subset model saw (the balanced design's `m / K`).
    pub subset_ratio: f64,
    pub threshold: f64,
    /// Scores came from the cache in the state directory.
    pub cached: bool,
    pub atypical_share: f64,
    pub histogram: Histogram,
    #[serde(default)]
    pub harmful_atypical: Vec<HarmfulSample>,
    /// Where the scores came from in words (design of the estimator, imported file, proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Training samples scored (the first `memorization.train_samples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_samples: Option<u64>,
    /// Scored samples whose score is undefined (never or always left out; counted as typical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined_scores: Option<u64>,
    /// Test samples whose consistency (mean accuracy of the subset models) is below this are atypical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_consistency_cut: Option<f64>,
    /// Training time of the estimator's models (also when they came from the cache: what the scores cost).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::eval::result::rounded::milliseconds"
    )]
    pub seconds: Option<f64>,
    /// What a score means, as a formula (e.g. `1 - mean_epochs p(y|x)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// What the estimator was given to spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<MemoBudget>,
    /// Whether the scores can be trusted: how the estimator's models fit, how consistent the scores are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_check: Option<SelfCheck>,
}

/// The estimator's budget: what bounds its cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoBudget {
    /// Training samples scored.
    pub samples: u64,
    /// Models trained.
    pub models: u64,
    /// Learning-speed and holdout: epochs per model. Feldman–Zhang: the cap per subset model.
    pub epochs: u64,
    /// Feldman–Zhang: a subset model stops once its training accuracy on its subset reaches this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_target: Option<f64>,
    /// Peak learning rate of the models.
    pub lr: f64,
    /// `standard` or `pgd-at` training of the models.
    pub training: String,
}

/// The estimator's self-checks. Scores are flagged unreliable (`reliable: false`, with the reasons in `warnings`)
/// when the models did not fit what they had to (subset models below 95 % on their own subsets, a learning-speed
/// model that stays near chance) or when the scores disagree with themselves (the two halves' top deciles share
/// less than 30 %, three times chance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheck {
    pub reliable: bool,
    /// Mean accuracy of the models on the samples they trained on (after training, eval mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_subset_acc: Option<f64>,
    /// The lowest of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_subset_acc_min: Option<f64>,
    /// Mean accuracy of the models on the scored samples they did not train on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_acc: Option<f64>,
    /// Mean accuracy of the models on the test samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    /// Epochs each model trained: the fewest and the most.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs_run: Vec<u64>,
    /// Learning-speed: the epochs whose training passes the scores count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs_counted: Option<u64>,
    /// Spearman's rank correlation between the scores of two halves of the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_half_spearman: Option<f64>,
    /// The share of one half's top decile that is also in the other's (chance 0.1): how well the halves agree on
    /// the samples that get flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_half_top_decile: Option<f64>,
    /// Which halves: `models 1-4 vs 5-8`, `even vs odd epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_half: Option<String>,
    /// Mean per-sample standard error of the score (Feldman–Zhang), where defined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_standard_error: Option<f64>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `counts[i]` samples fall in `[bins[i], bins[i+1])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    pub bins: Vec<f64>,
    pub counts: Vec<u64>,
}

/// An atypical training sample whose adversarial example the model does not fit: `adv_confidence` is
/// `p(label | x')` under the model for the PGD example `x'`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HarmfulSample {
    /// Source index in the training split.
    pub index: u64,
    /// The image file, relative to the dataset root (image-file datasets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub label: i64,
    pub score: f64,
    pub adv_confidence: f64,
}

/// The fine-tuning run: the training module's result, serialized as is.
pub type Training = crate::train::TrainResult;

/// Files the job produced, relative to the report's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    /// The dropped model, copied next to the report.
    pub original_model: FileRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned_model: Option<FileRef>,
    #[serde(default)]
    pub plots: Vec<String>,
    /// Per-sample results (npz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_log: Option<String>,
}

/// How the daemon ran the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInfo {
    pub id: String,
    /// sha256 of the resolved config (with the sidecar applied); with the model's sha256 it is the dedupe key.
    pub config_sha256: String,
    pub attempts: u32,
    /// The runner that produced the report (`triage`, `pipeline`, ...).
    pub runner: String,
    /// The hard limits the job's process ran under (absent when the job did not run in a process of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<JobLimits>,
}

/// The hard limits of a job's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// `limits.job_memory_mb`: the process's memory cap (MiB).
    pub memory_mb: u64,
    /// How the cap was enforced: `cgroup` (cgroup v2 `memory.max`, the kernel OOM-kills the process at the cap)
    /// or `rlimit-data` (`RLIMIT_DATA`: allocations past the cap are refused).
    pub memory_cap: MemoryCapKind,
    /// `limits.job_timeout_s` (0 = none): the process is killed at this wall-clock age of the job.
    pub timeout_s: u64,
}

/// How a job's memory cap is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryCapKind {
    /// A cgroup v2 group with `memory.max`: the kernel OOM-kills the process at the cap.
    Cgroup,
    /// `RLIMIT_DATA`: allocations past the cap are refused.
    RlimitData,
}

impl std::fmt::Display for MemoryCapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cgroup => "cgroup memory.max",
            Self::RlimitData => "RLIMIT_DATA",
        })
    }
}

/// Wall-clock timestamps (RFC 3339, UTC) and seconds per stage, in the order the stages ran (written to the
/// millisecond: a part's rounded seconds may then add up to a millisecond or two more than its stage's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub queued_at: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(serialize_with = "crate::eval::result::rounded::seconds")]
    pub seconds: f64,
    /// A command's fixed cost before its first instruction: seconds from the process' exec to the command's
    /// start (loading the binary and its shared libraries, libtorch's mostly), not counted in `seconds`. The
    /// daemon's jobs have none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::eval::result::rounded::milliseconds"
    )]
    pub startup_seconds: Option<f64>,
    #[serde(default)]
    pub stages: Vec<StageTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTime {
    pub name: String,
    #[serde(serialize_with = "crate::eval::result::rounded::seconds")]
    pub seconds: f64,
    /// The stage's steps in order (loading the runtimes, the model, the dataset; each evaluation stage, ...),
    /// where the stage names them; what is left of `seconds` is the stage's own bookkeeping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<StagePart>,
}

/// One named step of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePart {
    pub name: String,
    #[serde(serialize_with = "crate::eval::result::rounded::seconds")]
    pub seconds: f64,
}

impl Report {
    /// The report as YAML text.
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(self)
    }
}
