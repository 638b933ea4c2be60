//! The triage runner (`daemon.runner: triage`): a cheap job that only loads and checks a model, for a quick look
//! at what is dropped before paying for the full pipeline, and for exercising the daemon and its queue with many
//! quick, real jobs. It loads the model through onnxruntime, checks that it is an image classifier (one float input
//! of rank 2 or 4 with fixed non-batch dims, one `[batch, classes]` output), runs a real forward pass on a zero
//! batch and a seeded uniform batch, checks the logits are finite, measures forward throughput over
//! `dataset.eval_samples` seeded inputs (checkpointed: SIGTERM and restarts resume it), and reports the model with
//! verdict `evaluation-only`. No dataset is read and nothing is trained.

use std::path::Path;
use std::time::Instant;

use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use rand::{Rng, SeedableRng};
use thiserror::Error;

use super::stages;
use crate::config::Config;
use crate::job::{Job, JobContext, JobError, JobOutcome, JobRunner};
use crate::onnx::{ort_session, scan_model, ModelScan, SessionError};
use crate::report::{
    sha256_hex, Dim, FileRef, ForwardCheck, ModelInfo, Summary, SummaryArtifacts, TensorSpec,
    Verdict,
};

#[derive(Debug, Error)]
pub enum TriageError {
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

/// The triage runner.
#[derive(Debug, Default, Clone, Copy)]
pub struct TriageRunner;

impl JobRunner for TriageRunner {
    fn name(&self) -> &'static str {
        "triage"
    }

    fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, JobError> {
        let cfg = &ctx.config;
        ctx.progress.stage("load");
        let path = job.model_path();
        // The configured limits (bytes, nodes, tensor elements) hold before onnxruntime sees the file: its
        // constant folding allocates whatever a hostile graph asks for. Any other verdict is onnxruntime's.
        if let Err(e @ crate::onnx::OnnxError::Limit { .. }) =
            crate::onnx::OnnxModel::load_lenient(&path, &cfg.limits)
        {
            return Err(JobError::failed("load", e)
                .with_hint("the daemon's config `limits` sets what is accepted"));
        }
        let bytes = std::fs::read(&path)
            .map(bytes::Bytes::from)
            .map_err(|e| JobError::failed("load", e))?;
        // The scan only adds metadata (opset, parameters); onnxruntime is the judge of loadability.
        let scan = scan_model(bytes.clone()).ok();
        let mut session = open_session(&path, cfg)?;
        ctx.cancel.check()?;
        ctx.progress.stage("validate");
        let io = classifier_io(&session).map_err(|e| {
            JobError::failed("validate", e)
                .with_hint("robustd takes image classifiers: one float32 input [N,C,H,W] or [N,C*H*W], one [N,classes] output")
        })?;
        let sanity =
            sanity_check(&mut session, &io, cfg).map_err(|e| JobError::failed("validate", e))?;
        ctx.cancel.check()?;
        ctx.progress.stage("forward");
        let probe = throughput_probe(&mut session, &io, ctx)?;
        let forward = ForwardCheck {
            inputs: vec![
                "zeros".into(),
                "uniform[0,1) seeded by runtime.seed".into(),
                format!(
                    "{} seeded uniform[0,1) samples (dataset.eval_samples) for throughput",
                    probe.total
                ),
            ],
            batch: sanity.batch as u64,
            output_shape: sanity.output_shape,
            all_finite: true,
            max_abs_logit: sanity.max_abs_logit.max(probe.max_abs_logit),
            samples: 2 * sanity.batch as u64 + probe.total,
            samples_per_second: probe.samples_per_second,
            resumed_from_sample: probe.resumed_from,
            seconds: sanity.seconds + probe.seconds,
        };
        let model = model_info(job, &bytes, scan.as_ref(), &session, Some(forward));
        let summary = Summary {
            model: model.file.clone(),
            verdict: Verdict::EvaluationOnly,
            threat_model: stages::threat_model(cfg),
            before: None,
            after: None,
            atypical_share: None,
            scope: None,
            warnings: vec![
                "triage only: the model was loaded and checked, no dataset evaluation ran (runner `triage`)"
                    .into(),
            ],
            artifacts: SummaryArtifacts::default(),
        };
        Ok(JobOutcome::new(summary, model))
    }
}

/// An onnxruntime session for `path` with the configured thread count; load errors carry a hint.
fn open_session(path: &Path, cfg: &Config) -> Result<Session, JobError> {
    ort_session(path, cfg.runtime.ort_library.as_deref(), cfg.runtime.threads).map_err(|e| {
        let hint = match e {
            SessionError::Runtime(_) => "run `make setup`, or set runtime.ort_library",
            SessionError::Load { .. } => "check that the file is a complete ONNX model (and its .onnx.data companion, if it has one) that onnxruntime 1.31 loads",
        };
        JobError::failed("load", e).with_hint(hint)
    })
}

/// The classifier's input and output as the checks found them.
#[derive(Debug, Clone, PartialEq)]
struct ClassifierIo {
    pub input: String,
    /// `-1` for a dynamic dimension (only the batch may be dynamic).
    pub input_shape: Vec<i64>,
    pub output: String,
    /// Classes, when the output's second dimension is fixed.
    pub classes: Option<i64>,
}

/// Checks the session's signature is an image classifier's.
fn classifier_io(session: &Session) -> Result<ClassifierIo, TriageError> {
    let bad = |m: String| TriageError::NotClassifier(m);
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

/// What the two sanity batches showed.
#[derive(Debug, Clone, PartialEq)]
struct Sanity {
    pub batch: i64,
    pub output_shape: Vec<i64>,
    pub max_abs_logit: f64,
    pub seconds: f64,
}

/// Runs a zero batch and a seeded uniform-[0,1) batch through the model and checks `[batch, classes]` finite logits.
fn sanity_check(
    session: &mut Session,
    io: &ClassifierIo,
    cfg: &Config,
) -> Result<Sanity, TriageError> {
    let started = Instant::now();
    let shape = batch_shape(io, 2);
    let elements = checked_elements(&shape, cfg)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.runtime.seed);
    let uniform: Vec<f32> = (0..elements).map(|_| rng.random::<f32>()).collect();
    let mut out_shape = Vec::new();
    let mut max_abs = 0f64;
    for (label, data) in [("zeros", vec![0f32; elements]), ("uniform[0,1)", uniform)] {
        let (oshape, m) = forward(session, io, &shape, &data, label)?;
        out_shape = oshape;
        max_abs = max_abs.max(m);
    }
    Ok(Sanity {
        batch: shape[0],
        output_shape: out_shape,
        max_abs_logit: max_abs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The throughput probe's result.
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    pub total: u64,
    pub samples_per_second: f64,
    pub max_abs_logit: f64,
    pub resumed_from: Option<u64>,
    pub seconds: f64,
}

/// The probe's checkpoint (`triage.yaml` in the job's checkpoint directory).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ProbeCheckpoint {
    samples_done: u64,
    max_abs_logit: f64,
}

const PROBE_CHECKPOINT: &str = "triage.yaml";

/// Forwards `dataset.eval_samples` seeded uniform samples (batch `eval.batch_size`, 64 if automatic) to measure
/// throughput, reporting progress, checkpointing every half second and on cancellation, and resuming from the
/// checkpoint after a restart. Batch `b` is seeded by `(runtime.seed, b)`, so a resumed probe feeds exactly the
/// inputs an uninterrupted one would.
fn throughput_probe(
    session: &mut Session,
    io: &ClassifierIo,
    ctx: &JobContext,
) -> Result<Probe, JobError> {
    let cfg = &ctx.config;
    let fail = |e: TriageError| JobError::failed("forward", e);
    let total = if cfg.dataset.eval_samples == 0 {
        1000
    } else {
        cfg.dataset.eval_samples as u64
    };
    let batch = if io.input_shape[0] > 0 {
        io.input_shape[0]
    } else if cfg.eval.batch_size > 0 {
        cfg.eval.batch_size as i64
    } else {
        64
    };
    let shape = batch_shape(io, batch);
    let per_batch = checked_elements(&shape, cfg).map_err(fail)?;
    let checkpoint_path = ctx.checkpoint_dir.join(PROBE_CHECKPOINT);
    let resumed: Option<ProbeCheckpoint> = std::fs::read_to_string(&checkpoint_path)
        .ok()
        .and_then(|t| serde_norway::from_str(&t).ok());
    let mut state = resumed.clone().unwrap_or(ProbeCheckpoint {
        samples_done: 0,
        max_abs_logit: 0.0,
    });
    if let Some(r) = &resumed {
        tracing::info!(
            "resuming the throughput probe at sample {} of {total}",
            r.samples_done
        );
    }
    let save = |state: &ProbeCheckpoint| {
        crate::durable::write_yaml_atomic(&checkpoint_path, state)
            .map_err(|e| JobError::failed("checkpoint", e))
    };
    let started = Instant::now();
    let first = state.samples_done;
    let mut last_save = Instant::now();
    let mut data = vec![0f32; per_batch];
    while state.samples_done < total {
        if let Some(reason) = ctx.cancel.reason() {
            save(&state)?;
            return Err(JobError::Cancelled(reason));
        }
        let index = state.samples_done / batch as u64;
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(cfg.runtime.seed ^ index.rotate_left(32));
        data.iter_mut().for_each(|v| *v = rng.random::<f32>());
        let (_, max_abs) = forward(session, io, &shape, &data, "uniform[0,1)").map_err(fail)?;
        state.max_abs_logit = state.max_abs_logit.max(max_abs);
        state.samples_done = (state.samples_done + batch as u64).min(total);
        ctx.progress
            .fraction(state.samples_done as f64 / total as f64);
        if last_save.elapsed().as_millis() >= 500 {
            save(&state)?;
            last_save = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Probe {
        total,
        samples_per_second: (state.samples_done - first) as f64 / seconds.max(1e-9),
        max_abs_logit: state.max_abs_logit,
        resumed_from: resumed.map(|r| r.samples_done),
        seconds,
    })
}

fn batch_shape(io: &ClassifierIo, dynamic_batch: i64) -> Vec<i64> {
    let mut shape = io.input_shape.clone();
    if shape[0] <= 0 {
        shape[0] = dynamic_batch;
    }
    shape
}

fn checked_elements(shape: &[i64], cfg: &Config) -> Result<usize, TriageError> {
    match shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    {
        Some(n) if n <= cfg.limits.max_tensor_elements => Ok(n as usize),
        _ => Err(TriageError::NotClassifier(format!(
            "input {shape:?} exceeds limits.max_tensor_elements ({})",
            cfg.limits.max_tensor_elements
        ))),
    }
}

/// One forward pass; checks the logits' shape and finiteness; returns the shape and the largest |logit|.
fn forward(
    session: &mut Session,
    io: &ClassifierIo,
    shape: &[i64],
    data: &[f32],
    label: &'static str,
) -> Result<(Vec<i64>, f64), TriageError> {
    let tensor = TensorRef::from_array_view((shape.to_vec(), data))
        .map_err(|e| TriageError::Forward(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![io.input.as_str() => tensor])
        .map_err(|e| TriageError::Forward(e.to_string()))?;
    let (oshape, logits) = outputs[io.output.as_str()]
        .try_extract_tensor::<f32>()
        .map_err(|e| TriageError::Forward(e.to_string()))?;
    let out_shape = oshape.to_vec();
    if out_shape.len() != 2 || out_shape[0] != shape[0] || out_shape[1] < 2 {
        return Err(TriageError::NotClassifier(format!(
            "for input {shape:?} the output has shape {out_shape:?}, expected [{}, classes >= 2]",
            shape[0]
        )));
    }
    let bad = logits.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(TriageError::NonFinite {
            bad,
            total: logits.len(),
            input: label,
        });
    }
    Ok((
        out_shape,
        logits.iter().fold(0f64, |m, v| m.max(f64::from(v.abs()))),
    ))
}

/// The report's model section from the file, its scan, the session and the forward check.
fn model_info(
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
        form: None,
    }
}

/// Inputs or outputs as report entries; dynamic dims by their symbol (or `batch`/`dim<i>`).
fn tensor_specs(outlets: &[ort::value::Outlet]) -> Vec<TensorSpec> {
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
fn dtype_name(ty: TensorElementType) -> String {
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
