//! The operator registry: a table from (domain, op type) to the function that evaluates it on tch tensors. Each
//! submodule owns a family of ops and exports its own tables; [`lookup`] searches those of the node's domain.
//! Where an opset changed an op's meaning (Clip 6→11, Split/Squeeze/Unsqueeze/ReduceSum 13, Reduce* 18, Pad
//! 11/18), the op function branches on [`OpCtx::opset`].
//!
//! Domains: the default ONNX domain, and `com.microsoft` — the contrib ops onnxruntime's optimizers and
//! quantizers write (fused activations, transformer fusions, QOperator kernels). Quantized tensors are carried
//! as integer-valued float tensors (see `quant`), so gradients pass through them straight-through.

mod attention;
mod contrib;
mod elementwise;
mod native;
mod nn;
mod norm;
mod quant;
mod reduce;
mod resize;
mod shape;
mod tensor;

pub use quant::{dequantize, fake_quantize, QuantRange};

use tch::{Kind, Tensor};

use super::node::{is_default_domain, AttrError, AttrValue, Node};

/// An error inside one op; the interpreter adds the file, node name and op type.
#[derive(Debug)]
pub enum OpError {
    Torch(tch::TchError),
    Invalid(String),
}

impl From<tch::TchError> for OpError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e)
    }
}

impl From<String> for OpError {
    fn from(s: String) -> Self {
        Self::Invalid(s)
    }
}

impl From<AttrError> for OpError {
    fn from(e: AttrError) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Torch(e) => write!(f, "libtorch: {e}"),
            OpError::Invalid(s) => f.write_str(s),
        }
    }
}

pub type OpResult = Result<Vec<Tensor>, OpError>;

/// Evaluates one node: the inputs in node order (`None` for omitted optional inputs), one tensor per output.
pub type OpFn = fn(&OpCtx, &[Option<&Tensor>]) -> OpResult;

/// What an op may need besides its inputs.
pub struct OpCtx<'a> {
    pub node: &'a Node,
    /// The model's default-domain opset.
    pub opset: i64,
    /// Training mode: Dropout active, BatchNorm per `train_batchnorm`.
    pub train: bool,
    /// In training mode, BatchNorm uses batch statistics and updates its running statistics.
    pub train_batchnorm: bool,
    /// `limits.max_tensor_elements`: ops that build a tensor from shape arguments check its size with
    /// [`OpCtx::check_shape`] before allocating it.
    pub max_elements: u64,
}

impl OpCtx<'_> {
    pub fn attr<T: AttrValue>(&self, name: &str) -> Result<Option<T>, OpError> {
        Ok(self.node.attr(name)?)
    }

    pub fn attr_or<T: AttrValue>(&self, name: &str, default: T) -> Result<T, OpError> {
        Ok(self.node.attr_or(name, default)?)
    }

    /// Input `i`, which the op requires.
    pub fn input<'t>(
        &self,
        inputs: &[Option<&'t Tensor>],
        i: usize,
    ) -> Result<&'t Tensor, OpError> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| OpError::Invalid(format!("required input {i} is missing")))
    }

    /// Checks a shape an op is about to allocate: no negative dimension, and at most `max_elements` elements.
    pub fn check_shape(&self, what: &str, shape: &[i64]) -> Result<(), OpError> {
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(OpError::Invalid(format!(
                "{what} {shape:?} has a negative dimension {d}"
            )));
        }
        match checked_numel(shape) {
            Some(n) if n <= self.max_elements => Ok(()),
            numel => Err(OpError::Invalid(format!(
                "{what} {shape:?} has {} elements, over the limit of {} (config `limits.max_tensor_elements`)",
                numel.map_or_else(|| "more than 2^63".to_owned(), |n| n.to_string()),
                self.max_elements
            ))),
        }
    }

    /// Optional input `i`.
    pub fn opt<'t>(&self, inputs: &[Option<&'t Tensor>], i: usize) -> Option<&'t Tensor> {
        inputs.get(i).copied().flatten()
    }

    /// Optional integer-list input `i` (shapes, axes, pads), read to the host.
    pub fn ints_input(
        &self,
        inputs: &[Option<&Tensor>],
        i: usize,
    ) -> Result<Option<Vec<i64>>, OpError> {
        self.opt(inputs, i).map(to_i64_vec).transpose()
    }

    /// Integer list from an attribute (opsets before `input_since`) or from input `i` (from then on).
    pub fn ints_attr_or_input(
        &self,
        inputs: &[Option<&Tensor>],
        attr: &str,
        i: usize,
        input_since: i64,
    ) -> Result<Option<Vec<i64>>, OpError> {
        if self.opset < input_since {
            self.attr::<Vec<i64>>(attr)
        } else {
            self.ints_input(inputs, i)
        }
    }
}

/// The values of an integer (or integral float) tensor as `i64`s.
pub fn to_i64_vec(t: &Tensor) -> Result<Vec<i64>, OpError> {
    let t = t
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Int64)?
        .f_flatten(0, -1)?;
    Ok(Vec::<i64>::try_from(&t)?)
}

/// A single scalar value as `f64`.
pub fn to_f64(t: &Tensor) -> Result<f64, OpError> {
    Ok(t.f_to_device(tch::Device::Cpu)?
        .f_double_value(&[])
        .or_else(|_| t.f_flatten(0, -1).and_then(|f| f.f_double_value(&[0])))?)
}

/// The element count of `shape`, as libtorch computes it (left to right in `i64`), or `None` when a partial
/// product overflows — even if a later 0 would make the total 0, libtorch's own arithmetic on such a shape
/// overflows. Negative dims count as 0 here (callers refuse them separately).
pub fn checked_numel(shape: &[i64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d.max(0)))
        .map(|n| n as u64)
}

/// The tensor's first value as an `i64` (a scalar argument such as Range's bounds), an error when it is empty.
pub fn first_i64(t: &Tensor, what: &str) -> Result<i64, OpError> {
    to_i64_vec(t)?
        .first()
        .copied()
        .ok_or_else(|| OpError::Invalid(format!("{what} is an empty tensor, expected a scalar")))
}

/// Refuses a scalar (rank-0) input for ops that index one of its axes.
pub fn not_scalar(t: &Tensor, op: &str) -> Result<(), OpError> {
    if t.dim() == 0 {
        return Err(OpError::Invalid(format!(
            "{op} needs an input of rank 1 or more, got a scalar"
        )));
    }
    Ok(())
}

/// Normalizes a possibly negative axis against `rank`.
pub fn axis(a: i64, rank: i64) -> Result<i64, OpError> {
    let r = if a < 0 { a + rank } else { a };
    if r < 0 || r >= rank.max(1) {
        return Err(OpError::Invalid(format!(
            "axis {a} is out of range for rank {rank}"
        )));
    }
    Ok(r)
}

/// onnxruntime's contrib-op domain.
pub const MICROSOFT: &str = "com.microsoft";

type Table = &'static [(&'static str, OpFn)];

/// The op tables of a domain (none for domains robustd does not interpret).
fn tables(domain: &str) -> &'static [Table] {
    if is_default_domain(domain) {
        &[
            elementwise::OPS,
            nn::OPS,
            norm::OPS,
            reduce::OPS,
            shape::OPS,
            tensor::OPS,
            resize::OPS,
            attention::OPS,
            quant::OPS,
            // onnxruntime registers a few contrib ops in the default domain (SimplifiedLayerNormalization).
            contrib::DEFAULT_DOMAIN_OPS,
        ]
    } else if domain == MICROSOFT {
        &[contrib::OPS, quant::MICROSOFT_OPS]
    } else {
        &[]
    }
}

/// The function evaluating `op_type` of `domain`, if robustd supports it.
pub fn lookup(domain: &str, op_type: &str) -> Option<OpFn> {
    tables(domain)
        .iter()
        .flat_map(|table| table.iter())
        .find(|(name, _)| *name == op_type)
        .map(|&(_, f)| f)
}

/// Every supported op, domain-qualified as [`Node::qualified_op`] spells it (`Conv`, `com.microsoft::FusedConv`),
/// sorted (for `robustd info` and the per-op test list).
pub fn supported_ops() -> Vec<String> {
    let mut v: Vec<String> = ["", MICROSOFT]
        .iter()
        .flat_map(|&domain| {
            tables(domain).iter().flat_map(move |table| {
                table.iter().map(move |&(op, _)| {
                    if domain.is_empty() {
                        op.to_owned()
                    } else {
                        format!("{domain}::{op}")
                    }
                })
            })
        })
        .collect();
    v.sort_unstable();
    v
}

/// Ops whose output is random or depends on the mode; never folded into constants.
pub fn is_foldable(op_type: &str) -> bool {
    !matches!(
        op_type,
        "Dropout"
            | "BatchNormalization"
            | "RandomNormal"
            | "RandomUniform"
            | "RandomNormalLike"
            | "RandomUniformLike"
            | "Bernoulli"
    )
}

/// Wraps a single output.
pub(crate) fn one(t: Tensor) -> OpResult {
    Ok(vec![t])
}
