//! Reductions (ReduceMean, ReduceSum, …) and ArgMax/ArgMin. Axes are an attribute before opset 18 (ReduceSum:
//! before 13) and an optional input from then on, with `noop_with_empty_axes`.

use tch::{Kind, Tensor};

use super::{axis, not_scalar, one, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[
    ("ReduceMean", |c, i| reduce(c, i, 18, Reduction::Mean)),
    ("ReduceSum", |c, i| reduce(c, i, 13, Reduction::Sum)),
    ("ReduceMax", |c, i| reduce(c, i, 18, Reduction::Max)),
    ("ReduceMin", |c, i| reduce(c, i, 18, Reduction::Min)),
    ("ReduceProd", |c, i| reduce(c, i, 18, Reduction::Prod)),
    ("ReduceL1", |c, i| reduce(c, i, 18, Reduction::L1)),
    ("ReduceL2", |c, i| reduce(c, i, 18, Reduction::L2)),
    ("ReduceSumSquare", |c, i| {
        reduce(c, i, 18, Reduction::SumSquare)
    }),
    ("ReduceLogSum", |c, i| reduce(c, i, 18, Reduction::LogSum)),
    ("ReduceLogSumExp", |c, i| {
        reduce(c, i, 18, Reduction::LogSumExp)
    }),
    ("ArgMax", |c, i| arg_extreme(c, i, true)),
    ("ArgMin", |c, i| arg_extreme(c, i, false)),
];

#[derive(Clone, Copy)]
enum Reduction {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

fn reduce(c: &OpCtx, i: &[Option<&Tensor>], axes_input_since: i64, r: Reduction) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let keep = c.attr_or("keepdims", 1i64)? != 0;
    let axes = c
        .ints_attr_or_input(i, "axes", 1, axes_input_since)?
        .unwrap_or_default();
    if axes.is_empty()
        && c.opset >= axes_input_since
        && c.attr_or("noop_with_empty_axes", 0i64)? != 0
    {
        return one(x.shallow_clone());
    }
    let mut axes: Vec<i64> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| axis(a, rank))
            .collect::<Result<_, _>>()?
    };
    axes.sort_unstable();
    axes.dedup();
    if rank == 0 {
        return one(x.shallow_clone());
    }
    let size = x.size();
    if matches!(r, Reduction::Max | Reduction::Min) && axes.iter().any(|&a| size[a as usize] == 0) {
        return one(empty_extreme(x, &axes, keep, matches!(r, Reduction::Max))?);
    }
    let sum = |t: &Tensor| t.f_sum_dim_intlist(&axes[..], keep, None::<Kind>);
    let y = match r {
        Reduction::Mean => x.f_mean_dim(&axes[..], keep, None::<Kind>)?,
        Reduction::Sum => sum(x)?,
        Reduction::Max => x.f_amax(&axes, keep)?,
        Reduction::Min => x.f_amin(&axes, keep)?,
        Reduction::Prod => {
            let mut y = x.shallow_clone();
            for &a in axes.iter().rev() {
                y = y.f_prod_dim_int(a, keep, None::<Kind>)?;
            }
            y
        }
        Reduction::L1 => sum(&x.f_abs()?)?,
        Reduction::L2 => sum(&x.f_square()?)?.f_sqrt()?,
        Reduction::SumSquare => sum(&x.f_square()?)?,
        Reduction::LogSum => sum(x)?.f_log()?,
        Reduction::LogSumExp => x.f_logsumexp(&axes, keep)?,
    };
    one(y)
}

/// Max/Min over an empty set: the identity of the reduction (-inf/+inf, the integer extremes, false/true).
fn empty_extreme(x: &Tensor, axes: &[i64], keep: bool, max: bool) -> Result<Tensor, OpError> {
    let mut shape = Vec::new();
    for (d, &n) in x.size().iter().enumerate() {
        if axes.contains(&(d as i64)) {
            if keep {
                shape.push(1);
            }
        } else {
            shape.push(n);
        }
    }
    let options = (x.kind(), x.device());
    let t = match x.kind() {
        Kind::Bool => Tensor::f_full(&shape, i64::from(!max), (Kind::Int64, x.device()))?
            .f_to_kind(Kind::Bool)?,
        Kind::Int64 => Tensor::f_full(&shape, if max { i64::MIN } else { i64::MAX }, options)?,
        Kind::Int => Tensor::f_full(
            &shape,
            if max {
                i32::MIN as i64
            } else {
                i32::MAX as i64
            },
            options,
        )?,
        Kind::Uint8 => Tensor::f_full(&shape, if max { 0 } else { 255 }, options)?,
        _ => Tensor::f_full(
            &shape,
            if max {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            options,
        )?,
    };
    Ok(t)
}

fn arg_extreme(c: &OpCtx, i: &[Option<&Tensor>], max: bool) -> OpResult {
    let x = c.input(i, 0)?;
    not_scalar(x, if max { "ArgMax" } else { "ArgMin" })?;
    let a = axis(c.attr_or("axis", 0i64)?, x.dim() as i64)?;
    let keep = c.attr_or("keepdims", 1i64)? != 0;
    let last = c.attr_or("select_last_index", 0i64)? != 0;
    let arg = |t: &Tensor| -> Result<Tensor, OpError> {
        Ok(if max {
            t.f_argmax(a, keep)?
        } else {
            t.f_argmin(a, keep)?
        })
    };
    if !last {
        return one(arg(x)?);
    }
    // Ties resolve to the first index in libtorch: search the reversed axis and map back.
    let n = x.size()[a as usize];
    let idx = arg(&x.f_flip([a])?)?;
    one(idx.f_neg()?.f_add_scalar(n - 1)?)
}
