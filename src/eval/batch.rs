//! Batch size for evaluation: fixed from the config, or the largest that fits the device's memory, probed once per
//! model structure and device and cached for the life of the process ([`batching`]).
//!
//! - **CPU**: the size measures what one attack step costs: after a warm-up, it resets the process' peak resident
//!   set (`/proc/self/clear_refs`), runs one forward + input-gradient pass on a probe batch, and reads the new peak
//!   (`VmHWM`). Per sample it then budgets that activation cost plus the attack's own copies of the input (clean,
//!   iterate, best iterates, gradients, momentum: [`ATTACK_COPIES`]). Half of `limits.job_memory_mb` goes to a
//!   batch; the rest is left for the model, the data and the scorer. Where the measurement is unavailable (not
//!   Linux), a conservative estimate of [`FALLBACK_ACTIVATION_FACTOR`] input sizes per sample is used and logged.
//! - **CUDA**: the batch is the largest for which one real attack step (forward + input gradient, with the attack's
//!   input copies held) succeeds, found by doubling and bisection ([`largest_fitting`]) up to the size the GPU's
//!   free memory ([`crate::device::cuda::memory_info`], less [`CUDA_HEADROOM`]) admits by the same per-sample
//!   estimate; an out-of-memory step means "does not fit".

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, OnceLock};

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
/// Share of a GPU's free memory an automatic batch may use (the rest: other jobs, the allocator's fragmentation).
pub const CUDA_HEADROOM: f64 = 0.2;

/// How the batch size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// The largest batch whose attack step fits half of this budget.
    Auto {
        memory_mb: u64,
    },
}

/// The batch size, and the most rows one gradient pass may hold (FAB's per-class gradients replicate each sample
/// once per class): with a fixed batch, the batch itself; automatic, what fits the memory budget, up to
/// [`MAX_ROWS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub size: usize,
    pub rows: usize,
}

/// Upper bound on the rows of one gradient pass.
pub const MAX_ROWS: usize = 16 * MAX_BATCH;

/// The batch size to use for `model` on inputs like `sample` (`[N, C, H, W]`, at least one row).
pub fn resolve(
    batch: BatchSize,
    model: &dyn Classifier,
    sample: &Tensor,
) -> Result<usize, EvalError> {
    Ok(batching(batch, model, sample)?.size)
}

/// [`resolve`] with the row budget of one gradient pass.
pub fn batching(
    batch: BatchSize,
    model: &dyn Classifier,
    sample: &Tensor,
) -> Result<Batching, EvalError> {
    let memory_mb = match batch {
        BatchSize::Fixed(n) => {
            return Ok(Batching {
                size: n.max(1),
                rows: n.max(1),
            })
        }
        BatchSize::Auto { memory_mb } => memory_mb,
    };
    let key = ProbeKey::new(model, sample, memory_mb);
    if let Some(&hit) = probe_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        tracing::debug!(
            size = hit.size,
            "automatic batch size (cached for this model structure and device)"
        );
        return Ok(hit);
    }
    let found = match model.device() {
        Device::Cuda(index) => probe_cuda(model, sample, index)?,
        _ => probe_cpu(model, sample, memory_mb)?,
    };
    probe_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, found);
    Ok(found)
}

/// What an automatic batch size is cached under: the model's structure (its parameters' shapes, input and class
/// count), the input's shape, the device and the CPU budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    structure: u64,
    device: String,
    memory_mb: u64,
}

impl ProbeKey {
    fn new(model: &dyn Classifier, sample: &Tensor, memory_mb: u64) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in model.trainable_parameters() {
            p.size().hash(&mut h);
        }
        model.input_chw().hash(&mut h);
        model.num_classes().hash(&mut h);
        sample.size().get(1..).hash(&mut h);
        Self {
            structure: h.finish(),
            device: format!("{:?}", model.device()),
            memory_mb,
        }
    }
}

fn probe_cache() -> &'static Mutex<HashMap<ProbeKey, Batching>> {
    static CACHE: OnceLock<Mutex<HashMap<ProbeKey, Batching>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The largest `n` in `1..=max` with `fits(n)`, for a `fits` that holds up to some size and fails above it:
/// doubling from `start` until a size fails (or `max` is reached), then bisection between the last size that fit
/// and the first that did not. 1 when even one does not fit (the attack then fails with the device's own error).
pub fn largest_fitting<E>(
    max: usize,
    start: usize,
    mut fits: impl FnMut(usize) -> Result<bool, E>,
) -> Result<usize, E> {
    let max = max.max(1);
    let mut n = start.clamp(1, max);
    let (mut good, mut bad) = (0usize, None);
    loop {
        if fits(n)? {
            good = n;
            if n == max {
                break;
            }
            n = (n * 2).min(max);
        } else {
            bad = Some(n);
            break;
        }
    }
    if let Some(mut hi) = bad {
        let mut lo = if good == 0 {
            // Below the start: bisect down from it.
            0
        } else {
            good
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        good = lo;
    }
    Ok(good.max(1))
}

/// The CPU's batch: the measured (or estimated) cost of a sample against half of `memory_mb`.
fn probe_cpu(
    model: &dyn Classifier,
    sample: &Tensor,
    memory_mb: u64,
) -> Result<Batching, EvalError> {
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
    let size = largest_fitting(MAX_BATCH, PROBE_ROWS as usize, |n| {
        Ok::<_, EvalError>(n as u64 * per_sample <= budget)
    })?;
    let rows = (budget / per_sample.max(1)) as usize;
    tracing::debug!(per_sample, memory_mb, size, "automatic batch size");
    Ok(Batching {
        size,
        rows: rows.clamp(size, MAX_ROWS),
    })
}

/// The GPU's batch: the largest attack step that runs, within what the free memory admits.
fn probe_cuda(
    model: &dyn Classifier,
    sample: &Tensor,
    index: usize,
) -> Result<Batching, EvalError> {
    let input_bytes = sample.size().iter().skip(1).product::<i64>().max(1) as u64 * 4;
    let free = crate::device::cuda::memory_info(index).map(|(free, _)| free);
    // The free memory bounds the search by the conservative per-sample estimate; the steps themselves decide.
    let cap = free.map_or(MAX_BATCH, |free| {
        let usable = (free as f64 * (1.0 - CUDA_HEADROOM)) as u64;
        let per_sample = input_bytes * (FALLBACK_ACTIVATION_FACTOR + ATTACK_COPIES);
        ((usable / per_sample.max(1)) as usize).max(PROBE_ROWS as usize)
    });
    let max = cap.min(MAX_BATCH);
    let device = model.device();
    let template = sample
        .f_narrow(0, 0, 1)?
        .f_to_kind(Kind::Float)?
        .f_to_device(device)?;
    let size = largest_fitting(max, PROBE_ROWS as usize, |n| {
        let step = || -> Result<(), EvalError> {
            let x = template
                .f_expand([n as i64, -1, -1, -1], false)?
                .f_contiguous()?;
            let copies: Vec<Tensor> = (0..ATTACK_COPIES)
                .map(|_| x.f_detach_copy())
                .collect::<Result<_, _>>()?;
            let labels = Tensor::f_zeros([n as i64], (Kind::Int64, device))?;
            pgd::loss_and_input_grad(model, &x, &labels, &losses::cw_margin)?;
            drop(copies);
            Ok(())
        };
        match step() {
            Ok(()) => Ok(true),
            Err(e) if is_out_of_memory(&e) => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    tracing::info!(device = ?device, free_bytes = ?free, size, "automatic batch size probed on the GPU");
    Ok(Batching {
        size,
        rows: size.saturating_mul(4).clamp(size, MAX_ROWS),
    })
}

/// Whether an error is the device running out of memory (libtorch's CUDA allocator message).
fn is_out_of_memory(e: &EvalError) -> bool {
    let text = e.to_string();
    text.contains("out of memory") || text.contains("OutOfMemory")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_fitting_finds_the_boundary() {
        for limit in [1usize, 2, 15, 16, 17, 100, 123, 1000, 1023, 1024, 5000] {
            let mut calls = 0;
            let n = largest_fitting(1024, 16, |n| {
                calls += 1;
                Ok::<_, ()>(n <= limit)
            })
            .unwrap();
            assert_eq!(n, limit.min(1024), "limit {limit}");
            assert!(calls <= 20, "limit {limit}: {calls} probes");
        }
        // Nothing fits: 1, and the attack then reports the device's error.
        assert_eq!(
            largest_fitting(1024, 16, |_| Ok::<_, ()>(false)).unwrap(),
            1
        );
        // Errors other than "does not fit" stop the search.
        assert_eq!(
            largest_fitting(64, 16, |n| if n > 16 { Err("boom") } else { Ok(true) }),
            Err("boom")
        );
    }
}
