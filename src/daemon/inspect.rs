//! The runner available today: `inspect` loads the model through onnxruntime, checks that it is an image
//! classifier (one float input of rank 2 or 4 with fixed non-batch dims, one `[batch, classes]` output), runs a
//! real forward pass on a zero batch and a seeded uniform batch, checks the logits are finite, and reports the
//! model with verdict `evaluation-only`. The full pipeline (evaluation → memorization → fine-tuning → evaluation)
//! replaces it behind the same [`JobRunner`] trait; its helpers (`open_session`, `classifier_io`, `tensor_specs`,
//! `forward_check`, `model_info`) are public for that pipeline to reuse.

use std::path::Path;
use std::time::Instant;

use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use rand::{Rng, SeedableRng};
use thiserror::Error;

use super::job::Job;
use super::onnx_scan::{scan_model, ModelScan};
use super::runner::{JobContext, JobError, JobOutcome, JobRunner};
use crate::config::{Config, Norm};
use crate::report::{
    sha256_hex, Dim, FileRef, ForwardCheck, ModelInfo, Summary, SummaryArtifacts, TensorSpec,
    ThreatModelInfo, Verdict,
};
use crate::runtime;

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("{path}: onnxruntime cannot load the model: {message}")]
    Load { path: String, message: String },
    #[error("not an image classifier: {0}")]
    NotClassifier(String),
    #[error("onnxruntime forward pass failed: {0}")]
    Forward(String),
    #[error(
        "the model returned {bad} non-finite logits (NaN/Inf) out of {total} on {input} input"
    )]
    NonFinite {
        bad: usize,
        total: usize,
        input: &'static str,
    },
}

/// The inspect-only runner.
#[derive(Debug, Default, Clone, Copy)]
pub struct InspectRunner;

impl JobRunner for InspectRunner {
    fn name(&self) -> &'static str {
        "inspect"
    }

    fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, JobError> {
        let cfg = &ctx.config;
        ctx.progress.stage("load");
        let path = job.model_path();
        let bytes = std::fs::read(&path).map_err(|e| JobError::failed("load", e))?;
        // The scan only adds metadata (opset, parameters); onnxruntime is the judge of loadability.
        let scan = scan_model(&bytes).ok();
        let mut session = open_session(&path, cfg)?;
        ctx.cancel.check()?;
        ctx.progress.stage("validate");
        let io = classifier_io(&session).map_err(|e| {
            JobError::failed("validate", e)
                .with_hint("robustd takes image classifiers: one float32 input [N,C,H,W] or [N,C*H*W], one [N,classes] output")
        })?;
        ctx.cancel.check()?;
        ctx.progress.stage("forward");
        let check =
            forward_check(&mut session, &io, cfg).map_err(|e| JobError::failed("forward", e))?;
        ctx.progress.fraction(1.0);
        let model = model_info(job, &bytes, scan.as_ref(), &session, Some(check));
        Ok(JobOutcome {
            summary: Summary {
                model: model.file.clone(),
                verdict: Verdict::EvaluationOnly,
                threat_model: threat_model(cfg),
                before: None,
                after: None,
                atypical_share: None,
                warnings: vec![
                    "inspection only: the model was loaded and checked, no dataset evaluation ran (runner `inspect`)"
                        .into(),
                ],
                artifacts: SummaryArtifacts::default(),
            },
            model,
            dataset: None,
            evaluation: None,
            memorization: None,
            training: None,
            fine_tuned_model: None,
            plots: Vec::new(),
            per_sample: None,
            training_log: None,
        })
    }
}

/// The summary's threat model from the config.
pub fn threat_model(cfg: &Config) -> ThreatModelInfo {
    ThreatModelInfo {
        norm: match cfg.threat.norm {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
        .into(),
        eps: cfg.threat.eps,
    }
}

/// An onnxruntime session for `path` with the configured thread count; load errors carry a hint.
pub fn open_session(path: &Path, cfg: &Config) -> Result<Session, JobError> {
    let (_, env) = runtime::ort_environment(cfg.runtime.ort_library.as_deref()).map_err(|e| {
        JobError::failed("load", e).with_hint("run `make setup`, or set runtime.ort_library")
    })?;
    let load_err = |message: String| {
        JobError::failed(
            "load",
            InspectError::Load {
                path: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                message,
            },
        )
        .with_hint("check that the file is a complete ONNX model (and its .onnx.data companion, if it has one) that onnxruntime 1.31 loads")
    };
    let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
    if cfg.runtime.threads > 0 {
        builder = builder
            .with_intra_threads(cfg.runtime.threads)
            .map_err(|e| load_err(e.to_string()))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))
}

/// The classifier's input and output as the checks found them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierIo {
    pub input: String,
    /// `-1` for a dynamic dimension (only the batch may be dynamic).
    pub input_shape: Vec<i64>,
    pub output: String,
    /// Classes, when the output's second dimension is fixed.
    pub classes: Option<i64>,
}

/// Checks the session's signature is an image classifier's.
pub fn classifier_io(session: &Session) -> Result<ClassifierIo, InspectError> {
    let bad = |m: String| InspectError::NotClassifier(m);
    let [input] = session.inputs() else {
        return Err(bad(format!(
            "{} inputs, expected exactly one",
            session.inputs().len()
        )));
    };
    let [output] = session.outputs() else {
        return Err(bad(format!(
            "{} outputs, expected exactly one",
            session.outputs().len()
        )));
    };
    let (ty, shape) = tensor_of(input.dtype())
        .ok_or_else(|| bad(format!("input `{}` is not a tensor", input.name())))?;
    if ty != TensorElementType::Float32 {
        return Err(bad(format!(
            "input `{}` is {}, expected float32",
            input.name(),
            dtype_name(ty)
        )));
    }
    if shape.len() != 2 && shape.len() != 4 {
        return Err(bad(format!(
            "input `{}` has rank {} ({:?}), expected 4 ([N,C,H,W] or [N,H,W,C]) or 2 (flattened images)",
            input.name(),
            shape.len(),
            shape
        )));
    }
    if let Some(i) = (1..shape.len()).find(|&i| shape[i] <= 0) {
        return Err(bad(format!(
            "input `{}` dimension {i} is dynamic ({:?}); robustd needs a fixed image size",
            input.name(),
            shape
        )));
    }
    let (oty, oshape) = tensor_of(output.dtype())
        .ok_or_else(|| bad(format!("output `{}` is not a tensor", output.name())))?;
    if oty != TensorElementType::Float32 {
        return Err(bad(format!(
            "output `{}` is {}, expected float32 logits",
            output.name(),
            dtype_name(oty)
        )));
    }
    if oshape.len() != 2 {
        return Err(bad(format!(
            "output `{}` has shape {:?}, expected [batch, classes]",
            output.name(),
            oshape
        )));
    }
    let classes = (oshape[1] > 0).then_some(oshape[1]);
    if classes.is_some_and(|c| c < 2) {
        return Err(bad(format!(
            "output `{}` has {:?} classes, expected at least 2",
            output.name(),
            classes
        )));
    }
    Ok(ClassifierIo {
        input: input.name().to_owned(),
        input_shape: shape.to_vec(),
        output: output.name().to_owned(),
        classes,
    })
}

/// Runs a zero batch and a seeded uniform-[0,1) batch through the model and checks `[batch, classes]` finite logits.
pub fn forward_check(
    session: &mut Session,
    io: &ClassifierIo,
    cfg: &Config,
) -> Result<ForwardCheck, InspectError> {
    let started = Instant::now();
    let mut shape = io.input_shape.clone();
    if shape[0] <= 0 {
        shape[0] = 2;
    }
    let batch = shape[0];
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let elements = match elements {
        Some(n) if n <= cfg.limits.max_tensor_elements => n as usize,
        _ => {
            return Err(InspectError::NotClassifier(format!(
                "input {shape:?} exceeds limits.max_tensor_elements ({})",
                cfg.limits.max_tensor_elements
            )))
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.runtime.seed);
    let uniform: Vec<f32> = (0..elements).map(|_| rng.random::<f32>()).collect();
    let mut out_shape = Vec::new();
    let mut max_abs = 0f64;
    for (label, data) in [("zeros", vec![0f32; elements]), ("uniform[0,1)", uniform)] {
        let tensor = TensorRef::from_array_view((shape.clone(), data.as_slice()))
            .map_err(|e| InspectError::Forward(e.to_string()))?;
        let outputs = session
            .run(ort::inputs![io.input.as_str() => tensor])
            .map_err(|e| InspectError::Forward(e.to_string()))?;
        let (oshape, logits) = outputs[io.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| InspectError::Forward(e.to_string()))?;
        out_shape = oshape.to_vec();
        if out_shape.len() != 2 || out_shape[0] != batch || out_shape[1] < 2 {
            return Err(InspectError::NotClassifier(format!(
                "for input {shape:?} the output has shape {out_shape:?}, expected [{batch}, classes >= 2]"
            )));
        }
        let bad = logits.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(InspectError::NonFinite {
                bad,
                total: logits.len(),
                input: label,
            });
        }
        max_abs = logits
            .iter()
            .fold(max_abs, |m, v| m.max(f64::from(v.abs())));
    }
    Ok(ForwardCheck {
        inputs: vec!["zeros".into(), "uniform[0,1) seeded by runtime.seed".into()],
        batch: batch as u64,
        output_shape: out_shape,
        all_finite: true,
        max_abs_logit: max_abs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report's model section from the file, its scan, the session and the forward check.
pub fn model_info(
    job: &Job,
    bytes: &[u8],
    scan: Option<&ModelScan>,
    session: &Session,
    forward: Option<ForwardCheck>,
) -> ModelInfo {
    let external_data = job
        .record
        .companions
        .iter()
        .filter_map(|c| {
            let data = std::fs::read(job.dir.join(c)).ok()?;
            Some(FileRef {
                path: c.clone(),
                sha256: sha256_hex(&data),
                bytes: Some(data.len() as u64),
            })
        })
        .collect();
    let classes = forward
        .as_ref()
        .and_then(|f| f.output_shape.get(1).copied())
        .map(|c| c as u64);
    ModelInfo {
        file: job.record.dropped_as.clone(),
        sha256: sha256_hex(bytes),
        opset: scan.and_then(|s| s.opset),
        ir_version: scan.and_then(|s| s.ir_version),
        producer: scan
            .and_then(|s| s.producer.clone())
            .filter(|p| !p.is_empty()),
        inputs: tensor_specs(session.inputs()),
        outputs: tensor_specs(session.outputs()),
        parameters: scan.map(|s| s.parameters),
        classes,
        external_data,
        forward_check: forward,
    }
}

/// Inputs or outputs as report entries; dynamic dims by their symbol (or `batch`/`dim<i>`).
pub fn tensor_specs(outlets: &[ort::value::Outlet]) -> Vec<TensorSpec> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => TensorSpec {
                name: o.name().to_owned(),
                shape: shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if d >= 0 {
                            Dim::Fixed(d)
                        } else {
                            match dimension_symbols.get(i).filter(|s| !s.is_empty()) {
                                Some(s) => Dim::Symbolic(s.clone()),
                                None if i == 0 => Dim::Symbolic("batch".into()),
                                None => Dim::Symbolic(format!("dim{i}")),
                            }
                        }
                    })
                    .collect(),
                dtype: dtype_name(*ty),
            },
            other => TensorSpec {
                name: o.name().to_owned(),
                shape: Vec::new(),
                dtype: format!("{other:?}"),
            },
        })
        .collect()
}

fn tensor_of(t: &ValueType) -> Option<(TensorElementType, &[i64])> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape)),
        _ => None,
    }
}

/// ONNX-style element type names (`float32`, `int64`, ...).
pub fn dtype_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Bfloat16 => "bfloat16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Bool => "bool".into(),
        other => other.to_string(),
    }
}
