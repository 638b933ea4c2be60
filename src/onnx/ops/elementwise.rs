//! Elementwise ops: arithmetic and comparisons with ONNX (numpy) broadcasting, activations, Clip, Where, Cast,
//! and the softmax family.

use tch::{Kind, Tensor};

use super::{axis, one, to_f64, OpCtx, OpFn, OpResult};
use crate::onnx::proto::data_type;
use crate::onnx::tensor_data::DType;

pub const OPS: &[(&str, OpFn)] = &[
    ("Add", |c, i| binary(c, i, |a, b| a.f_add(b))),
    ("Sub", |c, i| binary(c, i, |a, b| a.f_sub(b))),
    ("Mul", |c, i| binary(c, i, |a, b| a.f_mul(b))),
    ("Div", div),
    ("Mod", modulo),
    ("Pow", pow),
    ("Equal", |c, i| binary(c, i, |a, b| a.f_eq_tensor(b))),
    ("Less", |c, i| binary(c, i, |a, b| a.f_lt_tensor(b))),
    ("LessOrEqual", |c, i| binary(c, i, |a, b| a.f_le_tensor(b))),
    ("Greater", |c, i| binary(c, i, |a, b| a.f_gt_tensor(b))),
    ("GreaterOrEqual", |c, i| {
        binary(c, i, |a, b| a.f_ge_tensor(b))
    }),
    ("And", |c, i| binary(c, i, |a, b| a.f_logical_and(b))),
    ("Or", |c, i| binary(c, i, |a, b| a.f_logical_or(b))),
    ("Xor", |c, i| binary(c, i, |a, b| a.f_logical_xor(b))),
    ("Sum", |c, i| variadic(c, i, |a, b| a.f_add(b))),
    ("Max", |c, i| variadic(c, i, |a, b| a.f_maximum(b))),
    ("Min", |c, i| variadic(c, i, |a, b| a.f_minimum(b))),
    ("Mean", mean),
    ("Not", |c, i| unary(c, i, Tensor::f_logical_not)),
    ("Relu", |c, i| unary(c, i, Tensor::f_relu)),
    ("Sigmoid", |c, i| unary(c, i, Tensor::f_sigmoid)),
    ("Tanh", |c, i| unary(c, i, Tensor::f_tanh)),
    ("Exp", |c, i| unary(c, i, Tensor::f_exp)),
    ("Log", |c, i| unary(c, i, Tensor::f_log)),
    ("Sqrt", |c, i| unary(c, i, Tensor::f_sqrt)),
    ("Abs", |c, i| unary(c, i, Tensor::f_abs)),
    ("Neg", |c, i| unary(c, i, Tensor::f_neg)),
    ("Reciprocal", |c, i| unary(c, i, Tensor::f_reciprocal)),
    ("Floor", |c, i| unary(c, i, Tensor::f_floor)),
    ("Ceil", |c, i| unary(c, i, Tensor::f_ceil)),
    ("Round", |c, i| unary(c, i, Tensor::f_round)),
    ("Erf", |c, i| unary(c, i, Tensor::f_erf)),
    ("Sign", |c, i| unary(c, i, Tensor::f_sign)),
    ("Sin", |c, i| unary(c, i, Tensor::f_sin)),
    ("Cos", |c, i| unary(c, i, Tensor::f_cos)),
    ("IsNaN", |c, i| unary(c, i, Tensor::f_isnan)),
    ("HardSwish", |c, i| unary(c, i, Tensor::f_hardswish)),
    ("Mish", |c, i| unary(c, i, Tensor::f_mish)),
    ("Softplus", |c, i| unary(c, i, |x| x.f_exp()?.f_log1p())),
    ("Softsign", |c, i| {
        unary(c, i, |x| x.f_div(&(x.f_abs()? + 1.0)))
    }),
    ("Identity", |c, i| unary(c, i, |x| Ok(x.shallow_clone()))),
    ("IsInf", is_inf),
    ("LeakyRelu", leaky_relu),
    ("Elu", elu),
    ("Selu", selu),
    ("Celu", celu),
    ("ThresholdedRelu", thresholded_relu),
    ("HardSigmoid", hard_sigmoid),
    ("Gelu", gelu),
    ("PRelu", prelu),
    ("Clip", clip),
    ("Where", where_),
    ("Cast", cast),
    ("CastLike", cast_like),
    ("Softmax", |c, i| softmax(c, i, SoftmaxKind::Softmax)),
    ("LogSoftmax", |c, i| softmax(c, i, SoftmaxKind::LogSoftmax)),
    ("Hardmax", |c, i| softmax(c, i, SoftmaxKind::Hardmax)),
];

fn unary(
    c: &OpCtx,
    i: &[Option<&Tensor>],
    f: impl Fn(&Tensor) -> Result<Tensor, tch::TchError>,
) -> OpResult {
    one(f(c.input(i, 0)?)?)
}

fn binary(
    c: &OpCtx,
    i: &[Option<&Tensor>],
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
) -> OpResult {
    let (a, b) = (c.input(i, 0)?, c.input(i, 1)?);
    one(f(a, &legacy_broadcast(c, a, b)?)?)
}

/// Before opset 7, binary ops broadcast only with `broadcast = 1`, aligning B's dims with A's starting at `axis`
/// (default: trailing), not numpy-style; B is reshaped so numpy broadcasting gives the same result.
fn legacy_broadcast(c: &OpCtx, a: &Tensor, b: &Tensor) -> Result<Tensor, super::OpError> {
    if c.opset >= 7 || c.attr_or("broadcast", 0i64)? == 0 {
        return Ok(b.shallow_clone());
    }
    let (ra, rb) = (a.dim() as i64, b.dim() as i64);
    let start = match c.attr::<i64>("axis")? {
        Some(ax) => axis(ax, ra)?,
        None => ra - rb,
    };
    let mut shape = b.size();
    shape.extend(std::iter::repeat_n(1, (ra - start - rb).max(0) as usize));
    Ok(b.f_reshape(&shape)?)
}

/// Sum/Max/Min over any number of inputs, broadcasting.
fn variadic(
    c: &OpCtx,
    i: &[Option<&Tensor>],
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
) -> OpResult {
    let mut acc = c.input(i, 0)?.shallow_clone();
    for t in i.iter().skip(1).flatten() {
        acc = f(&acc, t)?;
    }
    one(acc)
}

fn mean(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let n = i.iter().flatten().count() as f64;
    let sum = variadic(c, i, |a, b| a.f_add(b))?.remove(0);
    one(sum.f_div_scalar(n)?)
}

fn is_integer(t: &Tensor) -> bool {
    matches!(
        t.kind(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

/// Integer division truncates toward zero in ONNX.
fn div(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let a = c.input(i, 0)?;
    let b = &legacy_broadcast(c, a, c.input(i, 1)?)?;
    if is_integer(a) {
        one(a.f_div_tensor_mode(b, "trunc")?)
    } else {
        one(a.f_div(b)?)
    }
}

fn modulo(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (a, b) = (c.input(i, 0)?, c.input(i, 1)?);
    if c.attr_or("fmod", 0i64)? == 1 {
        one(a.f_fmod_tensor(b)?)
    } else {
        one(a.f_remainder_tensor(b)?)
    }
}

/// The result keeps the base's type.
fn pow(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let a = c.input(i, 0)?;
    let b = &legacy_broadcast(c, a, c.input(i, 1)?)?;
    one(a.f_pow(b)?.f_to_kind(a.kind())?)
}

fn is_inf(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let pos = c.attr_or("detect_positive", 1i64)? == 1;
    let neg = c.attr_or("detect_negative", 1i64)? == 1;
    let r = match (pos, neg) {
        (true, true) => x.f_isinf()?,
        (true, false) => x.f_isposinf()?,
        (false, true) => x.f_isneginf()?,
        (false, false) => x.f_zeros_like()?.f_to_kind(Kind::Bool)?,
    };
    one(r)
}

fn leaky_relu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    one(leaky(c.input(i, 0)?, c.attr_or("alpha", 0.01f32)? as f64)?)
}

/// `x` where `x >= 0`, `alpha·x` elsewhere (LeakyRelu; also the fused activations of the contrib ops), on
/// libtorch's `leaky_relu` at the graph's own slope (`native::leaky_relu`: tch binds it at the default slope
/// only), one fused kernel each way instead of a comparison, a product and a select, which a PGD step would pay
/// per activation. (PReLU's kernel, which also takes any slope, as a one-element weight, computes and reduces a
/// weight gradient per element in its backward: 5-6x leaky_relu's backward time on a 200x16x28x28 activation.)
/// Non-float tensors, which libtorch's kernel refuses, take the definition.
pub(super) fn leaky(x: &Tensor, alpha: f64) -> Result<Tensor, tch::TchError> {
    if x.is_floating_point() {
        return super::native::leaky_relu(x, alpha);
    }
    x.f_where_self(&x.f_ge(0.0)?, &x.f_mul_scalar(alpha)?)
}

/// `clamp(alpha·x + beta, 0, 1)` (HardSigmoid; also a fused activation).
pub(super) fn hard_sigmoid_of(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor, tch::TchError> {
    x.f_mul_scalar(alpha)?.f_add_scalar(beta)?.f_clamp(0.0, 1.0)
}

/// `x` where `x > 0`, `alpha·(eˣ − 1)` elsewhere; at alpha 1 (`nn.ELU()`'s default) libtorch's fused kernel (see
/// [`leaky`]).
fn elu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let alpha = c.attr_or("alpha", 1.0f32)?;
    if alpha == 1.0 {
        return one(x.f_elu()?);
    }
    let alpha = alpha as f64;
    one(x.f_where_self(&x.f_gt(0.0)?, &x.f_expm1()?.f_mul_scalar(alpha)?)?)
}

fn selu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let alpha = c.attr_or("alpha", 1.673_263_2f32)? as f64;
    let gamma = c.attr_or("gamma", 1.050_701f32)? as f64;
    let neg = x.f_expm1()?.f_mul_scalar(alpha)?;
    one(x.f_where_self(&x.f_gt(0.0)?, &neg)?.f_mul_scalar(gamma)?)
}

fn celu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let alpha = c.attr_or("alpha", 1.0f32)? as f64;
    let neg = x
        .f_div_scalar(alpha)?
        .f_expm1()?
        .f_mul_scalar(alpha)?
        .f_clamp_max(0.0)?;
    one(x.f_clamp_min(0.0)?.f_add(&neg)?)
}

fn thresholded_relu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let alpha = c.attr_or("alpha", 1.0f32)? as f64;
    one(x.f_where_self(&x.f_gt(alpha)?, &x.f_zeros_like()?)?)
}

fn hard_sigmoid(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let alpha = c.attr_or("alpha", 0.2f32)? as f64;
    let beta = c.attr_or("beta", 0.5f32)? as f64;
    one(hard_sigmoid_of(c.input(i, 0)?, alpha, beta)?)
}

fn gelu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let approximate = c.attr_or("approximate", "none".to_owned())?;
    one(c.input(i, 0)?.f_gelu(&approximate)?)
}

fn prelu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, slope) = (c.input(i, 0)?, c.input(i, 1)?);
    // Before opset 7 a 1-D slope runs along the channel axis rather than broadcasting numpy-style.
    let slope = if c.opset < 7 && slope.dim() == 1 && x.dim() > 2 && slope.numel() > 1 {
        let mut shape = vec![1i64; x.dim() - 1];
        shape[0] = -1;
        slope.f_reshape(&shape)?
    } else {
        slope.shallow_clone()
    };
    one(x.f_where_self(&x.f_ge(0.0)?, &x.f_mul(&slope)?)?)
}

/// Clip: bounds are attributes before opset 11, optional inputs from then on.
fn clip(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    if c.opset >= 11 && x.device() != tch::Device::Cpu {
        // On an accelerator, clamp with the bound tensors: reading them to the host would sync every forward.
        return one(x
            .f_clamp_tensor(c.opt(i, 1), c.opt(i, 2))?
            .f_to_kind(x.kind())?);
    }
    let (min, max) = if c.opset < 11 {
        (
            c.attr::<f32>("min")?.map(f64::from),
            c.attr::<f32>("max")?.map(f64::from),
        )
    } else {
        (
            c.opt(i, 1).map(to_f64).transpose()?,
            c.opt(i, 2).map(to_f64).transpose()?,
        )
    };
    let r = match (min, max) {
        // ReLU6, as PyTorch exports it: libtorch's fused hardtanh kernels (forward and backward).
        (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 && x.is_floating_point() => x.f_relu6()?,
        (Some(lo), Some(hi)) => x.f_clamp(lo, hi)?,
        (Some(lo), None) => x.f_clamp_min(lo)?,
        (None, Some(hi)) => x.f_clamp_max(hi)?,
        (None, None) => x.shallow_clone(),
    };
    // Integer inputs stay integer (clamp with float scalars would promote).
    one(r.f_to_kind(x.kind())?)
}

fn where_(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (cond, x, y) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    one(x.f_where_self(&cond.f_to_kind(Kind::Bool)?, y)?)
}

fn cast(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let to = c
        .attr::<i64>("to")?
        .ok_or_else(|| "attribute `to` is required".to_owned())? as i32;
    let dtype = DType::from_onnx(to).ok_or_else(|| {
        format!(
            "cast to {} is not supported",
            crate::onnx::tensor_data::onnx_type_name(to)
        )
    })?;
    let x = c.input(i, 0)?;
    // Float -> bool is `x != 0` in both; float -> int truncates toward zero in both.
    if to == data_type::BOOL {
        return one(x.f_ne(0)?);
    }
    // Half-precision values are computed in float32 (see `DType::compute_kind`).
    one(x.f_to_kind(dtype.compute_kind())?)
}

fn cast_like(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, like) = (c.input(i, 0)?, c.input(i, 1)?);
    if like.kind() == Kind::Bool {
        return one(x.f_ne(0)?);
    }
    one(x.f_to_kind(like.kind())?)
}

enum SoftmaxKind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

/// Before opset 13 the input is coerced to 2-D at `axis` (default 1); from 13 on it works along `axis` (default -1).
fn softmax(c: &OpCtx, i: &[Option<&Tensor>], kind: SoftmaxKind) -> OpResult {
    let x = c.input(i, 0)?;
    let rank = x.dim() as i64;
    let apply = |t: &Tensor, dim: i64| -> Result<Tensor, tch::TchError> {
        match kind {
            SoftmaxKind::Softmax => t.f_softmax(dim, None::<Kind>),
            SoftmaxKind::LogSoftmax => t.f_log_softmax(dim, None::<Kind>),
            SoftmaxKind::Hardmax => {
                let idx = t.f_argmax(dim, true)?;
                t.f_zeros_like()?.f_scatter_value(dim, &idx, 1.0)
            }
        }
    };
    if c.opset < 13 {
        let a = axis(c.attr_or("axis", 1i64)?, rank)?;
        let shape = x.size();
        let outer: i64 = shape[..a as usize].iter().product();
        let flat = x.f_reshape([outer, -1])?;
        one(apply(&flat, 1)?.f_reshape(&shape)?)
    } else {
        let a = axis(c.attr_or("axis", -1i64)?, rank)?;
        one(apply(x, a)?)
    }
}
