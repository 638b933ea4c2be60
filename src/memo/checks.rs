//! The estimators' self-checks: whether a run's scores can be trusted, written into every report next to them.
//!
//! - Feldman–Zhang needs subset models that **fit their own subsets**: one that classifies fewer than
//!   [`MIN_FIT`] of the samples it trained on cannot have memorized the atypical ones, and `mem(i)` is then noise.
//! - Learning-speed needs a model that **learned something**: one that stays near chance ranks nothing.
//! - Holdout needs half models that **generalize**: near-chance held-out accuracy ranks nothing either.
//! - Every estimator that splits its evidence in two (the subset models in halves, the learning-speed epochs by
//!   parity) must **agree with itself** where it matters: the two halves' top deciles (the samples that get
//!   flagged) must share at least [`MIN_TOP_DECILE_AGREEMENT`] (chance: 0.1). Spearman's ρ over all samples is
//!   reported beside it but not held to a bar: most samples are typical with near-equal scores, whose order is
//!   noise even when the atypical ones are found reliably (measured: ρ 0.18 with 94 % of flipped labels found).
//!
//! A failed check makes the scores `reliable: false` and adds a warning saying what to change; the pipeline
//! copies the warnings into the report's summary.

use super::estimator::ModelFit;
use super::scores::{spearman, top_decile_overlap};
use crate::config::Estimator;
use crate::report::SelfCheck;

/// Least in-subset accuracy of a Feldman–Zhang subset model whose scores count as reliable.
pub const MIN_FIT: f64 = 0.95;
/// Least share of one half's top decile in the other's for reliable scores (three times chance).
pub const MIN_TOP_DECILE_AGREEMENT: f64 = 0.3;
/// Accuracy below this multiple of chance counts as having learned nothing.
const LEARNED: f64 = 2.0;

/// What a run offers for its checks.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    pub estimator: Estimator,
    pub fits: &'a [ModelFit],
    /// The two halves of the evidence: their scores where both define one, and which halves they are; `None`
    /// when the evidence does not split (holdout, an odd K or K = 2, one epoch).
    pub split_half: Option<(Vec<f64>, Vec<f64>, String)>,
    /// Learning-speed: epochs whose passes the scores count.
    pub epochs_counted: Option<usize>,
    pub mean_standard_error: Option<f64>,
    /// Classes of the task (chance = 1 / classes).
    pub classes: usize,
    /// The epoch budget per model (`max_epochs` for Feldman–Zhang), for the hints.
    pub max_epochs: usize,
}

/// The self-check of a run.
pub fn self_check(e: &Evidence) -> SelfCheck {
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let in_subset_acc = mean(e.fits.iter().map(|f| f.in_subset_acc).collect());
    let in_subset_acc_min = e
        .fits
        .iter()
        .map(|f| f.in_subset_acc)
        .min_by(f64::total_cmp);
    let held_out_acc = mean(e.fits.iter().filter_map(|f| f.out_of_subset_acc).collect());
    let test_acc = mean(e.fits.iter().filter_map(|f| f.test_acc).collect());
    let epochs = e.fits.iter().map(|f| f.epochs as u64);
    let epochs_run = match (epochs.clone().min(), epochs.max()) {
        (Some(lo), Some(hi)) if lo == hi => vec![lo],
        (Some(lo), Some(hi)) => vec![lo, hi],
        _ => Vec::new(),
    };
    let chance = 1.0 / e.classes.max(1) as f64;
    let pct = |v: f64| format!("{:.1} %", 100.0 * v);
    let mut warnings = Vec::new();
    match e.estimator {
        Estimator::FeldmanZhang => {
            if let Some(least) = in_subset_acc_min.filter(|&a| a < MIN_FIT) {
                warnings.push(format!(
                    "scores unreliable: a Feldman-Zhang subset model fits only {} of its own subset (below {}), \
                     so it cannot have memorized the atypical samples; raise memorization.max_epochs (now {}) \
                     or memorization.lr, or use memorization.estimator: learning-speed",
                    pct(least),
                    pct(MIN_FIT),
                    e.max_epochs
                ));
            }
        }
        Estimator::LearningSpeed => {
            if let Some(acc) = in_subset_acc.filter(|&a| a < LEARNED * chance) {
                warnings.push(format!(
                    "scores unreliable: the learning-speed model classifies only {} of the scored samples after \
                     training (chance {}); check memorization.lr or raise memorization.epochs (now {})",
                    pct(acc),
                    pct(chance),
                    e.max_epochs
                ));
            }
        }
        Estimator::Holdout => {
            if let Some(acc) = held_out_acc.filter(|&a| a < LEARNED * chance) {
                warnings.push(format!(
                    "scores unreliable: the half models classify only {} of the samples they never saw \
                     (chance {}); check memorization.lr or raise memorization.epochs (now {})",
                    pct(acc),
                    pct(chance),
                    e.max_epochs
                ));
            }
        }
        Estimator::Import => {}
    }
    let (rho, agreement) = match &e.split_half {
        Some((a, b, _)) => (spearman(a, b), top_decile_overlap(a, b)),
        None => (None, None),
    };
    if let Some((_, _, halves)) = &e.split_half {
        match agreement {
            Some(share) if share < MIN_TOP_DECILE_AGREEMENT => warnings.push(format!(
                "scores unreliable: {halves} agree on only {} of their top deciles (chance 10 %, wanted {}); \
                 give the estimator more models or epochs",
                pct(share),
                pct(MIN_TOP_DECILE_AGREEMENT)
            )),
            None => warnings.push(format!(
                "scores unreliable: {halves} leave too few samples scored by both to compare"
            )),
            _ => {}
        }
    }
    SelfCheck {
        reliable: warnings.is_empty(),
        in_subset_acc,
        in_subset_acc_min,
        held_out_acc,
        test_acc,
        epochs_run,
        epochs_counted: e.epochs_counted.map(|n| n as u64),
        split_half_spearman: rho,
        split_half_top_decile: agreement,
        split_half: e.split_half.as_ref().map(|(_, _, h)| h.clone()),
        mean_standard_error: e.mean_standard_error,
        warnings,
    }
}
