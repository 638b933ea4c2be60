//! The job robustd runs on one model, shared by the daemon, `robustd finetune` and `robustd eval`:
//!
//! ```text
//! prepare ─▶ eval_before ─▶ atypicality ─▶ finetune ─▶ write_back (+ ORT parity) ─▶ eval_after ─▶ plots
//! ```
//!
//! - [`subject`]: the model, its dataset and its input adapter, loaded and checked against each other.
//! - [`stages`]: one function per stage; each returns the report section it owns.
//! - [`runner`]: the stages in order as a [`crate::job::JobRunner`], producing a `JobOutcome`.
//! - [`compare`]: several methods and seeds on one model under one budget (`robustd compare`), built from the same
//!   stages.
//! - [`triage`]: the cheap runner that only loads and checks a model (`daemon.runner: triage`).

pub mod compare;
pub mod runner;
pub mod stages;
pub mod subject;
pub mod triage;

use std::path::PathBuf;

use thiserror::Error;

pub use runner::PipelineRunner;
pub use subject::Subject;
pub use triage::TriageRunner;

/// The runner `daemon.runner` names.
pub fn runner_for(kind: crate::config::JobRunnerKind) -> std::sync::Arc<dyn crate::job::JobRunner> {
    match kind {
        crate::config::JobRunnerKind::Pipeline => std::sync::Arc::new(PipelineRunner),
        crate::config::JobRunnerKind::Triage => std::sync::Arc::new(TriageRunner),
    }
}

/// Largest |logit| difference accepted between tch and onnxruntime on a written-back float32 model (≤ 1e-4).
pub const WRITE_BACK_PARITY_TOLERANCE: f64 = 1e-4;
/// For a float16/bfloat16 model, relative to the largest |logit|: onnxruntime computes in half precision, tch in
/// float32 (half precision keeps 8–11 significant bits).
pub const HALF_PRECISION_PARITY: f64 = 2e-2;
/// For a quantized model, relative to the largest |logit|: both engines compute the same integers, but a value
/// that lands within float32 rounding of a quantization step's midpoint may round the other way in one of them.
pub const QUANTIZED_PARITY: f64 = 2e-2;

/// The largest |logit| difference accepted between tch's `logits` and onnxruntime on the same file, by form.
pub fn parity_tolerance(form: &crate::onnx::GraphForm, logits: &tch::Tensor) -> f64 {
    let scale = || {
        logits
            .f_abs()
            .and_then(|a| a.f_max())
            .and_then(|m| m.f_double_value(&[]))
            .unwrap_or(1.0)
            .max(1.0)
    };
    if form.quantization.is_some() {
        QUANTIZED_PARITY * scale()
    } else if form.half_precision() {
        HALF_PRECISION_PARITY * scale()
    } else {
        WRITE_BACK_PARITY_TOLERANCE
    }
}

/// What to add to a parity failure on `form`: for a quantized model on an x86 CPU without VNNI, that onnxruntime's
/// uint8 x int8 kernels (vpmaddubsw) saturate each pair of products to int16 unless the weights have 7 bits, so
/// onnxruntime, not robustd's exact integer arithmetic, may be the side that is off. Empty otherwise.
pub fn parity_hint(form: &crate::onnx::GraphForm) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let without_vnni =
        !(std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni"));
    #[cfg(not(target_arch = "x86_64"))]
    let without_vnni = false;
    if form.quantization.is_some() && without_vnni {
        " (this CPU has no VNNI: onnxruntime's uint8 x int8 kernels then saturate pairs of products to int16, \
         which weights quantized with 8 bits can overflow; quantizing with reduce_range=True avoids it)"
    } else {
        ""
    }
}

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("evaluation: {0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("training: {0}")]
    Train(#[from] crate::train::TrainError),
    #[error("memorization: {0}")]
    Memo(#[from] crate::memo::MemoError),
    #[error(transparent)]
    Write(#[from] crate::durable::WriteError),
    #[error("plot: {0}")]
    Plot(#[from] crate::report::plots::PlotError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{model}: {message}")]
    Mismatch { model: PathBuf, message: String },
    #[error(
        "{model}: the written-back model disagrees with the trained weights: max |logit diff| {diff:.3e} > {tolerance:.0e} \
         between tch and onnxruntime{hint}"
    )]
    Parity {
        model: PathBuf,
        diff: f64,
        tolerance: f64,
        /// [`parity_hint`]'s note, or empty.
        hint: &'static str,
    },
}
