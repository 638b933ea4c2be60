//! What a training run reports: one [`EpochRecord`] per epoch (also the rows of the CSV training log) and the
//! [`TrainResult`] that becomes the report's `training:` block.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::config::Method;
use crate::durable::write_atomic;

/// One epoch's numbers. Accuracies are fractions in [0,1]; `None` = not measured (e.g. no validation split, or
/// no clean forward pass in PGD-AT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's samples.
    pub loss: f64,
    /// Validation accuracy on clean inputs.
    pub val_clean_acc: Option<f64>,
    /// Validation accuracy under PGD (`train.pgd` steps, the run's threat model).
    pub val_robust_acc: Option<f64>,
    /// Accuracy on the clean training batches, where the objective computed them (standard, TRADES).
    pub train_clean_acc: Option<f64>,
    /// Accuracy on the adversarial examples trained on (PGD-AT, TRADES, BAT).
    pub train_adv_acc: Option<f64>,
    /// BAT weights after normalization and clamping, over all samples of the epoch.
    pub weight_mean: Option<f64>,
    pub weight_min: Option<f64>,
    pub weight_max: Option<f64>,
    /// Mean BAT weight of the atypical samples (`None` when the epoch saw none).
    pub weight_atypical_mean: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// Training throughput (samples per second of training, validation excluded).
    pub samples_per_s: f64,
}

/// The optimizer as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerReport {
    pub name: String,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: String,
    pub warmup_epochs: usize,
}

/// The run as the report's `training:` block shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    pub method: Method,
    pub formula: String,
    /// Every constant the objective and its attack used (beta, lambda, w_min/w_max, threshold, eps, pgd_steps,
    /// step_size, …).
    pub constants: BTreeMap<String, f64>,
    pub optimizer: OptimizerReport,
    /// Epochs actually run (fewer than `epochs_planned` after early stopping).
    pub epochs: usize,
    pub epochs_planned: usize,
    /// The epoch whose weights the model holds at the end: best robust validation accuracy, or the last epoch
    /// without a validation split. 1-based; 0 when no epoch ran.
    pub best_epoch: usize,
    pub best_val_robust_acc: Option<f64>,
    pub early_stopped: bool,
    /// The run stopped because its training accuracy reached the fit target (memorization subset models).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reached_fit_target: bool,
    /// `[epoch, batch]` (0-based) a checkpoint resumed from.
    pub resumed_from: Option<[usize; 2]>,
    pub train_samples: usize,
    pub val_samples: usize,
    pub batch_size: usize,
    pub augmentation: String,
    /// Where the atypicality flags came from and how many samples are atypical.
    pub atypicality: Option<AtypicalitySummary>,
    pub device: String,
    pub amp: bool,
    pub channels_last: bool,
    /// The CSV training log, when one was written.
    pub log: Option<PathBuf>,
    /// Total wall time, including the time before a resume.
    pub seconds: f64,
    pub curves: Vec<EpochRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtypicalitySummary {
    pub source: String,
    pub atypical: usize,
    pub share: f64,
}

/// The CSV header of the training log.
pub const CSV_HEADER: &str =
    "epoch,loss,val_clean_acc,val_robust_acc,train_clean_acc,train_adv_acc,\
weight_mean,weight_min,weight_max,weight_atypical_mean,lr,seconds,samples_per_s";

/// The training log as CSV text (empty cells for unmeasured values).
pub fn to_csv(records: &[EpochRecord]) -> String {
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        let _ = writeln!(
            out,
            "{},{:.6},{},{},{},{},{},{},{},{},{:.6e},{:.3},{:.1}",
            r.epoch,
            r.loss,
            cell(r.val_clean_acc),
            cell(r.val_robust_acc),
            cell(r.train_clean_acc),
            cell(r.train_adv_acc),
            cell(r.weight_mean),
            cell(r.weight_min),
            cell(r.weight_max),
            cell(r.weight_atypical_mean),
            r.lr,
            r.seconds,
            r.samples_per_s
        );
    }
    out
}

/// Writes the whole log atomically (rewritten after every epoch, so it always matches the checkpoint).
pub fn write_csv(path: &Path, records: &[EpochRecord]) -> Result<(), TrainError> {
    Ok(write_atomic(path, to_csv(records).as_bytes())?)
}
