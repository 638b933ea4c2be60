//! onnxruntime's contrib ops (`com.microsoft`) that its offline optimizer (basic/extended levels) and its
//! transformers optimizer write for vision models: the fused convolution/Gemm/MatMul, the GELU family, the skip
//! and simplified layer normalizations, and the fused attention ops. Each is the composition of the standard ops
//! it replaced, so gradients are those of the original graph; write-back keeps the fused nodes. (`BiasAdd`, which
//! the transformers optimizer writes for diffusion models, has no onnxruntime CPU kernel, so no CPU verdict could
//! be had for it: it is not interpreted.)

use tch::{Kind, Tensor};

use super::attention::{attend, causal_bias, merge_heads, split_heads};
use super::elementwise::{hard_sigmoid_of, leaky};
use super::nn::{conv, gemm};
use super::norm::rms_normalize;
use super::{axis, one, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[
    ("FusedConv", fused_conv),
    ("FusedGemm", fused_gemm),
    ("FusedMatMul", fused_matmul),
    ("Gelu", |c, i| one(c.input(i, 0)?.f_gelu("none")?)),
    ("BiasGelu", |c, i| {
        one(c.input(i, 0)?.f_add(c.input(i, 1)?)?.f_gelu("none")?)
    }),
    ("FastGelu", |c, i| {
        one(with_bias(c.input(i, 0)?, c.opt(i, 1))?.f_gelu("tanh")?)
    }),
    ("QuickGelu", quick_gelu),
    ("SkipLayerNormalization", |c, i| skip_norm(c, i, false)),
    ("SkipSimplifiedLayerNormalization", |c, i| {
        skip_norm(c, i, true)
    }),
    ("Attention", packed_attention),
    ("MultiHeadAttention", multi_head_attention),
];

/// Contrib ops onnxruntime registers in the default domain.
pub const DEFAULT_DOMAIN_OPS: &[(&str, OpFn)] =
    &[("SimplifiedLayerNormalization", simplified_layer_norm)];

fn with_bias(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
    match bias {
        Some(b) => x.f_add(b),
        None => Ok(x.shallow_clone()),
    }
}

/// The activation a fused op applies, with its parameters in the order onnxruntime stores them
/// (FusedConv: `activation_params`; FusedGemm: `activation_alpha`, `activation_beta`).
fn activate(x: Tensor, name: &str, params: &[f32]) -> Result<Tensor, OpError> {
    let p = |k: usize, default: f32| params.get(k).copied().unwrap_or(default) as f64;
    Ok(match name {
        "" | "Identity" => x,
        "Relu" => x.f_relu()?,
        "Sigmoid" => x.f_sigmoid()?,
        "Tanh" => x.f_tanh()?,
        "LeakyRelu" => leaky(&x, p(0, 0.01))?,
        "HardSigmoid" => hard_sigmoid_of(&x, p(0, 0.2), p(1, 0.5))?,
        "Clip" => match (params.first(), params.get(1)) {
            (Some(&lo), Some(&hi)) if lo == 0.0 && hi == 6.0 => x.f_relu6()?,
            (Some(&lo), Some(&hi)) => x.f_clamp(lo as f64, hi as f64)?,
            _ => {
                return Err(OpError::Invalid(
                    "a fused Clip needs its min and max in activation_params".into(),
                ))
            }
        },
        other => {
            return Err(OpError::Invalid(format!(
                "fused activation `{other}` is not supported"
            )))
        }
    })
}

/// Conv (+ Z, the residual onnxruntime folds in) then the activation.
fn fused_conv(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let y = conv(c, &i[..i.len().min(3)])?.remove(0);
    let y = with_bias(&y, c.opt(i, 3))?;
    let name = c.attr_or("activation", String::new())?;
    let params = c.attr_or("activation_params", Vec::<f32>::new())?;
    one(activate(y, &name, &params)?)
}

fn fused_gemm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let y = gemm(c, i)?.remove(0);
    let name = c.attr_or("activation", String::new())?;
    let params = vec![
        c.attr_or("activation_alpha", 0.01f32)?,
        c.attr_or("activation_beta", 0.5f32)?,
    ];
    let params = if name == "HardSigmoid" && c.attr::<f32>("activation_alpha")?.is_none() {
        vec![0.2, params[1]]
    } else {
        params
    };
    one(activate(y, &name, &params)?)
}

/// `alpha · op(A) op(B)`: `transBatch*` first moves the leading (batch) dim to just before the matrix dims,
/// `trans*` then swaps the last two.
fn fused_matmul(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let prepare = |t: &Tensor, batch: &str, last: &str| -> Result<Tensor, OpError> {
        let mut t = t.shallow_clone();
        let rank = t.dim() as i64;
        if c.attr_or(batch, 0i64)? != 0 && rank >= 3 {
            let mut perm: Vec<i64> = (1..rank - 1).collect();
            perm.extend([0, rank - 1]);
            t = t.f_permute(&perm)?;
        }
        if c.attr_or(last, 0i64)? != 0 && rank >= 2 {
            t = t.f_transpose(-1, -2)?;
        }
        Ok(t)
    };
    let a = prepare(c.input(i, 0)?, "transBatchA", "transA")?;
    let b = prepare(c.input(i, 1)?, "transBatchB", "transB")?;
    let alpha = c.attr_or("alpha", 1.0f32)? as f64;
    let y = a.f_matmul(&b)?;
    one(if alpha == 1.0 {
        y
    } else {
        y.f_mul_scalar(alpha)?
    })
}

fn quick_gelu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let alpha = c.attr_or("alpha", 1.702f32)? as f64;
    one(x.f_mul(&x.f_mul_scalar(alpha)?.f_sigmoid()?)?)
}

/// SkipLayerNormalization: `s = input + skip (+ bias)`, then LayerNorm over the last axis with gamma (and beta);
/// the simplified form is RMS normalization with gamma. Outputs: y, mean, 1/std, s.
fn skip_norm(c: &OpCtx, i: &[Option<&Tensor>], simplified: bool) -> OpResult {
    let (x, skip, gamma) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let (beta, bias) = if simplified {
        (None, c.opt(i, 3))
    } else {
        (c.opt(i, 3), c.opt(i, 4))
    };
    let eps = c.attr_or("epsilon", 1e-12f32)? as f64;
    let sum = with_bias(&x.f_add(skip)?, bias)?;
    let last = sum.dim() as i64 - 1;
    let (normalized, mean, inv) = if simplified {
        let (n, inv) = rms_normalize(&sum, last, eps)?;
        (n, Tensor::f_zeros_like(&inv)?, inv)
    } else {
        let mean = sum.f_mean_dim(&[-1i64][..], true, None::<Kind>)?;
        let centered = sum.f_sub(&mean)?;
        let inv = centered
            .f_square()?
            .f_mean_dim(&[-1i64][..], true, None::<Kind>)?
            .f_add_scalar(eps)?
            .f_rsqrt()?;
        (centered.f_mul(&inv)?, mean, inv)
    };
    let y = with_bias(&normalized.f_mul(gamma)?, beta)?;
    Ok(vec![y, mean, inv, sum])
}

/// onnxruntime's default-domain SimplifiedLayerNormalization: RMS normalization from `axis` on, times scale.
fn simplified_layer_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, scale) = (c.input(i, 0)?, c.input(i, 1)?);
    let a = axis(c.attr_or("axis", -1i64)?, x.dim() as i64)?;
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    let (y, inv) = rms_normalize(x, a, eps)?;
    Ok(vec![y.f_mul(scale)?, inv])
}

fn num_heads(c: &OpCtx) -> Result<i64, OpError> {
    c.attr::<i64>("num_heads")?
        .filter(|&n| n > 0)
        .ok_or_else(|| OpError::Invalid("attribute `num_heads` (> 0) is required".into()))
}

fn scale_for(c: &OpCtx, head_size: i64) -> Result<f64, OpError> {
    Ok(match c.attr::<f32>("scale")? {
        Some(s) if s != 0.0 => s as f64,
        _ => 1.0 / (head_size as f64).sqrt(),
    })
}

/// The additive bias of onnxruntime's attention masks: `mask_filter_value` where a key is masked — a key
/// padding mask `[B, L]` of 1 (keep) / 0, key lengths `[B]`, or a `[B, S, L]` mask — plus the same value above
/// the diagonal when `unidirectional`; and an `attention_bias` added as is.
fn contrib_bias(
    c: &OpCtx,
    mask: Option<&Tensor>,
    attention_bias: Option<&Tensor>,
    shape: (i64, i64, i64),
    like: &Tensor,
) -> Result<Option<Tensor>, OpError> {
    let (batch, queries, keys) = shape;
    let fill = c.attr_or("mask_filter_value", -10000.0f32)? as f64;
    let mut bias: Option<Tensor> = None;
    let mut add = |t: Tensor| -> Result<(), OpError> {
        bias = Some(match bias.take() {
            Some(b) => b.f_add(&t)?,
            None => t,
        });
        Ok(())
    };
    if let Some(m) = mask {
        let keep = match m.dim() {
            1 => {
                let lengths = m.f_to_kind(Kind::Int64)?.f_reshape([batch, 1])?;
                Tensor::f_arange(keys, (Kind::Int64, like.device()))?
                    .f_reshape([1, keys])?
                    .f_lt_tensor(&lengths)?
                    .f_reshape([batch, 1, 1, keys])?
            }
            2 => m.f_gt(0)?.f_reshape([batch, 1, 1, keys])?,
            3 => m.f_gt(0)?.f_reshape([batch, 1, queries, keys])?,
            _ => {
                return Err(OpError::Invalid(format!(
                    "mask of shape {:?} is not supported",
                    m.size()
                )))
            }
        };
        let zeros = Tensor::f_zeros(keep.size(), (like.kind(), like.device()))?;
        add(zeros.f_masked_fill(&keep.f_logical_not()?, fill)?)?;
    }
    if c.attr_or("unidirectional", 0i64)? != 0 {
        add(causal_bias(queries, keys, keys - queries, fill, like)?)?;
    }
    if let Some(b) = attention_bias {
        add(b.f_to_kind(like.kind())?)?;
    }
    Ok(bias)
}

/// com.microsoft Attention: one packed projection `input · weights + bias` gives Q, K and V (sizes from
/// `qkv_hidden_sizes`, equal thirds by default), then multi-head scaled-dot-product attention.
fn packed_attention(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, weights, bias) = (c.input(i, 0)?, c.input(i, 1)?, c.opt(i, 2));
    if c.opt(i, 4).is_some() || c.node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        return Err(OpError::Invalid(
            "past/present key-value state is not supported".into(),
        ));
    }
    if c.attr_or("do_rotary", 0i64)? != 0 {
        return Err(OpError::Invalid(
            "rotary embeddings (do_rotary) are not supported".into(),
        ));
    }
    let heads = num_heads(c)?;
    let packed = with_bias(&x.f_matmul(weights)?, bias)?;
    let total = packed.size().last().copied().unwrap_or(0);
    let sizes = c.attr_or("qkv_hidden_sizes", vec![total / 3; 3])?;
    if sizes.len() != 3 || sizes.iter().sum::<i64>() != total {
        return Err(OpError::Invalid(format!(
            "qkv_hidden_sizes {sizes:?} do not add up to the projection width {total}"
        )));
    }
    let parts = packed.f_split_with_sizes(&sizes, -1)?;
    let (q, k, v) = (
        split_heads(&parts[0], heads)?,
        split_heads(&parts[1], heads)?,
        split_heads(&parts[2], heads)?,
    );
    let (b, s, l) = (q.size()[0], q.size()[2], k.size()[2]);
    let extra = contrib_bias(c, c.opt(i, 3), c.opt(i, 5), (b, s, l), &q)?;
    let (y, _) = attend(&q, &k, &v, scale_for(c, q.size()[3])?, extra.as_ref())?;
    one(merge_heads(&y)?)
}

/// com.microsoft MultiHeadAttention with separate `[B, S, D]` query, key and value, an optional packed bias
/// `[D_q + D_k + D_v]`, a key padding mask and an attention bias.
fn multi_head_attention(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (q, k, v) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    if q.dim() != 3 || k.dim() != 3 || v.dim() != 3 {
        return Err(OpError::Invalid(format!(
            "only [batch, sequence, hidden] query/key/value are supported (got {:?}, {:?}, {:?})",
            q.size(),
            k.size(),
            v.size()
        )));
    }
    if c.opt(i, 6).is_some() || c.node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        return Err(OpError::Invalid(
            "past/present key-value state is not supported".into(),
        ));
    }
    let heads = num_heads(c)?;
    let (q, k, v) = match c.opt(i, 3) {
        Some(bias) => {
            let sizes = [q.size()[2], k.size()[2], v.size()[2]];
            let parts = bias.f_split_with_sizes(sizes, 0)?;
            (
                q.f_add(&parts[0])?,
                k.f_add(&parts[1])?,
                v.f_add(&parts[2])?,
            )
        }
        None => (q.shallow_clone(), k.shallow_clone(), v.shallow_clone()),
    };
    let (q, k, v) = (
        split_heads(&q, heads)?,
        split_heads(&k, heads)?,
        split_heads(&v, heads)?,
    );
    let (b, s, l) = (q.size()[0], q.size()[2], k.size()[2]);
    let extra = contrib_bias(c, c.opt(i, 4), c.opt(i, 5), (b, s, l), &q)?;
    let (y, _) = attend(&q, &k, &v, scale_for(c, q.size()[3])?, extra.as_ref())?;
    one(merge_heads(&y)?)
}
