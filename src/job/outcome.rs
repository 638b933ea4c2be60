//! What a successful run returns — the report sections the runner owns — and the one assembly of a complete
//! `report.yaml` from it, used both by the daemon (which adds its job record) and by the CLI commands that run the
//! pipeline directly: environment, artifacts with their digests, timing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::report::{
    sha256_hex, Artifacts, DatasetInfo, EnvironmentInfo, Evaluation, FileRef, JobInfo, JobLimits,
    Memorization, ModelInfo, Precision, Report, Summary, Timing, Training, REPORT_SCHEMA,
};
use crate::runtime;

/// What a successful run produced: the report sections it owns. [`JobOutcome::into_report`] adds environment,
/// artifacts (with digests), job and timing. A job's process sends it to the daemon as YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOutcome {
    pub summary: Summary,
    pub model: ModelInfo,
    pub dataset: Option<DatasetInfo>,
    pub evaluation: Option<Evaluation>,
    pub memorization: Option<Memorization>,
    pub training: Option<Training>,
    /// Relative to the output directory.
    pub fine_tuned_model: Option<String>,
    pub plots: Vec<String>,
    pub per_sample: Option<String>,
    pub training_log: Option<String>,
    /// The hard limits the job ran under (its process's memory cap and the timeout), when it ran in a process of
    /// its own: the report's `job.limits`.
    #[serde(default)]
    pub limits: Option<JobLimits>,
    /// Where it ran (versions, device, threads), when the runner ran elsewhere than the report is assembled (a
    /// job's process: the daemon itself never loads onnxruntime); otherwise [`environment`] of the config.
    #[serde(default)]
    pub environment: Option<EnvironmentInfo>,
    /// The onnxruntime execution provider the job's sessions ran on ([`crate::onnx::Provider::describe`]).
    #[serde(default)]
    pub ort_provider: Option<String>,
}

impl JobOutcome {
    /// An outcome with the two sections every runner fills; the optional ones start empty.
    pub fn new(summary: Summary, model: ModelInfo) -> Self {
        Self {
            summary,
            model,
            dataset: None,
            evaluation: None,
            memorization: None,
            training: None,
            fine_tuned_model: None,
            plots: Vec::new(),
            per_sample: None,
            training_log: None,
            limits: None,
            environment: None,
            ort_provider: None,
        }
    }

    /// The complete report of this outcome, whose files lie in `dir`. Plots the runner listed but did not write
    /// become summary warnings rather than dangling references.
    pub fn into_report(
        self,
        config: &Config,
        dir: &Path,
        original_model: FileRef,
        job: Option<JobInfo>,
        timing: Timing,
    ) -> Result<Report, ArtifactError> {
        let mut summary = self.summary;
        let fine_tuned_model = match &self.fine_tuned_model {
            Some(rel) => Some(file_ref(dir, rel)?),
            None => None,
        };
        let mut plots = Vec::new();
        for plot in self.plots {
            if dir.join(&plot).is_file() {
                plots.push(plot);
            } else {
                summary
                    .warnings
                    .push(format!("plot {plot} was not written"));
            }
        }
        summary.artifacts.fine_tuned_model = fine_tuned_model.as_ref().map(|f| f.path.clone());
        summary.artifacts.plots = plots.clone();
        Ok(Report {
            schema: REPORT_SCHEMA.to_owned(),
            summary,
            model: self.model,
            dataset: self.dataset,
            environment: EnvironmentInfo {
                onnxruntime_provider: self.ort_provider,
                ..self.environment.unwrap_or_else(|| environment(config))
            },
            evaluation: self.evaluation,
            memorization: self.memorization,
            training: self.training,
            artifacts: Artifacts {
                original_model,
                fine_tuned_model,
                plots,
                per_sample: self.per_sample,
                training_log: self.training_log,
            },
            job: job.map(|j| JobInfo {
                limits: self.limits,
                ..j
            }),
            timing,
        })
    }
}

/// The environment block of a report.
pub fn environment(config: &Config) -> EnvironmentInfo {
    let id = crate::device::resolve_single(&config.runtime.device).ok();
    let device = id.map_or_else(|| config.runtime.device.clone(), |d| d.to_string());
    EnvironmentInfo {
        device_model: id.map(crate::device::model_name),
        onnxruntime_provider: None,
        precision: Some(precision(config, id)),
        robustd: env!("CARGO_PKG_VERSION").to_owned(),
        libtorch: runtime::libtorch_version(),
        onnxruntime: runtime::ort_version(),
        device,
        threads: if config.runtime.threads > 0 {
            config.runtime.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        },
        seed: config.runtime.seed,
    }
}

/// The arithmetic the job's stages ran in: bfloat16 autocast where asked for (`eval.amp`, `train.amp`) on a CUDA
/// device, else float32; attacks stay in float32 unless `eval.amp` asks.
fn precision(config: &Config, device: Option<crate::device::DeviceId>) -> Precision {
    let cuda = device.is_some_and(|d| d.is_cuda()) && crate::device::amp::autocast_available();
    let name = |on: bool| crate::device::amp::precision_name(cuda && on).to_owned();
    Precision {
        attacks: name(config.eval.amp),
        training: name(config.train.amp),
        channels_last: cuda && config.train.channels_last,
    }
}

/// A file in `dir` with its digest.
pub fn file_ref(dir: &Path, rel: &str) -> Result<FileRef, ArtifactError> {
    let bytes = std::fs::read(dir.join(rel)).map_err(|source| ArtifactError {
        path: rel.to_owned(),
        source,
    })?;
    Ok(FileRef {
        path: rel.to_owned(),
        sha256: sha256_hex(&bytes),
        bytes: Some(bytes.len() as u64),
    })
}

/// An artifact a runner reported that cannot be read back for its digest.
#[derive(Debug, Error)]
#[error("artifact {path}: {source}")]
pub struct ArtifactError {
    /// Relative to the output directory.
    pub path: String,
    pub source: std::io::Error,
}
