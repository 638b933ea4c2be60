//! The robustness evaluation protocol: clean accuracy on the shipped file, the configured attacks as a worst-case
//! ensemble in AutoAttack order, an onnxruntime re-check of every adversarial example found with tch, the robust
//! accuracy vs eps curve, trust checks, and per-sample results.
//!
//! - [`evaluate`] (in `protocol`): runs the protocol for one model and returns an [`Evaluation`].
//! - [`preset`]: the attack suites `eval.preset` names (`fast`, AutoAttack's standard, plus and rand).
//! - [`result`]: [`EvalResult`], the serde block a report embeds under `evaluation.before`/`after`.
//! - [`stats`]: Clopper–Pearson intervals on every accuracy.
//! - [`per_sample`]: per-sample outcomes and their npz file.
//! - [`examples`]: the adversarial examples of broken samples and their npz file.
//! - [`trust`]: the warnings about results that may not be trustworthy.
//! - [`batch`]: fixed or automatic batch size within the job's memory budget.
//! - [`curve`]: the robust-accuracy-vs-eps curve, swept outward from the attacks' verdict at `threat.eps`.
//! - [`progress`]: an indicatif bar for the CLI's progress callback.
//!
//! Success is always judged by the scorer (onnxruntime on the shipped file): an attack breaks a sample when the
//! scorer misclassifies the adversarial example. Gradient attacks run on the tch model; Square only on the scorer.

pub mod batch;
pub mod curve;
pub mod examples;
pub mod per_sample;
pub mod preset;
pub mod progress;
mod protocol;
pub mod result;
pub mod stats;
pub mod trust;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use thiserror::Error;

use crate::attack::{Attack, AttackError};
use crate::config::{Config, EvalMode, EvalPreset, ExamplesSpec, Norm, PgdSpec};
pub use crate::config::{CurveProtocol, CurveStart};
use crate::model::ModelError;
pub use batch::BatchSize;
pub use examples::AdversarialExamples;
pub use per_sample::PerSample;
pub use protocol::{evaluate, evaluate_score_based, Shape};
pub use result::EvalResult;
pub use trust::{TrustThresholds, TrustWarning, WarningKind};

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Attack(#[from] AttackError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Npz { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] crate::durable::WriteError),
}

/// The samples to evaluate: images `[N, C, H, W]` (float32 in [0,1], or uint8 = value / 255; CPU), labels `[N]` (int64) and each sample's
/// index in its dataset (reported, and the key of its attack randomness, so a sample gets the same random starts
/// whichever subset or batch it is evaluated in).
#[derive(Debug)]
pub struct EvalSet {
    pub x: Tensor,
    pub y: Tensor,
    pub indices: Vec<u64>,
}

impl EvalSet {
    pub fn new(x: Tensor, y: Tensor, indices: Vec<u64>) -> Result<Self, EvalError> {
        let bad = |message: String| EvalError::Invalid {
            what: "evaluation set",
            message,
        };
        // 8-bit pixels (decoded image files) stay 8-bit, a quarter of the memory; batches are converted to [0,1].
        let x = x.f_to_device(tch::Device::Cpu)?;
        let x = if x.kind() == Kind::Uint8 {
            x
        } else {
            x.f_to_kind(Kind::Float)?
        };
        let y = y.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Int64)?;
        let n = x.size().first().copied().unwrap_or(0);
        if x.dim() != 4 {
            return Err(bad(format!(
                "images must be [N, C, H, W], got {:?}",
                x.size()
            )));
        }
        if y.size() != [n] || indices.len() as i64 != n {
            return Err(bad(format!(
                "{n} images, {:?} labels, {} indices",
                y.size(),
                indices.len()
            )));
        }
        if n > 0 && x.kind() != Kind::Uint8 {
            let (lo, hi) = (
                x.f_min()?.f_double_value(&[])?,
                x.f_max()?.f_double_value(&[])?,
            );
            if !(lo >= 0.0 && hi <= 1.0) {
                return Err(bad(format!(
                    "pixels must lie in [0, 1] (normalization belongs in the model), found [{lo}, {hi}]"
                )));
            }
        }
        Ok(Self { x, y, indices })
    }

    /// The first `x.size()[0]` samples of a dataset: indices `0..N`.
    pub fn first(x: Tensor, y: Tensor) -> Result<Self, EvalError> {
        let n = x.size().first().copied().unwrap_or(0).max(0) as u64;
        Self::new(x, y, (0..n).collect())
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// How attacks share the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AutoAttack: each attack only on samples still robust after the previous ones.
    Ensemble,
    /// Every attack on every clean-correct sample (per-attack numbers comparable with other tools).
    Standalone,
}

/// Everything [`evaluate`] needs besides the model, the scorer and the data.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    pub norm: Norm,
    pub eps: f64,
    /// The suite the attacks come from (reported).
    pub preset: EvalPreset,
    /// Run in this order.
    pub attacks: Vec<Attack>,
    /// Radii of the robust-accuracy curve, attacked with PGD configured by `curve_pgd`.
    pub eps_curve: Vec<f64>,
    pub curve_pgd: PgdSpec,
    /// How the curve is measured (see [`curve`]).
    pub curve_protocol: CurveProtocol,
    /// PGD steps per radius of the `sweep` curve.
    pub curve_steps: usize,
    /// Where the `sweep` curve's PGD starts a sample.
    pub curve_start: CurveStart,
    pub seed: u64,
    pub batch: BatchSize,
    pub mode: Mode,
    pub thresholds: TrustThresholds,
    /// How many adversarial examples to keep and draw.
    pub examples: ExamplesSpec,
}

impl EvalPlan {
    /// The plan a config describes: `threat`, `eval.*` (including `eval.preset` and `eval.mode`), `runtime.seed`,
    /// `limits.job_memory_mb`.
    pub fn from_config(cfg: &Config) -> Result<Self, EvalError> {
        let (norm, eps, seed) = (cfg.threat.norm, cfg.threat.eps, cfg.runtime.seed);
        let attacks = preset::attacks(&cfg.eval, norm, eps, seed)?;
        let batch = match cfg.eval.batch_size {
            0 => BatchSize::Auto {
                memory_mb: cfg.limits.job_memory_mb,
            },
            n => BatchSize::Fixed(n),
        };
        Ok(Self {
            norm,
            eps,
            preset: cfg.eval.preset,
            attacks,
            eps_curve: cfg.eval.eps_curve.clone(),
            curve_pgd: cfg.eval.pgd.clone(),
            curve_protocol: cfg.eval.curve_protocol,
            curve_steps: cfg.eval.curve_steps,
            curve_start: cfg.eval.curve_start,
            seed,
            batch,
            mode: match cfg.eval.mode {
                EvalMode::Ensemble => Mode::Ensemble,
                EvalMode::Standalone => Mode::Standalone,
            },
            thresholds: TrustThresholds::default(),
            examples: cfg.eval.examples.clone(),
        })
    }
}

/// The protocol's stages, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// The batch size: probed (with the first passes' warm-up) or taken from the config.
    Batching,
    Clean,
    Checks,
    Attack(&'static str),
    Curve(f64),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Batching => f.write_str("batch size"),
            Stage::Clean => f.write_str("clean accuracy"),
            Stage::Checks => f.write_str("trust checks"),
            Stage::Attack(name) => write!(f, "attack {name}"),
            Stage::Curve(eps) => write!(f, "pgd at eps {eps}"),
        }
    }
}

/// Reported after every batch: stage `stage_index` of `stages`, `done` of `total` samples of this stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub stage_index: usize,
    pub stages: usize,
    pub done: usize,
    pub total: usize,
}

/// The result of [`evaluate`]: the report block, the per-sample outcomes and the adversarial examples kept.
#[derive(Debug)]
pub struct Evaluation {
    pub result: EvalResult,
    pub per_sample: PerSample,
    pub examples: AdversarialExamples,
}
