//! Devices: `runtime.devices` ([`spec`]), the daemon's pool that leases them to jobs ([`pool`]), what the NVIDIA
//! driver says about a GPU ([`cuda`]), and mixed precision / memory-format helpers ([`amp`]).
//!
//! A job learns its device from its config: the daemon writes the leased device into the job record, and the
//! executor sets the job's `runtime.device` from it; everything below the job reads `runtime.device` as before.

pub mod amp;
pub mod cuda;
pub mod pool;
pub mod spec;

pub use pool::{DevicePool, Slot};
pub use spec::{DeviceId, DeviceSpecError, DevicesSpec};

/// What a report and `robustd info` call a device's hardware: the GPU's model name (`NVIDIA H200`), `unknown` when
/// the driver cannot say, or the CPU's model name from `/proc/cpuinfo` (`cpu` when unreadable).
pub fn model_name(id: DeviceId) -> String {
    match id {
        DeviceId::Cuda(i) => cuda::gpu_name(i).unwrap_or_else(|| "unknown".into()),
        DeviceId::Cpu => cpu_model().unwrap_or_else(|| "cpu".into()),
    }
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// The pool's devices on this host with their model names.
pub fn host_slots(ids: &[DeviceId]) -> Vec<Slot> {
    ids.iter()
        .map(|&id| Slot {
            id,
            model: model_name(id),
        })
        .collect()
}

/// The device a `runtime.device` value names (`auto` = the first CUDA device libtorch sees, else the CPU).
pub fn resolve_single(spec: &str) -> Result<DeviceId, DeviceSpecError> {
    match spec.trim() {
        "auto" if tch::Cuda::device_count() > 0 => Ok(DeviceId::Cuda(0)),
        "auto" => Ok(DeviceId::Cpu),
        other => DeviceId::parse(other),
    }
}
