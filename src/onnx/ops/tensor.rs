//! Indexing and rearranging ops: GatherND, ScatterND, TopK, CumSum, DepthToSpace, SpaceToDepth, Einsum — and
//! `If`, whose evaluation the interpreter does itself (a condition that folds to a constant picks the branch
//! at plan time); reaching this table's entry means the condition depends on the input.

use tch::{Kind, Tensor};

use super::{axis, first_i64, not_scalar, one, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[
    ("GatherND", gather_nd),
    ("ScatterND", scatter_nd),
    ("TopK", top_k),
    ("CumSum", cum_sum),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", space_to_depth),
    ("Einsum", einsum),
    ("If", |_, _| {
        Err(OpError::Invalid(
            "If reached evaluation: its condition depends on the input (only conditions that fold to a \
             constant are supported)"
                .into(),
        ))
    }),
];

/// Row-major linear indices into the first `k` dims of `shape` for an index tensor `[..., k]` (negative indices
/// wrap, as ONNX allows), and the product of those dims.
fn linear_indices(indices: &Tensor, shape: &[i64]) -> Result<(Tensor, i64), OpError> {
    let k = *indices.size().last().unwrap_or(&0) as usize;
    if k > shape.len() {
        return Err(OpError::Invalid(format!(
            "indices address {k} dims of a rank-{} tensor",
            shape.len()
        )));
    }
    let idx = indices.f_to_kind(Kind::Int64)?;
    let mut linear = Tensor::f_zeros(
        &idx.size()[..idx.dim() - 1],
        (Kind::Int64, indices.device()),
    )?;
    for (j, &len) in shape[..k].iter().enumerate() {
        let part = idx.f_select(-1, j as i64)?;
        let part = part.f_where_self(&part.f_ge(0)?, &part.f_add_scalar(len)?)?;
        linear = linear.f_mul_scalar(len)?.f_add(&part)?;
    }
    Ok((linear, shape[..k].iter().product()))
}

/// GatherND with `batch_dims` b: the leading b dims of data and indices are batch dims; the rest of each index
/// row addresses data's next dims.
fn gather_nd(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (data, indices) = (c.input(i, 0)?, c.input(i, 1)?);
    let b = c.attr_or("batch_dims", 0i64)? as usize;
    let (ds, is) = (data.size(), indices.size());
    if indices.dim() < 1 || b >= indices.dim() || b > ds.len() || ds[..b] != is[..b] {
        return Err(OpError::Invalid(format!(
            "GatherND: data {ds:?} and indices {is:?} do not share {b} batch dims"
        )));
    }
    let batch: i64 = ds[..b].iter().product();
    let (linear, addressed) = linear_indices(indices, &ds[b..])?;
    let k = is[is.len() - 1] as usize;
    let rest = ds[b + k..].to_vec();
    // [batch * addressed, rest...]; each batch's rows are offset by its position.
    let mut flat_shape = vec![batch * addressed];
    flat_shape.extend(&rest);
    let flat = data.f_reshape(&flat_shape)?;
    let offsets = Tensor::f_arange(batch, (Kind::Int64, data.device()))?.f_mul_scalar(addressed)?;
    let linear = linear
        .f_reshape([batch, -1])?
        .f_add(&offsets.f_reshape([batch, 1])?)?;
    let picked = flat.f_index_select(0, &linear.f_flatten(0, -1)?)?;
    let mut out_shape = is[..is.len() - 1].to_vec();
    out_shape.extend(&rest);
    one(picked.f_reshape(&out_shape)?)
}

/// ScatterND: a copy of data with the addressed slices replaced (or combined, `reduction` add/mul/max/min).
fn scatter_nd(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (data, indices, updates) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let ds = data.size();
    let (linear, addressed) = linear_indices(indices, &ds)?;
    let k = *indices.size().last().unwrap_or(&0) as usize;
    let mut flat_shape = vec![addressed];
    flat_shape.extend(&ds[k..]);
    let flat = data.f_reshape(&flat_shape)?;
    let index = linear.f_flatten(0, -1)?;
    let mut update_shape = vec![index.size()[0]];
    update_shape.extend(&ds[k..]);
    let updates = updates.f_reshape(&update_shape)?.f_to_kind(data.kind())?;
    let reduction = c.attr_or("reduction", "none".to_owned())?;
    let out = match reduction.as_str() {
        "none" => flat.f_index_put(&[Some(index)], &updates, false)?,
        "add" => flat.f_index_put(&[Some(index)], &updates, true)?,
        "mul" => flat.f_index_reduce(0, &index, &updates, "prod", true)?,
        "max" => flat.f_index_reduce(0, &index, &updates, "amax", true)?,
        "min" => flat.f_index_reduce(0, &index, &updates, "amin", true)?,
        other => {
            return Err(OpError::Invalid(format!(
                "ScatterND reduction `{other}` is not valid"
            )))
        }
    };
    one(out.f_reshape(&ds)?)
}

/// TopK: `k` is an attribute before opset 10, an input from then on. Values and int64 indices.
fn top_k(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    not_scalar(x, "TopK")?;
    let k = if c.opset < 10 {
        c.attr::<i64>("k")?
            .ok_or_else(|| OpError::Invalid("attribute `k` is required".into()))?
    } else {
        first_i64(c.input(i, 1)?, "K")?
    };
    let a = axis(c.attr_or("axis", -1i64)?, x.dim() as i64)?;
    let n = x.size()[a as usize];
    if !(0..=n).contains(&k) {
        return Err(OpError::Invalid(format!(
            "TopK k = {k} for an axis of length {n}"
        )));
    }
    let largest = c.attr_or("largest", 1i64)? != 0;
    // A stable sort puts equal values in index order, as ONNX and onnxruntime want; unsorted output may come in
    // any order, so sorted is fine.
    let (values, indices) = x.f_sort_stable(true, a, largest)?;
    Ok(vec![values.f_narrow(a, 0, k)?, indices.f_narrow(a, 0, k)?])
}

/// CumSum along the axis given as a tensor; `exclusive` leaves out the element itself, `reverse` sums from the end.
fn cum_sum(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let a = axis(first_i64(c.input(i, 1)?, "axis")?, x.dim() as i64)?;
    let exclusive = c.attr_or("exclusive", 0i64)? != 0;
    let reverse = c.attr_or("reverse", 0i64)? != 0;
    let x = if reverse {
        x.f_flip([a])?
    } else {
        x.shallow_clone()
    };
    let mut y = x.f_cumsum(a, x.kind())?;
    if exclusive {
        y = y.f_sub(&x)?;
    }
    one(if reverse { y.f_flip([a])? } else { y })
}

fn block_size(c: &OpCtx, x: &Tensor, op: &str) -> Result<(i64, [i64; 4]), OpError> {
    let b = c
        .attr::<i64>("blocksize")?
        .ok_or_else(|| OpError::Invalid("attribute `blocksize` is required".into()))?;
    match x.size().as_slice() {
        &[n, ch, h, w] if b >= 1 => Ok((b, [n, ch, h, w])),
        other => Err(OpError::Invalid(format!(
            "{op} needs a [N, C, H, W] input and blocksize >= 1 (input {other:?}, blocksize {b})"
        ))),
    }
}

/// DepthToSpace: DCR (depth-column-row, the default) or CRD ordering of the moved channels.
fn depth_to_space(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let (b, [n, ch, h, w]) = block_size(c, x, "DepthToSpace")?;
    if ch % (b * b) != 0 {
        return Err(OpError::Invalid(format!(
            "DepthToSpace: {ch} channels are not divisible by blocksize² = {}",
            b * b
        )));
    }
    let out_c = ch / (b * b);
    let y = if c.attr_or("mode", "DCR".to_owned())? == "CRD" {
        x.f_reshape([n, out_c, b, b, h, w])?
            .f_permute([0, 1, 4, 2, 5, 3])?
    } else {
        x.f_reshape([n, b, b, out_c, h, w])?
            .f_permute([0, 3, 4, 1, 5, 2])?
    };
    one(y.f_reshape([n, out_c, h * b, w * b])?)
}

/// SpaceToDepth: the inverse of DepthToSpace, DCR (the default) or CRD ordering.
fn space_to_depth(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let (b, [n, ch, h, w]) = block_size(c, x, "SpaceToDepth")?;
    if h % b != 0 || w % b != 0 {
        return Err(OpError::Invalid(format!(
            "SpaceToDepth: spatial size {h}x{w} is not divisible by blocksize {b}"
        )));
    }
    let perm = if c.attr_or("mode", "DCR".to_owned())? == "CRD" {
        [0, 1, 3, 5, 2, 4]
    } else {
        [0, 3, 5, 1, 2, 4]
    };
    one(x
        .f_reshape([n, ch, h / b, b, w / b, b])?
        .f_permute(perm)?
        .f_reshape([n, ch * b * b, h / b, w / b])?)
}

/// Einsum: libtorch's einsum takes ONNX's equations as they are (explicit `->` or implicit output, ellipses).
fn einsum(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let equation = c
        .attr::<String>("equation")?
        .ok_or_else(|| OpError::Invalid("attribute `equation` is required".into()))?;
    let operands: Vec<&Tensor> = i.iter().flatten().copied().collect();
    if operands.is_empty() {
        return Err(OpError::Invalid("Einsum needs at least one input".into()));
    }
    let equation: String = equation.chars().filter(|ch| !ch.is_whitespace()).collect();
    one(Tensor::f_einsum(&equation, &operands, None::<&[i64]>)?)
}
