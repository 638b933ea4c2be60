//! `robustd info`: versions, devices, and where the native libraries and config came from.

use std::process::ExitCode;

use super::ConfigArg;
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    println!("robustd      {}", env!("CARGO_PKG_VERSION"));
    println!(
        "libtorch     {} ({})",
        runtime::libtorch_version(),
        runtime::libtorch_dir().unwrap_or("unknown dir")
    );
    let cuda_devices = tch::Cuda::device_count();
    println!(
        "  devices    cpu{}",
        (0..cuda_devices)
            .map(|i| format!(", cuda:{i}"))
            .collect::<String>()
    );
    println!(
        "  cudnn      {}",
        if tch::Cuda::cudnn_is_available() {
            "available"
        } else {
            "not available"
        }
    );
    let ort_path = runtime::init_ort(cfg.runtime.ort_library.as_deref())?;
    println!(
        "onnxruntime  {} ({})",
        runtime::ort_version(),
        ort_path.display()
    );
    println!(
        "  CUDA EP    {}",
        if runtime::ort_has_cuda() {
            "available"
        } else {
            "not in this build (CPU provider)"
        }
    );
    match &args.config.config {
        Some(p) => println!("config       {}", p.display()),
        None => println!("config       built-in defaults (configs/default.yaml)"),
    }
    println!(
        "paths        watch={} models={} state={}",
        cfg.paths.watch.display(),
        cfg.paths.models.display(),
        cfg.paths.state.display()
    );
    println!(
        "device       {} (configured: {})",
        runtime::device_name(runtime::parse_device(&cfg.runtime.device)?),
        cfg.runtime.device
    );
    Ok(ExitCode::SUCCESS)
}
