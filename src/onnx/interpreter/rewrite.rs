//! Plan rewrites that change how the interpreter computes a graph, never what it computes. Exporters decompose
//! what eager PyTorch runs as one op; these rewrites give those subgraphs back to libtorch's fused kernels, whose
//! forward and backward each take one pass over the activations instead of one per decomposed op (which a PGD
//! step pays twice, forward and backward, at every activation):
//! - GELU, erf form `0.5·x·(1 + erf(x/√2))` and tanh form `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` → `gelu`;
//! - SiLU `x·sigmoid(x)` → `silu`;
//! - `MatMul(a, W)` followed by `Add(·, b)` with constant `W` and bias `b` → `linear` (one GEMM with the bias);
//! - on CPU, constant convolution kernels get channels-last strides, so oneDNN runs the convolutions, the
//!   activations between them and their backward passes in NHWC ([`store_conv_weights_channels_last`]).
//!
//! A pattern matches only when every intermediate value has exactly one reader and is not a graph output, so no
//! other step can observe the difference; constants match within float32 rounding. The fused ops are the same
//! functions (their gradients are libtorch's fused backward kernels, which differ from the decomposed chain only
//! by float32 rounding). Write-back never sees these rewrites: it stores initializers into the original graph.

use std::collections::{HashMap, HashSet};

use tch::{Device, Kind, Tensor};

use super::{Src, Step};
use crate::onnx::node::{is_default_domain, Node};
use crate::onnx::ops::{self, one, OpCtx, OpFn, OpResult};

/// The domain fused steps are shown under in error messages (`robustd.fused::Gelu`): they are not the file's
/// nodes.
const FUSED_DOMAIN: &str = "robustd.fused";
/// Relative tolerance for matching a pattern's constants (they are stored in float32).
const CONSTANT_TOLERANCE: f64 = 1e-6;

/// Replaces the fusable subgraphs of `steps` (see the module docs). `outputs` are the graph's outputs, which are
/// never fused away. Returns how many subgraphs were fused.
pub(super) fn fuse_patterns(steps: &mut Vec<Step>, consts: &[Tensor], outputs: &[Src]) -> usize {
    let mut fused: Vec<(usize, Step)> = Vec::new();
    let mut removed: HashSet<usize> = HashSet::new();
    {
        let graph = Graph::new(steps, consts, outputs);
        for (root, at_root) in steps.iter().enumerate() {
            if removed.contains(&root) {
                continue;
            }
            let mut used = Vec::new();
            let Some((name, op, inputs)) = graph.match_at(root, &mut used) else {
                continue;
            };
            if used
                .iter()
                .any(|u| removed.contains(u) || fused.iter().any(|(r, _)| r == u))
            {
                continue;
            }
            removed.extend(used);
            let node = &at_root.node;
            let step = Step {
                node: Node {
                    name: node.name.clone(),
                    op_type: name.into(),
                    domain: FUSED_DOMAIN.into(),
                    inputs: Vec::new(),
                    outputs: node.outputs.clone(),
                    attributes: Vec::new(),
                },
                op,
                inputs,
                outputs: at_root.outputs.clone(),
                release: Vec::new(),
            };
            fused.push((root, step));
        }
    }
    let count = fused.len();
    for (root, step) in fused {
        steps[root] = step;
    }
    let mut index = 0;
    steps.retain(|_| {
        index += 1;
        !removed.contains(&(index - 1))
    });
    count
}

/// Gives every 2-D convolution kernel that is a constant (a weight, not a computed value) channels-last strides,
/// once. oneDNN then runs those convolutions, the activations between them and their backward passes in NHWC,
/// which on CPU is what it is fastest at: PGD-20 in PyTorch eager on this project's bench models (2 cores) took
/// 0.70× the contiguous time on the two small CNNs, 0.55–0.67× on the MobileNet-style net, 0.91× on the
/// ResNet-18-style one. Only strides change: values and shapes are the same, every reader that copies data out
/// (write-back, checkpoints, `Vec` conversions) goes through `contiguous`, and in-place updates (optimizers,
/// `load_named`) keep the strides. CPU only: on CUDA, `train.channels_last` decides the layout.
pub(super) fn store_conv_weights_channels_last(
    steps: &[Step],
    consts: &mut [Tensor],
    device: Device,
) -> Result<(), tch::TchError> {
    if device != Device::Cpu {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for step in steps {
        let node = &step.node;
        if node.op_type != "Conv" || !is_default_domain(&node.domain) {
            continue;
        }
        if let Some(Src::Const(k)) = step.inputs.get(1) {
            let w = &consts[*k];
            if w.dim() == 4 && w.kind() == Kind::Float && !w.requires_grad() {
                consts[*k] = crate::device::amp::channels_last(w, true)?;
            }
        }
    }
    Ok(())
}

/// The planned steps seen as a dataflow graph: who produces each slot, how many read it.
struct Graph<'a> {
    steps: &'a [Step],
    consts: &'a [Tensor],
    producer: HashMap<usize, usize>,
    /// Readers per slot; a graph output counts as one more.
    readers: HashMap<usize, usize>,
}

/// A fused op: its name for messages, its function, its inputs.
type Fused = (&'static str, OpFn, Vec<Src>);

impl<'a> Graph<'a> {
    fn new(steps: &'a [Step], consts: &'a [Tensor], outputs: &[Src]) -> Self {
        let mut producer = HashMap::new();
        let mut readers: HashMap<usize, usize> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            for k in step.outputs.iter().flatten() {
                producer.insert(*k, i);
            }
            for s in &step.inputs {
                if let Src::Slot(k) = s {
                    *readers.entry(*k).or_default() += 1;
                }
            }
        }
        for s in outputs {
            if let Src::Slot(k) = s {
                *readers.entry(*k).or_default() += 1;
            }
        }
        Self {
            steps,
            consts,
            producer,
            readers,
        }
    }

    /// The fused op rooted at step `root`, if a pattern matches; `used` collects the steps it replaces.
    fn match_at(&self, root: usize, used: &mut Vec<usize>) -> Option<Fused> {
        let node = &self.steps[root].node;
        if !is_default_domain(&node.domain) {
            return None;
        }
        match node.op_type.as_str() {
            "Mul" => self.gelu(root, used).or_else(|| {
                used.clear();
                self.silu(root, used)
            }),
            "Add" => self.linear(root, used),
            _ => None,
        }
    }

    /// `0.5 · x · (1 + erf(x/√2))` or `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
    fn gelu(&self, root: usize, used: &mut Vec<usize>) -> Option<Fused> {
        let (factors, scale) = self.factors_of_step(root, used)?;
        if !close(scale, 0.5) {
            return None;
        }
        let (x, one_plus) = self.split_pair(&factors, |s| self.single_use(s, "Add").is_some())?;
        let (terms, offset) = self.terms_of_step(self.single_use(one_plus, "Add")?, used)?;
        if !close(offset, 1.0) || terms.len() != 1 {
            return None;
        }
        if let Some(erf) = self.single_use(terms[0], "Erf") {
            used.push(erf);
            let (inner, c) = self.factors(self.steps[erf].inputs[0], used)?;
            return (inner == [x] && close(c, std::f64::consts::FRAC_1_SQRT_2))
                .then(|| contrib("Gelu", x))
                .flatten();
        }
        let tanh = self.single_use(terms[0], "Tanh")?;
        used.push(tanh);
        let (inner, c) = self.factors(self.steps[tanh].inputs[0], used)?;
        if inner.len() != 1 || !close(c, (2.0 / std::f64::consts::PI).sqrt()) {
            return None;
        }
        let (sum, zero) = self.terms_of_step(self.single_use(inner[0], "Add")?, used)?;
        if zero != 0.0 || sum.len() != 2 {
            return None;
        }
        let (cubic, _) = self.split_pair(&sum, |s| s == x)?;
        let (cube, c) = self.factors(cubic, used)?;
        (cube == [x, x, x] && close(c, 0.044715))
            .then(|| contrib("FastGelu", x))
            .flatten()
    }

    /// `x · sigmoid(x)`.
    fn silu(&self, root: usize, used: &mut Vec<usize>) -> Option<Fused> {
        let (factors, scale) = self.factors_of_step(root, used)?;
        if scale != 1.0 {
            return None;
        }
        let (x, sig) = self.split_pair(&factors, |s| self.single_use(s, "Sigmoid").is_some())?;
        let sigmoid = self.single_use(sig, "Sigmoid")?;
        used.push(sigmoid);
        (self.steps[sigmoid].inputs[0] == x).then(|| ("Silu", silu as OpFn, vec![x]))
    }

    /// `Add(MatMul(a, W), b)` (either order) with a constant float `W` `[K, N]` and bias `b` `[N]`.
    fn linear(&self, root: usize, used: &mut Vec<usize>) -> Option<Fused> {
        let inputs = &self.steps[root].inputs;
        let [p, q] = inputs.as_slice() else {
            return None;
        };
        let (product, bias) = match (p, q) {
            (Src::Slot(_), Src::Const(_)) => (*p, *q),
            (Src::Const(_), Src::Slot(_)) => (*q, *p),
            _ => return None,
        };
        let matmul = self.single_use(product, "MatMul")?;
        let [a, Src::Const(w)] = self.steps[matmul].inputs.as_slice() else {
            return None;
        };
        let Src::Const(b) = bias else { return None };
        let (w_t, b_t) = (&self.consts[*w], &self.consts[b]);
        let float = |t: &Tensor| t.kind() == Kind::Float;
        if !(float(w_t)
            && float(b_t)
            && w_t.dim() == 2
            && b_t.dim() == 1
            && w_t.size()[1] == b_t.size()[0])
        {
            return None;
        }
        used.push(matmul);
        Some(("Linear", linear as OpFn, vec![*a, Src::Const(*w), bias]))
    }

    /// The step producing `s` if it is a default-domain `op` whose output only one step reads.
    fn single_use(&self, s: Src, op: &str) -> Option<usize> {
        let Src::Slot(k) = s else { return None };
        if self.readers.get(&k).copied() != Some(1) {
            return None;
        }
        let p = *self.producer.get(&k)?;
        let node = &self.steps[p].node;
        (node.op_type == op && is_default_domain(&node.domain) && self.steps[p].outputs.len() == 1)
            .then_some(p)
    }

    /// A constant scalar's value.
    fn scalar(&self, s: Src) -> Option<f64> {
        let Src::Const(k) = s else { return None };
        let t = &self.consts[k];
        if t.numel() != 1 || t.dim() > 1 || !t.is_floating_point() {
            return None;
        }
        t.f_double_value(&vec![0; t.dim()]).ok()
    }

    /// `s` as a product: its non-constant factors (single-use `Mul`s, `Div`s by a constant and `Pow`s to 2 or 3
    /// expanded) and the product of its constant factors.
    fn factors(&self, s: Src, used: &mut Vec<usize>) -> Option<(Vec<Src>, f64)> {
        if let Some(c) = self.scalar(s) {
            return Some((Vec::new(), c));
        }
        for op in ["Mul", "Div", "Pow"] {
            if let Some(p) = self.single_use(s, op) {
                used.push(p);
                return self.factors_of_step(p, used);
            }
        }
        Some((vec![s], 1.0))
    }

    /// [`Graph::factors`] of a `Mul`, `Div` or `Pow` step's output.
    fn factors_of_step(&self, p: usize, used: &mut Vec<usize>) -> Option<(Vec<Src>, f64)> {
        let inputs = &self.steps[p].inputs;
        let [a, b] = inputs.as_slice() else {
            return None;
        };
        let (mut fa, ca) = self.factors(*a, used)?;
        match self.steps[p].node.op_type.as_str() {
            "Mul" => {
                let (fb, cb) = self.factors(*b, used)?;
                fa.extend(fb);
                Some((fa, ca * cb))
            }
            "Div" => {
                let c = self.scalar(*b).filter(|c| *c != 0.0)?;
                Some((fa, ca / c))
            }
            "Pow" => {
                let e = self.scalar(*b).filter(|e| *e == 2.0 || *e == 3.0)? as usize;
                let base = fa.clone();
                for _ in 1..e {
                    fa.extend(base.iter().copied());
                }
                Some((fa, ca.powi(e as i32)))
            }
            _ => None,
        }
    }

    /// An `Add` step's output as a sum: its non-constant terms (single-use `Add`s expanded) and the sum of its
    /// constant terms.
    fn terms_of_step(&self, p: usize, used: &mut Vec<usize>) -> Option<(Vec<Src>, f64)> {
        used.push(p);
        let [a, b] = self.steps[p].inputs.as_slice() else {
            return None;
        };
        let mut terms = Vec::new();
        let mut constant = 0.0;
        for s in [*a, *b] {
            if let Some(c) = self.scalar(s) {
                constant += c;
            } else if let Some(q) = self.single_use(s, "Add") {
                let (t, c) = self.terms_of_step(q, used)?;
                terms.extend(t);
                constant += c;
            } else {
                terms.push(s);
            }
        }
        Some((terms, constant))
    }

    /// The two entries of `pair` as `(other, chosen)`, where `chosen` is the one `pick` selects.
    fn split_pair(&self, pair: &[Src], pick: impl Fn(Src) -> bool) -> Option<(Src, Src)> {
        match pair {
            [a, b] if pick(*b) => Some((*a, *b)),
            [a, b] if pick(*a) => Some((*b, *a)),
            _ => None,
        }
    }
}

fn close(value: f64, expected: f64) -> bool {
    (value - expected).abs() <= CONSTANT_TOLERANCE * expected.abs()
}

/// onnxruntime's contrib op `name` (`Gelu`: erf form; `FastGelu` without its bias: tanh form) on the one input
/// `x`: the registry's implementation, so the fused step runs exactly what a file fused by onnxruntime's optimizer
/// runs.
fn contrib(name: &'static str, x: Src) -> Option<Fused> {
    Some((name, ops::lookup(ops::MICROSOFT, name)?, vec![x]))
}

fn silu(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    one(c.input(i, 0)?.f_silu()?)
}

/// `a · W + b` as one GEMM with the bias (`linear` takes the weight as `[N, K]`: a transposed view of `W`).
fn linear(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (a, w, b) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    one(a.f_linear(&w.f_tr()?, Some(b))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Src = Src::Slot(0);

    fn step(op: &str, inputs: Vec<Src>, output: usize) -> Step {
        Step {
            node: Node {
                name: format!("{op}_{output}"),
                op_type: op.into(),
                domain: String::new(),
                inputs: Vec::new(),
                outputs: vec![format!("t{output}")],
                attributes: Vec::new(),
            },
            op: ops::lookup("", op).unwrap(),
            inputs,
            outputs: vec![Some(output)],
            release: Vec::new(),
        }
    }

    fn scalars(values: &[f32]) -> Vec<Tensor> {
        values.iter().map(|v| Tensor::from(*v)).collect()
    }

    /// Evaluates the plan on input `x` (slot 0) and returns slot `out`.
    fn run(steps: &[Step], consts: &[Tensor], x: &Tensor, out: usize) -> Tensor {
        let mut slots: HashMap<usize, Tensor> = HashMap::from([(0, x.shallow_clone())]);
        for s in steps {
            let args: Vec<Option<&Tensor>> = s
                .inputs
                .iter()
                .map(|i| match *i {
                    Src::Const(k) => Some(&consts[k]),
                    Src::Slot(k) => slots.get(&k),
                    Src::Absent => None,
                })
                .collect();
            let ctx = OpCtx {
                node: &s.node,
                opset: 17,
                train: false,
                train_batchnorm: false,
                max_elements: u64::MAX,
            };
            let outs = (s.op)(&ctx, &args).unwrap();
            for (slot, t) in s.outputs.iter().zip(outs) {
                slots.insert(slot.unwrap(), t);
            }
        }
        slots.remove(&out).unwrap()
    }

    /// Fuses `steps` and checks the result: one step named `fused`, the same values as the decomposed plan.
    fn assert_fuses_to(mut steps: Vec<Step>, consts: Vec<Tensor>, out: usize, fused: &str) {
        let x = Tensor::linspace(-4.0, 4.0, 801, (Kind::Float, Device::Cpu)).view([3, 267]);
        let before = run(&steps, &consts, &x, out);
        assert_eq!(fuse_patterns(&mut steps, &consts, &[Src::Slot(out)]), 1);
        assert_eq!(
            steps.len(),
            1,
            "{fused}: {:?}",
            steps.iter().map(|s| &s.node.op_type).collect::<Vec<_>>()
        );
        assert_eq!(steps[0].node.op_type, fused);
        assert_eq!(
            steps[0].node.qualified_op(),
            format!("{FUSED_DOMAIN}::{fused}")
        );
        let after = run(&steps, &consts, &x, out);
        let diff = (&after - &before).abs().max().double_value(&[]);
        // Float32 rounding, relative to the values' size: a fused linear sums its 267 products in another order
        // than MatMul + Add (AMD EPYC without AVX-512: 3e-5 apart on outputs near 300).
        let scale = before.abs().max().double_value(&[]).max(1.0);
        assert!(
            diff < 1e-6 * scale,
            "{fused}: fused and decomposed differ by {diff} (values up to {scale})"
        );
    }

    /// `x·0.5·(1 + erf(x/√2))` as `torch.onnx.export` writes `F.gelu(x)`.
    fn erf_gelu() -> (Vec<Step>, Vec<Tensor>) {
        let steps = vec![
            step("Div", vec![X, Src::Const(0)], 1),
            step("Erf", vec![Src::Slot(1)], 2),
            step("Add", vec![Src::Slot(2), Src::Const(1)], 3),
            step("Mul", vec![X, Src::Slot(3)], 4),
            step("Mul", vec![Src::Slot(4), Src::Const(2)], 5),
        ];
        (steps, scalars(&[std::f32::consts::SQRT_2, 1.0, 0.5]))
    }

    #[test]
    fn erf_gelu_becomes_one_gelu() {
        let (steps, consts) = erf_gelu();
        assert_fuses_to(steps, consts, 5, "Gelu");
    }

    /// `F.gelu(x, approximate="tanh")` as exported: x³ as `Mul(x, Mul(x, x))`, constants on the left.
    #[test]
    fn tanh_gelu_becomes_one_gelu() {
        let c = |k| Src::Const(k);
        let steps = vec![
            step("Mul", vec![X, X], 1),
            step("Mul", vec![X, Src::Slot(1)], 2),
            step("Mul", vec![c(0), Src::Slot(2)], 3),
            step("Add", vec![X, Src::Slot(3)], 4),
            step("Mul", vec![c(1), Src::Slot(4)], 5),
            step("Tanh", vec![Src::Slot(5)], 6),
            step("Add", vec![c(2), Src::Slot(6)], 7),
            step("Mul", vec![X, Src::Slot(7)], 8),
            step("Mul", vec![c(3), Src::Slot(8)], 9),
        ];
        let consts = scalars(&[0.044715, (2.0f32 / std::f32::consts::PI).sqrt(), 1.0, 0.5]);
        assert_fuses_to(steps, consts, 9, "FastGelu");
    }

    #[test]
    fn silu_and_bias_matmul_are_fused() {
        let steps = vec![
            step("Sigmoid", vec![X], 1),
            step("Mul", vec![Src::Slot(1), X], 2),
        ];
        assert_fuses_to(steps, Vec::new(), 2, "Silu");
        let w = Tensor::linspace(-1.0, 1.0, 267 * 5, (Kind::Float, Device::Cpu)).view([267, 5]);
        let b = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 3.0]);
        let steps = vec![
            step("MatMul", vec![X, Src::Const(0)], 1),
            step("Add", vec![Src::Const(1), Src::Slot(1)], 2),
        ];
        assert_fuses_to(steps, vec![w, b], 2, "Linear");
    }

    #[test]
    fn nothing_fuses_when_an_intermediate_is_read_elsewhere_or_a_constant_differs() {
        // erf(x/√2) is also a graph output: the chain must compute it.
        let (mut steps, consts) = erf_gelu();
        assert_eq!(
            fuse_patterns(&mut steps, &consts, &[Src::Slot(5), Src::Slot(2)]),
            0
        );
        assert_eq!(steps.len(), 5);
        // Another step reads x·(1 + erf(x/√2)).
        let (mut steps, consts) = erf_gelu();
        steps.push(step("Neg", vec![Src::Slot(4)], 6));
        assert_eq!(
            fuse_patterns(&mut steps, &consts, &[Src::Slot(5), Src::Slot(6)]),
            0
        );
        // 0.49·x·(1 + erf(x/√2)) is not GELU.
        let (mut steps, _) = erf_gelu();
        let consts = scalars(&[std::f32::consts::SQRT_2, 1.0, 0.49]);
        assert_eq!(fuse_patterns(&mut steps, &consts, &[Src::Slot(5)]), 0);
        // x·sigmoid(1.702·x) (quick GELU) is not SiLU.
        let mut steps = vec![
            step("Mul", vec![X, Src::Const(0)], 1),
            step("Sigmoid", vec![Src::Slot(1)], 2),
            step("Mul", vec![X, Src::Slot(2)], 3),
        ];
        assert_eq!(
            fuse_patterns(&mut steps, &scalars(&[1.702]), &[Src::Slot(3)]),
            0
        );
        // A bias that does not match the product's last dimension broadcasts differently.
        let w = Tensor::zeros([267, 5], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let mut steps = vec![
            step("MatMul", vec![X, Src::Const(0)], 1),
            step("Add", vec![Src::Slot(1), Src::Const(1)], 2),
        ];
        assert_eq!(fuse_patterns(&mut steps, &[w, b], &[Src::Slot(2)]), 0);
    }

    #[test]
    fn conv_kernels_get_channels_last_strides_with_the_same_values() {
        let w = Tensor::arange(2 * 3 * 2 * 2, (Kind::Float, Device::Cpu)).view([2, 3, 2, 2]);
        let mut consts = vec![w.copy()];
        let steps = vec![step("Conv", vec![X, Src::Const(0)], 1)];
        store_conv_weights_channels_last(&steps, &mut consts, Device::Cpu).unwrap();
        assert_eq!(consts[0].stride(), vec![12, 1, 6, 3]);
        assert_eq!(consts[0].size(), w.size());
        assert!(consts[0].equal(&w));
        let data = crate::onnx::tensor_data::TensorData::from_tch(
            &consts[0],
            crate::onnx::tensor_data::DType::F32,
        )
        .unwrap();
        assert_eq!(data.to_tch_compute().unwrap().view([-1]), w.view([-1]));
        // One input channel: already "contiguous" by libtorch's size-1 rule, it still gets NHWC strides, the
        // ones libtorch reads as channels-last.
        let mut consts = vec![Tensor::zeros([16, 1, 3, 3], (Kind::Float, Device::Cpu))];
        store_conv_weights_channels_last(&steps, &mut consts, Device::Cpu).unwrap();
        assert_eq!(consts[0].stride(), vec![9, 1, 3, 1]);
    }
}
