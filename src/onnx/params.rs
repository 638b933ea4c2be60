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
    /// Anything else: trained, kept as is on re-initialization.
    Other,
}

impl Role {
    /// Whether an optimizer may update it (`train_bn`: BatchNorm affine parameters train too).
    pub fn trainable(self, train_bn: bool) -> bool {
        match self {
            Role::RunningMean | Role::RunningVar | Role::Fixed => false,
            Role::NormScale | Role::NormBias => train_bn,
            _ => true,
        }
    }

    pub fn is_running_stat(self) -> bool {
        matches!(self, Role::RunningMean | Role::RunningVar)
    }
}

/// The role of every initializer named in `floats` (name → dims), from its first telling consumer.
pub fn assign_roles(nodes: &[Node], floats: &HashMap<String, Vec<i64>>) -> HashMap<String, Role> {
    let producers: HashMap<&str, &Node> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut roles: HashMap<String, Role> = HashMap::new();
    for n in nodes {
        for (slot, input) in n.inputs.iter().enumerate() {
            let Some(dims) = floats.get(input) else {
                continue;
            };
            let role = role_at(n, slot, dims, &producers);
            // A name used both as a weight and elsewhere keeps its most specific role.
            let entry = roles.entry(input.clone()).or_insert(role);
            if *entry == Role::Other {
                *entry = role;
            } else if role == Role::Fixed {
                *entry = Role::Fixed;
            }
        }
    }
    for (name, dims) in floats {
        if dims.is_empty() {
            // Scalars are constants of the computation (epsilons, bounds), not parameters.
            roles.insert(name.clone(), Role::Fixed);
        }
        roles.entry(name.clone()).or_insert(Role::Fixed);
    }
    roles
}

fn role_at(n: &Node, slot: usize, dims: &[i64], producers: &HashMap<&str, &Node>) -> Role {
    let prod = |d: &[i64]| d.iter().product::<i64>();
    match (n.op_type.as_str(), slot) {
        ("Conv", 1) => Role::ConvWeight {
            fan_in: prod(&dims[1..]),
        },
        ("ConvTranspose", 1) => {
            // [C_in, C_out/group, k...]: PyTorch computes fan_in from dim 1.
            Role::ConvWeight {
                fan_in: dims.get(1).copied().unwrap_or(1) * prod(dims.get(2..).unwrap_or(&[])),
            }
        }
        ("Conv" | "ConvTranspose" | "Gemm", 2) => Role::Bias,
        ("Gemm", 1) if dims.len() == 2 => {
            let trans_b = n.attr_or("transB", 0i64).unwrap_or(0) != 0;
            let (fan_in, fan_out) = if trans_b {
                (dims[1], dims[0])
            } else {
                (dims[0], dims[1])
            };
            Role::LinearWeight { fan_in, fan_out }
        }
        ("MatMul", _) if dims.len() >= 2 => {
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
            if other.is_some_and(|p| matches!(p.op_type.as_str(), "MatMul" | "Conv" | "Gemm")) {
                Role::Bias
            } else {
                Role::Other
            }
        }
        ("BatchNormalization" | "InstanceNormalization" | "LayerNormalization", 1) => {
            Role::NormScale
        }
        ("BatchNormalization" | "InstanceNormalization" | "LayerNormalization", 2) => {
            Role::NormBias
        }
        ("BatchNormalization", 3) => Role::RunningMean,
        ("BatchNormalization", 4) => Role::RunningVar,
        ("PRelu", 1) => Role::Slope,
        ("Clip", 1 | 2)
        | ("Pad", 2)
        | ("Dropout", 1)
        | ("ConstantOfShape" | "Range" | "Reshape" | "Expand" | "Tile", _) => Role::Fixed,
        _ => Role::Other,
    }
}
