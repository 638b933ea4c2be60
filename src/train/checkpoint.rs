//! Training checkpoints: written after every epoch (and when a run is cancelled mid-epoch), read back to resume.
//!
//! A checkpoint directory holds `checkpoint.yaml` (position, counters, best-so-far, the epoch records, and a
//! fingerprint of everything that determines the run) and one `state-<epoch>-<batch>.safetensors` with the
//! tensors: `model/<name>` (every state tensor of the model), `optim/<i>.<j>` (optimizer buffers) and
//! `best/<name>` (the best-so-far weights, when a validation split picks them). The tensor file is written (by
//! libtorch's safetensors writer, which only takes a path) under a fresh name, fsynced and renamed into place;
//! `checkpoint.yaml` is then replaced through [`crate::durable::write_atomic`] (temp file, fsync, rename, directory
//! fsync) and only that rename commits the checkpoint, so a crash at any point leaves the previous complete
//! checkpoint. Older tensor files are removed afterwards.
//!
//! There is no hidden random state to save: every draw (shuffle, augmentation, PGD starts, dropout) is derived
//! from `(seed, epoch, batch)`, so `seed` with the position is the RNG state.

use std::fs::{self, File};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::record::EpochRecord;
use super::TrainError;
use crate::durable::{create_dir_all, write_atomic};

/// Bumped whenever the layout changes; an older checkpoint is refused rather than misread.
pub const FORMAT: u32 = 1;
pub const META_FILE: &str = "checkpoint.yaml";

/// Per-epoch running sums, saved so that a mid-epoch resume reports the same epoch numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub samples: u64,
    pub loss_sum: f64,
    pub clean_correct: f64,
    pub clean_seen: u64,
    pub adv_correct: f64,
    pub adv_seen: u64,
    pub weight_sum: f64,
    pub weight_count: u64,
    pub weight_min: Option<f64>,
    pub weight_max: Option<f64>,
    pub weight_atypical_sum: f64,
    pub weight_atypical_count: f64,
    pub train_seconds: f64,
    pub last_lr: f64,
}

/// The best epoch so far by robust validation accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 1-based.
    pub epoch: usize,
    pub val_robust_acc: f64,
}

/// Everything in `checkpoint.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    /// Digest of the settings, data and parameter shapes; a resume with different ones is refused.
    pub fingerprint: String,
    /// The epoch to continue in (0-based) and the next batch in it.
    pub epoch: usize,
    pub batch: usize,
    pub optimizer_steps: u64,
    /// AMP loss scaler `(scale, good steps)`, when AMP is active.
    pub loss_scale: Option<(f64, u64)>,
    pub best: Option<Best>,
    /// Epochs since the best one (early stopping).
    pub stale_epochs: usize,
    pub records: Vec<EpochRecord>,
    pub sums: EpochSums,
    /// Wall time spent before this checkpoint.
    pub seconds: f64,
    /// The tensor file, relative to the directory.
    pub tensors: String,
}

/// What a checkpoint holds besides its metadata.
pub struct Saved {
    pub meta: Meta,
    pub model: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub best: Vec<(String, Tensor)>,
}

const MODEL: &str = "model/";
const OPTIM: &str = "optim/";
const BEST: &str = "best/";

/// Writes a checkpoint into `dir` (created if needed) and commits it.
pub fn save(
    dir: &Path,
    meta: &Meta,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    best: &[(String, Tensor)],
) -> Result<(), TrainError> {
    create_dir_all(dir)?;
    let mut named = Vec::with_capacity(model.len() + optimizer.len() + best.len());
    for (prefix, group) in [(MODEL, model), (OPTIM, optimizer), (BEST, best)] {
        for (name, t) in group {
            named.push((format!("{prefix}{name}"), host_copy(t)?));
        }
    }
    let tensors = dir.join(&meta.tensors);
    // A name of this writer's own: two writers of one directory (a worker that lost its lease racing the one that
    // took the job over, in the moment before it notices) never rename each other's file away.
    let partial = crate::durable::temp_sibling(&tensors);
    Tensor::write_safetensors(&named, &partial).map_err(|e| checkpoint_error(&partial, e))?;
    sync_file(&partial)?;
    fs::rename(&partial, &tensors).map_err(|e| TrainError::io(&tensors, e))?;
    let yaml = serde_norway::to_string(meta).map_err(|e| TrainError::Checkpoint {
        path: dir.join(META_FILE),
        message: e.to_string(),
    })?;
    // The directory fsync inside also makes the tensor file's rename above durable.
    write_atomic(&dir.join(META_FILE), yaml.as_bytes())?;
    remove_stale(dir, &meta.tensors);
    Ok(())
}

/// Reads the committed checkpoint in `dir`; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Saved>, TrainError> {
    let meta_path = dir.join(META_FILE);
    let text = match fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(&meta_path, e)),
    };
    let meta: Meta = serde_norway::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: meta_path.clone(),
        message: format!("unreadable: {e}"),
    })?;
    if meta.format != FORMAT {
        return Err(TrainError::Checkpoint {
            path: meta_path,
            message: format!(
                "format {} but this robustd reads format {FORMAT}; delete the directory to start over",
                meta.format
            ),
        });
    }
    let tensors_path = dir.join(&meta.tensors);
    let all =
        Tensor::read_safetensors(&tensors_path).map_err(|e| checkpoint_error(&tensors_path, e))?;
    let mut saved = Saved {
        meta,
        model: Vec::new(),
        optimizer: Vec::new(),
        best: Vec::new(),
    };
    for (name, t) in all {
        if let Some(n) = name.strip_prefix(MODEL) {
            saved.model.push((n.to_string(), t));
        } else if let Some(n) = name.strip_prefix(OPTIM) {
            saved.optimizer.push((n.to_string(), t));
        } else if let Some(n) = name.strip_prefix(BEST) {
            saved.best.push((n.to_string(), t));
        } else {
            return Err(TrainError::Checkpoint {
                path: tensors_path,
                message: format!("unexpected tensor `{name}`"),
            });
        }
    }
    Ok(Some(saved))
}

/// The tensor file name for a position.
pub fn tensors_name(epoch: usize, batch: usize) -> String {
    format!("state-{epoch:04}-{batch:06}.safetensors")
}

/// A detached copy on the host (contiguous), safe to keep while the model trains on.
pub fn host_copy(t: &Tensor) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let mut out = Tensor::f_empty(t.size().as_slice(), (t.kind(), Device::Cpu))?;
    out.f_copy_(t)?;
    Ok(out)
}

fn sync_file(path: &Path) -> Result<(), TrainError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

/// Removes tensor files other than `keep` (leftovers of earlier checkpoints or of a crash mid-write).
fn remove_stale(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("state-") && name != keep {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old checkpoint file");
            }
        }
    }
}

fn checkpoint_error(path: &Path, e: tch::TchError) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
