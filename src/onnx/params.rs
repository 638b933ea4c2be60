//! What each floating-point initializer *is*, judged from the nodes that consume it: a convolution or linear
//! weight (with its fans), a bias, a BatchNorm affine parameter or running statistic, or something else. The role
//! decides whether it trains, and how [`super::TchModel::reinitialize`] draws fresh values.

use std::collections::HashMap;

use super::node::Node;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Conv/ConvTranspose kernel; Kaiming-uniform (ReLU gain) on `fan_in`.
    ConvWeight {
        fan_in: i64,
    },
    /// Gemm/MatMul weight; Xavier-uniform on both fans.
    LinearWeight {
        fan_in: i64,
        fan_out: i64,
    },
    /// An additive bias (Conv/Gemm C input, or added to a MatMul result); zeros.
    Bias,
    /// BatchNorm/InstanceNorm/LayerNorm scale; ones.
    NormScale,
    /// BatchNorm/InstanceNorm/LayerNorm bias; zeros.
    NormBias,
    RunningMean,
    RunningVar,
    /// PRelu slope; 0.25 like PyTorch.
    Slope,
    /// A float used where gradients make no sense (Clip bounds, Pad value, shape arithmetic): never trained.
    Fixed,
    /// Anything else (constants folded into the graph, in-graph normalization, …): kept as is, never trained.
    Other,
}

impl Role {
    /// Whether an optimizer may update it (`train_bn`: BatchNorm affine parameters train too).
    pub fn trainable(self, train_bn: bool) -> bool {
        match self {
            Role::RunningMean | Role::RunningVar | Role::Fixed | Role::Other => false,
            Role::NormScale | Role::NormBias => train_bn,
            _ => true,
        }
    }

    pub fn is_running_stat(self) -> bool {
        matches!(self, Role::RunningMean | Role::RunningVar)
    }
}

/// The role of every initializer named in `floats` (name → dims: the float initializers and the quantized
/// weights), from its consumers. Pass-through ops (Identity, Cast, Transpose, Reshape, Squeeze, Unsqueeze,
/// Flatten, DequantizeLinear) are looked through, so a weight reached via `Identity` (as exporters emit for
/// shared weights), a `Cast` (float16/bfloat16 storage) or a `DequantizeLinear` (QDQ) is still a weight.
pub fn assign_roles(nodes: &[Node], floats: &HashMap<String, Vec<i64>>) -> HashMap<String, Role> {
    let producers: HashMap<&str, &Node> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut consumers: HashMap<&str, Vec<(&Node, usize)>> = HashMap::new();
    for n in nodes {
        for (slot, input) in n.inputs.iter().enumerate() {
            consumers.entry(input.as_str()).or_default().push((n, slot));
        }
    }
    let mut roles = HashMap::new();
    for (name, dims) in floats {
        let role = if dims.is_empty() {
            // Scalars are constants of the computation (epsilons, bounds), not parameters.
            Role::Fixed
        } else {
            role_through(name, dims, &consumers, &producers, 0)
        };
        roles.insert(name.clone(), role);
    }
    roles
}

fn is_pass_through(n: &Node, slot: usize) -> bool {
    slot == 0
        && matches!(
            n.op_type.as_str(),
            "Identity"
                | "Cast"
                | "Transpose"
                | "Reshape"
                | "Squeeze"
                | "Unsqueeze"
                | "Flatten"
                | "DequantizeLinear"
        )
}

fn role_through(
    value: &str,
    dims: &[i64],
    consumers: &HashMap<&str, Vec<(&Node, usize)>>,
    producers: &HashMap<&str, &Node>,
    depth: usize,
) -> Role {
    let mut role = Role::Fixed;
    let mut seen_any = false;
    for &(n, slot) in consumers.get(value).map(Vec::as_slice).unwrap_or(&[]) {
        let here = if is_pass_through(n, slot) && depth < 8 {
            match n.outputs.first() {
                Some(out) => role_through(out, dims, consumers, producers, depth + 1),
                None => Role::Fixed,
            }
        } else {
            role_at(n, slot, dims, producers)
        };
        // A value used both as a weight and elsewhere keeps its most specific role; any non-differentiable use
        // (a Clip bound, a pad value) freezes it.
        role = match (seen_any, role, here) {
            (false, _, h) => h,
            (true, _, Role::Fixed) | (true, Role::Fixed, _) => Role::Fixed,
            (true, Role::Other, h) => h,
            (true, r, _) => r,
        };
        seen_any = true;
    }
    role
}

fn role_at(n: &Node, slot: usize, dims: &[i64], producers: &HashMap<&str, &Node>) -> Role {
    let prod = |d: &[i64]| d.iter().product::<i64>();
    let linear = |trans_b: bool| {
        let (fan_in, fan_out) = if trans_b {
            (dims[1], dims[0])
        } else {
            (dims[0], dims[1])
        };
        Role::LinearWeight { fan_in, fan_out }
    };
    let trans_b = || n.attr_or("transB", 0i64).unwrap_or(0) != 0;
    match (n.op_type.as_str(), slot) {
        ("Conv" | "FusedConv", 1) | ("QLinearConv", 3) if dims.len() >= 2 => Role::ConvWeight {
            fan_in: prod(&dims[1..]),
        },
        ("ConvTranspose", 1) => {
            // [C_in, C_out/group, k...]: PyTorch computes fan_in from dim 1.
            Role::ConvWeight {
                fan_in: dims.get(1).copied().unwrap_or(1) * prod(dims.get(2..).unwrap_or(&[])),
            }
        }
        ("Conv" | "ConvTranspose" | "Gemm" | "FusedConv" | "FusedGemm" | "Attention", 2)
        | ("BiasGelu" | "FastGelu", 1)
        | ("MultiHeadAttention", 3)
        | ("SkipLayerNormalization", 4)
        | ("SkipSimplifiedLayerNormalization", 3) => Role::Bias,
        ("Gemm" | "FusedGemm", 1) | ("QGemm", 3) if dims.len() == 2 => linear(trans_b()),
        ("Attention", 1) | ("QLinearMatMul", 3) if dims.len() == 2 => linear(false),
        ("MatMul" | "FusedMatMul", _) if dims.len() >= 2 => {
            let r = dims.len();
            Role::LinearWeight {
                fan_in: dims[r - 2],
                fan_out: dims[r - 1],
            }
        }
        ("Add", _) => {
            let other = n
                .inputs
                .get(1 - slot.min(1))
                .and_then(|o| producers.get(o.as_str()));
            if other.is_some_and(|p| {
                matches!(
                    p.op_type.as_str(),
                    "MatMul" | "Conv" | "Gemm" | "FusedMatMul" | "Einsum"
                )
            }) {
                Role::Bias
            } else {
                Role::Other
            }
        }
        (
            "BatchNormalization"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "GroupNormalization"
            | "RMSNormalization"
            | "SimplifiedLayerNormalization",
            1,
        )
        | ("SkipLayerNormalization" | "SkipSimplifiedLayerNormalization", 2) => Role::NormScale,
        (
            "BatchNormalization"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "GroupNormalization",
            2,
        )
        | ("SkipLayerNormalization", 3) => Role::NormBias,
        ("BatchNormalization", 3) => Role::RunningMean,
        ("BatchNormalization", 4) => Role::RunningVar,
        ("PRelu", 1) => Role::Slope,
        ("Clip", 1 | 2)
        | ("Pad", 1..)
        | ("Dropout", 1..)
        | ("Reshape" | "Expand" | "Tile" | "Slice" | "Squeeze" | "Unsqueeze" | "Split", 1..)
        | ("ConstantOfShape" | "Range" | "Shape" | "Size", _) => Role::Fixed,
        _ => Role::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> Node {
        Node {
            name: output.into(),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
            attributes: Vec::new(),
        }
    }

    #[test]
    fn roles_follow_consumers_through_pass_through_ops() {
        // x - mean (in-graph normalization) -> Conv(W via Identity, b) -> MatMul(W2) + b2 -> Clip(lo, hi)
        let nodes = vec![
            node("Sub", &["x", "mean"], "xn"),
            node("Identity", &["w"], "w_shared"),
            node("Conv", &["xn", "w_shared", "b"], "h"),
            node("Flatten", &["h"], "f"),
            node("MatMul", &["f", "w2"], "m"),
            node("Add", &["m", "b2"], "z"),
            node("Clip", &["z", "lo", "hi"], "y"),
        ];
        let floats: HashMap<String, Vec<i64>> = [
            ("mean", vec![1, 3, 1, 1]),
            ("w", vec![8, 3, 3, 3]),
            ("b", vec![8]),
            ("w2", vec![512, 10]),
            ("b2", vec![10]),
            ("lo", vec![]),
            ("hi", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let roles = assign_roles(&nodes, &floats);
        assert_eq!(roles["w"], Role::ConvWeight { fan_in: 27 });
        assert_eq!(roles["b"], Role::Bias);
        assert_eq!(
            roles["w2"],
            Role::LinearWeight {
                fan_in: 512,
                fan_out: 10
            }
        );
        assert_eq!(roles["b2"], Role::Bias);
        assert_eq!(roles["mean"], Role::Other);
        assert_eq!(roles["lo"], Role::Fixed);
        let trainable: Vec<&str> = ["mean", "w", "b", "w2", "b2", "lo", "hi"]
            .into_iter()
            .filter(|n| roles[*n].trainable(false))
            .collect();
        assert_eq!(trainable, ["w", "b", "w2", "b2"]);
    }
}
