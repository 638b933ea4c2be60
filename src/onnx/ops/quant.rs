//! Quantization: QDQ (`QuantizeLinear`/`DequantizeLinear`), the QOperator kernels (`QLinearConv`,
//! `QLinearMatMul`, `MatMulInteger`, `ConvInteger`, `DynamicQuantizeLinear`, and onnxruntime's `QGemm`,
//! `QLinearAdd`, `QLinearMul`, `QLinearGlobalAveragePool`, `QLinearConcat`, `QLinearSigmoid`,
//! `QLinearLeakyRelu`).
//!
//! Quantized values are *carried* as integer-valued float tensors, so autograd passes through them: every
//! rounding is straight-through (the backward pass treats `round` as the identity, BPDA), and a clamp to the
//! integer range passes no gradient outside it, as in fake-quantization training. The forward values are the
//! integers onnxruntime computes: integer accumulations run in float64 (exact far beyond int32 products of 8-bit
//! values), requantization multiplies in float32 and rounds half to even, as onnxruntime's kernels do.

use tch::{Kind, Tensor};

use super::nn::conv;
use super::{axis, one, OpCtx, OpError, OpFn, OpResult};
use crate::onnx::proto::data_type;

pub const OPS: &[(&str, OpFn)] = &[
    ("QuantizeLinear", quantize_linear),
    ("DequantizeLinear", dequantize_linear),
    ("QLinearConv", qlinear_conv),
    ("QLinearMatMul", qlinear_matmul),
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("DynamicQuantizeLinear", dynamic_quantize_linear),
];

pub const MICROSOFT_OPS: &[(&str, OpFn)] = &[
    ("QuantizeLinear", quantize_linear),
    ("DequantizeLinear", dequantize_linear),
    ("QGemm", qgemm),
    ("QLinearAdd", |c, i| qlinear_binary(c, i, Binary::Add)),
    ("QLinearMul", |c, i| qlinear_binary(c, i, Binary::Mul)),
    ("QLinearGlobalAveragePool", qlinear_global_average_pool),
    ("QLinearConcat", qlinear_concat),
    ("QLinearSigmoid", |c, i| {
        qlinear_unary(c, i, |x| Ok(x.f_sigmoid()?))
    }),
    ("QLinearLeakyRelu", |c, i| {
        let alpha = c.attr_or("alpha", 0.01f32)? as f64;
        qlinear_unary(c, i, move |x| Ok(super::elementwise::leaky(x, alpha)?))
    }),
];

/// The integer range of a quantized type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantRange {
    pub lo: f64,
    pub hi: f64,
}

impl QuantRange {
    pub const UINT8: Self = Self { lo: 0.0, hi: 255.0 };

    /// The range of an integer ONNX element type robustd quantizes to (8/16/32-bit).
    pub fn of_onnx(code: i32) -> Option<Self> {
        let (lo, hi) = match code {
            data_type::UINT8 => (0.0, 255.0),
            data_type::INT8 => (-128.0, 127.0),
            data_type::UINT16 => (0.0, 65535.0),
            data_type::INT16 => (-32768.0, 32767.0),
            data_type::INT32 => (i32::MIN as f64, i32::MAX as f64),
            _ => return None,
        };
        Some(Self { lo, hi })
    }

    /// The range of a zero point's tensor kind; a carried (float) zero point came from a uint8 quantizer.
    fn of_kind(kind: Kind) -> Self {
        let code = match kind {
            Kind::Int8 => data_type::INT8,
            Kind::Int16 => data_type::INT16,
            Kind::Int => data_type::INT32,
            _ => data_type::UINT8,
        };
        Self::of_onnx(code).unwrap_or(Self::UINT8)
    }
}

/// A float view of a quantized value (already a carrier, or an integer tensor widened exactly).
fn widen(t: &Tensor, kind: Kind) -> Result<Tensor, OpError> {
    Ok(if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.f_to_kind(kind)?
    })
}

/// A scale or zero point for `rank`-dimensional data: as is when per-tensor, reshaped to run along `axis`
/// when per-axis.
fn along(param: &Tensor, rank: i64, a: i64) -> Result<Tensor, OpError> {
    if param.numel() <= 1 || rank == 0 {
        return Ok(param
            .f_reshape([] as [i64; 0])
            .or_else(|_| param.f_flatten(0, -1))?);
    }
    let a = axis(a, rank)?;
    let mut shape = vec![1i64; rank as usize];
    shape[a as usize] = -1;
    Ok(param.f_reshape(&shape)?)
}

/// `round` whose gradient is the identity (straight-through).
fn round_ste(v: &Tensor) -> Result<Tensor, OpError> {
    let rounded = v.f_round()?.f_detach()?;
    Ok(v.f_add(&rounded.f_sub(&v.f_detach()?)?)?)
}

/// `clamp(round(v) + zp)`: the integer carrier of an already scaled value `v` (straight-through rounding; no
/// gradient where the clamp cuts).
fn to_carrier(v: &Tensor, zp: Option<&Tensor>, range: QuantRange) -> Result<Tensor, OpError> {
    let q = round_ste(v)?;
    let q = match zp {
        Some(z) => q.f_add(&widen(z, q.kind())?)?,
        None => q,
    };
    Ok(q.f_clamp(range.lo, range.hi)?)
}

/// Fake quantization of real values: the integer carrier of `real / scale` (scale and zero point per tensor,
/// or per `axis`). What QuantizeLinear computes, and what quantization-aware fine-tuning applies to its float32
/// master weights.
pub fn fake_quantize(
    real: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    a: i64,
    range: QuantRange,
) -> Result<Tensor, OpError> {
    let rank = real.dim() as i64;
    let s = along(&widen(scale, real.kind())?, rank, a)?;
    let z = zp.map(|z| along(z, rank, a)).transpose()?;
    to_carrier(&real.f_div(&s)?, z.as_ref(), range)
}

/// `(q - zp) · scale` per tensor or along `axis`; integer inputs are subtracted in integers first (exact, as
/// onnxruntime does for int32 biases).
pub fn dequantize(
    q: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    a: i64,
) -> Result<Tensor, OpError> {
    let rank = q.dim() as i64;
    let s = along(scale, rank, a)?;
    let out_kind = if s.is_floating_point() {
        s.kind()
    } else {
        Kind::Float
    };
    let centered = if q.is_floating_point() {
        match zp {
            Some(z) => q.f_sub(&along(&widen(z, q.kind())?, rank, a)?)?,
            None => q.shallow_clone(),
        }
    } else {
        let wide = q.f_to_kind(Kind::Int64)?;
        match zp {
            Some(z) => wide.f_sub(&along(&z.f_to_kind(Kind::Int64)?, rank, a)?)?,
            None => wide,
        }
    };
    Ok(centered.f_to_kind(out_kind)?.f_mul(&s)?)
}

/// The output range of a quantizer: `output_dtype` (opset 21), else the zero point's type, else uint8.
fn output_range(c: &OpCtx, zp: Option<&Tensor>) -> Result<QuantRange, OpError> {
    if let Some(code) = c.attr::<i64>("output_dtype")?.filter(|&d| d != 0) {
        return QuantRange::of_onnx(code as i32).ok_or_else(|| {
            OpError::Invalid(format!(
                "output_dtype {code} is not a supported integer type"
            ))
        });
    }
    Ok(zp.map_or(QuantRange::UINT8, |z| QuantRange::of_kind(z.kind())))
}

fn check_blocked(c: &OpCtx) -> Result<(), OpError> {
    if c.attr_or("block_size", 0i64)? != 0 {
        return Err(OpError::Invalid(
            "blocked quantization (block_size) is not supported".into(),
        ));
    }
    Ok(())
}

fn quantize_linear(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    check_blocked(c)?;
    let (x, scale, zp) = (c.input(i, 0)?, c.input(i, 1)?, c.opt(i, 2));
    let range = output_range(c, zp)?;
    let x = widen(x, Kind::Float)?;
    one(fake_quantize(
        &x,
        scale,
        zp,
        c.attr_or("axis", 1i64)?,
        range,
    )?)
}

fn dequantize_linear(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    check_blocked(c)?;
    let (x, scale, zp) = (c.input(i, 0)?, c.input(i, 1)?, c.opt(i, 2));
    one(dequantize(x, scale, zp, c.attr_or("axis", 1i64)?)?)
}

/// `q - zp` in float64 (exact), zero point per tensor or along `a`.
fn centered64(q: &Tensor, zp: Option<&Tensor>, a: i64) -> Result<Tensor, OpError> {
    let q = widen(q, Kind::Double)?;
    Ok(match zp {
        Some(z) => q.f_sub(&along(&widen(z, Kind::Double)?, q.dim() as i64, a)?)?,
        None => q,
    })
}

/// The float32 requantization multiplier `in_a · in_b / out`, multiplied in onnxruntime's order.
fn multiplier(a: &Tensor, b: &Tensor, out: &Tensor) -> Result<Tensor, OpError> {
    let f = |t: &Tensor| widen(t, Kind::Float);
    Ok(f(a)?.f_mul(&f(b)?)?.f_div(&f(out)?)?)
}

/// Requantizes an exact integer accumulator: `clamp(round(float32(acc) · m) + zp)`.
fn requantize(acc: &Tensor, m: &Tensor, zp: Option<&Tensor>) -> Result<Tensor, OpError> {
    let range = zp.map_or(QuantRange::UINT8, |z| QuantRange::of_kind(z.kind()));
    to_carrier(&acc.f_to_kind(Kind::Float)?.f_mul(m)?, zp, range)
}

/// A multiplier per output channel of a convolution `[N, M, ...]` (or per tensor).
fn per_channel(m: &Tensor, rank: i64) -> Result<Tensor, OpError> {
    along(m, rank, 1)
}

fn qlinear_conv(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = centered64(c.input(i, 0)?, c.opt(i, 2), 1)?;
    let w = centered64(c.input(i, 3)?, c.opt(i, 5), 0)?;
    let mut acc = conv(c, &[Some(&x), Some(&w), None])?.remove(0);
    if let Some(b) = c.opt(i, 8) {
        acc = acc.f_add(&per_channel(&widen(b, Kind::Double)?, acc.dim() as i64)?)?;
    }
    let m = per_channel(
        &multiplier(c.input(i, 1)?, c.input(i, 4)?, c.input(i, 6)?)?,
        acc.dim() as i64,
    )?;
    one(requantize(&acc, &m, c.opt(i, 7))?)
}

fn qlinear_matmul(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let a = centered64(c.input(i, 0)?, c.opt(i, 2), -2)?;
    let b = centered64(c.input(i, 3)?, c.opt(i, 5), -1)?;
    let acc = a.f_matmul(&b)?;
    let rank = acc.dim() as i64;
    let m = multiplier(
        &along(c.input(i, 1)?, rank, -2)?,
        &along(c.input(i, 4)?, rank, -1)?,
        c.input(i, 6)?,
    )?;
    one(requantize(&acc, &m, c.opt(i, 7))?)
}

/// The exact int32 accumulator, carried as float32 (what the `Cast` after it reads).
fn matmul_integer(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let a = centered64(c.input(i, 0)?, c.opt(i, 2), -2)?;
    let b = centered64(c.input(i, 1)?, c.opt(i, 3), -1)?;
    one(a.f_matmul(&b)?.f_to_kind(Kind::Float)?)
}

fn conv_integer(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = centered64(c.input(i, 0)?, c.opt(i, 2), 1)?;
    let w = centered64(c.input(i, 1)?, c.opt(i, 3), 0)?;
    one(conv(c, &[Some(&x), Some(&w), None])?
        .remove(0)
        .f_to_kind(Kind::Float)?)
}

/// uint8 quantization with a scale and zero point from the data's range (always including 0). The parameters
/// are treated as constants by the backward pass; the values pass straight through.
fn dynamic_quantize_linear(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = widen(c.input(i, 0)?, Kind::Float)?;
    let detached = x.f_detach()?;
    let (lo, hi) = if x.numel() == 0 {
        (0.0, 0.0)
    } else {
        (
            detached.f_min()?.f_double_value(&[])?.min(0.0) as f32,
            detached.f_max()?.f_double_value(&[])?.max(0.0) as f32,
        )
    };
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    let scale_t = Tensor::f_scalar_tensor(scale as f64, (Kind::Float, x.device()))?;
    let zp_t = Tensor::f_scalar_tensor(zp as f64, (Kind::Float, x.device()))?;
    let y = to_carrier(&x.f_div(&scale_t)?, Some(&zp_t), QuantRange::UINT8)?;
    Ok(vec![y, scale_t, zp_t])
}

/// QGemm: `alpha · (A - a_zp)(B - b_zp) + C` with an int32 bias C in the accumulator, requantized with
/// `y_scale`/`y_zero_point`, or scaled to float when they are absent.
fn qgemm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let trans = |t: Tensor, attr: &str| -> Result<Tensor, OpError> {
        Ok(if c.attr_or(attr, 0i64)? != 0 {
            t.f_transpose(0, 1)?
        } else {
            t
        })
    };
    let a = trans(widen(c.input(i, 0)?, Kind::Double)?, "transA")?;
    let b = trans(widen(c.input(i, 3)?, Kind::Double)?, "transB")?;
    let a = match c.opt(i, 2) {
        Some(z) => a.f_sub(&widen(z, Kind::Double)?.f_reshape([-1, 1])?)?,
        None => a,
    };
    let b = match c.opt(i, 5) {
        Some(z) => b.f_sub(&widen(z, Kind::Double)?.f_flatten(0, -1)?)?,
        None => b,
    };
    let mut acc = a.f_mm(&b)?;
    if let Some(bias) = c.opt(i, 6) {
        acc = acc.f_add(&widen(bias, Kind::Double)?)?;
    }
    let alpha = c.attr_or("alpha", 1.0f32)? as f64;
    let ab = widen(c.input(i, 1)?, Kind::Float)?
        .f_mul(&widen(c.input(i, 4)?, Kind::Float)?.f_flatten(0, -1)?)?
        .f_mul_scalar(alpha)?;
    match c.opt(i, 7) {
        Some(ys) => {
            let m = ab.f_div(&widen(ys, Kind::Float)?)?;
            one(requantize(&acc, &m, c.opt(i, 8))?)
        }
        None => one(acc.f_to_kind(Kind::Float)?.f_mul(&ab)?),
    }
}

#[derive(Clone, Copy)]
enum Binary {
    Add,
    Mul,
}

/// `x·y + z` rounded once to float32, as a fused multiply-add instruction computes it (the product of two
/// float32 values is exact in float64).
fn fused_multiply_add(x: &Tensor, y: &Tensor, z: &Tensor) -> Result<Tensor, OpError> {
    let d = |t: &Tensor| widen(t, Kind::Double);
    Ok(d(x)?.f_mul(&d(y)?)?.f_add(&d(z)?)?.f_to_kind(Kind::Float)?)
}

/// QLinearAdd / QLinearMul: `A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp`, computed in float32 the way
/// onnxruntime's kernels do: Add as `fma(a, sA/sC, fma(b, sB/sC, zC − (sA/sC·zA + sB/sC·zB)))`, Mul as
/// `(a − zA)(b − zB)·(sA·sB/sC) + zC`, then rounded half to even. Where a value lands within float32 rounding of
/// a midpoint, onnxruntime's result depends on its kernel's evaluation order on the CPU at hand (one step).
fn qlinear_binary(c: &OpCtx, i: &[Option<&Tensor>], op: Binary) -> OpResult {
    let f = |k: usize| -> Result<Tensor, OpError> { widen(c.input(i, k)?, Kind::Float) };
    let zero = |k: usize| -> Result<Tensor, OpError> {
        match c.opt(i, k) {
            Some(z) => widen(z, Kind::Float),
            None => Ok(Tensor::f_zeros([], (Kind::Float, c.input(i, 0)?.device()))?),
        }
    };
    let (a, b, out_scale) = (f(0)?, f(3)?, f(6)?);
    let (za, zb, zc) = (zero(2)?, zero(5)?, zero(7)?);
    let value = match op {
        Binary::Add => {
            let (ra, rb) = (f(1)?.f_div(&out_scale)?, f(4)?.f_div(&out_scale)?);
            let fixed = zc.f_sub(&ra.f_mul(&za)?.f_add(&rb.f_mul(&zb)?)?)?;
            fused_multiply_add(&a, &ra, &fused_multiply_add(&b, &rb, &fixed)?)?
        }
        Binary::Mul => a
            .f_sub(&za)?
            .f_mul(&b.f_sub(&zb)?)?
            .f_mul(&multiplier(&f(1)?, &f(4)?, &out_scale)?)?
            .f_add(&zc)?,
    };
    let range = c
        .opt(i, 7)
        .map_or(QuantRange::UINT8, |z| QuantRange::of_kind(z.kind()));
    one(to_carrier(&value, None, range)?)
}

/// QLinearGlobalAveragePool: the exact sum of `x - x_zp` per channel, times `x_scale / (y_scale · count)`.
fn qlinear_global_average_pool(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let channels_last = c.attr_or("channels_last", 0i64)? != 0;
    let x = centered64(c.input(i, 0)?, c.opt(i, 2), 1)?;
    let rank = x.dim() as i64;
    let dims: Vec<i64> = if channels_last {
        (1..rank - 1).collect()
    } else {
        (2..rank).collect()
    };
    let count: i64 = dims.iter().map(|&d| x.size()[d as usize]).product();
    let acc = x.f_sum_dim_intlist(&dims[..], true, None::<Kind>)?;
    let ys = widen(c.input(i, 3)?, Kind::Float)?;
    let m = widen(c.input(i, 1)?, Kind::Float)?.f_div(&ys.f_mul_scalar(count as f64)?)?;
    one(requantize(&acc, &m, c.opt(i, 4))?)
}

/// Dequantize → f → quantize, elementwise (what onnxruntime's lookup tables hold for each 8-bit value).
fn qlinear_unary(
    c: &OpCtx,
    i: &[Option<&Tensor>],
    f: impl Fn(&Tensor) -> Result<Tensor, OpError>,
) -> OpResult {
    let x = dequantize(
        &widen(c.input(i, 0)?, Kind::Float)?,
        c.input(i, 1)?,
        c.opt(i, 2),
        1,
    )?;
    let zp = c.opt(i, 4);
    let range = zp.map_or(QuantRange::UINT8, |z| QuantRange::of_kind(z.kind()));
    one(fake_quantize(&f(&x)?, c.input(i, 3)?, zp, 1, range)?)
}

/// QLinearConcat: `Y_scale, Y_zp`, then `(X, X_scale, X_zp)` per part; each part is requantized to Y's scale.
fn qlinear_concat(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (ys, yzp) = (c.input(i, 0)?, c.opt(i, 1));
    let range = yzp.map_or(QuantRange::UINT8, |z| QuantRange::of_kind(z.kind()));
    let mut parts = Vec::new();
    for k in (2..i.len()).step_by(3) {
        let real = dequantize(
            &widen(c.input(i, k)?, Kind::Float)?,
            c.input(i, k + 1)?,
            c.opt(i, k + 2),
            1,
        )?;
        parts.push(fake_quantize(&real, ys, yzp, 1, range)?);
    }
    let first = parts
        .first()
        .ok_or_else(|| OpError::Invalid("QLinearConcat has no inputs".into()))?;
    let a = axis(
        c.attr::<i64>("axis")?
            .ok_or_else(|| OpError::Invalid("attribute `axis` is required".into()))?,
        first.dim() as i64,
    )?;
    one(Tensor::f_cat(&parts, a)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward: onnxruntime's integers (round half to even, then clamp); backward: the identity scaled by
    /// 1/scale inside the integer range, nothing where the clamp cut.
    #[test]
    fn rounding_passes_gradients_straight_through_inside_the_range_only() {
        let x = Tensor::from_slice(&[0.26f32, 0.75, 1.0, 10.0]).set_requires_grad(true);
        let scale = Tensor::from(0.5f32);
        let range = QuantRange { lo: 0.0, hi: 4.0 };
        let q = fake_quantize(&x, &scale, None, 0, range).unwrap();
        assert_eq!(Vec::<f32>::try_from(&q).unwrap(), [1.0, 2.0, 2.0, 4.0]);
        let grad = Tensor::run_backward(&[q.sum(Kind::Float)], &[&x], false, false).remove(0);
        assert_eq!(Vec::<f32>::try_from(&grad).unwrap(), [2.0, 2.0, 2.0, 0.0]);
        let back = dequantize(&q, &scale, None, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&back).unwrap(), [0.5, 1.0, 1.0, 2.0]);
    }
}
