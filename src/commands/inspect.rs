//! `robustd inspect MODEL.onnx`: loads the model through onnxruntime (proof that it runs) and through robustd's
//! own parser, and describes it: producer, IR version and opset, inputs/outputs with shapes and element types,
//! parameter count, external-data files, the structure hash, the shipped form (precision, quantization,
//! onnxruntime contrib ops) and what robustd can do with it: white-box evaluation and fine-tuning, or score-based
//! evaluation only when the training engine does not support every op.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::ConfigArg;
use crate::onnx::{ort_session, GraphForm, OnnxModel};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX file.
    pub model: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    let session = ort_session(
        &args.model,
        cfg.runtime.ort_library.as_deref(),
        cfg.runtime.threads,
    )
    .with_context(|| format!("inspecting {}", args.model.display()))?;
    let (model, unsupported) = OnnxModel::load_lenient(&args.model, &cfg.limits)?;
    let ort_inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    println!("model      {}", args.model.display());
    if !model.producer().is_empty() {
        println!("producer   {}", model.producer());
    }
    println!("ir         {}", model.ir_version());
    println!("opset      {}", model.opset());
    for input in model.inputs() {
        let note = if ort_inputs.contains(&input.name.as_str()) {
            ""
        } else {
            "  (not seen by onnxruntime)"
        };
        println!(
            "input      {} {} {}{note}",
            input.name,
            input.dtype_name(),
            input.shape_string()
        );
    }
    for output in model.outputs() {
        println!(
            "output     {} {} {}",
            output.name,
            output.dtype_name(),
            output.shape_string()
        );
    }
    println!("params     {}", model.parameter_count());
    println!("nodes      {}", model.nodes().len());
    if model.external_data_files().is_empty() {
        println!("external   none");
    }
    for file in model.external_data_files() {
        let dir = args.model.parent().unwrap_or(std::path::Path::new("."));
        let size = std::fs::metadata(dir.join(file))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("external   {file} ({size} bytes)");
    }
    println!("structure  {}", model.structure_hash());
    let form = GraphForm::of(&model);
    let quantized = form
        .quantization
        .map_or(String::new(), |q| format!(", {} quantized", q.name()));
    println!("form       {}{quantized}", form.precision_name());
    for (op, n) in &form.contrib_ops {
        println!(
            "contrib    {op} ({n} node{})",
            if *n == 1 { "" } else { "s" }
        );
    }
    match (unsupported, form.fine_tuning()) {
        (None, Ok(how)) => {
            println!("engine     supported (trainable with robustd)");
            println!("gradients  {}", form.gradients());
            println!("finetune   {how}");
        }
        (None, Err(refusal)) => {
            println!("engine     supported (evaluated white-box)");
            println!("gradients  {}", form.gradients());
            println!("finetune   {refusal}");
        }
        (Some(e), _) => println!("engine     score-based evaluation only (onnxruntime): {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
