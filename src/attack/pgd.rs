//! The one projected-gradient core every white-box attack and every adversarial trainer runs on.
//!
//! [`pgd`] is projected gradient ascent on any per-sample objective ([`super::losses`]) inside the L∞ or L2 ball
//! of radius `eps` around `x`, intersected with the [0,1] pixel box: optional uniform random start, `steps`
//! steepest-ascent steps of size `step_size` (sign of the gradient for L∞, the normalized gradient for L2), and
//! `restarts` independent runs, keeping per sample the iterate chosen by [`Keep`]; [`pgd_rows_from`] starts chosen
//! rows' first run at given points instead (a warm start, the eps curve's). FGSM is one step of size eps
//! from `x` ([`PgdParams::fgsm`]); CW-PGD is PGD on [`super::losses::cw_margin`]. APGD ([`super::apgd`]) reuses the
//! building blocks below: [`loss_and_input_grad`] (and its EOT average), [`ascent_direction`], [`project`],
//! [`random_start`]; FAB ([`super::fab`]) adds [`logit_jacobian`], every class's gradient in one batched pass.
//!
//! Gradients are taken with respect to the input only (`autograd.grad` semantics through
//! `Tensor::f_run_backward`): the model's parameters never accumulate gradients during an attack, so a trainer can
//! craft examples between `zero_grad` and its own `backward`. The model's train/eval mode is left as the caller set
//! it. Inputs may live on any device; the result is on the model's device.

use tch::{Kind, Tensor};

use super::losses::LossFn;
use super::noise::{self, per_row_tensor, stream};
use super::AttackError;
use crate::config::{Norm, PgdSpec};
use crate::model::Classifier;

/// Keeps per-row norms away from zero when normalizing.
const NORM_FLOOR: f64 = 1e-12;
/// Marks the stream an L2 random start draws its radius from (distinct from its direction's stream).
const RADIUS_STREAM: u64 = 1 << 32;

/// Which iterate [`pgd`] returns per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The last iterate (Madry et al.); across restarts the one with the higher final loss. The trainers' choice:
    /// with one restart it costs no extra forward pass.
    Final,
    /// The iterate with the highest loss over all steps and restarts.
    MaxLoss,
    /// A misclassified iterate if any step of any restart found one (the one with the highest loss among them),
    /// else the highest-loss iterate. The evaluation's choice: success is never lost by later steps.
    Adversarial,
    /// The first misclassified iterate found, else the highest-loss iterate. A row leaves the attack (its later
    /// steps and restarts) as soon as the model misclassifies it, so the batch shrinks as samples break: the
    /// robust-accuracy curve's choice, where only the verdict matters. A row's iterates do not depend on the other
    /// rows, so it breaks exactly where [`Keep::Adversarial`] would find it broken.
    FirstAdversarial,
}

/// One projected-gradient attack configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PgdParams {
    pub norm: Norm,
    /// Radius of the threat ball in [0,1] pixel space.
    pub eps: f64,
    /// Length of each step (L∞: per coordinate; L2: Euclidean).
    pub step_size: f64,
    pub steps: usize,
    /// Start each restart at a uniformly random point of the ball (else at `x`).
    pub random_start: bool,
    /// Independent runs; at least 1 is always made.
    pub restarts: usize,
    /// Seed of the random starts (with the row keys, see [`pgd_rows`]).
    pub seed: u64,
    pub keep: Keep,
}

impl PgdParams {
    /// PGD from a config block (`eval.pgd` or `train.pgd`): step size = `step_size_factor · eps`.
    pub fn from_spec(spec: &PgdSpec, norm: Norm, eps: f64, seed: u64, keep: Keep) -> Self {
        Self {
            norm,
            eps,
            step_size: spec.step_size_factor * eps,
            steps: spec.steps,
            random_start: spec.random_start,
            restarts: spec.restarts.max(1),
            seed,
            keep,
        }
    }

    /// FGSM (Goodfellow et al. 2015): one step of size eps from the clean point.
    pub fn fgsm(norm: Norm, eps: f64) -> Self {
        Self {
            norm,
            eps,
            step_size: eps,
            steps: 1,
            random_start: false,
            restarts: 1,
            seed: 0,
            keep: Keep::Final,
        }
    }

    fn validate(&self) -> Result<(), AttackError> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(AttackError::Invalid {
                what: "eps",
                message: format!("{} is not a finite non-negative radius", self.eps),
            });
        }
        if !(self.step_size.is_finite() && self.step_size >= 0.0) {
            return Err(AttackError::Invalid {
                what: "step_size",
                message: format!("{} is not a finite non-negative step", self.step_size),
            });
        }
        Ok(())
    }
}

/// PGD with rows keyed `0..N` (random starts depend on the batch composition; fine for training).
pub fn pgd(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    params: &PgdParams,
    loss: &LossFn,
) -> Result<Tensor, AttackError> {
    pgd_rows(model, x, y, None, params, loss)
}

/// PGD where row `i`'s random start is drawn from key `rows[i]` (e.g. its position in the evaluation set), so a
/// sample's result does not depend on which batch it landed in.
pub fn pgd_rows(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    rows: Option<&[u64]>,
    params: &PgdParams,
    loss: &LossFn,
) -> Result<Tensor, AttackError> {
    pgd_rows_from(model, x, y, rows, None, params, loss)
}

/// Starting points chosen by the caller for some rows of a batch (a warm start: e.g. an iterate of an earlier
/// attack at another radius). Row `i` starts its first restart at `x[i]`, projected onto the ball, where
/// `given[i]`; the other rows start as `PgdParams::random_start` says. Later restarts start as configured.
pub struct GivenStarts<'a> {
    /// `[N, …]`, the batch's shape; rows not `given` are ignored.
    pub x: &'a Tensor,
    pub given: &'a [bool],
}

/// [`pgd_rows`] with the first restart of some rows starting at [`GivenStarts`].
pub fn pgd_rows_from(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    rows: Option<&[u64]>,
    starts: Option<GivenStarts<'_>>,
    params: &PgdParams,
    loss: &LossFn,
) -> Result<Tensor, AttackError> {
    params.validate()?;
    let (x, y) = on_model_device(model, x, y)?;
    let n = x.size()[0];
    let starts = match starts {
        Some(s) if s.given.iter().any(|&g| g) => {
            if s.given.len() != n as usize || s.x.size() != x.size() {
                return Err(AttackError::Invalid {
                    what: "starts",
                    message: format!(
                        "{} flags and starting points {:?} for inputs {:?}",
                        s.given.len(),
                        s.x.size(),
                        x.size()
                    ),
                });
            }
            let given = Tensor::f_from_slice(s.given)?.f_to_device(x.device())?;
            let points = project(
                &s.x.f_to_device(x.device())?.f_to_kind(Kind::Float)?,
                &x,
                params.norm,
                params.eps,
            )?;
            Some((per_row(&given, &x)?, points))
        }
        _ => None,
    };
    let keys = noise::row_keys(rows, n as usize)?;
    let restarts = params.restarts.max(1);
    let first = params.keep == Keep::FirstAdversarial;
    let mut best = BestIterate::new(params.keep);
    // Under Keep::FirstAdversarial a row is `done` once fooled and takes no further steps or restarts.
    let mut done = vec![false; n as usize];
    for restart in 0..restarts {
        let mut live = Live::new(&x, &y, &keys, &done)?;
        if live.is_empty() {
            break;
        }
        let mut x_adv = if params.random_start {
            random_start(
                &live.x,
                params.norm,
                params.eps,
                Start::UniformBall,
                params.seed,
                stream::START + restart as u64,
                &live.keys,
            )?
        } else {
            live.x.f_detach_copy()?
        };
        if let (0, Some((given, points))) = (restart, &starts) {
            x_adv = points.f_where_self(given, &x_adv)?;
        }
        for _ in 0..params.steps {
            let at = loss_and_input_grad(model, &x_adv, &live.y, loss)?;
            if params.keep != Keep::Final {
                best.offer(live.index(), &x_adv, &at.loss, &at.logits, &live.y)?;
            }
            let mut grad = at.grad;
            if first {
                let fooled = at.logits.f_argmax(1, false)?.f_ne_tensor(&live.y)?;
                if let Some(kept) = live.leave(&fooled, &mut done)? {
                    x_adv = x_adv.f_index_select(0, &kept)?;
                    grad = grad.f_index_select(0, &kept)?;
                }
                if live.is_empty() {
                    break;
                }
            }
            let step = ascent_direction(&grad, params.norm)?.f_mul_scalar(params.step_size)?;
            x_adv = project(&x_adv.f_add(&step)?, &live.x, params.norm, params.eps)?;
        }
        if live.is_empty() {
            continue;
        }
        if params.keep == Keep::Final && restarts == 1 {
            return Ok(x_adv);
        }
        let (logits, value) = loss_no_grad(model, &x_adv, &live.y, loss)?;
        best.offer(live.index(), &x_adv, &value, &logits, &live.y)?;
        if first {
            let fooled = logits.f_argmax(1, false)?.f_ne_tensor(&live.y)?;
            live.leave(&fooled, &mut done)?;
        }
    }
    best.into_best()
}

/// The rows of a batch still under attack: their clean inputs, labels, noise keys and positions in the batch.
struct Live {
    x: Tensor,
    y: Tensor,
    keys: Vec<u64>,
    rows: Vec<i64>,
    /// `rows` as a tensor on the inputs' device; `None` while every row of the batch is live.
    index: Option<Tensor>,
}

impl Live {
    /// The rows not `done`.
    fn new(x: &Tensor, y: &Tensor, keys: &[u64], done: &[bool]) -> Result<Self, AttackError> {
        let rows: Vec<i64> = (0..done.len() as i64)
            .filter(|&i| !done[i as usize])
            .collect();
        let mut live = Self {
            x: x.shallow_clone(),
            y: y.shallow_clone(),
            keys: keys.to_vec(),
            rows: (0..done.len() as i64).collect(),
            index: None,
        };
        if rows.len() < done.len() {
            let positions = Tensor::f_from_slice(&rows)?.f_to_device(x.device())?;
            live.narrow(&positions, &rows)?;
        }
        Ok(live)
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Positions of the live rows in the batch (for [`BestIterate::offer`]); `None` = all rows.
    fn index(&self) -> Option<&Tensor> {
        self.index.as_ref()
    }

    /// Marks the live rows that `fooled` flags as done and drops them. Returns the positions (among the live
    /// rows before the call) of those that stay, to narrow the caller's per-row tensors, when any left.
    fn leave(&mut self, fooled: &Tensor, done: &mut [bool]) -> Result<Option<Tensor>, AttackError> {
        let fooled = Vec::<bool>::try_from(fooled)?;
        if !fooled.iter().any(|f| *f) {
            return Ok(None);
        }
        let mut stay = Vec::with_capacity(fooled.len());
        for (position, (&row, f)) in self.rows.iter().zip(&fooled).enumerate() {
            if *f {
                done[row as usize] = true;
            } else {
                stay.push(position as i64);
            }
        }
        let kept = Tensor::f_from_slice(&stay)?.f_to_device(self.x.device())?;
        let rows: Vec<i64> = stay.iter().map(|&p| self.rows[p as usize]).collect();
        self.narrow(&kept, &rows)?;
        Ok(Some(kept))
    }

    /// Keeps the live rows at `positions` (among the current live rows), which are batch rows `rows`.
    fn narrow(&mut self, positions: &Tensor, rows: &[i64]) -> Result<(), AttackError> {
        self.x = self.x.f_index_select(0, positions)?;
        self.y = self.y.f_index_select(0, positions)?;
        self.keys = positions_of(&self.keys, &self.rows, rows);
        self.rows = rows.to_vec();
        self.index = Some(Tensor::f_from_slice(rows)?.f_to_device(self.x.device())?);
        Ok(())
    }
}

/// The entries of `values` (one per row of `rows`) for the rows `wanted` (a subsequence of `rows`).
fn positions_of(values: &[u64], rows: &[i64], wanted: &[i64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut it = rows.iter().zip(values);
    for w in wanted {
        for (r, v) in it.by_ref() {
            if r == w {
                out.push(*v);
                break;
            }
        }
    }
    out
}

/// What one forward/backward pass at an iterate gives: detached logits and per-sample loss, and the gradient of
/// the summed loss with respect to the input.
pub struct Evaluated {
    pub logits: Tensor,
    pub loss: Tensor,
    pub grad: Tensor,
}

/// Loss and input gradient at `x_adv` (gradient mode forced on, parameters untouched).
pub fn loss_and_input_grad(
    model: &dyn Classifier,
    x_adv: &Tensor,
    y: &Tensor,
    loss: &LossFn,
) -> Result<Evaluated, AttackError> {
    tch::with_grad(|| {
        let input = x_adv.f_detach()?.set_requires_grad(true);
        let logits = model.forward(&input)?;
        let value = per_sample_loss(loss, &logits, y)?;
        let total = value.f_sum(Kind::Float)?;
        let mut grads = Tensor::f_run_backward(&[&total], &[&input], false, false)?;
        let grad = grads.pop().ok_or(AttackError::Invalid {
            what: "gradient",
            message: "autograd returned no gradient for the input".into(),
        })?;
        Ok(Evaluated {
            logits: logits.f_detach()?,
            loss: value.f_detach()?,
            grad,
        })
    })
}

/// [`loss_and_input_grad`] averaged over `samples` forward/backward passes at the same point: Expectation over
/// Transformation (Athalye et al. 2018) for models with randomness. The logits and loss are the last pass's, as in
/// AutoAttack's `eot_iter`. One sample is a plain [`loss_and_input_grad`].
pub fn expected_loss_and_input_grad(
    model: &dyn Classifier,
    x_adv: &Tensor,
    y: &Tensor,
    loss: &LossFn,
    samples: usize,
) -> Result<Evaluated, AttackError> {
    let mut at = loss_and_input_grad(model, x_adv, y, loss)?;
    if samples <= 1 {
        return Ok(at);
    }
    let mut sum = at.grad;
    for _ in 1..samples {
        at = loss_and_input_grad(model, x_adv, y, loss)?;
        sum = sum.f_add(&at.grad)?;
    }
    at.grad = sum.f_div_scalar(samples as f64)?;
    Ok(at)
}

/// Logits `[N, K]` at `x` and the input gradient of every logit, `[N, K, C, H, W]` (what FAB needs). The rows are
/// replicated once per class and a single backward pass through the replicated batch gives all of them, instead of
/// one backward pass per class; when `N · K` exceeds `max_rows` (what fits the job's memory), the classes go in
/// groups of `max_rows / N` (at least one) per pass.
pub fn logit_jacobian(
    model: &dyn Classifier,
    x: &Tensor,
    max_rows: usize,
) -> Result<(Tensor, Tensor), AttackError> {
    let n = x.size()[0];
    let classes = model.num_classes();
    let per_pass = ((max_rows as i64) / n.max(1)).clamp(1, classes.max(1));
    let sample_shape: Vec<i64> = x.size()[1..].to_vec();
    let mut logits = None;
    let mut parts = Vec::new();
    let mut first = 0;
    while first < classes {
        let group = per_pass.min(classes - first);
        let mut shape = vec![n * group];
        shape.extend(&sample_shape);
        let (values, grads) = tch::with_grad(|| -> Result<(Tensor, Tensor), AttackError> {
            let mut wide = vec![n, group];
            wide.extend(&sample_shape);
            let input = x
                .f_detach()?
                .f_unsqueeze(1)?
                .f_expand(wide.as_slice(), false)?
                .f_reshape(shape.as_slice())?
                .set_requires_grad(true);
            let out = model.forward(&input)?;
            let chosen =
                Tensor::f_arange_start(first, first + group, (tch::Kind::Int64, x.device()))?
                    .f_repeat([n])?
                    .f_unsqueeze(1)?;
            let total = out.f_gather(1, &chosen, false)?.f_sum(Kind::Float)?;
            let mut grads = Tensor::f_run_backward(&[&total], &[&input], false, false)?;
            let grad = grads.pop().ok_or(AttackError::Invalid {
                what: "gradient",
                message: "autograd returned no gradient for the input".into(),
            })?;
            Ok((out.f_detach()?, grad))
        })?;
        if logits.is_none() {
            logits = Some(values.f_view([n, group, -1])?.f_select(1, 0)?);
        }
        let mut grouped = vec![n, group];
        grouped.extend(&sample_shape);
        parts.push(grads.f_view(grouped.as_slice())?);
        first += group;
    }
    let logits = logits.ok_or(AttackError::Invalid {
        what: "model",
        message: "the model has no classes".into(),
    })?;
    Ok((logits, Tensor::f_cat(&parts, 1)?))
}

/// Logits and per-sample loss at `x_adv` without building a graph.
pub fn loss_no_grad(
    model: &dyn Classifier,
    x_adv: &Tensor,
    y: &Tensor,
    loss: &LossFn,
) -> Result<(Tensor, Tensor), AttackError> {
    tch::no_grad(|| {
        let logits = model.forward(x_adv)?;
        let value = per_sample_loss(loss, &logits, y)?;
        Ok((logits, value))
    })
}

fn per_sample_loss(loss: &LossFn, logits: &Tensor, y: &Tensor) -> Result<Tensor, AttackError> {
    let value = loss(logits, y)?;
    let n = logits.size().first().copied().unwrap_or(0);
    if value.size() != [n] {
        return Err(AttackError::LossShape {
            expected: n,
            got: value.size(),
        });
    }
    Ok(value)
}

/// The steepest-ascent direction of unit norm: `sign(g)` for L∞, `g / ‖g‖₂` per sample for L2. Non-finite
/// gradient entries count as zero (no move), so one NaN cannot poison the iterate.
pub fn ascent_direction(grad: &Tensor, norm: Norm) -> Result<Tensor, AttackError> {
    let grad = grad.f_nan_to_num(0.0, 0.0, 0.0)?;
    Ok(match norm {
        Norm::Linf => grad.f_sign()?,
        Norm::L2 => {
            let norms = row_norms(&grad, Norm::L2)?.f_add_scalar(NORM_FLOOR)?;
            grad.f_div(&per_row(&norms, &grad)?)?
        }
    })
}

/// Projects `x_adv` onto the `norm`-ball of radius `eps` around `x`, then onto [0,1]. Clipping to the box only
/// shrinks each coordinate of the perturbation (x itself lies in the box), so the result is in both sets.
pub fn project(x_adv: &Tensor, x: &Tensor, norm: Norm, eps: f64) -> Result<Tensor, AttackError> {
    let delta = x_adv.f_sub(x)?;
    let delta = match norm {
        Norm::Linf => delta.f_clamp(-eps, eps)?,
        Norm::L2 => {
            let norms = row_norms(&delta, Norm::L2)?;
            let factor = norms
                .f_add_scalar(NORM_FLOOR)?
                .f_reciprocal()?
                .f_mul_scalar(eps)?
                .f_clamp_max(1.0)?;
            delta.f_mul(&per_row(&factor, &delta)?)?
        }
    };
    Ok(x.f_add(&delta)?.f_clamp(0.0, 1.0)?)
}

/// How a random start is distributed in the ball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// L∞: uniform in the cube; L2: uniform in the ball (radius `eps · u^{1/d}`). Madry et al.'s PGD.
    UniformBall,
    /// L∞: uniform direction scaled so the largest coordinate is eps; L2: a uniform point on the sphere. APGD's
    /// start (Croce & Hein 2020).
    Boundary,
}

/// A random point of the ball around `x` (then clipped to [0,1]); row `i` is drawn from key `keys[i]`.
pub fn random_start(
    x: &Tensor,
    norm: Norm,
    eps: f64,
    start: Start,
    seed: u64,
    stream: u64,
    keys: &[u64],
) -> Result<Tensor, AttackError> {
    let delta = match norm {
        Norm::Linf => {
            let u = per_row_tensor(x, keys, seed, stream, noise::uniform_pm1)?;
            match start {
                Start::UniformBall => u.f_mul_scalar(eps)?,
                Start::Boundary => {
                    let max = row_norms(&u, Norm::Linf)?.f_add_scalar(NORM_FLOOR)?;
                    u.f_div(&per_row(&max, &u)?)?.f_mul_scalar(eps)?
                }
            }
        }
        Norm::L2 => {
            let g = per_row_tensor(x, keys, seed, stream, noise::standard_normal)?;
            let unit = g.f_div(&per_row(
                &row_norms(&g, Norm::L2)?.f_add_scalar(NORM_FLOOR)?,
                &g,
            )?)?;
            match start {
                Start::Boundary => unit.f_mul_scalar(eps)?,
                Start::UniformBall => {
                    let dims = x.size().iter().skip(1).product::<i64>().max(1) as f64;
                    let column = Tensor::f_zeros([keys.len() as i64], (Kind::Float, x.device()))?;
                    let u = per_row_tensor(&column, keys, seed, stream | RADIUS_STREAM, |r| {
                        (noise::uniform_pm1(r) + 1.0) / 2.0
                    })?;
                    let radius = u.f_pow_tensor_scalar(1.0 / dims)?.f_mul_scalar(eps)?;
                    unit.f_mul(&per_row(&radius, &unit)?)?
                }
            }
        }
    };
    Ok(x.f_add(&delta)?.f_clamp(0.0, 1.0)?)
}

/// Per-sample `norm` of a batch `[N, …]` (L∞: max |v|; L2: Euclidean), shape `[N]`.
pub fn row_norms(t: &Tensor, norm: Norm) -> Result<Tensor, AttackError> {
    let flat = t.f_flatten(1, -1)?;
    Ok(match norm {
        Norm::Linf => flat.f_abs()?.f_amax([1i64].as_slice(), false)?,
        Norm::L2 => flat.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?,
    })
}

/// Reshapes a per-sample `[N]` tensor to broadcast against `like` (`[N, 1, 1, …]`).
pub fn per_row(v: &Tensor, like: &Tensor) -> Result<Tensor, AttackError> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    Ok(v.f_view(shape.as_slice())?)
}

/// `x` (float32, detached) and `y` (int64) moved to the model's device, checked to have matching batch sizes.
pub fn on_model_device(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Tensor, Tensor), AttackError> {
    let device = model.device();
    let x = x.f_detach()?.f_to_device(device)?.f_to_kind(Kind::Float)?;
    let y = y.f_to_device(device)?.f_to_kind(Kind::Int64)?;
    if x.size().first() != y.size().first() || y.dim() != 1 {
        return Err(AttackError::Invalid {
            what: "labels",
            message: format!("inputs {:?} but labels {:?}", x.size(), y.size()),
        });
    }
    Ok((x, y))
}

/// Per-sample best iterate under a [`Keep`] rule.
pub(crate) struct BestIterate {
    keep: Keep,
    state: Option<(Tensor, Tensor, Tensor)>,
}

impl BestIterate {
    pub(crate) fn new(keep: Keep) -> Self {
        Self { keep, state: None }
    }

    /// Offers a candidate iterate with its per-sample loss and logits for the batch rows `index` (`None`: every
    /// row); rows that beat the current best replace it. The first offer covers every row.
    pub(crate) fn offer(
        &mut self,
        index: Option<&Tensor>,
        x_adv: &Tensor,
        loss: &Tensor,
        logits: &Tensor,
        y: &Tensor,
    ) -> Result<(), AttackError> {
        let fooled = logits.f_argmax(1, false)?.f_ne_tensor(y)?;
        let Some((best_x, best_loss, best_fooled)) = self.state.take() else {
            if index.is_some() {
                return Err(AttackError::Invalid {
                    what: "iterates",
                    message: "the first iterate offered must cover every row".into(),
                });
            }
            self.state = Some((x_adv.f_detach()?, loss.f_detach()?, fooled));
            return Ok(());
        };
        let pick = |t: &Tensor| -> Result<Tensor, AttackError> {
            Ok(match index {
                Some(i) => t.f_index_select(0, i)?,
                None => t.shallow_clone(),
            })
        };
        let (old_x, old_loss, old_fooled) =
            (pick(&best_x)?, pick(&best_loss)?, pick(&best_fooled)?);
        let higher = loss.f_gt_tensor(&old_loss)?;
        let newly_fooled = fooled.f_logical_and(&old_fooled.f_logical_not()?)?;
        let better = match self.keep {
            Keep::Final | Keep::MaxLoss => higher,
            Keep::Adversarial => {
                let same_status = fooled.f_eq_tensor(&old_fooled)?;
                newly_fooled.f_logical_or(&same_status.f_logical_and(&higher)?)?
            }
            Keep::FirstAdversarial => {
                let neither = fooled.f_logical_or(&old_fooled)?.f_logical_not()?;
                newly_fooled.f_logical_or(&neither.f_logical_and(&higher)?)?
            }
        };
        let new_x = x_adv
            .f_detach()?
            .f_where_self(&per_row(&better, x_adv)?, &old_x)?;
        let new_loss = loss.f_where_self(&better, &old_loss)?;
        let new_fooled = fooled.f_where_self(&better, &old_fooled)?;
        self.state = Some(match index {
            None => (new_x, new_loss, new_fooled),
            Some(i) => (
                best_x.f_index_copy(0, i, &new_x)?,
                best_loss.f_index_copy(0, i, &new_loss)?,
                best_fooled.f_index_copy(0, i, &new_fooled)?,
            ),
        });
        Ok(())
    }

    pub(crate) fn into_best(self) -> Result<Tensor, AttackError> {
        self.state.map(|(x, _, _)| x).ok_or(AttackError::Invalid {
            what: "iterates",
            message: "no iterate was evaluated".into(),
        })
    }
}
