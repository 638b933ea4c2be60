//! `robustd infer MODEL.onnx --input x.npy --output logits.npy`: runs one batch through the tch interpreter or
//! onnxruntime, and with `--labels` writes the gradient of the mean cross-entropy with respect to the input. The
//! debugging tool for "this number looks wrong": the same file through both engines, outside any pipeline.
//! Inputs are the model's raw first input (its own layout and scale; no normalization is added).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use ndarray::ArrayD;
use tch::{Kind, Tensor};

use super::ConfigArg;
use crate::model::InputAdapter;
use crate::onnx::{Interpreter, OnnxModel, OrtScorer, TchOptions};
use crate::runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The trainable interpreter on libtorch (supports --labels/--grad-out).
    Tch,
    /// onnxruntime on the original file.
    Ort,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX file.
    pub model: PathBuf,
    /// float32 .npy holding the model's first input, exactly as the graph takes it.
    #[arg(long, value_name = "X.npy")]
    pub input: PathBuf,
    /// Where the first output (logits) is written, as float32 .npy.
    #[arg(long, value_name = "LOGITS.npy")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = Engine::Tch)]
    pub engine: Engine,
    /// int64 (or int32) .npy class labels, one per input row: enables --grad-out.
    #[arg(long, value_name = "Y.npy", requires = "grad_out")]
    pub labels: Option<PathBuf>,
    /// Where d(mean cross-entropy)/d(input) is written (float32 .npy); tch engine only.
    #[arg(long, value_name = "G.npy", requires = "labels")]
    pub grad_out: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    runtime::set_torch_threads(cfg.runtime.threads);
    let x = read_f32(&args.input)?;
    match args.engine {
        Engine::Ort => {
            if args.labels.is_some() {
                bail!("--labels/--grad-out need gradients: use --engine tch");
            }
            runtime::init_ort(cfg.runtime.ort_library.as_deref())?;
            let mut ort =
                OrtScorer::new(&args.model, InputAdapter::identity(), cfg.runtime.threads)?;
            let outputs = ort.run(&[x])?;
            write_f32(&args.output, first(&outputs, &args.model)?)?;
        }
        Engine::Tch => {
            let device = runtime::parse_device(&cfg.runtime.device)?;
            let model = OnnxModel::load(&args.model, &cfg.limits)?;
            let graph = Interpreter::new(&model, device, TchOptions::default())?;
            let x = x.to_device(device);
            match (&args.labels, &args.grad_out) {
                (Some(labels), Some(grad_out)) => {
                    let y = read_labels(labels)?.to_device(device);
                    let x = x.set_requires_grad(true);
                    let outputs = graph.run(&[x.shallow_clone()])?;
                    let logits = first(&outputs, &args.model)?;
                    let loss = logits
                        .f_log_softmax(-1, Kind::Float)
                        .and_then(|l| l.f_nll_loss(&y, None::<Tensor>, tch::Reduction::Mean, -100))
                        .context(
                            "cross-entropy: do the labels match the logits' batch and classes?",
                        )?;
                    let grads = Tensor::f_run_backward(&[loss], &[&x], false, false)?;
                    write_f32(&args.output, &logits.detach())?;
                    write_f32(grad_out, &grads[0])?;
                }
                _ => {
                    let _guard = tch::no_grad_guard();
                    let outputs = graph.run(&[x])?;
                    write_f32(&args.output, first(&outputs, &args.model)?)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn first<'a>(outputs: &'a [Tensor], model: &Path) -> anyhow::Result<&'a Tensor> {
    outputs
        .first()
        .with_context(|| format!("{}: the model produced no outputs", model.display()))
}

fn read_f32(path: &Path) -> anyhow::Result<Tensor> {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path)
        .with_context(|| format!("{}: expected a float32 .npy array", path.display()))?;
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let data: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::f_from_slice(&data)?.f_reshape(&shape)?)
}

fn read_labels(path: &Path) -> anyhow::Result<Tensor> {
    let values: Vec<i64> = match ndarray_npy::read_npy::<_, ArrayD<i64>>(path) {
        Ok(a) => a.iter().copied().collect(),
        Err(_) => ndarray_npy::read_npy::<_, ArrayD<i32>>(path)
            .with_context(|| {
                format!(
                    "{}: expected an int64 or int32 .npy array of labels",
                    path.display()
                )
            })?
            .iter()
            .map(|&v| i64::from(v))
            .collect(),
    };
    Ok(Tensor::f_from_slice(&values)?)
}

fn write_f32(path: &Path, t: &Tensor) -> anyhow::Result<()> {
    let t = t
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(&t.f_flatten(0, -1)?)?;
    let a = ArrayD::from_shape_vec(shape, data)?;
    ndarray_npy::write_npy(path, &a).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
