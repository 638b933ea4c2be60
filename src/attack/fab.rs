//! FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast
//! adaptive boundary attack"), L∞ and L2, untargeted and targeted (FAB-T), as AutoAttack runs it.
//!
//! FAB looks for the *smallest* perturbation that changes the decision. Each iteration linearizes the model at the
//! current point `x_k`: for each candidate class `c` the boundary `z_c − z_y = 0` becomes the hyperplane
//! `(∇z_c − ∇z_y) · (z − x_k) + (z_c − z_y)(x_k) = 0`; it picks the closest one in the dual norm
//! (`|z_c − z_y| / ‖∇z_c − ∇z_y‖_*`) and projects both `x_k` and the clean `x` onto it inside the pixel box
//! ([`super::hyperplane`]): `x_{k+1} = (1−α)(x_k + η d_k) + α(x + η d_0)`, `α = min(‖d_k‖ / (‖d_k‖ + ‖d_0‖), α_max)`,
//! clipped to [0, 1]. Whenever `x_{k+1}` is misclassified it is kept if it is the closest so far, and the iterate is
//! pulled back towards `x` by `β` (`x + β(x_{k+1} − x)`). Constants: α_max = 0.1, η = 1.05, β = 0.9 (AutoAttack).
//!
//! - Untargeted FAB needs the gradient of every logit: [`super::pgd::logit_jacobian`] computes them in one batched
//!   pass (the reference runs one backward pass per class).
//! - FAB-T attacks each of the `targets` highest-ranked wrong classes of the clean input in turn
//!   ([`super::losses::ranked_targets`]), only on samples not yet broken; its hyperplane is the one of `z_t − z_y`,
//!   so it needs a single gradient per iteration.
//!
//! A sample counts as broken only when the smallest misclassified point found lies within `eps`; others keep their
//! clean input. Restart `r > 0` starts at a random point at distance `eps / 2` (AutoAttack's FAB restarts); restarts
//! and targets run only on samples not yet broken.

use tch::{Kind, Tensor};

use super::losses::{self, LossFn};
use super::noise::{self, stream};
use super::pgd::{
    logit_jacobian, loss_and_input_grad, on_model_device, per_row, random_start, row_norms, Start,
};
use super::{hyperplane, AttackError};
use crate::config::Norm;
use crate::model::Classifier;

/// Large distance standing in for "no adversarial point found yet" and for the true class's own hyperplane.
const FAR: f64 = 1e10;
/// Keeps the dual norms of the gradient differences away from zero.
const DUAL_FLOOR: f64 = 1e-12;
/// Smallest projection length used in the α ratio.
const MOVE_FLOOR: f64 = 1e-8;

#[derive(Debug, Clone, PartialEq)]
pub struct FabParams {
    pub norm: Norm,
    /// Success radius; also sets the random restarts' distance (`eps / 2`).
    pub eps: f64,
    /// Iterations per run (100 in AutoAttack).
    pub steps: usize,
    /// Runs per sample (per target for FAB-T); later runs start at random points, only on samples not yet broken.
    pub restarts: usize,
    /// `None`: untargeted FAB; `Some(k)`: FAB-T towards each of the `k` highest-ranked wrong classes.
    pub targets: Option<usize>,
    /// Cap on the weight of the step from the clean input.
    pub alpha_max: f64,
    /// Overshoot of each projection.
    pub eta: f64,
    /// Pull-back factor after a success.
    pub beta: f64,
    pub seed: u64,
    /// Most sample × class rows one pass of the per-class gradients may hold (untargeted FAB).
    pub max_rows: usize,
}

impl FabParams {
    /// AutoAttack's configuration: α_max = 0.1, η = 1.05, β = 0.9, one run per target.
    pub fn new(norm: Norm, eps: f64, steps: usize, targets: Option<usize>, seed: u64) -> Self {
        Self {
            norm,
            eps,
            steps,
            restarts: 1,
            targets,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            seed,
            max_rows: 4096,
        }
    }
}

/// What FAB found: the adversarial examples (clean input where none within `eps`) and, per sample, the norm of the
/// smallest misclassified perturbation found (`+∞` where none, also beyond `eps`).
#[derive(Debug)]
pub struct FabOutcome {
    pub x_adv: Tensor,
    pub distance: Tensor,
}

/// FAB on a batch; row `i`'s random restarts are drawn from key `rows[i]` (default: its row number).
pub fn fab(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    rows: Option<&[u64]>,
    params: &FabParams,
) -> Result<FabOutcome, AttackError> {
    if !(params.eps.is_finite() && params.eps >= 0.0) {
        return Err(AttackError::Invalid {
            what: "eps",
            message: format!("{} is not a finite non-negative radius", params.eps),
        });
    }
    let (x, y) = on_model_device(model, x, y)?;
    let keys = noise::row_keys(rows, x.size()[0] as usize)?;
    let clean = tch::no_grad(|| model.forward(&x))?;
    // Only correctly classified samples are attacked.
    let mut open = clean.f_argmax(1, false)?.f_eq_tensor(&y)?;
    let mut result = x.f_detach_copy()?;
    let mut distance = Tensor::f_full(
        [keys.len() as i64],
        f64::INFINITY,
        (Kind::Float, x.device()),
    )?;
    let targets: Vec<Option<Tensor>> = match params.targets {
        None => vec![None],
        Some(count) => losses::ranked_targets(&clean, count)?
            .into_iter()
            .map(Some)
            .collect(),
    };
    let mut run = 0u64;
    for target in &targets {
        for restart in 0..params.restarts.max(1) {
            let idx = open.f_nonzero()?.f_squeeze_dim(1)?;
            if idx.size()[0] == 0 {
                return Ok(FabOutcome {
                    x_adv: result,
                    distance,
                });
            }
            let sub_keys = select_keys(&keys, &idx)?;
            let target = match target {
                Some(t) => Some(t.f_index_select(0, &idx)?),
                None => None,
            };
            let (adv, found) = single_run(
                model,
                &x.f_index_select(0, &idx)?,
                &y.f_index_select(0, &idx)?,
                target.as_ref(),
                &sub_keys,
                params,
                (restart > 0).then_some(stream::START + run),
            )?;
            let previous = distance.f_index_select(0, &idx)?;
            distance = distance.f_index_copy(0, &idx, &found.f_minimum(&previous)?)?;
            let broken = found.f_le(params.eps)?;
            let chosen = adv.f_where_self(&per_row(&broken, &adv)?, &x.f_index_select(0, &idx)?)?;
            result = result.f_index_copy(0, &idx, &chosen)?;
            open = open.f_index_copy(0, &idx, &broken.f_logical_not()?)?;
            run += 1;
        }
    }
    Ok(FabOutcome {
        x_adv: result,
        distance,
    })
}

fn select_keys(keys: &[u64], rows: &Tensor) -> Result<Vec<u64>, AttackError> {
    let idx = Vec::<i64>::try_from(&rows.f_to_device(tch::Device::Cpu)?)?;
    Ok(idx.iter().map(|&i| keys[i as usize]).collect())
}

/// One FAB run on every row of `x` (all correctly classified); `start` is the random-start stream of a restart.
/// Returns the closest misclassified points found (the clean input where none) and their distances (`+∞` where
/// none).
fn single_run(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    target: Option<&Tensor>,
    keys: &[u64],
    params: &FabParams,
    start: Option<u64>,
) -> Result<(Tensor, Tensor), AttackError> {
    let n = x.size()[0];
    let norm = params.norm;
    let x0 = x.f_flatten(1, -1)?;
    let mut x1 = match start {
        Some(stream) => random_start(
            x,
            norm,
            params.eps / 2.0,
            Start::Boundary,
            params.seed,
            stream,
            keys,
        )?,
        None => x.f_detach_copy()?,
    };
    let mut best = Tensor::f_full([n], FAR, (Kind::Float, x.device()))?;
    let mut adv = x.f_detach_copy()?;
    let targeted_loss: Option<Box<LossFn>> =
        target.map(|t| Box::new(losses::targeted_margin(t.shallow_clone())) as Box<LossFn>);

    for _ in 0..params.steps {
        let (w, b) = closest_boundary(model, &x1, y, targeted_loss.as_deref(), params)?;
        let flat = x1.f_flatten(1, -1)?;
        let both = Tensor::f_cat(&[&flat, &x0], 0)?;
        let w2 = Tensor::f_cat(&[&w, &w], 0)?;
        let b2 = Tensor::f_cat(&[&b, &b], 0)?;
        let moves = match norm {
            Norm::Linf => hyperplane::project_linf(&both, &w2, &b2)?,
            Norm::L2 => hyperplane::project_l2(&both, &w2, &b2)?,
        };
        let lengths = row_norms(&moves, norm)?.f_clamp_min(MOVE_FLOOR)?;
        let (from_iterate, from_clean) = (lengths.f_narrow(0, 0, n)?, lengths.f_narrow(0, n, n)?);
        let alpha = from_iterate
            .f_div(&from_iterate.f_add(&from_clean)?)?
            .f_clamp(0.0, params.alpha_max)?;
        let alpha = per_row(&alpha, x)?;
        let d1 = moves.f_narrow(0, 0, n)?.f_view_as(x)?;
        let d2 = moves.f_narrow(0, n, n)?.f_view_as(x)?;
        x1 = x1
            .f_add(&d1.f_mul_scalar(params.eta)?)?
            .f_mul(&alpha.f_neg()?.f_add_scalar(1.0)?)?
            .f_add(&x.f_add(&d2.f_mul_scalar(params.eta)?)?.f_mul(&alpha)?)?
            .f_clamp(0.0, 1.0)?;

        let predicted = tch::no_grad(|| model.forward(&x1))?.f_argmax(1, false)?;
        let fooled = predicted.f_ne_tensor(y)?;
        let delta = x1.f_sub(x)?;
        let length = row_norms(&delta, norm)?;
        let closer = fooled.f_logical_and(&length.f_lt_tensor(&best)?)?;
        adv = x1.f_where_self(&per_row(&closer, &x1)?, &adv)?;
        best = length.f_where_self(&closer, &best)?;
        let pulled = x.f_add(&delta.f_mul_scalar(params.beta)?)?;
        x1 = pulled.f_where_self(&per_row(&fooled, &x1)?, &x1)?;
    }
    let found = best.f_lt(FAR)?;
    let distance = best.f_where_self(&found, &best.f_full_like(f64::INFINITY)?)?;
    Ok((adv, distance))
}

/// The linearized boundary FAB steps towards at `x1`: normal `w` `[N, D]` and offset `b` `[N]` of the hyperplane
/// `w · z = b`. Untargeted: the class whose linearized boundary is closest in the dual norm; targeted: the target's.
fn closest_boundary(
    model: &dyn Classifier,
    x1: &Tensor,
    y: &Tensor,
    targeted: Option<&LossFn>,
    params: &FabParams,
) -> Result<(Tensor, Tensor), AttackError> {
    let n = x1.size()[0];
    // df [N, K]: z_k − z_y; dg [N, K, D]: its gradient.
    let (df, dg) = match targeted {
        Some(loss) => {
            let at = loss_and_input_grad(model, x1, y, loss)?;
            (at.loss.f_unsqueeze(1)?, at.grad.f_view([n, 1, -1])?)
        }
        None => {
            let (logits, jacobian) = logit_jacobian(model, x1, params.max_rows)?;
            let k = logits.size()[1];
            let jacobian = jacobian.f_view([n, k, -1])?;
            let true_logit = losses::logit_of(&logits, y)?.f_unsqueeze(1)?;
            let index = y
                .f_view([n, 1, 1])?
                .f_expand([n, 1, jacobian.size()[2]], false)?;
            let true_grad = jacobian.f_gather(1, &index, false)?;
            let is_true = y.f_one_hot(k)?.f_to_kind(Kind::Bool)?;
            let df = logits.f_sub(&true_logit)?.f_masked_fill(&is_true, FAR)?;
            (df, jacobian.f_sub(&true_grad)?)
        }
    };
    let dual = match params.norm {
        Norm::Linf => dg
            .f_abs()?
            .f_sum_dim_intlist([2i64].as_slice(), false, Kind::Float)?,
        Norm::L2 => dg
            .f_square()?
            .f_sum_dim_intlist([2i64].as_slice(), false, Kind::Float)?
            .f_sqrt()?,
    };
    let distance = df.f_abs()?.f_div(&dual.f_add_scalar(DUAL_FLOOR)?)?;
    let closest = distance.f_argmin(1, true)?;
    let w = dg
        .f_gather(
            1,
            &closest
                .f_unsqueeze(2)?
                .f_expand([n, 1, dg.size()[2]], false)?,
            false,
        )?
        .f_squeeze_dim(1)?;
    let f = df.f_gather(1, &closest, false)?.f_squeeze_dim(1)?;
    let b = w
        .f_mul(&x1.f_flatten(1, -1)?)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
        .f_sub(&f)?;
    Ok((w, b))
}
