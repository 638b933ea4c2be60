//! Resize (opsets 10–19+) and Upsample (7–9): nearest, linear and cubic interpolation, one axis at a time (all
//! three are separable), by gathering input rows and weighting them, so gradients reach the input through
//! `index_select`. Coordinates follow `coordinate_transformation_mode` in float32, as onnxruntime computes them;
//! before opset 11 (Upsample, Resize-10) the mapping is `asymmetric` and nearest rounds the "simple" way.

use tch::{Kind, Tensor};

use super::{axis, to_i64_vec, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[("Resize", resize), ("Upsample", upsample)];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// Everything about the resampling that is the same for every axis.
struct Resampling {
    mode: Mode,
    transform: String,
    nearest: String,
    cubic_a: f32,
    exclude_outside: bool,
    extrapolation: f64,
}

/// One resized axis: lengths, the scale, and the region of interest (tf_crop_and_resize only).
struct AxisPlan {
    dim: i64,
    input: i64,
    output: i64,
    scale: f32,
    roi: (f32, f32),
}

fn mode_of(name: &str) -> Result<Mode, OpError> {
    match name {
        "nearest" => Ok(Mode::Nearest),
        "linear" | "bilinear" | "trilinear" => Ok(Mode::Linear),
        "cubic" | "bicubic" => Ok(Mode::Cubic),
        other => Err(OpError::Invalid(format!("mode `{other}` is not valid"))),
    }
}

fn float_values(t: &Tensor) -> Result<Vec<f32>, OpError> {
    Ok(Vec::<f32>::try_from(
        &t.f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_flatten(0, -1)?,
    )?)
}

fn upsample(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let scales = if c.opset < 9 {
        c.attr::<Vec<f32>>("scales")?
            .ok_or_else(|| OpError::Invalid("attribute `scales` is required".into()))?
    } else {
        float_values(c.input(i, 1)?)?
    };
    let r = Resampling {
        mode: mode_of(&c.attr_or("mode", "nearest".to_owned())?)?,
        transform: "asymmetric".into(),
        nearest: "simple".into(),
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
    };
    let plans = plans_from_scales(x, &scales, None, None)?;
    apply(c, x, &r, &plans)
}

fn resize(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let mode = mode_of(&c.attr_or("mode", "nearest".to_owned())?)?;
    if c.opset < 11 {
        let r = Resampling {
            mode,
            transform: "asymmetric".into(),
            nearest: "simple".into(),
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
        };
        let plans = plans_from_scales(x, &float_values(c.input(i, 1)?)?, None, None)?;
        return apply(c, x, &r, &plans);
    }
    let r = Resampling {
        mode,
        transform: c.attr_or("coordinate_transformation_mode", "half_pixel".to_owned())?,
        nearest: c.attr_or("nearest_mode", "round_prefer_floor".to_owned())?,
        cubic_a: c.attr_or("cubic_coeff_a", -0.75f32)?,
        exclude_outside: c.attr_or("exclude_outside", 0i64)? != 0,
        extrapolation: c.attr_or("extrapolation_value", 0.0f32)? as f64,
    };
    let rank = x.dim() as i64;
    let axes: Vec<i64> = match c.attr::<Vec<i64>>("axes")? {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let roi = c
        .opt(i, 1)
        .filter(|t| t.numel() > 0)
        .map(float_values)
        .transpose()?;
    let scales = c.opt(i, 2).filter(|t| t.numel() > 0);
    let sizes = c.opt(i, 3).filter(|t| t.numel() > 0);
    let plans = match (scales, sizes) {
        (Some(s), None) => plans_from_scales(x, &float_values(s)?, Some(&axes), roi.as_deref())?,
        (None, Some(s)) => {
            let policy = c.attr_or("keep_aspect_ratio_policy", "stretch".to_owned())?;
            plans_from_sizes(x, &to_i64_vec(s)?, &axes, roi.as_deref(), &policy)?
        }
        _ => {
            return Err(OpError::Invalid(
                "exactly one of `scales` and `sizes` must be given".into(),
            ))
        }
    };
    if c.attr_or("antialias", 0i64)? != 0
        && r.mode != Mode::Nearest
        && plans.iter().any(|p| p.output < p.input)
    {
        return Err(OpError::Invalid(
            "antialiased downsampling is not supported".into(),
        ));
    }
    apply(c, x, &r, &plans)
}

fn roi_of(roi: Option<&[f32]>, k: usize, n: usize) -> (f32, f32) {
    match roi {
        Some(r) if r.len() == 2 * n => (r[k], r[n + k]),
        _ => (0.0, 1.0),
    }
}

fn plans_from_scales(
    x: &Tensor,
    scales: &[f32],
    axes: Option<&[i64]>,
    roi: Option<&[f32]>,
) -> Result<Vec<AxisPlan>, OpError> {
    let size = x.size();
    let axes: Vec<i64> = axes.map_or_else(|| (0..size.len() as i64).collect(), <[i64]>::to_vec);
    if scales.len() != axes.len() {
        return Err(OpError::Invalid(format!(
            "{} scales for {} axes",
            scales.len(),
            axes.len()
        )));
    }
    axes.iter()
        .zip(scales)
        .enumerate()
        .map(|(k, (&d, &scale))| {
            if !(scale > 0.0 && scale.is_finite()) {
                return Err(OpError::Invalid(format!("scale {scale} must be positive")));
            }
            let input = size[d as usize];
            Ok(AxisPlan {
                dim: d,
                input,
                output: (input as f32 * scale).floor() as i64,
                scale,
                roi: roi_of(roi, k, axes.len()),
            })
        })
        .collect()
}

fn plans_from_sizes(
    x: &Tensor,
    sizes: &[i64],
    axes: &[i64],
    roi: Option<&[f32]>,
    policy: &str,
) -> Result<Vec<AxisPlan>, OpError> {
    let size = x.size();
    if sizes.len() != axes.len() {
        return Err(OpError::Invalid(format!(
            "{} sizes for {} axes",
            sizes.len(),
            axes.len()
        )));
    }
    let ratios: Vec<f32> = axes
        .iter()
        .zip(sizes)
        .map(|(&d, &s)| s as f32 / size[d as usize] as f32)
        .collect();
    let common = match policy {
        "stretch" => None,
        "not_larger" => ratios.iter().copied().reduce(f32::min),
        "not_smaller" => ratios.iter().copied().reduce(f32::max),
        other => {
            return Err(OpError::Invalid(format!(
                "keep_aspect_ratio_policy `{other}` is not valid"
            )))
        }
    };
    axes.iter()
        .zip(sizes.iter().zip(&ratios))
        .enumerate()
        .map(|(k, (&d, (&s, &ratio)))| {
            let input = size[d as usize];
            let (output, scale) = match common {
                Some(r) => ((input as f32 * r).round() as i64, r),
                None => (s, ratio),
            };
            Ok(AxisPlan {
                dim: d,
                input,
                output,
                scale,
                roi: roi_of(roi, k, axes.len()),
            })
        })
        .collect()
}

fn apply(c: &OpCtx, x: &Tensor, r: &Resampling, plans: &[AxisPlan]) -> OpResult {
    let mut out_shape = x.size();
    for p in plans {
        out_shape[p.dim as usize] = p.output;
    }
    c.check_shape("the resized shape", &out_shape)?;
    let mut y = x.shallow_clone();
    for p in plans
        .iter()
        .filter(|p| p.output != p.input || p.scale != 1.0)
    {
        y = resample_axis(&y, r, p)?;
    }
    Ok(vec![y])
}

/// The input coordinate of each output position along one axis, in float32.
fn source_coordinates(r: &Resampling, p: &AxisPlan) -> Result<Vec<f32>, OpError> {
    let (len_in, len_out, scale) = (p.input as f32, p.output as f32, p.scale);
    (0..p.output)
        .map(|o| {
            let o = o as f32;
            Ok(match r.transform.as_str() {
                "half_pixel" => (o + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => {
                    if len_out > 1.0 {
                        (o + 0.5) / scale - 0.5
                    } else {
                        0.0
                    }
                }
                "align_corners" => {
                    if len_out == 1.0 {
                        0.0
                    } else {
                        o * (len_in - 1.0) / (len_out - 1.0)
                    }
                }
                "asymmetric" => o / scale,
                "half_pixel_symmetric" => {
                    let adjustment = len_out / (scale * len_in);
                    let offset = len_in / 2.0 * (1.0 - adjustment);
                    offset + (o + 0.5) / scale - 0.5
                }
                "tf_crop_and_resize" => {
                    let (start, end) = p.roi;
                    if len_out > 1.0 {
                        start * (len_in - 1.0)
                            + o * (end - start) * (len_in - 1.0) / (len_out - 1.0)
                    } else {
                        0.5 * (start + end) * (len_in - 1.0)
                    }
                }
                other => {
                    return Err(OpError::Invalid(format!(
                        "coordinate_transformation_mode `{other}` is not valid"
                    )))
                }
            })
        })
        .collect()
}

fn nearest_index(r: &Resampling, x: f32, downsampling: bool) -> Result<i64, OpError> {
    Ok(match r.nearest.as_str() {
        "round_prefer_floor" => {
            if x == x.floor() + 0.5 {
                x.floor() as i64
            } else {
                x.round() as i64
            }
        }
        "round_prefer_ceil" => x.round() as i64,
        "floor" => x.floor() as i64,
        "ceil" => x.ceil() as i64,
        "simple" => {
            if downsampling {
                x.ceil() as i64
            } else {
                x as i64
            }
        }
        other => {
            return Err(OpError::Invalid(format!(
                "nearest_mode `{other}` is not valid"
            )))
        }
    })
}

/// Per output position: the input indices it reads (clamped to the axis) and their weights.
type Taps = (Vec<Vec<i64>>, Vec<Vec<f32>>);

/// The taps of every output position along one axis.
fn taps(r: &Resampling, p: &AxisPlan) -> Result<Taps, OpError> {
    let coords = source_coordinates(r, p)?;
    let last = p.input - 1;
    let clamp = |k: i64| k.clamp(0, last.max(0));
    let mut index = Vec::with_capacity(coords.len());
    let mut weight = Vec::with_capacity(coords.len());
    for x in coords {
        let (ix, wx) = match r.mode {
            Mode::Nearest => (vec![clamp(nearest_index(r, x, p.scale < 1.0)?)], vec![1.0]),
            Mode::Linear => {
                let x = x.clamp(0.0, last as f32);
                let x0 = x.floor() as i64;
                let t = x - x0 as f32;
                (vec![x0, clamp(x0 + 1)], vec![1.0 - t, t])
            }
            Mode::Cubic => {
                let x0 = x.floor();
                let t = x - x0;
                let a = r.cubic_a;
                let w = |s: f32| {
                    let s = s.abs();
                    if s <= 1.0 {
                        ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
                    } else if s < 2.0 {
                        ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let raw: Vec<i64> = (-1..=2).map(|k| x0 as i64 + k).collect();
                let mut ws: Vec<f32> = [1.0 + t, t, 1.0 - t, 2.0 - t]
                    .iter()
                    .map(|&s| w(s))
                    .collect();
                if r.exclude_outside {
                    for (wk, &k) in ws.iter_mut().zip(&raw) {
                        if k < 0 || k > last {
                            *wk = 0.0;
                        }
                    }
                    let total: f32 = ws.iter().sum();
                    if total != 0.0 {
                        ws.iter_mut().for_each(|wk| *wk /= total);
                    }
                }
                (raw.into_iter().map(clamp).collect(), ws)
            }
        };
        index.push(ix);
        weight.push(wx);
    }
    Ok((index, weight))
}

fn resample_axis(x: &Tensor, r: &Resampling, p: &AxisPlan) -> Result<Tensor, OpError> {
    if p.input == 0 || p.output == 0 {
        let mut shape = x.size();
        shape[p.dim as usize] = p.output;
        return Ok(Tensor::f_zeros(&shape, (x.kind(), x.device()))?);
    }
    let (index, weight) = taps(r, p)?;
    let n_taps = index[0].len();
    let mut weight_shape = vec![1i64; x.dim()];
    weight_shape[p.dim as usize] = p.output;
    let mut y: Option<Tensor> = None;
    for k in 0..n_taps {
        let idx: Vec<i64> = index.iter().map(|v| v[k]).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(x.device())?;
        let rows = x.f_index_select(p.dim, &idx)?;
        let term = if r.mode == Mode::Nearest {
            rows
        } else {
            let w: Vec<f32> = weight.iter().map(|v| v[k]).collect();
            let w = Tensor::f_from_slice(&w)?
                .f_to_device(x.device())?
                .f_to_kind(x.kind())?
                .f_reshape(&weight_shape)?;
            rows.f_mul(&w)?
        };
        y = Some(match y {
            None => term,
            Some(acc) => acc.f_add(&term)?,
        });
    }
    let mut y = y.ok_or_else(|| OpError::Invalid("no interpolation taps".into()))?;
    if r.transform == "tf_crop_and_resize" {
        let coords = source_coordinates(r, p)?;
        let outside: Vec<bool> = coords
            .iter()
            .map(|&x| x < 0.0 || x > (p.input - 1) as f32)
            .collect();
        if outside.iter().any(|&o| o) {
            let mask = Tensor::f_from_slice(&outside)?
                .f_to_device(x.device())?
                .f_reshape(&weight_shape)?;
            let fill = y.f_full_like(r.extrapolation)?;
            y = fill.f_where_self(&mask, &y)?;
        }
    }
    Ok(y)
}
