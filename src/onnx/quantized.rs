//! Quantized weights, for quantization-aware fine-tuning: integer initializers read as the value of a (value,
//! scale, zero point) triple with constant scale — `DequantizeLinear` in QDQ graphs, the weight input of
//! `QLinearConv`, `QLinearMatMul` and `QGemm` in QOperator graphs. The interpreter keeps a float32 master copy of
//! each (in real units), fake-quantizes it with the graph's own scale and zero point on every forward pass
//! (straight-through rounding), and write-back rounds it back to the original integers: the same structure with
//! the same scales. Weights that dynamic quantization feeds to `MatMulInteger`/`ConvInteger` have no such triple
//! (their scale is applied by a separate `Mul`) and stay frozen integers.

use std::collections::HashMap;

use tch::Tensor;

use super::model::OnnxModel;
use super::node::{is_default_domain, Node};
use super::ops::{fake_quantize, QuantRange, MICROSOFT};
use super::proto::{attribute_type, AttributeProto};
use super::tensor_data::DType;

/// How a quantized weight maps to and from its float32 master copy.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    pub scale: String,
    pub zero_point: Option<String>,
    /// The axis per-channel parameters run along (irrelevant for per-tensor ones).
    pub axis: i64,
    pub range: QuantRange,
    pub dtype: DType,
}

/// The op type of the synthetic plan step that fake-quantizes a master weight (domain `robustd`).
pub const FAKE_QUANTIZE: &str = "FakeQuantize";
pub const DOMAIN: &str = "robustd";

/// (value, scale, zero point) input slots of the ops whose weight triples hold quantized weights, and the axis
/// their per-channel parameters run along.
fn weight_triple(n: &Node) -> Option<(usize, usize, usize, i64)> {
    let default = is_default_domain(&n.domain);
    let microsoft = n.domain == MICROSOFT;
    match n.op_type.as_str() {
        "DequantizeLinear" if default || microsoft => {
            Some((0, 1, 2, n.attr_or("axis", 1i64).unwrap_or(1)))
        }
        "QLinearConv" if default => Some((3, 4, 5, 0)),
        "QLinearMatMul" if default => Some((3, 4, 5, -1)),
        "QGemm" if microsoft => {
            let trans_b = n.attr_or("transB", 0i64).unwrap_or(0) != 0;
            Some((3, 4, 5, if trans_b { 0 } else { 1 }))
        }
        _ => None,
    }
}

/// Every quantized weight of the model, by initializer name. A weight read anywhere but at such a triple (or
/// at two triples with different parameters) is left out: it stays a frozen integer constant.
pub fn quantized_weights(model: &OnnxModel) -> HashMap<String, QuantizedWeight> {
    let mut found: HashMap<String, QuantizedWeight> = HashMap::new();
    let mut excluded: Vec<String> = Vec::new();
    for n in model.nodes() {
        let triple = weight_triple(n).filter(|_| n.attr_or("block_size", 0i64).unwrap_or(0) == 0);
        for (slot, input) in n.inputs.iter().enumerate() {
            let Some(init) = model.initializer(input) else {
                continue;
            };
            let candidate = triple.and_then(|(value, scale, zp, axis)| {
                if slot != value {
                    return None;
                }
                let range = QuantRange::of_onnx(init.data.dtype.onnx_code())?;
                let scale = model.initializer(n.input_name(scale)?)?;
                if !scale.data.dtype.is_float() {
                    return None;
                }
                let zero_point = match n.input_name(zp) {
                    Some(z) => Some(model.initializer(z)?.name.clone()),
                    None => None,
                };
                Some(QuantizedWeight {
                    scale: scale.name.clone(),
                    zero_point,
                    axis,
                    range,
                    dtype: init.data.dtype,
                })
            });
            match candidate {
                Some(q) if found.get(input).is_none_or(|prev| *prev == q) => {
                    found.insert(input.clone(), q);
                }
                _ if !init.data.dtype.is_float() => excluded.push(input.clone()),
                _ => {}
            }
        }
    }
    for name in excluded
        .iter()
        .chain(model.outputs().iter().map(|o| &o.name))
    {
        found.remove(name);
    }
    found
}

/// The synthetic node of a master weight's fake-quantization step: inputs (master, scale, zero point), the
/// carrier as output, axis and range as attributes.
pub fn fake_quantize_node(weight: &str, q: &QuantizedWeight) -> Node {
    let int = |name: &str, i: i64| AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    };
    let float = |name: &str, f: f64| AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: f as f32,
        ..Default::default()
    };
    Node {
        name: format!("{weight}/fake_quantize"),
        op_type: FAKE_QUANTIZE.into(),
        domain: DOMAIN.into(),
        inputs: vec![
            weight.to_owned(),
            q.scale.clone(),
            q.zero_point.clone().unwrap_or_default(),
        ],
        outputs: vec![format!("{weight}/quantized")],
        attributes: vec![
            int("axis", q.axis),
            float("lo", q.range.lo),
            float("hi", q.range.hi),
        ],
    }
}

/// The fake-quantization step's op function (see [`fake_quantize_node`]).
pub fn fake_quantize_op(c: &super::ops::OpCtx, i: &[Option<&Tensor>]) -> super::ops::OpResult {
    let range = QuantRange {
        lo: c.attr_or("lo", 0.0f32)? as f64,
        hi: c.attr_or("hi", 255.0f32)? as f64,
    };
    Ok(vec![fake_quantize(
        c.input(i, 0)?,
        c.input(i, 1)?,
        c.opt(i, 2),
        c.attr_or("axis", 1i64)?,
        range,
    )?])
}
