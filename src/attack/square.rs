//! The Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
//! adversarial attack via random search"), L∞ and L2, score-based: it sees the model only through
//! [`Scorer::logits`] — forward passes on the shipped file — and never builds an autograd graph.
//!
//! Random search on the margin `z_y − max_{k≠y} z_k` (minimized; ≤ 0 means fooled). Every iteration queries one
//! candidate per still-robust sample, all in one batched call; a candidate replaces the sample's best point when its
//! margin is lower. Candidates change a random square window of side `s = round(√(p · C·H·W / C))`, where the
//! fraction `p` follows the published piecewise schedule (`p_init` halved at 10, 50, 200, 500, 1000, 2000, 4000,
//! 6000, 8000 of 10 000 iterations, rescaled to the query budget):
//! - L∞: start from vertical stripes `x ± ε` (one sign per channel and column); a candidate sets the window to
//!   `x ± ε` with one random sign per channel.
//! - L2: start from a grid of "eta" patterns (two opposite-sign rectangles of `1/d²` rings) with random signs,
//!   scaled to norm ε; a candidate moves the mass of a second window into the first, re-normalized so the whole
//!   perturbation keeps norm ε.
//!
//! Randomness ([`SquareSampling`]): by default every sample draws its own window positions and signs from
//! `(seed, row key)`. AutoAttack draws one window position per iteration for the whole batch (and for L∞ one sign per
//! channel); `PerIteration` does that, drawing the shared values from `(seed, iteration)`, so every batch sees the
//! same sequence and results still do not depend on how samples are batched. AutoAttack's Square also runs its
//! schedule on absolute iterations (`resc_schedule=False`) where the standalone Square rescales it to the budget.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::losses;
use super::noise::{self, stream};
use super::pgd::{per_row, row_norms};
use super::AttackError;
use crate::config::Norm;
use crate::model::Scorer;

const NORM_FLOOR: f64 = 1e-12;

#[derive(Debug, Clone, PartialEq)]
pub struct SquareParams {
    pub norm: Norm,
    pub eps: f64,
    /// Queries per sample, the initial point included.
    pub queries: usize,
    /// Initial fraction of the image's pixels a window covers.
    pub p_init: f64,
    pub seed: u64,
    pub sampling: SquareSampling,
    /// Rescale the published 10 000-iteration schedule of `p` to `queries` (else run it on absolute iterations).
    pub rescale_schedule: bool,
}

/// Who shares a Square iteration's random window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquareSampling {
    /// Each sample draws its own window position and signs.
    PerSample,
    /// AutoAttack's: one window position per iteration (L∞: and one sign per channel) for every sample attacked;
    /// L2's per-channel signs stay per sample, as in AutoAttack.
    PerIteration,
}

/// What Square returns: the best point per sample, its query count, and whether it fooled the scorer.
#[derive(Debug)]
pub struct SquareOutcome {
    /// `[N, C, H, W]` on the CPU.
    pub x_adv: Tensor,
    pub queries: Vec<usize>,
    pub fooled: Vec<bool>,
}

/// The fraction of pixels changed at iteration `it` of `budget` (published schedule, rescaled to 10 000).
pub fn p_schedule(p_init: f64, it: usize, budget: usize) -> f64 {
    p_on_published_schedule(
        p_init,
        (it as f64 / budget.max(1) as f64 * 10_000.0) as usize,
    )
}

/// The fraction of pixels changed at iteration `it` of the published 10 000-iteration schedule.
pub fn p_on_published_schedule(p_init: f64, it: usize) -> f64 {
    let halvings = match it {
        0..=10 => 0,
        11..=50 => 1,
        51..=200 => 2,
        201..=500 => 3,
        501..=1000 => 4,
        1001..=2000 => 5,
        2001..=4000 => 6,
        4001..=6000 => 7,
        6001..=8000 => 8,
        _ => 9,
    };
    p_init / f64::from(1u32 << halvings)
}

/// Runs Square on `x` (`[N, C, H, W]` in [0,1]) with labels `y`; row `i` draws its randomness from key `rows[i]`.
pub fn square(
    scorer: &mut dyn Scorer,
    x: &Tensor,
    y: &Tensor,
    rows: Option<&[u64]>,
    params: &SquareParams,
) -> Result<SquareOutcome, AttackError> {
    let _no_graph = tch::no_grad_guard();
    // The forward passes run on onnxruntime; the per-iteration tensor bookkeeping is small enough for one thread.
    let _one_thread = crate::runtime::SingleThreadedTorch::enter();
    let x = x
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    let y = y.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?;
    let shape = x.size();
    let [n, c, h, w] = shape.as_slice() else {
        return Err(AttackError::Invalid {
            what: "square input",
            message: format!("expected [N, C, H, W], got {shape:?}"),
        });
    };
    let (n, c, h, w) = (*n as usize, *c, *h, *w);
    let keys = noise::row_keys(rows, n)?;
    let mut rngs: Vec<ChaCha8Rng> = keys
        .iter()
        .map(|&k| noise::row_rng(params.seed, k, stream::SQUARE))
        .collect();
    let window = Windows { c, h, w };

    let mut x_best = match params.norm {
        Norm::Linf => window.linf_init(&x, &mut rngs, params.eps)?,
        Norm::L2 => window.l2_init(&x, &mut rngs, params.eps)?,
    };
    let mut margin_best = margins(scorer, &x_best, &y)?;
    let mut queries = vec![1usize; n];
    let features = (c * h * w) as f64;

    for it in 0..params.queries.saturating_sub(1) {
        let margins_now = Vec::<f32>::try_from(&margin_best)?;
        let open: Vec<i64> = (0..n as i64)
            .filter(|&i| margins_now[i as usize] > 0.0)
            .collect();
        if open.is_empty() {
            break;
        }
        let idx = Tensor::f_from_slice(&open)?;
        let x_curr = x.f_index_select(0, &idx)?;
        let best_curr = x_best.f_index_select(0, &idx)?;
        let mut open_rngs: Vec<&mut ChaCha8Rng> = Vec::with_capacity(open.len());
        {
            let mut wanted = open.iter().peekable();
            for (i, rng) in rngs.iter_mut().enumerate() {
                if wanted.peek() == Some(&&(i as i64)) {
                    open_rngs.push(rng);
                    wanted.next();
                }
            }
        }
        let p = if params.rescale_schedule {
            p_schedule(params.p_init, it, params.queries)
        } else {
            p_on_published_schedule(params.p_init, it)
        };
        let side = ((p * features / c as f64).sqrt().round() as i64).max(1);
        let mut shared = match params.sampling {
            SquareSampling::PerSample => None,
            SquareSampling::PerIteration => Some(noise::row_rng(
                params.seed,
                it as u64,
                stream::SQUARE_SHARED,
            )),
        };
        let candidate = match params.norm {
            Norm::Linf => window.linf_candidate(
                &x_curr,
                &best_curr,
                &mut open_rngs,
                shared.as_mut(),
                side,
                params.eps,
            )?,
            Norm::L2 => window.l2_candidate(
                &x_curr,
                &best_curr,
                &mut open_rngs,
                shared.as_mut(),
                side,
                params.eps,
            )?,
        };
        let margin_new = margins(scorer, &candidate, &y.f_index_select(0, &idx)?)?;
        let margin_curr = margin_best.f_index_select(0, &idx)?;
        let better = margin_new.f_lt_tensor(&margin_curr)?;
        let merged_x = candidate.f_where_self(&per_row(&better, &candidate)?, &best_curr)?;
        let merged_margin = margin_new.f_where_self(&better, &margin_curr)?;
        x_best = x_best.f_index_copy(0, &idx, &merged_x)?;
        margin_best = margin_best.f_index_copy(0, &idx, &merged_margin)?;
        for &i in &open {
            queries[i as usize] += 1;
        }
    }
    let fooled = Vec::<bool>::try_from(&margin_best.f_le(0.0)?)?;
    Ok(SquareOutcome {
        x_adv: x_best,
        queries,
        fooled,
    })
}

/// `z_y − max_{k≠y} z_k` per sample from one scorer call.
fn margins(scorer: &mut dyn Scorer, x: &Tensor, y: &Tensor) -> Result<Tensor, AttackError> {
    let logits = scorer
        .logits(x)?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    let n = x.size()[0];
    if logits.dim() != 2 || logits.size()[0] != n {
        return Err(AttackError::Invalid {
            what: "scorer output",
            message: format!("expected logits [{n}, classes], got {:?}", logits.size()),
        });
    }
    Ok(losses::logit_of(&logits, y)?.f_sub(&losses::max_other(&logits, y)?)?)
}

/// Square-window geometry for images of `c × h × w`.
struct Windows {
    c: i64,
    h: i64,
    w: i64,
}

impl Windows {
    /// L∞ start: `x + ε · s` with one random sign per (channel, column).
    fn linf_init(
        &self,
        x: &Tensor,
        rngs: &mut [ChaCha8Rng],
        eps: f64,
    ) -> Result<Tensor, AttackError> {
        let signs: Vec<f32> = rngs
            .iter_mut()
            .flat_map(|r| {
                (0..self.c * self.w)
                    .map(|_| noise::random_sign(r))
                    .collect::<Vec<_>>()
            })
            .collect();
        let stripes = Tensor::f_from_slice(&signs)?.f_view([-1, self.c, 1, self.w])?;
        Ok(x.f_add(&stripes.f_mul_scalar(eps)?)?.f_clamp(0.0, 1.0)?)
    }

    /// L∞ candidate: the window of each row set to `x ± ε` (one sign per channel), the rest kept from the best. With
    /// a `shared` generator every row gets the same window and signs.
    fn linf_candidate(
        &self,
        x: &Tensor,
        best: &Tensor,
        rngs: &mut [&mut ChaCha8Rng],
        shared: Option<&mut ChaCha8Rng>,
        side: i64,
        eps: f64,
    ) -> Result<Tensor, AttackError> {
        let side = side.min(self.h).min(self.w);
        let mut corners = Vec::with_capacity(rngs.len());
        let mut signs = Vec::with_capacity(rngs.len() * self.c as usize);
        match shared {
            Some(rng) => {
                let corner = self.corner(rng, side);
                let channel_signs: Vec<f32> =
                    (0..self.c).map(|_| noise::random_sign(rng)).collect();
                for _ in 0..rngs.len() {
                    corners.push(corner);
                    signs.extend(&channel_signs);
                }
            }
            None => {
                for rng in rngs.iter_mut() {
                    corners.push(self.corner(rng, side));
                    signs.extend((0..self.c).map(|_| noise::random_sign(rng)));
                }
            }
        }
        let mask = self.masks(&corners, side)?;
        let signs = Tensor::f_from_slice(&signs)?.f_view([-1, self.c, 1, 1])?;
        let window_value = x.f_add(&signs.f_mul_scalar(eps)?)?.f_clamp(0.0, 1.0)?;
        let mask = mask.f_expand_as(x)?;
        Ok(window_value.f_where_self(&mask, best)?)
    }

    /// L2 start: a grid of eta patterns with random signs per (row, block, channel), normalized to ε.
    fn l2_init(
        &self,
        x: &Tensor,
        rngs: &mut [ChaCha8Rng],
        eps: f64,
    ) -> Result<Tensor, AttackError> {
        let n = rngs.len() as i64;
        let side = (self.h / 5).max(1);
        let start_h = (self.h - side * 5).max(0) / 2;
        let start_w = (self.w - side * 5).max(0) / 2;
        let eta = eta(side as usize);
        let delta = Tensor::f_zeros([n, self.c, self.h, self.w], (Kind::Float, Device::Cpu))?;
        let mut top = start_h;
        while top + side <= self.h && top < start_h + 5 * side {
            let mut left = start_w;
            while left + side <= self.w && left < start_w + 5 * side {
                let mut patches = Vec::with_capacity((n * self.c * side * side) as usize);
                for rng in rngs.iter_mut() {
                    let transpose = rng.random::<bool>();
                    for _ in 0..self.c {
                        let sign = noise::random_sign(rng);
                        patches
                            .extend(eta_values(&eta, side as usize, transpose).map(|v| v * sign));
                    }
                }
                let patch = Tensor::f_from_slice(&patches)?.f_view([n, self.c, side, side])?;
                let mut block = delta.f_narrow(2, top, side)?.f_narrow(3, left, side)?;
                block.f_copy_(&patch)?;
                left += side;
            }
            top += side;
        }
        let unit = delta.f_div(&per_row(
            &row_norms(&delta, Norm::L2)?.f_add_scalar(NORM_FLOOR)?,
            &delta,
        )?)?;
        Ok(x.f_add(&unit.f_mul_scalar(eps)?)?.f_clamp(0.0, 1.0)?)
    }

    /// L2 candidate (reference algorithm): window 2's perturbation is moved into window 1 as a fresh eta pattern
    /// plus window 1's old direction, scaled to use the norm budget left, then the whole perturbation is
    /// re-normalized to ε.
    fn l2_candidate(
        &self,
        x: &Tensor,
        best: &Tensor,
        rngs: &mut [&mut ChaCha8Rng],
        shared: Option<&mut ChaCha8Rng>,
        side: i64,
        eps: f64,
    ) -> Result<Tensor, AttackError> {
        let mut side = side.max(3);
        if side % 2 == 0 {
            side += 1;
        }
        let side = side.min(self.h).min(self.w);
        let n = rngs.len();
        let (mut first, mut second, mut flips) = (Vec::new(), Vec::new(), Vec::new());
        let mut signs = Vec::with_capacity(n * self.c as usize);
        let common = shared.map(|rng| {
            (
                self.corner(rng, side),
                self.corner(rng, side),
                rng.random::<bool>(),
            )
        });
        for rng in rngs.iter_mut() {
            let (a, b, flip) = match common {
                Some(drawn) => drawn,
                None => (
                    self.corner(rng, side),
                    self.corner(rng, side),
                    rng.random::<bool>(),
                ),
            };
            first.push(a);
            second.push(b);
            flips.push(flip);
            signs.extend((0..self.c).map(|_| noise::random_sign(rng)));
        }
        let mask1 = self.masks(&first, side)?.f_to_kind(Kind::Float)?;
        let mask2 = self.masks(&second, side)?.f_to_kind(Kind::Float)?;
        let delta = best.f_sub(x)?;
        let hw = [2i64, 3].as_slice();
        let window1_norms = delta
            .f_mul(&mask1)?
            .f_square()?
            .f_sum_dim_intlist(hw, true, Kind::Float)?
            .f_sqrt()?;
        let image_norms = per_row(&row_norms(&delta, Norm::L2)?, &delta)?;
        let union = mask1.f_maximum(&mask2)?;
        let union_norms = per_row(&row_norms(&delta.f_mul(&union)?, Norm::L2)?, &delta)?;

        let pattern = self.placed_eta(&first, &flips, side)?;
        let signs = Tensor::f_from_slice(&signs)?.f_view([-1, self.c, 1, 1])?;
        let fresh = pattern.f_mul(&signs)?.f_add(
            &delta
                .f_mul(&mask1)?
                .f_div(&window1_norms.f_add_scalar(NORM_FLOOR)?)?,
        )?;
        let fresh_norms = fresh
            .f_square()?
            .f_sum_dim_intlist(hw, true, Kind::Float)?
            .f_sqrt()?
            .f_add_scalar(NORM_FLOOR)?;
        let budget = image_norms
            .f_square()?
            .f_neg()?
            .f_add_scalar(eps * eps)?
            .f_clamp_min(0.0)?
            .f_div_scalar(self.c as f64)?
            .f_add(&union_norms.f_square()?)?
            .f_sqrt()?;
        let fresh = fresh.f_div(&fresh_norms)?.f_mul(&budget)?;
        let keep = mask1
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_mul(&mask2.f_neg()?.f_add_scalar(1.0)?)?;
        let moved = delta.f_mul(&keep)?.f_add(&fresh.f_mul(&mask1)?)?;
        let unit = moved.f_div(&per_row(
            &row_norms(&moved, Norm::L2)?.f_add_scalar(NORM_FLOOR)?,
            &moved,
        )?)?;
        Ok(x.f_add(&unit.f_mul_scalar(eps)?)?.f_clamp(0.0, 1.0)?)
    }

    /// A uniformly random top-left corner of a `side × side` window inside the image.
    fn corner(&self, rng: &mut ChaCha8Rng, side: i64) -> (i64, i64) {
        (
            rng.random_range(0..=(self.h - side).max(0)),
            rng.random_range(0..=(self.w - side).max(0)),
        )
    }

    /// Boolean window masks `[n, 1, H, W]`, one per corner.
    fn masks(&self, corners: &[(i64, i64)], side: i64) -> Result<Tensor, AttackError> {
        let (rows, cols) = self.offsets(corners)?;
        let inside = |t: &Tensor| -> Result<Tensor, AttackError> {
            Ok(t.f_ge(0)?.f_logical_and(&t.f_lt(side)?)?)
        };
        let rows_in = inside(&rows)?.f_view([-1, 1, self.h, 1])?;
        let cols_in = inside(&cols)?.f_view([-1, 1, 1, self.w])?;
        Ok(rows_in.f_logical_and(&cols_in)?)
    }

    /// Per row, each pixel's offset from the window corner: rows `[n, H]`, columns `[n, W]`.
    fn offsets(&self, corners: &[(i64, i64)]) -> Result<(Tensor, Tensor), AttackError> {
        let tops: Vec<i64> = corners.iter().map(|c| c.0).collect();
        let lefts: Vec<i64> = corners.iter().map(|c| c.1).collect();
        let h_idx = Tensor::f_arange(self.h, (Kind::Int64, Device::Cpu))?.f_view([1, self.h])?;
        let w_idx = Tensor::f_arange(self.w, (Kind::Int64, Device::Cpu))?.f_view([1, self.w])?;
        let rows = h_idx.f_sub(&Tensor::f_from_slice(&tops)?.f_view([-1, 1])?)?;
        let cols = w_idx.f_sub(&Tensor::f_from_slice(&lefts)?.f_view([-1, 1])?)?;
        Ok((rows, cols))
    }

    /// The eta pattern of `side` placed at each row's window (transposed where `flips`), zero elsewhere:
    /// `[n, 1, H, W]`.
    fn placed_eta(
        &self,
        corners: &[(i64, i64)],
        flips: &[bool],
        side: i64,
    ) -> Result<Tensor, AttackError> {
        let pattern = eta(side as usize);
        let plain = Tensor::f_from_slice(&pattern)?.f_view([side, side])?;
        let flipped = plain.f_tr()?.f_contiguous()?;
        let (rows, cols) = self.offsets(corners)?;
        let n = corners.len() as i64;
        let place = |table: &Tensor| -> Result<Tensor, AttackError> {
            let r = rows.f_clamp(0, side - 1)?;
            let cidx = cols.f_clamp(0, side - 1)?;
            // table[r[n, h], c[n, w]] -> [n, H, W]
            let picked_rows = table
                .f_index_select(0, &r.f_flatten(0, -1)?)?
                .f_view([n, self.h, side])?;
            let gather_idx = cidx
                .f_view([n, 1, self.w])?
                .f_expand([n, self.h, self.w], false)?;
            Ok(picked_rows.f_gather(2, &gather_idx, false)?)
        };
        let flip_mask = Tensor::f_from_slice(flips)?.f_view([-1, 1, 1])?;
        let values = place(&flipped)?.f_where_self(&flip_mask, &place(&plain)?)?;
        let mask = self.masks(corners, side)?.f_to_kind(Kind::Float)?;
        Ok(values.f_unsqueeze(1)?.f_mul(&mask)?)
    }
}

/// The eta pattern of Square-L2: two `side/2 × side` rectangles of opposite sign, each a sum of centred squares
/// weighted `1/(k+1)²`, normalized to unit L2 norm. Row-major `side × side`.
fn eta(side: usize) -> Vec<f32> {
    let upper = side / 2;
    let mut out = Vec::with_capacity(side * side);
    out.extend(rings(upper, side));
    out.extend(rings(side - upper, side).into_iter().map(|v| -v));
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    out.iter_mut().for_each(|v| *v /= norm);
    out
}

/// Rows of the `rows × cols` centred-rings rectangle (unit L2 norm).
fn rings(rows: usize, cols: usize) -> Vec<f32> {
    let mut delta = vec![0f32; rows * cols];
    if rows == 0 {
        return delta;
    }
    let (centre_r, centre_c) = (rows / 2 + 1, cols / 2 + 1);
    let (mut top, mut left) = (centre_r as i64 - 1, centre_c as i64 - 1);
    for k in 0..centre_r.max(centre_c) {
        let weight = 1.0 / ((k + 1) * (k + 1)) as f32;
        let r0 = top.max(0) as usize;
        let r1 = ((top + 2 * k as i64 + 1) as usize).min(rows);
        let c0 = left.max(0) as usize;
        let c1 = ((left + 2 * k as i64 + 1) as usize).min(cols);
        for r in r0..r1 {
            for c in c0..c1 {
                delta[r * cols + c] += weight;
            }
        }
        top -= 1;
        left -= 1;
    }
    let norm = delta.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    delta.iter_mut().for_each(|v| *v /= norm);
    delta
}

/// The values of a `side × side` pattern, row-major, optionally transposed.
fn eta_values(eta: &[f32], side: usize, transpose: bool) -> impl Iterator<Item = f32> + '_ {
    (0..side * side).map(move |i| {
        let (r, c) = (i / side, i % side);
        if transpose {
            eta[c * side + r]
        } else {
            eta[i]
        }
    })
}
