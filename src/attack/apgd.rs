//! Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
//! parameter-free attacks"): APGD-CE, APGD-DLR and the targeted APGD-T, on the building blocks of [`super::pgd`].
//!
//! Per sample: start at a random point on the boundary of the ball; initial step size η = 2ε; each iteration takes
//! a projected steepest-ascent step `z = P(x_k + η ∇)` and a momentum combination
//! `x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))` with α = 0.75 (α = 1 on the first step). At the
//! checkpoints `w_j = ⌈p_j N⌉`, `p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`, the step size
//! of a sample is halved, and it restarts from its best point, when
//! 1. the loss increased in at most ρ = 75 % of the steps since the last checkpoint, or
//! 2. its step size was not halved at the last checkpoint and its best loss has not improved since.
//!
//! The first oscillation window compares against the loss at the starting point (the reference code compares the
//! first step with an unset entry). Returned per sample: a misclassified iterate if one was found, else the
//! highest-loss iterate. Restarts and APGD-T's target classes run only on samples not yet fooled.
//!
//! With `eot > 1` every gradient is the mean over that many forward/backward passes (Expectation over
//! Transformation, AutoAttack's `eot_iter`, for randomized models). Few classes: DLR needs 3 classes and targeted
//! DLR 4; below that APGD-DLR runs on the margin `max_{k≠y} z_k − z_y` and APGD-T on `z_t − z_y` (the losses'
//! numerators, see [`ApgdLoss::adapted_for`]), and APGD-T has at most `classes − 1` targets.

use tch::{Kind, Tensor};

use super::losses::{self, LossFn};
use super::noise::{self, stream};
use super::pgd::{
    ascent_direction, expected_loss_and_input_grad, on_model_device, per_row, project,
    random_start, Start,
};
use super::AttackError;
use crate::config::Norm;
use crate::model::Classifier;

/// The objective APGD maximizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApgdLoss {
    /// Cross-entropy (APGD-CE).
    Ce,
    /// Difference of logits ratio (APGD-DLR); needs at least 3 classes.
    Dlr,
    /// Targeted DLR (APGD-T) towards each of the `targets` highest-ranked wrong classes of the clean input in turn;
    /// needs at least 4 classes.
    TargetedDlr { targets: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApgdParams {
    pub norm: Norm,
    pub eps: f64,
    /// Iterations per run (N in the paper; 100 in AutoAttack).
    pub steps: usize,
    /// Runs per sample (per target class for APGD-T); later runs only on samples not yet fooled.
    pub restarts: usize,
    pub seed: u64,
    pub loss: ApgdLoss,
    /// Forward/backward passes averaged per gradient (1: plain gradients).
    pub eot: usize,
    /// Momentum weight α.
    pub momentum: f64,
    /// Oscillation threshold ρ of condition 1.
    pub rho: f64,
}

impl ApgdParams {
    /// The published configuration: α = 0.75, ρ = 0.75, one restart, plain gradients.
    pub fn new(norm: Norm, eps: f64, steps: usize, loss: ApgdLoss, seed: u64) -> Self {
        Self {
            norm,
            eps,
            steps,
            restarts: 1,
            seed,
            loss,
            eot: 1,
            momentum: 0.75,
            rho: 0.75,
        }
    }
}

impl ApgdLoss {
    /// How a model with `classes` outputs changes this loss, in words for the report, or `None` when it runs as
    /// published.
    pub fn adapted_for(&self, classes: i64) -> Option<String> {
        match *self {
            ApgdLoss::Ce => None,
            ApgdLoss::Dlr if classes < 3 => Some(format!(
                "DLR needs at least 3 classes and the model has {classes}: ran on the margin max_{{k≠y}} z_k − z_y \
                 (DLR's numerator)"
            )),
            ApgdLoss::Dlr => None,
            ApgdLoss::TargetedDlr { targets } => {
                let mut notes = Vec::new();
                if targets as i64 > classes - 1 {
                    notes.push(format!(
                        "{} target classes instead of {targets} (a model with {classes} classes has {} wrong ones)",
                        classes - 1,
                        classes - 1
                    ));
                }
                if classes < 4 {
                    notes.push(format!(
                        "targeted DLR needs at least 4 classes and the model has {classes}: ran on the targeted \
                         margin z_t − z_y (its numerator)"
                    ));
                }
                (!notes.is_empty()).then(|| notes.join("; "))
            }
        }
    }
}

/// The checkpoint iterations `w_1 < w_2 < …` (< `steps`) at which step sizes may be halved.
pub fn checkpoints(steps: usize) -> Vec<usize> {
    let (first, shrink, min_gap) = schedule(steps);
    let mut out = Vec::new();
    let (mut at, mut gap) = (first, first);
    while at <= steps {
        out.push(at);
        gap = gap.saturating_sub(shrink).max(min_gap);
        at += gap;
    }
    out
}

/// (first checkpoint, gap decrease, minimum gap) in iterations: 0.22 N, 0.03 N, 0.06 N, each at least 1.
fn schedule(steps: usize) -> (usize, usize, usize) {
    let frac = |p: f64| ((p * steps as f64) as usize).max(1);
    (frac(0.22), frac(0.03), frac(0.06))
}

/// APGD on a batch; row `i`'s random start is drawn from key `rows[i]` (default: its row number).
pub fn apgd(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    rows: Option<&[u64]>,
    params: &ApgdParams,
) -> Result<Tensor, AttackError> {
    if !(params.eps.is_finite() && params.eps >= 0.0) {
        return Err(AttackError::Invalid {
            what: "eps",
            message: format!("{} is not a finite non-negative radius", params.eps),
        });
    }
    let (x, y) = on_model_device(model, x, y)?;
    let keys = noise::row_keys(rows, x.size()[0] as usize)?;
    let mut result = x.f_detach_copy()?;
    let mut fooled = Tensor::f_zeros([keys.len() as i64], (Kind::Bool, x.device()))?;

    // One objective per run family: the untargeted loss, or one targeted loss per ranked wrong class (targets
    // are kept for the whole batch and follow the rows still open).
    let classes = model.num_classes();
    let targets: Vec<Option<Tensor>> = match params.loss {
        ApgdLoss::Ce | ApgdLoss::Dlr => vec![None],
        ApgdLoss::TargetedDlr { targets } => {
            let clean = tch::no_grad(|| model.forward(&x))?;
            losses::ranked_targets(&clean, targets)?
                .into_iter()
                .map(Some)
                .collect()
        }
    };

    let mut run = 0u64;
    for target in &targets {
        for _ in 0..params.restarts.max(1) {
            let open = fooled.f_logical_not()?.f_nonzero()?.f_squeeze_dim(1)?;
            if open.size()[0] == 0 {
                return Ok(result);
            }
            let open_keys = select_keys(&keys, &open)?;
            let loss: Box<LossFn> = match (params.loss, target) {
                (ApgdLoss::Ce, _) => Box::new(losses::cross_entropy),
                (ApgdLoss::Dlr, _) if classes < 3 => Box::new(losses::cw_margin),
                (ApgdLoss::Dlr, _) | (ApgdLoss::TargetedDlr { .. }, None) => Box::new(losses::dlr),
                (ApgdLoss::TargetedDlr { .. }, Some(t)) if classes < 4 => {
                    Box::new(losses::targeted_margin(t.f_index_select(0, &open)?))
                }
                (ApgdLoss::TargetedDlr { .. }, Some(t)) => {
                    Box::new(losses::targeted_dlr(t.f_index_select(0, &open)?))
                }
            };
            let (adv, hit) = single_run(
                model,
                &x.f_index_select(0, &open)?,
                &y.f_index_select(0, &open)?,
                &open_keys,
                params,
                loss.as_ref(),
                stream::START + run,
            )?;
            result = result.f_index_copy(0, &open, &adv)?;
            fooled = fooled.f_index_copy(0, &open, &hit)?;
            run += 1;
        }
    }
    Ok(result)
}

fn select_keys(keys: &[u64], rows: &Tensor) -> Result<Vec<u64>, AttackError> {
    let idx = Vec::<i64>::try_from(&rows.f_to_device(tch::Device::Cpu)?)?;
    Ok(idx.iter().map(|&i| keys[i as usize]).collect())
}

/// One APGD run on all rows of `x`; returns the chosen iterates and which rows were fooled.
fn single_run(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    keys: &[u64],
    params: &ApgdParams,
    loss: &LossFn,
    stream: u64,
) -> Result<(Tensor, Tensor), AttackError> {
    let (norm, eps) = (params.norm, params.eps);
    let n = keys.len() as i64;
    let (first_checkpoint, shrink, min_gap) = schedule(params.steps);

    let mut x_adv = random_start(x, norm, eps, Start::Boundary, params.seed, stream, keys)?;
    let start = expected_loss_and_input_grad(model, &x_adv, y, loss, params.eot)?;
    let mut fooled = start.logits.f_argmax(1, false)?.f_ne_tensor(y)?;
    let mut x_best_adv = x_adv.f_detach_copy()?;
    let mut x_best = x_adv.f_detach_copy()?;
    let mut grad = start.grad;
    let mut grad_best = grad.f_detach_copy()?;
    let mut loss_best = start.loss.f_detach_copy()?;
    let mut history = vec![start.loss];
    let mut step = Tensor::f_full([n], 2.0 * eps, (Kind::Float, x.device()))?;
    let mut x_prev = x_adv.f_detach_copy()?;

    let mut window = first_checkpoint;
    let mut since_check = 0usize;
    let mut best_at_last_check = loss_best.f_detach_copy()?;
    let mut halved_at_last_check = Tensor::f_ones([n], (Kind::Bool, x.device()))?;

    for i in 0..params.steps {
        let direction = ascent_direction(&grad, norm)?;
        let z = project(
            &x_adv.f_add(&direction.f_mul(&per_row(&step, &direction)?)?)?,
            x,
            norm,
            eps,
        )?;
        let alpha = if i == 0 { 1.0 } else { params.momentum };
        let combined = x_adv
            .f_add(&z.f_sub(&x_adv)?.f_mul_scalar(alpha)?)?
            .f_add(&x_adv.f_sub(&x_prev)?.f_mul_scalar(1.0 - alpha)?)?;
        x_prev = x_adv;
        x_adv = project(&combined, x, norm, eps)?;

        let at = expected_loss_and_input_grad(model, &x_adv, y, loss, params.eot)?;
        let fooled_now = at.logits.f_argmax(1, false)?.f_ne_tensor(y)?;
        x_best_adv = x_adv.f_where_self(&per_row(&fooled_now, &x_adv)?, &x_best_adv)?;
        fooled = fooled.f_logical_or(&fooled_now)?;
        let improved = at.loss.f_gt_tensor(&loss_best)?;
        x_best = x_adv.f_where_self(&per_row(&improved, &x_adv)?, &x_best)?;
        grad_best = at
            .grad
            .f_where_self(&per_row(&improved, &at.grad)?, &grad_best)?;
        loss_best = at.loss.f_where_self(&improved, &loss_best)?;
        history.push(at.loss);
        grad = at.grad;

        since_check += 1;
        if since_check == window {
            let increases = count_increases(&history, window)?;
            let oscillating = increases.f_le(params.rho * window as f64)?;
            let stalled = halved_at_last_check
                .f_logical_not()?
                .f_logical_and(&best_at_last_check.f_ge_tensor(&loss_best)?)?;
            let halve = oscillating.f_logical_or(&stalled)?;
            step = step.f_mul_scalar(0.5)?.f_where_self(&halve, &step)?;
            x_adv = x_best.f_where_self(&per_row(&halve, &x_best)?, &x_adv)?;
            grad = grad_best.f_where_self(&per_row(&halve, &grad_best)?, &grad)?;
            halved_at_last_check = halve;
            best_at_last_check = loss_best.f_detach_copy()?;
            since_check = 0;
            window = window.saturating_sub(shrink).max(min_gap);
        }
    }
    let chosen = x_best_adv.f_where_self(&per_row(&fooled, &x_best_adv)?, &x_best)?;
    Ok((chosen, fooled))
}

/// Per sample, in how many of the last `window` steps the loss went up.
fn count_increases(history: &[Tensor], window: usize) -> Result<Tensor, AttackError> {
    let len = history.len();
    let mut count = history[len - 1].f_zeros_like()?;
    for j in (len - window)..len {
        let up = history[j]
            .f_gt_tensor(&history[j - 1])?
            .f_to_kind(Kind::Float)?;
        count = count.f_add(&up)?;
    }
    Ok(count)
}
