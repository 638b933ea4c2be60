//! `robustd inspect MODEL.onnx`: loads the model through onnxruntime and describes it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::ConfigArg;
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX file.
    pub model: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    let (_, env) = runtime::ort_environment(cfg.runtime.ort_library.as_deref())?;
    let session = ort::session::Session::builder(env)
        .and_then(|mut b| b.commit_from_file(&args.model))
        .with_context(|| {
            format!(
                "{}: onnxruntime cannot load the model",
                args.model.display()
            )
        })?;
    println!("model    {}", args.model.display());
    for input in session.inputs() {
        println!("input    {} {:?}", input.name(), input.dtype());
    }
    for output in session.outputs() {
        println!("output   {} {:?}", output.name(), output.dtype());
    }
    Ok(ExitCode::SUCCESS)
}
