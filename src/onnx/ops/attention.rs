//! Attention: the ONNX `Attention` op (opset 23: 3-D or 4-D Q/K/V, grouped-query heads, boolean or additive
//! masks, causal masking, softcap, past key/value) on one scaled-dot-product core that onnxruntime's contrib
//! `Attention` and `MultiHeadAttention` reuse (`contrib`). Heads are laid out `[batch, heads, sequence, size]`.

use tch::{Kind, Tensor};

use super::{OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[("Attention", attention)];

/// `softmax(q kᵀ · scale (+ bias)) v` for `[B, N, S, H]` heads; `bias` broadcasts to `[B, N, S, L]`. Rows whose
/// bias is all `-inf` (every key masked) give zeros, as ONNX specifies. Returns the output and the probabilities.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor), OpError> {
    let scores = q.f_matmul(&k.f_transpose(-1, -2)?)?.f_mul_scalar(scale)?;
    attend_scores(scores, v, bias)
}

/// The softmax and value product of [`attend`] on precomputed scores.
pub fn attend_scores(
    scores: Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor), OpError> {
    let scores = match bias {
        Some(b) => scores.f_add(b)?,
        None => scores,
    };
    let mut probs = scores.f_softmax(-1, None::<Kind>)?;
    if let Some(b) = bias {
        let all_masked = b
            .f_amax(&[-1i64][..], true)?
            .f_isneginf()?
            .f_expand_as(&probs)?;
        probs = probs.f_zeros_like()?.f_where_self(&all_masked, &probs)?;
    }
    Ok((probs.f_matmul(v)?, probs))
}

/// `[B, S, N·H]` → `[B, N, S, H]`.
pub fn split_heads(x: &Tensor, heads: i64) -> Result<Tensor, OpError> {
    let size = x.size();
    if size.len() != 3 || heads < 1 || size[2] % heads != 0 {
        return Err(OpError::Invalid(format!(
            "cannot split a {size:?} tensor into {heads} heads"
        )));
    }
    Ok(x.f_reshape([size[0], size[1], heads, size[2] / heads])?
        .f_permute([0, 2, 1, 3])?)
}

/// `[B, N, S, H]` → `[B, S, N·H]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor, OpError> {
    let size = x.size();
    Ok(x.f_permute([0, 2, 1, 3])?
        .f_reshape([size[0], size[2], size[1] * size[3]])?)
}

/// An additive mask that is `-inf` where key `j` is after query `i + offset` (causal, bottom-right aligned).
pub fn causal_bias(
    queries: i64,
    keys: i64,
    offset: i64,
    fill: f64,
    like: &Tensor,
) -> Result<Tensor, OpError> {
    let i = Tensor::f_arange(queries, (Kind::Int64, like.device()))?.f_reshape([queries, 1])?;
    let j = Tensor::f_arange(keys, (Kind::Int64, like.device()))?.f_reshape([1, keys])?;
    let blocked = j.f_gt_tensor(&i.f_add_scalar(offset)?)?;
    let zeros = Tensor::f_zeros([queries, keys], (like.kind(), like.device()))?;
    Ok(zeros.f_masked_fill(&blocked, fill)?)
}

fn attention(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (q, k, v) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let (mask, past_key, past_value) = (c.opt(i, 3), c.opt(i, 4), c.opt(i, 5));
    if c.opt(i, 6).is_some() {
        return Err(OpError::Invalid(
            "the nonpad_kv_seqlen input is not supported".into(),
        ));
    }
    for window in ["left_window_size", "right_window_size"] {
        if c.attr_or(window, -1i64)? != -1 {
            return Err(OpError::Invalid(format!(
                "sliding-window attention (`{window}`) is not supported"
            )));
        }
    }
    let three_d = q.dim() == 3;
    let (q, k, v) = if three_d {
        let heads = |name: &str| -> Result<i64, OpError> {
            c.attr::<i64>(name)?
                .ok_or_else(|| OpError::Invalid(format!("3-D inputs need the `{name}` attribute")))
        };
        let (qh, kvh) = (heads("q_num_heads")?, heads("kv_num_heads")?);
        (
            split_heads(q, qh)?,
            split_heads(k, kvh)?,
            split_heads(v, kvh)?,
        )
    } else if q.dim() == 4 {
        (q.shallow_clone(), k.shallow_clone(), v.shallow_clone())
    } else {
        return Err(OpError::Invalid(format!(
            "Q must be 3-D or 4-D, got shape {:?}",
            q.size()
        )));
    };
    let past_len = past_key.map_or(0, |p| p.size()[2]);
    let k = match past_key {
        Some(p) => Tensor::f_cat(&[p, &k], 2)?,
        None => k,
    };
    let v = match past_value {
        Some(p) => Tensor::f_cat(&[p, &v], 2)?,
        None => v,
    };
    let (q_heads, kv_heads) = (q.size()[1], k.size()[1]);
    let (k_all, v_all) = if q_heads != kv_heads && kv_heads > 0 && q_heads % kv_heads == 0 {
        let reps = q_heads / kv_heads;
        (
            k.f_repeat_interleave_self_int(reps, 1, None::<i64>)?,
            v.f_repeat_interleave_self_int(reps, 1, None::<i64>)?,
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let (s, l) = (q.size()[2], k_all.size()[2]);
    let scale = match c.attr::<f32>("scale")? {
        Some(s) => s as f64,
        None => 1.0 / (q.size()[3] as f64).sqrt(),
    };
    let mut scores = q
        .f_matmul(&k_all.f_transpose(-1, -2)?)?
        .f_mul_scalar(scale)?;
    let softcap = c.attr_or("softcap", 0.0f32)? as f64;
    if softcap > 0.0 {
        scores = scores
            .f_div_scalar(softcap)?
            .f_tanh()?
            .f_mul_scalar(softcap)?;
    }
    let qk_plain = scores.shallow_clone();
    let mut bias = match mask {
        Some(m) => {
            // A shorter mask is padded to the key length with "masked".
            let pad = l - m.size().last().copied().unwrap_or(0);
            let m = if m.kind() == Kind::Bool {
                let m = if pad > 0 {
                    m.f_pad([0, pad], "constant", 0.0)?
                } else {
                    m.shallow_clone()
                };
                m.f_zeros_like()?
                    .f_to_kind(q.kind())?
                    .f_masked_fill(&m.f_logical_not()?, f64::NEG_INFINITY)?
            } else if pad > 0 {
                m.f_pad([0, pad], "constant", f64::NEG_INFINITY)?
            } else {
                m.shallow_clone()
            };
            Some(m)
        }
        None => None,
    };
    if c.attr_or("is_causal", 0i64)? != 0 {
        let causal = causal_bias(s, l, past_len, f64::NEG_INFINITY, &q)?;
        bias = Some(match bias {
            Some(b) => b.f_add(&causal)?,
            None => causal,
        });
    }
    let with_bias = match &bias {
        Some(b) => scores.f_add(b)?,
        None => scores.shallow_clone(),
    };
    let (y, probs) = attend_scores(scores, &v_all, bias.as_ref())?;
    let y = if three_d { merge_heads(&y)? } else { y };
    let mut out = vec![y, k, v];
    if c.node.outputs.get(3).is_some_and(|o| !o.is_empty()) {
        out.push(match c.attr_or("qk_matmul_output_mode", 0i64)? {
            0 | 1 => qk_plain,
            2 => with_bias,
            3 => probs,
            m => {
                return Err(OpError::Invalid(format!(
                    "qk_matmul_output_mode {m} is not valid"
                )))
            }
        });
    }
    Ok(out)
}
