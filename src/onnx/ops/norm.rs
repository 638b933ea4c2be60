//! Normalizations added after opset 17: GroupNormalization (18: per-group scale/bias, 21: per-channel) and
//! RMSNormalization (23), plus the normalization cores the contrib ops reuse (RMS over trailing axes).

use tch::{Kind, Tensor};

use super::{axis, one, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[
    ("GroupNormalization", group_norm),
    ("RMSNormalization", rms_norm),
];

/// `x / sqrt(mean(x², axes ≥ first) + eps)` and the reciprocal RMS (kept dims), computed in float32 at least.
pub fn rms_normalize(x: &Tensor, first: i64, eps: f64) -> Result<(Tensor, Tensor), OpError> {
    let dims: Vec<i64> = (first..x.dim() as i64).collect();
    let wide = if x.kind() == Kind::Double {
        x.shallow_clone()
    } else {
        x.f_to_kind(Kind::Float)?
    };
    let inv = wide
        .f_square()?
        .f_mean_dim(&dims[..], true, None::<Kind>)?
        .f_add_scalar(eps)?
        .f_rsqrt()?;
    Ok((wide.f_mul(&inv)?.f_to_kind(x.kind())?, inv))
}

fn rms_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, scale) = (c.input(i, 0)?, c.input(i, 1)?);
    let a = axis(c.attr_or("axis", -1i64)?, x.dim() as i64)?;
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    let (y, _) = rms_normalize(x, a, eps)?;
    one(y.f_mul(scale)?)
}

/// Statistics per (sample, group) over the group's channels and all spatial positions; then scale and bias per
/// channel (opset 21) or per group (opset 18, repeated over the group's channels).
fn group_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, scale, bias) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let groups = c
        .attr::<i64>("num_groups")?
        .ok_or_else(|| OpError::Invalid("attribute `num_groups` is required".into()))?;
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    let size = x.size();
    if size.len() < 2 || groups < 1 || size[1] % groups != 0 {
        return Err(OpError::Invalid(format!(
            "GroupNormalization: {groups} groups for an input of shape {size:?}"
        )));
    }
    let channels = size[1];
    let grouped = x.f_reshape([size[0], groups, -1])?;
    let mean = grouped.f_mean_dim(&[2i64][..], true, None::<Kind>)?;
    let centered = grouped.f_sub(&mean)?;
    let var = centered
        .f_square()?
        .f_mean_dim(&[2i64][..], true, None::<Kind>)?;
    let normalized = centered
        .f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?
        .f_reshape(&size)?;
    let per_channel = |t: &Tensor| -> Result<Tensor, OpError> {
        let t = if t.numel() as i64 == groups && groups != channels {
            t.f_repeat_interleave_self_int(channels / groups, 0, None::<i64>)?
        } else {
            t.shallow_clone()
        };
        let mut shape = vec![1i64; size.len()];
        shape[1] = channels;
        Ok(t.f_reshape(&shape)?)
    };
    one(normalized
        .f_mul(&per_channel(scale)?)?
        .f_add(&per_channel(bias)?)?)
}
