//! `comparison.yaml` (schema `robustd.comparison/v1`) and `comparison.md`: fine-tuning methods compared on the same
//! model under the same budget — one record per (method, seed) run, and per method the mean ± standard deviation
//! of clean and robust accuracy, epochs and time. Also the points of the clean-vs-robust trade-off plot.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::plots::TradeoffPoint;
use super::schema::{DatasetInfo, EnvironmentInfo, FileRef, ThreatModelInfo};
use crate::eval::result::OrderedMap;

/// The value of the `schema` key of every comparison file.
pub const COMPARISON_SCHEMA: &str = "robustd.comparison/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub schema: String,
    pub model: FileRef,
    pub threat_model: ThreatModelInfo,
    /// What every run got, identically.
    pub budget: Budget,
    /// Per method, in the order asked for.
    pub methods: Vec<MethodSummary>,
    /// The model as given, under the same evaluation.
    pub original: Scores,
    /// The flags shared by the methods that reweight atypical samples (computed once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atypicality: Option<SharedAtypicality>,
    pub runs: Vec<RunRecord>,
    /// Runs whose training collapsed to one class: stopped there, neither written back nor evaluated, and left
    /// out of their method's mean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collapsed: Vec<CollapsedRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetInfo>,
    pub environment: EnvironmentInfo,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Wall time of the whole comparison (seconds), atypicality and evaluations included.
    pub seconds: f64,
}

/// The settings every run shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub epochs: usize,
    pub batch_size: usize,
    pub train_samples: u64,
    pub val_samples: u64,
    pub eval_samples: u64,
    /// PGD crafting the training examples.
    pub train_pgd_steps: usize,
    pub train_pgd_step_size: f64,
    /// The evaluation's attacks (robust accuracy = worst case over them) and PGD steps.
    pub eval_attacks: Vec<String>,
    pub eval_pgd_steps: usize,
    pub optimizer: String,
    pub lr: f64,
    /// `runtime.seed` of each run (training and attack randomness).
    pub seeds: Vec<u64>,
}

/// Clean and worst-case robust accuracy of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    pub clean_acc: f64,
    pub robust_acc: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedAtypicality {
    /// Where the flags came from (`holdout`, `memorization`, a scores file).
    pub source: String,
    pub atypical_share: f64,
    pub seconds: f64,
}

/// One fine-tuning run: a fresh copy of the model, fine-tuned with `method` under `seed`, written back, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub method: String,
    pub seed: u64,
    pub clean_acc: f64,
    /// Worst case over the evaluation's attacks.
    pub robust_acc: f64,
    /// Robust accuracy after each attack, in the order run.
    pub attacks: OrderedMap<String, f64>,
    pub epochs: usize,
    pub best_epoch: usize,
    /// Training time (seconds), validation included.
    pub train_seconds: f64,
    /// The whole run: training, write-back and evaluation.
    pub seconds: f64,
    /// tch vs onnxruntime on the written-back file.
    pub parity_max_logit_diff: f64,
    /// Relative to the comparison's directory.
    pub fine_tuned_model: FileRef,
    pub training_log: String,
    pub per_sample: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A run stopped by the training loop's collapse detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollapsedRun {
    pub method: String,
    pub seed: u64,
    /// 1-based epoch the collapse was detected in.
    pub epoch: usize,
    /// What the loop saw and what to change.
    pub cause: String,
}

/// Mean and sample standard deviation (0 for a single value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                std: f64::NAN,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSummary {
    pub method: String,
    /// Runs that finished (collapsed ones not included).
    pub runs: usize,
    /// Runs whose training collapsed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub collapsed: usize,
    pub clean_acc: MeanStd,
    pub robust_acc: MeanStd,
    pub epochs: MeanStd,
    pub train_seconds: MeanStd,
    pub seconds: MeanStd,
}

impl MethodSummary {
    /// The summary of `method` over its runs in `runs` (and its collapsed ones).
    pub fn of(method: &str, runs: &[RunRecord], collapsed: &[CollapsedRun]) -> Self {
        let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.method == method).collect();
        let stat = |pick: fn(&RunRecord) -> f64| {
            MeanStd::of(&mine.iter().map(|r| pick(r)).collect::<Vec<_>>())
        };
        Self {
            method: method.to_owned(),
            runs: mine.len(),
            collapsed: collapsed.iter().filter(|c| c.method == method).count(),
            clean_acc: stat(|r| r.clean_acc),
            robust_acc: stat(|r| r.robust_acc),
            epochs: stat(|r| r.epochs as f64),
            train_seconds: stat(|r| r.train_seconds),
            seconds: stat(|r| r.seconds),
        }
    }
}

impl Comparison {
    /// The table as Markdown: one row per method (mean ± std over seeds), the original model first.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let b = &self.budget;
        let _ = writeln!(
            md,
            "# Fine-tuning methods compared on {}\n",
            self.model.path
        );
        let _ = writeln!(
            md,
            "Threat model {} eps {}; {} epochs, batch {}, {} training samples ({} for validation), PGD-{} \
             training examples; evaluation on {} test samples with {} (PGD-{}); seeds {:?}; {}, {} threads.\n",
            self.threat_model.norm,
            self.threat_model.eps,
            b.epochs,
            b.batch_size,
            b.train_samples,
            b.val_samples,
            b.train_pgd_steps,
            b.eval_samples,
            b.eval_attacks.join(" → "),
            b.eval_pgd_steps,
            b.seeds,
            self.environment.device,
            self.environment.threads,
        );
        let _ = writeln!(
            md,
            "| method | runs | clean acc | robust acc | epochs | train time (s) | run time (s) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        let pct = |m: &MeanStd| format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std);
        let secs = |m: &MeanStd| format!("{:.1} ± {:.1}", m.mean, m.std);
        let _ = writeln!(
            md,
            "| original | 1 | {:.2} | {:.2} | – | – | – |",
            100.0 * self.original.clean_acc,
            100.0 * self.original.robust_acc
        );
        for m in &self.methods {
            let runs = match m.collapsed {
                0 => m.runs.to_string(),
                c => format!("{} ({c} collapsed)", m.runs),
            };
            if m.runs == 0 {
                let _ = writeln!(md, "| {} | {runs} | – | – | – | – | – |", m.method);
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {runs} | {} | {} | {:.1} | {} | {} |",
                m.method,
                pct(&m.clean_acc),
                pct(&m.robust_acc),
                m.epochs.mean,
                secs(&m.train_seconds),
                secs(&m.seconds)
            );
        }
        let _ = writeln!(
            md,
            "\nAccuracies in percent, mean ± sample standard deviation over seeds; robust = worst case over the \
             evaluation's attacks, judged by onnxruntime on each written-back file."
        );
        if let Some(a) = &self.atypicality {
            let _ = writeln!(
                md,
                "Atypical training samples (shared by the BAT variants): {:.1} % from `{}`, computed once in \
                 {:.0} s.",
                100.0 * a.atypical_share,
                a.source,
                a.seconds
            );
        }
        for c in &self.collapsed {
            let _ = writeln!(
                md,
                "\n> {} seed {} collapsed at epoch {}: {}",
                c.method, c.seed, c.epoch, c.cause
            );
        }
        for w in &self.warnings {
            let _ = writeln!(md, "\n> warning: {w}");
        }
        md
    }

    /// One point per method (mean ± std) plus the original model, for the trade-off scatter.
    pub fn tradeoff_points(&self) -> Vec<TradeoffPoint> {
        let mut points = vec![TradeoffPoint {
            label: "original".into(),
            clean: self.original.clean_acc,
            clean_err: 0.0,
            robust: self.original.robust_acc,
            robust_err: 0.0,
        }];
        points.extend(
            self.methods
                .iter()
                .filter(|m| m.runs > 0)
                .map(|m| TradeoffPoint {
                    label: m.method.clone(),
                    clean: m.clean_acc.mean,
                    clean_err: m.clean_acc.std,
                    robust: m.robust_acc.mean,
                    robust_err: m.robust_acc.std,
                }),
        );
        points
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = MeanStd::of(&[0.5, 0.7, 0.6]);
        assert!((m.mean - 0.6).abs() < 1e-12);
        assert!((m.std - 0.1).abs() < 1e-12);
        assert_eq!(
            MeanStd::of(&[0.3]),
            MeanStd {
                mean: 0.3,
                std: 0.0
            }
        );
    }
}
