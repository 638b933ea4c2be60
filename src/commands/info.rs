//! `robustd info`: versions, devices, and where the native libraries and config came from.

use std::process::ExitCode;

use super::ConfigArg;
use crate::device::{self, DeviceId};
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
    let cuda_devices = tch::Cuda::device_count().max(0) as usize;
    println!("  devices    cpu ({})", device::model_name(DeviceId::Cpu));
    for i in 0..cuda_devices {
        let id = DeviceId::Cuda(i);
        let memory = device::cuda::memory_info(i)
            .map(|(free, total)| format!(", {:.1} of {:.1} GiB free", gib(free), gib(total)))
            .unwrap_or_default();
        println!("             {id} ({}{memory})", device::model_name(id));
    }
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
    let pool = match cfg
        .runtime
        .devices
        .resolve(&cfg.runtime.device, cuda_devices)
    {
        Ok(ids) => ids
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("none: {e}"),
    };
    println!(
        "daemon pool  {pool} (runtime.devices: {})",
        serde_norway::to_string(&cfg.runtime.devices)?.trim()
    );
    println!(
        "autocast     {}",
        if device::amp::autocast_available() {
            "bfloat16 available (eval.amp, train.amp on CUDA)"
        } else {
            "not available in this libtorch (float32 only)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
