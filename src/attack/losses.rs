//! Per-sample attack objectives: each maps logits `[N, K]` and labels `[N]` (int64) to a loss `[N]` that the attack
//! *maximizes*. The projected-gradient core ([`super::pgd`]) and the trainers take any of them as a [`LossFn`].
//!
//! - [`cross_entropy`]: CE of the true label (PGD, APGD-CE, PGD-AT).
//! - [`cw_margin`]: `max_{k≠y} z_k − z_y` (Carlini–Wagner margin, unclamped).
//! - [`dlr`]: difference of logits ratio, `−(z_y − max_{k≠y} z_k) / (z_π1 − z_π3)` (Croce & Hein 2020), invariant
//!   to shifts and scaling of the logits; needs at least 3 classes.
//! - [`targeted_dlr`]: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)` towards target `t`; needs at least 4 classes.
//! - [`targeted_margin`]: `z_t − z_y` towards target `t` (FAB-T's objective; APGD-T's with fewer than 4 classes).
//! - [`kl_from_clean`]: `KL(p(x) ‖ p(x'))` against fixed clean logits (the TRADES inner maximization).
//!
//! `π` sorts the logits in decreasing order. All functions are differentiable in the logits. [`ranked_targets`]
//! picks the target classes of the targeted attacks as AutoAttack does.

use tch::{Kind, TchError, Tensor};

/// A per-sample objective to maximize: `(logits [N, K], labels [N]) -> loss [N]`.
pub type LossFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor, TchError> + 'a;

/// Keeps the DLR denominators away from zero, as in the reference implementation.
const DLR_EPS: f64 = 1e-12;

/// Cross-entropy of the true label, per sample.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    logits
        .f_log_softmax(1, Kind::Float)?
        .f_gather(1, &y.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?
        .f_neg()
}

/// The Carlini–Wagner margin `max_{k≠y} z_k − z_y` (positive = misclassified).
pub fn cw_margin(logits: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    let true_logit = logit_of(logits, y)?;
    max_other(logits, y)?.f_sub(&true_logit)
}

/// Difference of logits ratio (untargeted), Croce & Hein 2020, eq. (5).
pub fn dlr(logits: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    require_classes(logits, 3, "DLR")?;
    let (sorted, _) = logits.f_sort(1, true)?;
    let top1 = sorted.f_select(1, 0)?;
    let top3 = sorted.f_select(1, 2)?;
    let numerator = logit_of(logits, y)?.f_sub(&max_other(logits, y)?)?;
    numerator
        .f_div(&top1.f_sub(&top3)?.f_add_scalar(DLR_EPS)?)?
        .f_neg()
}

/// Targeted DLR towards `target` (`[N]`, int64), Croce & Hein 2020, eq. (6); returns the objective for the given
/// targets so it can be passed wherever a [`LossFn`] is expected.
pub fn targeted_dlr(target: Tensor) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor, TchError> {
    move |logits: &Tensor, y: &Tensor| {
        require_classes(logits, 4, "targeted DLR")?;
        let (sorted, _) = logits.f_sort(1, true)?;
        let top1 = sorted.f_select(1, 0)?;
        let mean34 = sorted
            .f_select(1, 2)?
            .f_add(&sorted.f_select(1, 3)?)?
            .f_mul_scalar(0.5)?;
        let numerator = logit_of(logits, y)?.f_sub(&logit_of(logits, &target)?)?;
        numerator
            .f_div(&top1.f_sub(&mean34)?.f_add_scalar(DLR_EPS)?)?
            .f_neg()
    }
}

/// `z_t − z_y` towards `target` (`[N]`, int64): positive once the target outscores the true class. The numerator
/// of [`targeted_dlr`] without its scale, so it works with any number of classes.
pub fn targeted_margin(target: Tensor) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor, TchError> {
    move |logits: &Tensor, y: &Tensor| logit_of(logits, &target)?.f_sub(&logit_of(logits, y)?)
}

/// AutoAttack's target classes (APGD-T and FAB-T): per row, the classes ranked 2nd, 3rd, …, `(count + 1)`-th by
/// the clean logits — for a correctly classified sample its `count` highest-scoring wrong classes — one tensor `[N]`
/// per rank, best first. At most `classes − 1` ranks exist.
pub fn ranked_targets(clean_logits: &Tensor, count: usize) -> Result<Vec<Tensor>, TchError> {
    let classes = clean_logits.size().get(1).copied().unwrap_or(0);
    let (_, ranked) = clean_logits.f_sort(1, true)?;
    let last = (count as i64).min(classes - 1);
    (1..=last).map(|rank| ranked.f_select(1, rank)).collect()
}

/// `KL(softmax(clean) ‖ softmax(logits))` per sample, with the clean logits fixed (detached): the TRADES inner
/// objective. The labels argument is ignored. Its gradient vanishes at the clean point (the KL minimum), so PGD on
/// it needs `random_start: true` (TRADES itself starts at `x + 0.001·N(0, 1)`), or it never moves.
pub fn kl_from_clean(
    clean_logits: &Tensor,
) -> Result<impl Fn(&Tensor, &Tensor) -> Result<Tensor, TchError>, TchError> {
    let clean_log_p = clean_logits.f_detach()?.f_log_softmax(1, Kind::Float)?;
    let clean_p = clean_log_p.f_exp()?;
    Ok(move |logits: &Tensor, _y: &Tensor| {
        let log_q = logits.f_log_softmax(1, Kind::Float)?;
        clean_p
            .f_mul(&clean_log_p.f_sub(&log_q)?)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
    })
}

/// `z_y` per sample.
pub fn logit_of(logits: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    logits
        .f_gather(1, &y.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)
}

/// `max_{k≠y} z_k` per sample.
pub fn max_other(logits: &Tensor, y: &Tensor) -> Result<Tensor, TchError> {
    let classes = logits.size().get(1).copied().unwrap_or(0);
    let is_true = y.f_one_hot(classes)?.f_to_kind(Kind::Bool)?;
    logits
        .f_masked_fill(&is_true, f64::NEG_INFINITY)?
        .f_amax([1i64].as_slice(), false)
}

fn require_classes(logits: &Tensor, min: i64, loss: &str) -> Result<(), TchError> {
    let classes = logits.size().get(1).copied().unwrap_or(0);
    if classes < min {
        return Err(TchError::Shape(format!(
            "the {loss} loss needs at least {min} classes, the model has {classes}"
        )));
    }
    Ok(())
}
