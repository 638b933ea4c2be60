//! Trust checks: signs that the robustness numbers may not mean what they say (after AutoAttack's `checks.py`).
//!
//! - the model outputs probabilities instead of logits (every row non-negative, at most 1, summing to 1);
//! - the input gradient of the margin loss is zero or not finite on a share of samples (gradient masking);
//! - two forward passes on the same input differ (randomness: the attacks optimized a moving target);
//! - the score-based Square attack broke samples every gradient attack failed on (likely masking);
//! - robust accuracy increases with eps somewhere on the curve (an attack that fails on a larger ball).
//!
//! Each check returns a [`TrustWarning`] when it fires; thresholds are in [`TrustThresholds`].

use std::fmt;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::EvalError;
use crate::attack::{losses, pgd};
use crate::model::{Classifier, Scorer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    Probabilities,
    MaskedGradients,
    Nondeterministic,
    SquareOnly,
    NonMonotone,
}

/// One fired check, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustWarning {
    pub kind: WarningKind,
    pub message: String,
}

impl fmt::Display for TrustWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// When each check fires.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustThresholds {
    /// Slack of the probability test (AutoAttack: 1e-5; a little looser for float32 sums over many classes).
    pub probability_tolerance: f64,
    /// Share of samples with an all-zero or non-finite input gradient above which masking is reported.
    pub masked_gradient_share: f64,
    /// Largest difference between two forward passes, relative to each row's L2 norm (AutoAttack: 1e-4).
    pub forward_tolerance: f64,
    /// Share of evaluated samples broken only by Square above which masking is reported (AutoAttack: 0.2 %).
    pub square_only_share: f64,
    /// Increase of robust accuracy between a smaller and a larger eps that is tolerated.
    pub monotone_tolerance: f64,
}

impl Default for TrustThresholds {
    fn default() -> Self {
        Self {
            probability_tolerance: 1e-4,
            masked_gradient_share: 0.01,
            forward_tolerance: 1e-4,
            square_only_share: 0.002,
            monotone_tolerance: 0.002,
        }
    }
}

/// Fires when every output row looks like a probability distribution.
pub fn probabilities(logits: &Tensor, tol: f64) -> Result<Option<TrustWarning>, EvalError> {
    if logits.numel() == 0 {
        return Ok(None);
    }
    let max = logits.f_max()?.f_double_value(&[])?;
    let min = logits.f_min()?.f_double_value(&[])?;
    let sums = logits.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?;
    let worst_sum = sums
        .f_sub_scalar(1.0)?
        .f_abs()?
        .f_max()?
        .f_double_value(&[])?;
    Ok((max <= 1.0 + tol && min >= -tol && worst_sum <= tol).then(|| TrustWarning {
        kind: WarningKind::Probabilities,
        message: format!(
            "the model's outputs look like probabilities (all in [0,1], rows sum to 1 within {worst_sum:.1e}), \
             not logits: export the model without its final softmax, or attack results understate the threat"
        ),
    }))
}

/// Samples of a batch whose margin-loss input gradient is all zero, or has a non-finite entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masked {
    pub zero: usize,
    pub not_finite: usize,
}

/// The clean pass of the protocol on one batch: tch's logits (CPU float32) and, from the same forward + backward
/// pass, the count of samples whose margin-loss input gradient is all zero or not finite.
pub fn clean_pass(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Tensor, Masked), EvalError> {
    let (x, y) = pgd::on_model_device(model, x, y)?;
    let at = pgd::loss_and_input_grad(model, &x, &y, &losses::cw_margin)?;
    let logits = at
        .logits
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    Ok((logits, masked_count(&at.grad)?))
}

/// Counts samples whose input gradient (`[N, …]`) is all zero or has a non-finite entry.
pub fn masked_count(grad: &Tensor) -> Result<Masked, EvalError> {
    let grad = grad.f_flatten(1, -1)?;
    let zero = grad.f_abs()?.f_amax([1i64].as_slice(), false)?.f_eq(0.0)?;
    let not_finite = grad
        .f_isfinite()?
        .f_logical_not()?
        .f_any_dims([1i64].as_slice(), false)?;
    let count = |t: &Tensor| -> Result<usize, EvalError> {
        Ok(t.f_sum(Kind::Int64)?.f_int64_value(&[])? as usize)
    };
    Ok(Masked {
        zero: count(&zero)?,
        not_finite: count(&not_finite)?,
    })
}

pub fn masked_gradients(
    zero: usize,
    not_finite: usize,
    samples: usize,
    share: f64,
) -> Option<TrustWarning> {
    let bad = zero + not_finite;
    (samples > 0 && bad as f64 / samples as f64 > share).then(|| TrustWarning {
        kind: WarningKind::MaskedGradients,
        message: format!(
            "input gradients are zero on {zero} and not finite on {not_finite} of {samples} samples: gradient \
             masking (e.g. quantization, argmax, saturated activations) makes gradient attacks unreliable here"
        ),
    })
}

/// Outputs on a probe batch from a pass made before (the protocol's clean pass), to compare a second pass with.
#[derive(Clone, Copy)]
pub struct FirstPass<'a> {
    /// tch's logits, when there is a model and it already ran on the probe.
    pub tch: Option<&'a Tensor>,
    pub scorer: &'a Tensor,
}

/// Runs the model (when there is one) and the scorer on `x` once more than `first` and fires when either changes
/// its output (a model without a first pass runs twice).
pub fn nondeterminism(
    model: Option<&dyn Classifier>,
    scorer: &mut dyn Scorer,
    x: &Tensor,
    first: FirstPass<'_>,
    tol: f64,
) -> Result<Option<TrustWarning>, EvalError> {
    let mut pairs = Vec::new();
    if let Some(model) = model {
        let x_model = x.f_to_device(model.device())?;
        let forward =
            || -> Result<Tensor, EvalError> { Ok(tch::no_grad(|| model.forward(&x_model))?) };
        let earlier = match first.tch {
            Some(t) => t.shallow_clone(),
            None => forward()?,
        };
        pairs.push(("tch", (earlier, forward()?)));
    }
    pairs.push((
        "onnxruntime",
        (first.scorer.shallow_clone(), scorer.logits(x)?),
    ));
    let mut moving = Vec::new();
    for (name, (a, b)) in pairs {
        let diff = relative_row_difference(&a, &b)?;
        if diff > tol {
            moving.push(format!("{name} (relative difference {diff:.1e})"));
        }
    }
    Ok((!moving.is_empty()).then(|| TrustWarning {
        kind: WarningKind::Nondeterministic,
        message: format!(
            "two forward passes on the same input differ in {}: the model is randomized (dropout, noise, \
             stochastic layers); attacks on a moving target overstate robustness — use an expectation-over-\
             transformation attack",
            moving.join(" and ")
        ),
    }))
}

/// Largest `‖a_i − b_i‖ / ‖a_i‖` over rows.
fn relative_row_difference(a: &Tensor, b: &Tensor) -> Result<f64, EvalError> {
    let a = a.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Double)?;
    let b = b.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Double)?;
    let dims = [1i64].as_slice();
    let diff = a.f_sub(&b)?.f_norm_scalaropt_dim(2.0, dims, false)?;
    let scale = a
        .f_norm_scalaropt_dim(2.0, dims, false)?
        .f_add_scalar(1e-10)?;
    Ok(diff.f_div(&scale)?.f_max()?.f_double_value(&[])?)
}

pub fn square_only(broken: usize, samples: usize, share: f64) -> Option<TrustWarning> {
    (samples > 0 && broken as f64 / samples as f64 > share).then(|| TrustWarning {
        kind: WarningKind::SquareOnly,
        message: format!(
            "square succeeded where all gradient attacks failed on {broken} of {samples} samples: the gradients \
             are likely masked, so the gradient attacks' numbers overstate robustness"
        ),
    })
}

/// Fires when robust accuracy at a larger eps exceeds the lowest accuracy at any smaller eps.
pub fn non_monotone(curve: &[(f64, f64)], tol: f64) -> Option<TrustWarning> {
    let mut sorted = curve.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lowest: Option<(f64, f64)> = None;
    let mut breaks = Vec::new();
    for &(eps, acc) in &sorted {
        if let Some((low_eps, low_acc)) = lowest {
            if acc > low_acc + tol {
                breaks.push(format!(
                    "{acc:.3} at eps {eps} > {low_acc:.3} at eps {low_eps}"
                ));
            }
        }
        if lowest.is_none_or(|(_, low)| acc < low) {
            lowest = Some((eps, acc));
        }
    }
    (!breaks.is_empty()).then(|| TrustWarning {
        kind: WarningKind::NonMonotone,
        message: format!(
            "robust accuracy is not monotone in eps ({}): the attack fails on larger balls that contain \
             smaller ones it succeeded on, a sign of gradient masking or a too small step budget",
            breaks.join("; ")
        ),
    })
}
