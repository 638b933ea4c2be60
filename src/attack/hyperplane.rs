//! The step of FAB ([`super::fab`]): the smallest move, in L∞ or L2, from a point `t` of the pixel box to the
//! hyperplane `w · z = b`, staying inside the box `[0, 1]^D` — batched, one hyperplane per row.
//!
//! Both are ports of AutoAttack's `fab_projections.py` (Croce & Hein 2020, "Minimally distorted adversarial examples
//! with a fast adaptive boundary attack", Section 3.1): the box-constrained projection is a one-dimensional search
//! over the coordinates sorted by where they hit the box, done as a vectorized binary search on cumulative sums. No
//! crate solves this box-constrained problem, and it must run batched on the attack's tensors. Where the hyperplane
//! cannot be reached inside the box, the result moves as far towards it as the box allows (as the reference does).
//!
//! Inputs are `t` `[R, D]` (points in the box), `w` `[R, D]` (normals) and `b` `[R]`; the result is the move `d`
//! `[R, D]`, zero where `w` is zero. Every step is computed for all rows and the case that applies is chosen per row
//! with `where`, so no row's case changes the shape of another's work.

use tch::{Kind, Tensor};

use super::AttackError;

/// Values of the L2 search standing in for "never hits the box" (the reference's 1e12).
const FAR: f64 = 1e12;
/// Normal entries below this are treated as zero in the L2 projection.
const TINY_WEIGHT: f64 = 1e-8;

/// The minimal-L∞ move from `t` onto `w · z = b` inside the box.
pub fn project_linf(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor, AttackError> {
    let d_len = t.size()[1];
    let row_dot = |u: &Tensor, v: &Tensor| -> Result<Tensor, AttackError> {
        Ok(u.f_mul(v)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?)
    };
    // Orient the hyperplane so that t lies on its non-negative side.
    let sign = row_dot(w, t)?
        .f_sub(b)?
        .f_ge(0.0)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?;
    let w = w.f_mul(&sign.f_unsqueeze(1)?)?;
    let b = b.f_mul(&sign)?;
    let nonzero = w.f_ne(0.0)?.f_to_kind(Kind::Float)?;
    let a = w.f_lt(0.0)?.f_to_kind(Kind::Float)?;
    // The farthest each coordinate can move towards the hyperplane: to 1 where w < 0, to 0 elsewhere.
    let d = a.f_sub(t)?.f_mul(&nonzero)?;
    let two_a_minus_one = a.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
    let p = a.f_sub(&t.f_mul(&two_a_minus_one)?)?;
    let order = p.f_argsort(1, false)?;
    let b = b.f_sub(&row_dot(&w, t)?)?;
    let b0 = row_dot(&w, &d)?;
    let reversed = order.f_flip([1i64].as_slice())?;
    let ws = w.f_gather(1, &reversed, false)?;
    let bs2 = ws.f_neg()?.f_mul(&d.f_gather(1, &reversed, false)?)?;
    let s = ws.f_abs()?.f_cumsum(1, Kind::Float)?;
    let sb = bs2.f_cumsum(1, Kind::Float)?.f_add(&b0.f_unsqueeze(1)?)?;

    let last = |m: &Tensor| m.f_select(1, d_len - 1);
    let smallest_p = p
        .f_gather(1, &order.f_narrow(1, 0, 1)?, false)?
        .f_squeeze_dim(1)?;
    let b2 = last(&sb)?.f_sub(&last(&s)?.f_mul(&smallest_p)?)?;
    let beyond_all = b.f_sub(&b2)?.f_gt(0.0)?;
    let searched = b
        .f_sub(&b0)?
        .f_gt(0.0)?
        .f_logical_and(&beyond_all.f_logical_not()?)?;

    let lb = binary_search(&b.f_zeros_like()?, d_len, |mid| {
        let mid_col = mid.f_unsqueeze(1)?;
        let at = order.f_gather(1, &mid_col.f_neg()?.f_add_scalar(d_len - 1)?, false)?;
        let b2 = sb
            .f_gather(1, &mid_col, false)?
            .f_sub(
                &s.f_gather(1, &mid_col, false)?
                    .f_mul(&p.f_gather(1, &at, false)?)?,
            )?
            .f_squeeze_dim(1)?;
        Ok(b.f_sub(&b2)?.f_gt(0.0)?)
    })?
    .f_unsqueeze(1)?;

    let lambda_all = b
        .f_sub(&last(&sb)?)?
        .f_div(&last(&s)?.f_neg()?)?
        .f_clamp_min(0.0)?
        .f_unsqueeze(1)?;
    let d_all = two_a_minus_one.f_mul(&lambda_all)?;
    let lambda = b
        .f_unsqueeze(1)?
        .f_sub(&sb.f_gather(1, &lb, false)?)?
        .f_div(&s.f_gather(1, &lb, false)?.f_neg()?)?
        .f_clamp_min(0.0)?;
    let one_minus_a = a.f_neg()?.f_add_scalar(1.0)?;
    let d_searched = d
        .f_minimum(&lambda)?
        .f_mul(&a)?
        .f_add(&d.f_maximum(&lambda.f_neg()?)?.f_mul(&one_minus_a)?)?;
    let d = d_all.f_where_self(
        &beyond_all.f_unsqueeze(1)?,
        &d_searched.f_where_self(&searched.f_unsqueeze(1)?, &d)?,
    )?;
    Ok(d.f_mul(&nonzero)?)
}

/// The minimal-L2 move from `t` onto `w · z = b` inside the box.
pub fn project_l2(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor, AttackError> {
    let d_len = t.size()[1];
    let dims = [1i64].as_slice();
    let c = w
        .f_mul(t)?
        .f_sum_dim_intlist(dims, false, Kind::Float)?
        .f_sub(b)?;
    let sign = c
        .f_ge(0.0)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?;
    let w = w.f_mul(&sign.f_unsqueeze(1)?)?;
    let c = c.f_mul(&sign)?;
    let usable = w.f_abs()?.f_gt(TINY_WEIGHT)?;

    // Per coordinate, the step length along -w at which it reaches the box.
    let r = t
        .f_div(&w)?
        .f_maximum(&t.f_sub_scalar(1.0)?.f_div(&w)?)?
        .f_clamp(-FAR, FAR)?;
    let r = r.f_masked_fill(&usable.f_logical_not()?, FAR)?;
    let r = r.f_masked_fill(&r.f_eq(-FAR)?, FAR)?;
    let (rs, order) = r.f_sort(1, false)?;
    let rs2 = Tensor::f_cat(
        &[
            rs.f_narrow(1, 1, d_len - 1)?,
            rs.f_narrow(1, 0, 1)?.f_zeros_like()?,
        ],
        1,
    )?;
    let rs = rs.f_masked_fill(&rs.f_eq(FAR)?, 0.0)?;
    let rs2 = rs2.f_masked_fill(&rs2.f_eq(FAR)?, 0.0)?;
    let w3s = w.f_square()?.f_gather(1, &order, false)?;
    let w5 = w3s.f_sum_dim_intlist(dims, true, Kind::Float)?;
    let ws = w5.f_sub(&w3s.f_cumsum(1, Kind::Float)?)?;
    let d = r
        .f_mul(&w)?
        .f_neg()?
        .f_mul(&usable.f_to_kind(Kind::Float)?)?;
    let first = w5.f_mul(&rs.f_narrow(1, 0, 1)?)?;
    let s = Tensor::f_cat(
        &[
            first.f_neg()?,
            rs.f_sub(&rs2)?
                .f_mul(&ws)?
                .f_cumsum(1, Kind::Float)?
                .f_sub(&first)?,
        ],
        1,
    )?;

    let plane_only = s.f_select(1, 0)?.f_add(&c)?.f_lt(0.0)?;
    let unreachable = d
        .f_mul(&w)?
        .f_sum_dim_intlist(dims, false, Kind::Float)?
        .f_add(&c)?
        .f_gt(0.0)?;
    let searched = plane_only.f_logical_or(&unreachable)?.f_logical_not()?;
    let lb = binary_search(&c.f_zeros_like()?, d_len, |mid| {
        Ok(s.f_gather(1, &mid.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?
            .f_add(&c)?
            .f_gt(0.0)?)
    })?
    .f_unsqueeze(1)?;

    let d_plane = c
        .f_div(&w5.f_squeeze_dim(1)?)?
        .f_unsqueeze(1)?
        .f_neg()?
        .f_mul(&w)?;
    let ws_lb = ws.f_gather(1, &lb, false)?;
    let alpha = s
        .f_gather(1, &lb, false)?
        .f_add(&c.f_unsqueeze(1)?)?
        .f_div(&ws_lb)?
        .f_add(&rs.f_gather(1, &lb, false)?)?;
    let alpha = alpha.f_masked_fill(&ws_lb.f_eq(0.0)?, 0.0)?;
    let clipped = alpha.f_gt_tensor(&r)?.f_to_kind(Kind::Float)?;
    let d_searched = d.f_mul(&clipped)?.f_sub(
        &alpha
            .f_mul(&w)?
            .f_mul(&clipped.f_neg()?.f_add_scalar(1.0)?)?,
    )?;
    let d = d_plane.f_where_self(
        &plane_only.f_unsqueeze(1)?,
        &d_searched.f_where_self(&searched.f_unsqueeze(1)?, &d)?,
    )?;
    Ok(d.f_mul(&usable.f_to_kind(Kind::Float)?)?)
}

/// The reference's vectorized bisection over `0..len-1`: per row, `lb` moves up to `mid` where `go_up(mid)` holds
/// and `ub` down otherwise, for ⌈log2 len⌉ rounds. Returns `lb` (int64).
fn binary_search(
    zeros: &Tensor,
    len: i64,
    go_up: impl Fn(&Tensor) -> Result<Tensor, AttackError>,
) -> Result<Tensor, AttackError> {
    let rounds = (len.max(1) as f64).log2().ceil() as usize;
    let mut lb = zeros.f_to_kind(Kind::Float)?;
    let mut ub = lb.f_full_like((len - 1) as f64)?;
    for _ in 0..rounds {
        let mid = lb.f_add(&ub)?.f_div_scalar(2.0)?.f_floor()?;
        let up = go_up(&mid.f_to_kind(Kind::Int64)?)?;
        lb = mid.f_where_self(&up, &lb)?;
        ub = ub.f_where_self(&up, &mid)?;
    }
    Ok(lb.f_to_kind(Kind::Int64)?)
}
