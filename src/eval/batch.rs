//! Batch size for evaluation: fixed from the config, or the largest that fits the job's memory budget.
//!
//! The automatic size measures what one attack step costs: after a warm-up, it resets the process' peak resident
//! set (`/proc/self/clear_refs`), runs one forward + input-gradient pass on a probe batch, and reads the new peak
//! (`VmHWM`). Per sample it then budgets that activation cost plus the attack's own copies of the input (clean,
//! iterate, best iterates, gradients, momentum: [`ATTACK_COPIES`]). Half of `limits.job_memory_mb` goes to a batch;
//! the rest is left for the model, the data and the scorer. Where the measurement is unavailable (not Linux, or a
//! CUDA device whose memory the process' RSS does not show), a conservative estimate of [`FALLBACK_ACTIVATION_FACTOR`]
//! input sizes per sample is used and logged.

use tch::{Device, Kind, Tensor};

use super::EvalError;
use crate::attack::{losses, pgd};
use crate::model::Classifier;

/// Copies of one input an attack keeps per sample.
pub const ATTACK_COPIES: u64 = 12;
/// Activation memory assumed per sample, in input sizes, when it cannot be measured.
pub const FALLBACK_ACTIVATION_FACTOR: u64 = 256;
/// Upper bound on the batch size (larger batches stop paying off and delay progress reports).
pub const MAX_BATCH: usize = 1024;
const PROBE_ROWS: i64 = 16;

/// How the batch size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// The largest batch whose attack step fits half of this budget.
    Auto {
        memory_mb: u64,
    },
}

/// The batch size to use for `model` on inputs like `sample` (`[N, C, H, W]`, at least one row).
pub fn resolve(
    batch: BatchSize,
    model: &dyn Classifier,
    sample: &Tensor,
) -> Result<usize, EvalError> {
    let memory_mb = match batch {
        BatchSize::Fixed(n) => return Ok(n.max(1)),
        BatchSize::Auto { memory_mb } => memory_mb,
    };
    let input_bytes = sample.size().iter().skip(1).product::<i64>().max(1) as u64 * 4;
    let activation = match measure_activation_bytes(model, sample)? {
        Some(bytes) => bytes,
        None => {
            tracing::info!(
                device = ?model.device(),
                "peak memory not measurable here; assuming {FALLBACK_ACTIVATION_FACTOR} input sizes of activations per sample"
            );
            input_bytes * FALLBACK_ACTIVATION_FACTOR
        }
    };
    let per_sample = activation + input_bytes * ATTACK_COPIES;
    let budget = memory_mb.saturating_mul(1024 * 1024) / 2;
    let size = ((budget / per_sample.max(1)) as usize).clamp(1, MAX_BATCH);
    tracing::debug!(per_sample, memory_mb, size, "automatic batch size");
    Ok(size)
}

/// The batch size for a model only the scorer runs (no gradients, so no attack-step measurement): fixed, or the
/// conservative estimate of [`FALLBACK_ACTIVATION_FACTOR`] input sizes of activations per sample.
pub fn resolve_without_model(batch: BatchSize, sample: &Tensor) -> usize {
    match batch {
        BatchSize::Fixed(n) => n.max(1),
        BatchSize::Auto { memory_mb } => {
            let input_bytes = sample.size().iter().skip(1).product::<i64>().max(1) as u64 * 4;
            let per_sample = input_bytes * (FALLBACK_ACTIVATION_FACTOR + ATTACK_COPIES);
            ((memory_mb.saturating_mul(1024 * 1024) / 2 / per_sample) as usize).clamp(1, MAX_BATCH)
        }
    }
}

/// Peak activation bytes per sample of one forward + input-gradient pass, if the platform can tell.
fn measure_activation_bytes(
    model: &dyn Classifier,
    sample: &Tensor,
) -> Result<Option<u64>, EvalError> {
    if model.device() != Device::Cpu {
        return Ok(None);
    }
    let rows = sample.size().first().copied().unwrap_or(0).min(PROBE_ROWS);
    if rows == 0 {
        return Ok(None);
    }
    let probe = sample.f_narrow(0, 0, rows)?.f_to_kind(Kind::Float)?;
    let labels = Tensor::f_zeros([rows], (Kind::Int64, Device::Cpu))?;
    // Warm-up: one-time allocations (weight layouts, thread pools) are not per-sample costs.
    pgd::loss_and_input_grad(model, &probe, &labels, &losses::cw_margin)?;
    let Some(before) = resident_bytes("VmRSS") else {
        return Ok(None);
    };
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        return Ok(None);
    }
    pgd::loss_and_input_grad(model, &probe, &labels, &losses::cw_margin)?;
    let Some(peak) = resident_bytes("VmHWM") else {
        return Ok(None);
    };
    Ok(Some(peak.saturating_sub(before) / rows as u64))
}

/// A `kB` field of `/proc/self/status` in bytes.
fn resident_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}
