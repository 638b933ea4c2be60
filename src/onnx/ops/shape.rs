//! Shape and data-movement ops: Reshape, Flatten, Transpose, Squeeze/Unsqueeze, Concat, Split, Slice, Gather,
//! Shape, Constant, ConstantOfShape, Expand, Tile, Range, Pad. Integer arguments that arrive as tensors (shapes,
//! axes, pads) are read to the host; in a graph they are usually folded constants.

use tch::{Kind, Tensor};

use super::{axis, first_i64, not_scalar, one, to_f64, to_i64_vec, OpCtx, OpError, OpFn, OpResult};
use crate::onnx::constants;

pub const OPS: &[(&str, OpFn)] = &[
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Transpose", transpose),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Gather", gather),
    ("GatherElements", gather_elements),
    ("Shape", shape),
    ("Size", |c, i| {
        let x = c.input(i, 0)?;
        one(Tensor::f_scalar_tensor(
            x.numel() as f64,
            (Kind::Int64, x.device()),
        )?)
    }),
    ("Constant", constant),
    ("ConstantOfShape", constant_of_shape),
    ("Expand", expand),
    ("Tile", tile),
    ("Range", range),
    ("Pad", pad),
];

fn int_tensor(values: &[i64], like: &Tensor) -> Result<Tensor, OpError> {
    Ok(Tensor::f_from_slice(values)?.f_to_device(like.device())?)
}

fn reshape(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    // The target shape is an attribute before opset 5, an input from then on.
    let target = match c.ints_attr_or_input(i, "shape", 1, 5)? {
        Some(t) => t,
        None => return Err(OpError::Invalid("the target shape is missing".into())),
    };
    let allow_zero = c.attr_or("allowzero", 0i64)? != 0;
    let size = x.size();
    let shape: Vec<i64> = target
        .iter()
        .enumerate()
        .map(|(k, &d)| {
            if d == 0 && !allow_zero {
                size.get(k).copied().ok_or_else(|| {
                    OpError::Invalid(format!(
                        "shape {target:?} copies dim {k} of a rank-{} input",
                        size.len()
                    ))
                })
            } else {
                Ok(d)
            }
        })
        .collect::<Result<_, _>>()?;
    one(x.f_reshape(&shape)?)
}

fn flatten(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let a = c.attr_or("axis", 1i64)?;
    let a = if a < 0 { a + rank } else { a };
    if !(0..=rank).contains(&a) {
        return Err(OpError::Invalid(format!(
            "axis {a} is out of range for rank {rank}"
        )));
    }
    let size = x.size();
    let outer: i64 = size[..a as usize].iter().product();
    let inner: i64 = size[a as usize..].iter().product();
    one(x.f_reshape([outer, inner])?)
}

fn transpose(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let perm = c.attr_or("perm", (0..rank).rev().collect::<Vec<_>>())?;
    one(x.f_permute(&perm)?)
}

fn squeeze(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let axes = c.ints_attr_or_input(i, "axes", 1, 13)?;
    let axes: Vec<i64> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => x
            .size()
            .iter()
            .enumerate()
            .filter(|(_, &d)| d == 1)
            .map(|(k, _)| k as i64)
            .collect(),
    };
    if let Some(&a) = axes.iter().find(|&&a| x.size()[a as usize] != 1) {
        return Err(OpError::Invalid(format!(
            "cannot squeeze axis {a} of size {}",
            x.size()[a as usize]
        )));
    }
    one(x.f_squeeze_dims(&axes)?)
}

fn unsqueeze(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let axes = c
        .ints_attr_or_input(i, "axes", 1, 13)?
        .ok_or_else(|| OpError::Invalid("axes are required".into()))?;
    let out_rank = x.dim() as i64 + axes.len() as i64;
    let mut axes: Vec<i64> = axes
        .iter()
        .map(|&a| axis(a, out_rank))
        .collect::<Result<_, _>>()?;
    axes.sort_unstable();
    let mut y = x.shallow_clone();
    for a in axes {
        y = y.f_unsqueeze(a)?;
    }
    one(y)
}

fn concat(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let parts: Vec<&Tensor> = i.iter().flatten().copied().collect();
    let first = parts
        .first()
        .ok_or_else(|| OpError::Invalid("no inputs".into()))?;
    // `axis` became required in opset 4; it defaulted to 1 before.
    let default_axis = (c.opset < 4).then_some(1);
    let a = axis(
        c.attr::<i64>("axis")?
            .or(default_axis)
            .ok_or_else(|| OpError::Invalid("attribute `axis` is required".into()))?,
        first.dim() as i64,
    )?;
    one(Tensor::f_cat(&parts, a)?)
}

/// Split sizes: `split` attribute (before 13) or input (13+), else `num_outputs` (18+), else equal parts per output.
fn split(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    not_scalar(x, "Split")?;
    let a = axis(c.attr_or("axis", 0i64)?, x.dim() as i64)?;
    let len = x.size()[a as usize];
    let outputs = c.node.outputs.len() as i64;
    let sizes = match c.ints_attr_or_input(i, "split", 1, 13)? {
        Some(s) if !s.is_empty() => s,
        _ => {
            let parts = c.attr_or("num_outputs", outputs)?;
            if parts < 1 {
                return Err(OpError::Invalid(format!(
                    "num_outputs {parts}: a split needs at least one output"
                )));
            }
            let chunk = (len + parts - 1) / parts;
            (0..parts)
                .map(|k| (len - k * chunk).clamp(0, chunk))
                .collect()
        }
    };
    if sizes.iter().sum::<i64>() != len {
        return Err(OpError::Invalid(format!(
            "split sizes {sizes:?} do not add up to {len}"
        )));
    }
    Ok(x.f_split_with_sizes(&sizes, a)?)
}

/// Clamps ONNX slice bounds for one axis of length `n` (negative steps included).
fn slice_bounds(start: i64, end: i64, step: i64, n: i64) -> (i64, i64) {
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    if step > 0 {
        (s.clamp(0, n), e.clamp(0, n))
    } else {
        (s.clamp(0, n - 1), e.clamp(-1, n - 1))
    }
}

fn slice(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let (starts, ends, axes, steps) = if c.opset < 10 {
        (
            c.attr_or("starts", vec![])?,
            c.attr_or("ends", vec![])?,
            c.attr::<Vec<i64>>("axes")?,
            None,
        )
    } else {
        (
            to_i64_vec(c.input(i, 1)?)?,
            to_i64_vec(c.input(i, 2)?)?,
            c.ints_input(i, 3)?,
            c.ints_input(i, 4)?,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(OpError::Invalid(
            "starts, ends, axes and steps differ in length".into(),
        ));
    }
    let mut y = x.shallow_clone();
    for k in 0..starts.len() {
        let a = axis(axes[k], rank)?;
        let step = steps[k];
        if step == 0 {
            return Err(OpError::Invalid("slice step 0".into()));
        }
        let n = y.size()[a as usize];
        let (s, e) = slice_bounds(starts[k], ends[k], step, n);
        y = if step > 0 {
            y.f_slice(a, s, e.max(s), step)?
        } else if s <= e {
            y.f_narrow(a, 0, 0)?
        } else {
            let idx = Tensor::f_arange_start_step(s, e, step, (Kind::Int64, y.device()))?;
            y.f_index_select(a, &idx)?
        };
    }
    one(y)
}

fn gather(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, idx) = (c.input(i, 0)?, c.input(i, 1)?);
    not_scalar(x, "Gather")?;
    let a = axis(c.attr_or("axis", 0i64)?, x.dim() as i64)?;
    let n = x.size()[a as usize];
    let idx = idx.f_to_kind(Kind::Int64)?;
    let idx = idx.f_where_self(&idx.f_ge(0)?, &idx.f_add_scalar(n)?)?;
    let picked = x.f_index_select(a, &idx.f_flatten(0, -1)?)?;
    let mut shape = x.size()[..a as usize].to_vec();
    shape.extend(idx.size());
    shape.extend(&x.size()[a as usize + 1..]);
    one(picked.f_reshape(&shape)?)
}

fn gather_elements(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, idx) = (c.input(i, 0)?, c.input(i, 1)?);
    not_scalar(x, "GatherElements")?;
    let a = axis(c.attr_or("axis", 0i64)?, x.dim() as i64)?;
    let n = x.size()[a as usize];
    let idx = idx.f_to_kind(Kind::Int64)?;
    let idx = idx.f_where_self(&idx.f_ge(0)?, &idx.f_add_scalar(n)?)?;
    one(x.f_gather(a, &idx, false)?)
}

/// `start`/`end` (opset 15) select a range of dims, clamped like Python slices.
fn shape(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let dims = x.size();
    let rank = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(c.attr_or("start", 0i64)?);
    let end = clamp(c.attr_or("end", rank)?);
    let picked = if start < end {
        &dims[start..end]
    } else {
        &dims[0..0]
    };
    one(int_tensor(picked, x)?)
}

fn constant(c: &OpCtx, _: &[Option<&Tensor>]) -> OpResult {
    one(constants::constant_value(c.node)?)
}

fn constant_of_shape(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let shape_t = c.input(i, 0)?;
    let shape = to_i64_vec(shape_t)?;
    c.check_shape("the output shape", &shape)?;
    let value = match c.node.attr::<crate::onnx::proto::TensorProto>("value")? {
        Some(t) => constants::decode(&t)?,
        None => Tensor::f_zeros([1], (Kind::Float, tch::Device::Cpu))?,
    };
    let v = value.f_flatten(0, -1)?;
    one(v
        .f_expand(&shape, false)?
        .f_contiguous()?
        .f_to_device(shape_t.device())?)
}

/// Expand broadcasts in both directions: the result has the broadcast of the input's shape and `shape`.
fn expand(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let shape = to_i64_vec(c.input(i, 1)?)?;
    let xs = x.size();
    let rank = xs.len().max(shape.len());
    let dim = |s: &[i64], k: usize| -> i64 {
        let off = rank - s.len();
        if k < off {
            1
        } else {
            s[k - off]
        }
    };
    let target: Vec<i64> = (0..rank)
        .map(|k| {
            let (a, b) = (dim(&xs, k), dim(&shape, k));
            if a == 1 {
                b
            } else {
                a
            }
        })
        .collect();
    c.check_shape("the expanded shape", &target)?;
    one(x.f_expand(&target, false)?)
}

fn tile(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let repeats = to_i64_vec(c.input(i, 1)?)?;
    let size = x.size();
    if repeats.len() != size.len() {
        return Err(OpError::Invalid(format!(
            "repeats {repeats:?} should have one value per input dimension ({})",
            size.len()
        )));
    }
    let tiled: Vec<i64> = size
        .iter()
        .zip(&repeats)
        .map(|(&d, &r)| d.saturating_mul(r))
        .collect();
    c.check_shape("the tiled shape", &tiled)?;
    one(x.f_repeat(&repeats)?)
}

fn range(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (start, limit, delta) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let kind = start.kind();
    let dev = start.device();
    let t = if matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        let (s, l, d) = (to_f64(start)?, to_f64(limit)?, to_f64(delta)?);
        let n = ((l - s) / d).ceil().max(0.0);
        if !n.is_finite() || d == 0.0 {
            return Err(OpError::Invalid(format!(
                "Range from {s} to {l} by {d} has no finite length"
            )));
        }
        let n = n.min(i64::MAX as f64) as i64;
        c.check_shape("the range", &[n])?;
        Tensor::f_arange(n, (Kind::Double, dev))?
            .f_mul_scalar(d)?
            .f_add_scalar(s)?
    } else {
        let (s, l, d) = (
            first_i64(start, "start")?,
            first_i64(limit, "limit")?,
            first_i64(delta, "delta")?,
        );
        if d == 0 {
            return Err(OpError::Invalid("Range delta is 0".into()));
        }
        let n = ((l as f64 - s as f64) / d as f64).ceil().max(0.0);
        let n = n.min(i64::MAX as f64) as i64;
        c.check_shape("the range", &[n])?;
        Tensor::f_arange(n, (Kind::Int64, dev))?
            .f_mul_scalar(d)?
            .f_add_scalar(s)?
    };
    one(t.f_to_kind(kind)?)
}

/// Pad: `pads`/`value` attributes before opset 11, inputs (pads, constant_value, axes since 18) after.
fn pad(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let mode = c.attr_or("mode", "constant".to_owned())?;
    let (pads, value, axes) = if c.opset < 11 {
        let pads = c
            .attr::<Vec<i64>>("pads")?
            .ok_or_else(|| OpError::Invalid("attribute `pads` is required".into()))?;
        (pads, c.attr_or("value", 0.0f32)? as f64, None)
    } else {
        let pads = to_i64_vec(c.input(i, 1)?)?;
        let value = c
            .opt(i, 2)
            .filter(|t| t.numel() > 0)
            .map(to_f64)
            .transpose()?
            .unwrap_or(0.0);
        (pads, value, c.ints_input(i, 3)?)
    };
    let axes: Vec<i64> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(OpError::Invalid(format!(
            "pads {pads:?} should have {} values",
            2 * n
        )));
    }
    let mut begin = vec![0; rank as usize];
    let mut end = vec![0; rank as usize];
    for (k, &a) in axes.iter().enumerate() {
        begin[a as usize] = pads[k];
        end[a as usize] = pads[n + k];
    }
    let padded: Vec<i64> = x
        .size()
        .iter()
        .enumerate()
        .map(|(d, &len)| len.saturating_add(begin[d]).saturating_add(end[d]))
        .collect();
    c.check_shape("the padded shape", &padded)?;
    let torch_mode = match mode.as_str() {
        "constant" => {
            return one(x.f_pad(super::nn::torch_pad_list(&begin, &end), "constant", value)?)
        }
        "reflect" => "reflect",
        "edge" => "replicate",
        "wrap" => "circular",
        other => {
            return Err(OpError::Invalid(format!(
                "pad mode `{other}` is not supported"
            )))
        }
    };
    // libtorch's non-constant modes pad only trailing dims of a batched input: pad the trailing dims that need it.
    let first = (0..rank as usize)
        .find(|&d| begin[d] != 0 || end[d] != 0)
        .unwrap_or(rank as usize);
    let padded_dims = rank as usize - first;
    if padded_dims == 0 {
        return one(x.shallow_clone());
    }
    if padded_dims > 3 {
        return Err(OpError::Invalid(format!(
            "`{mode}` padding of more than the last 3 dims is not supported"
        )));
    }
    // Reshape to [batch, 1, trailing...] so libtorch sees a batched input with `padded_dims` spatial dims.
    let size = x.size();
    let mut view = vec![size[..first].iter().product::<i64>(), 1];
    view.extend(&size[first..]);
    let y = x.f_reshape(&view)?.f_pad(
        super::nn::torch_pad_list(&begin[first..], &end[first..]),
        torch_mode,
        None::<f64>,
    )?;
    let mut out_shape = size[..first].to_vec();
    out_shape.extend(&y.size()[2..]);
    one(y.f_reshape(&out_shape)?)
}
