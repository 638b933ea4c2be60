//! [`GraphForm`]: what kind of shipped graph a model is — its weights' precision, whether and how it is
//! quantized, which onnxruntime contrib ops it holds — and, from that, how robustd can work with it: the
//! gradients attacks get and whether (and how) it can be fine-tuned. The report's `model.form` block and the
//! pipeline's decisions come from here.

use std::collections::BTreeMap;

use super::model::OnnxModel;
use super::node::is_default_domain;
use super::tensor_data::DType;

/// How a model is quantized, by the ops onnxruntime's quantizers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// `quantize_static(..., QuantFormat.QDQ)`: QuantizeLinear/DequantizeLinear pairs around float ops.
    Qdq,
    /// `quantize_static(..., QuantFormat.QOperator)`: QLinearConv, QLinearMatMul, QGemm, QLinearAdd ...
    QOperator,
    /// `quantize_dynamic`: DynamicQuantizeLinear with MatMulInteger/ConvInteger.
    Dynamic,
}

impl Quantization {
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Qdq => "qdq",
            Quantization::QOperator => "qoperator",
            Quantization::Dynamic => "dynamic",
        }
    }
}

/// The shipped form of a graph. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphForm {
    /// The element type holding most floating-point weight values (float32, float16, bfloat16).
    pub precision: DType,
    pub quantization: Option<Quantization>,
    /// Non-default-domain ops and their node counts, e.g. `com.microsoft::FusedConv`.
    pub contrib_ops: Vec<(String, usize)>,
}

/// Why a model is not fine-tuned, when it is not.
pub const DYNAMIC_REFUSAL: &str = "refused: this model was quantized with quantize_dynamic — its \
int8 weights feed MatMulInteger/ConvInteger and their scales are applied by separate Mul nodes, so there is no \
(weight, scale, zero point) triple to train quantization-aware. Fine-tune the float model and quantize it again";

impl GraphForm {
    pub fn of(model: &OnnxModel) -> Self {
        let mut by_type: BTreeMap<i32, u64> = BTreeMap::new();
        for i in model
            .initializers()
            .iter()
            .filter(|i| i.data.dtype.is_float())
        {
            *by_type.entry(i.data.dtype.onnx_code()).or_default() += i.data.numel();
        }
        let precision = by_type
            .iter()
            .max_by_key(|(_, n)| **n)
            .and_then(|(code, _)| DType::from_onnx(*code))
            .unwrap_or(DType::F32);
        let has = |ops: &[&str]| {
            model
                .nodes()
                .iter()
                .any(|n| ops.contains(&n.op_type.as_str()))
        };
        let quantization = if has(&[
            "DynamicQuantizeLinear",
            "MatMulInteger",
            "ConvInteger",
            "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat",
        ]) {
            Some(Quantization::Dynamic)
        } else if has(&[
            "QLinearConv",
            "QLinearMatMul",
            "QGemm",
            "QLinearAdd",
            "QLinearMul",
            "QLinearGlobalAveragePool",
            "QLinearConcat",
        ]) {
            Some(Quantization::QOperator)
        } else if has(&["QuantizeLinear", "DequantizeLinear"]) {
            Some(Quantization::Qdq)
        } else {
            None
        };
        let mut contrib: BTreeMap<String, usize> = BTreeMap::new();
        for n in model
            .nodes()
            .iter()
            .filter(|n| !is_default_domain(&n.domain))
        {
            *contrib.entry(n.qualified_op()).or_default() += 1;
        }
        Self {
            precision,
            quantization,
            contrib_ops: contrib.into_iter().collect(),
        }
    }

    /// The precision as people write it: `float32`, `float16`, `bfloat16`, `float64`.
    pub fn precision_name(&self) -> &'static str {
        match self.precision {
            DType::F32 => "float32",
            DType::F64 => "float64",
            other => other.name(),
        }
    }

    /// Whether the weights are stored in a half-precision type (computed in float32 by the interpreter).
    pub fn half_precision(&self) -> bool {
        matches!(self.precision, DType::F16 | DType::BF16)
    }

    /// How attacks differentiate the model, in words.
    pub fn gradients(&self) -> String {
        match (self.quantization, self.half_precision()) {
            (Some(_), _) => {
                "libtorch in float32, straight-through (BPDA) through every rounding of the \
                             quantizers"
                    .into()
            }
            (None, true) => format!(
                "libtorch in float32 on the {} weights widened to float32",
                self.precision.name()
            ),
            (None, false) => "libtorch in float32".into(),
        }
    }

    /// How fine-tuning treats the model, or why it is refused (`Err`).
    pub fn fine_tuning(&self) -> Result<String, String> {
        match (self.quantization, self.half_precision()) {
            (Some(Quantization::Dynamic), _) => Err(DYNAMIC_REFUSAL.into()),
            (Some(q), _) => Ok(format!(
                "quantization-aware: float32 master weights fake-quantized with the graph's own scales and zero \
                 points (kept), written back as the same {} structure",
                q.name()
            )),
            (None, true) => Ok(format!(
                "float32 master weights, written back as {}",
                self.precision.name()
            )),
            (None, false) => Ok("float32".into()),
        }
    }
}
