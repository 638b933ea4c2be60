//! [`Interpreter`]: the trainable ONNX interpreter on tch. It turns an [`OnnxModel`] into a plan once —
//! initializers as tch tensors on the device, integer/shape subgraphs over constants evaluated and folded, every
//! remaining node bound to its op function with slot numbers for its inputs and outputs, and each slot's last use
//! known so intermediates are dropped as soon as nothing needs them — then evaluates that plan with autograd.
//!
//! Which initializers train is decided by their role ([`super::Role`]): conv/linear weights, biases and PRelu
//! slopes always; BatchNorm/Instance/LayerNorm scale and bias only with `train_batchnorm`; running statistics
//! and every other float constant (in-graph normalization, clip bounds) never. Constants that never change are
//! folded through the nodes that read only them.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::error::OnnxError;
use super::model::OnnxModel;
use super::node::Node;
use super::ops::{self, OpCtx, OpFn};
use super::params::{assign_roles, Role};
use super::tensor_data::DType;

/// How the interpreter treats the model beyond its graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TchOptions {
    /// In training mode, BatchNorm uses batch statistics, updates its running statistics, and its scale/bias
    /// train. Off: BatchNorm stays as exported (running statistics, frozen affine parameters).
    pub train_batchnorm: bool,
    /// `[C, H, W]` of one image when the ONNX input shape does not say (a flat MLP input, symbolic dims).
    pub input_chw: Option<[i64; 3]>,
}

/// Where a node input comes from.
#[derive(Debug, Clone, Copy)]
enum Src {
    Const(usize),
    Slot(usize),
    Absent,
}

struct Step {
    node: Node,
    op: OpFn,
    inputs: Vec<Src>,
    /// The slot each output is stored in; `None` for outputs nothing reads.
    outputs: Vec<Option<usize>>,
    /// Slots whose last reader is this step.
    release: Vec<usize>,
}

/// A floating-point initializer: the model's mutable state.
struct StateEntry {
    name: String,
    konst: usize,
    dtype: DType,
    role: Role,
    trainable: bool,
}

/// The ONNX graph as a differentiable, trainable computation on tch. See the module docs.
pub struct Interpreter {
    file: PathBuf,
    opset: i64,
    device: Device,
    options: TchOptions,
    consts: Vec<Tensor>,
    state: Vec<StateEntry>,
    steps: Vec<Step>,
    slot_count: usize,
    input_slots: Vec<usize>,
    input_kinds: Vec<Kind>,
    outputs: Vec<Src>,
    train: bool,
    /// `limits.max_tensor_elements` of the model's load: no tensor the plan builds may be larger.
    max_elements: u64,
}

impl Interpreter {
    /// Builds the plan on `device` and folds constant subgraphs.
    pub fn new(model: &OnnxModel, device: Device, options: TchOptions) -> Result<Self, OnnxError> {
        let file = model.path().to_path_buf();
        let torch_err = |message: String| {
            move |source| OnnxError::Torch {
                file: model.path().to_path_buf(),
                message: message.clone(),
                source,
            }
        };
        let floats: HashMap<String, Vec<i64>> = model
            .initializers()
            .iter()
            .filter(|i| i.data.dtype.is_float())
            .map(|i| (i.name.clone(), i.data.dims.clone()))
            .collect();
        let roles = assign_roles(model.nodes(), &floats);

        let mut consts = Vec::new();
        let mut state = Vec::new();
        let mut sources: HashMap<String, Src> = HashMap::new();
        // Constants whose value never changes, so nodes reading only them can be folded.
        let mut immutable = vec![];
        for init in model.initializers() {
            let t = init
                .data
                .to_tch()
                .and_then(|t| t.f_to_device(device))
                .map_err(torch_err(format!("initializer `{}`", init.name)))?;
            let k = consts.len();
            consts.push(t);
            sources.insert(init.name.clone(), Src::Const(k));
            let role = roles.get(&init.name).copied();
            match role {
                Some(role) if init.data.dtype.is_float() => {
                    let trainable = role.trainable(options.train_batchnorm);
                    immutable.push(!trainable && !role.is_running_stat());
                    state.push(StateEntry {
                        name: init.name.clone(),
                        konst: k,
                        dtype: init.data.dtype,
                        role,
                        trainable,
                    });
                }
                _ => immutable.push(true),
            }
        }

        let mut slot_count = 0;
        let mut input_slots = Vec::new();
        let mut input_kinds = Vec::new();
        for info in model.inputs() {
            sources.insert(info.name.clone(), Src::Slot(slot_count));
            input_slots.push(slot_count);
            input_kinds.push(info.dtype().map_or(Kind::Float, DType::kind));
            slot_count += 1;
        }

        let opset = model.opset();
        let max_elements = model.limits().max_tensor_elements;
        let mut steps: Vec<Step> = Vec::new();
        for node in model.nodes() {
            let op = ops::lookup(&node.op_type).ok_or_else(|| OnnxError::Node {
                file: file.clone(),
                node: node.display_name(),
                op: node.op_type.clone(),
                message: "unsupported op".into(),
            })?;
            let inputs: Vec<Src> = node
                .inputs
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        Ok(Src::Absent)
                    } else {
                        lookup_source(&sources, name, &file)
                    }
                })
                .collect::<Result<_, _>>()?;
            let foldable = ops::is_foldable(&node.op_type)
                && inputs.iter().all(|s| match s {
                    Src::Const(k) => immutable[*k],
                    Src::Absent => true,
                    Src::Slot(_) => false,
                });
            if foldable {
                let _guard = tch::no_grad_guard();
                let args: Vec<Option<&Tensor>> = inputs
                    .iter()
                    .map(|s| match s {
                        Src::Const(k) => Some(&consts[*k]),
                        _ => None,
                    })
                    .collect();
                let ctx = OpCtx {
                    node,
                    opset,
                    train: false,
                    train_batchnorm: false,
                    max_elements,
                };
                let outs = op(&ctx, &args).map_err(|e| node_error(&file, node, e))?;
                check_outputs(&outs, max_elements).map_err(|e| node_error(&file, node, e))?;
                drop(args);
                for (name, t) in node.outputs.iter().zip(outs) {
                    if name.is_empty() {
                        continue;
                    }
                    let t = t
                        .f_to_device(device)
                        .map_err(torch_err(format!("folding `{name}`")))?;
                    sources.insert(name.clone(), Src::Const(consts.len()));
                    consts.push(t);
                    immutable.push(true);
                }
                continue;
            }
            let outputs = node
                .outputs
                .iter()
                .map(|name| {
                    (!name.is_empty()).then(|| {
                        sources.insert(name.clone(), Src::Slot(slot_count));
                        slot_count += 1;
                        slot_count - 1
                    })
                })
                .collect();
            steps.push(Step {
                node: node.clone(),
                op,
                inputs,
                outputs,
                release: Vec::new(),
            });
        }
        let outputs: Vec<Src> = model
            .outputs()
            .iter()
            .map(|o| lookup_source(&sources, &o.name, &file))
            .collect::<Result<_, _>>()?;
        compute_releases(&mut steps, &outputs, slot_count);

        Ok(Self {
            file,
            opset,
            device,
            options,
            consts,
            state,
            steps,
            slot_count,
            input_slots,
            input_kinds,
            outputs,
            train: false,
            max_elements,
        })
    }

    /// Runs the raw graph: one tensor per declared input (in order, on this model's device), every output.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        if inputs.len() != self.input_slots.len() {
            return Err(OnnxError::model(
                &self.file,
                format!(
                    "the graph takes {} inputs, {} given",
                    self.input_slots.len(),
                    inputs.len()
                ),
            ));
        }
        let mut slots: Vec<Option<Tensor>> = (0..self.slot_count).map(|_| None).collect();
        for (&s, t) in self.input_slots.iter().zip(inputs) {
            slots[s] = Some(t.shallow_clone());
        }
        for step in &self.steps {
            let args: Vec<Option<&Tensor>> = step
                .inputs
                .iter()
                .map(|s| match *s {
                    Src::Const(k) => Some(&self.consts[k]),
                    Src::Slot(k) => slots[k].as_ref(),
                    Src::Absent => None,
                })
                .collect();
            let ctx = OpCtx {
                node: &step.node,
                opset: self.opset,
                train: self.train,
                train_batchnorm: self.options.train_batchnorm,
                max_elements: self.max_elements,
            };
            let outs = (step.op)(&ctx, &args).map_err(|e| node_error(&self.file, &step.node, e))?;
            check_outputs(&outs, self.max_elements)
                .map_err(|e| node_error(&self.file, &step.node, e))?;
            drop(args);
            if outs.len() < step.outputs.iter().flatten().count() {
                return Err(node_error(
                    &self.file,
                    &step.node,
                    ops::OpError::Invalid(format!(
                        "produced {} outputs, {} expected",
                        outs.len(),
                        step.outputs.len()
                    )),
                ));
            }
            for (slot, t) in step.outputs.iter().zip(outs) {
                if let Some(s) = slot {
                    slots[*s] = Some(t);
                }
            }
            for &s in &step.release {
                slots[s] = None;
            }
        }
        self.outputs
            .iter()
            .map(|s| match *s {
                Src::Const(k) => Ok(self.consts[k].shallow_clone()),
                Src::Slot(k) => slots[k]
                    .take()
                    .ok_or_else(|| OnnxError::model(&self.file, "an output was not computed")),
                Src::Absent => Err(OnnxError::model(&self.file, "an output has no name")),
            })
            .collect()
    }

    /// Draws fresh weights (seeded): Kaiming-uniform for conv kernels, Xavier-uniform for linear weights, zero
    /// biases, BatchNorm scale 1 / bias 0 / statistics reset. Other floats keep their values.
    pub fn reinitialize(&mut self, seed: u64) -> Result<(), OnnxError> {
        let _guard = tch::no_grad_guard();
        for (idx, entry) in self.state.iter().enumerate() {
            let t = &mut self.consts[entry.konst];
            let numel = t.numel();
            let uniform = |bound: f64| -> Vec<f32> {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                    seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                (0..numel)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            };
            let values: Option<Vec<f32>> = match entry.role {
                Role::ConvWeight { fan_in } => Some(uniform((6.0 / fan_in.max(1) as f64).sqrt())),
                Role::LinearWeight { fan_in, fan_out } => {
                    Some(uniform((6.0 / (fan_in + fan_out).max(1) as f64).sqrt()))
                }
                Role::Bias | Role::NormBias | Role::RunningMean => Some(vec![0.0; numel]),
                Role::NormScale | Role::RunningVar => Some(vec![1.0; numel]),
                Role::Slope => Some(vec![0.25; numel]),
                Role::Fixed | Role::Other => None,
            };
            if let Some(v) = values {
                let fresh = Tensor::f_from_slice(&v)
                    .and_then(|f| f.f_reshape(t.size()))
                    .and_then(|f| f.f_to_kind(t.kind()))
                    .and_then(|f| f.f_to_device(t.device()))
                    .and_then(|f| t.f_copy_(&f))
                    .map_err(|source| OnnxError::Torch {
                        file: self.file.clone(),
                        message: format!("re-initializing `{}`", entry.name),
                        source,
                    });
                fresh?;
            }
        }
        Ok(())
    }

    /// The trainable initializers by name (the tensors an optimizer updates; shared with the model).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .filter(|e| e.trainable)
            .map(|e| (e.name.clone(), self.consts[e.konst].shallow_clone()))
            .collect()
    }

    /// Every floating-point initializer by name — parameters and BatchNorm statistics: what a checkpoint saves
    /// and what write-back stores.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .map(|e| (e.name.clone(), self.consts[e.konst].shallow_clone()))
            .collect()
    }

    /// Copies values into the named initializers in place (so optimizers holding them stay valid). Unknown names
    /// and shape mismatches are errors.
    pub fn load_named(&mut self, named: &[(String, Tensor)]) -> Result<(), OnnxError> {
        let index: HashMap<&str, usize> = self
            .state
            .iter()
            .map(|e| (e.name.as_str(), e.konst))
            .collect();
        let _guard = tch::no_grad_guard();
        for (name, value) in named {
            let k = *index.get(name.as_str()).ok_or_else(|| OnnxError::Tensor {
                file: self.file.clone(),
                tensor: name.clone(),
                message: "no such floating-point initializer in this model".into(),
            })?;
            let t = &mut self.consts[k];
            if t.size() != value.size() {
                return Err(OnnxError::Tensor {
                    file: self.file.clone(),
                    tensor: name.clone(),
                    message: format!("shape {:?} given, model has {:?}", value.size(), t.size()),
                });
            }
            t.f_copy_(value).map_err(|source| OnnxError::Torch {
                file: self.file.clone(),
                message: format!("loading `{name}`"),
                source,
            })?;
        }
        Ok(())
    }

    /// The original element type of a state tensor (write-back converts back to it).
    pub(crate) fn state_dtype(&self, name: &str) -> Option<DType> {
        self.state.iter().find(|e| e.name == name).map(|e| e.dtype)
    }

    pub fn is_train(&self) -> bool {
        self.train
    }

    /// Training mode (Dropout active, BatchNorm per options) and gradients on for the trainable initializers;
    /// eval mode turns those gradients off, so attacks only pay for input gradients.
    pub fn set_train(&mut self, train: bool) {
        self.train = train;
        for e in self.state.iter().filter(|e| e.trainable) {
            // set_requires_grad only fails on non-leaf tensors; initializers are leaves.
            let _ = self.consts[e.konst].f_set_requires_grad(train);
        }
    }

    /// The element types the graph's inputs are declared with.
    pub fn input_kinds(&self) -> &[Kind] {
        &self.input_kinds
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    pub fn options(&self) -> &TchOptions {
        &self.options
    }

    /// Number of plan steps left after constant folding (for diagnostics).
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }
}

/// Where a value comes from; [`OnnxModel`] validation guarantees it exists, this keeps the interpreter from
/// panicking if that ever changes.
fn lookup_source(
    sources: &HashMap<String, Src>,
    name: &str,
    file: &std::path::Path,
) -> Result<Src, OnnxError> {
    sources
        .get(name)
        .copied()
        .ok_or_else(|| OnnxError::model(file, format!("value `{name}` is produced by nothing")))
}

fn node_error(file: &std::path::Path, node: &Node, e: ops::OpError) -> OnnxError {
    OnnxError::Node {
        file: file.to_path_buf(),
        node: node.display_name(),
        op: node.op_type.clone(),
        message: e.to_string(),
    }
}

/// Every tensor an op returned is within `limits.max_tensor_elements` (ops that allocate from shape arguments
/// check before allocating; this catches the rest, e.g. a MatMul over broadcast views).
fn check_outputs(outs: &[Tensor], max_elements: u64) -> Result<(), ops::OpError> {
    for t in outs {
        let numel = t.numel() as u64;
        if numel > max_elements {
            return Err(ops::OpError::Invalid(format!(
                "an output of shape {:?} has {numel} elements, over the limit of {max_elements} (config \
                 `limits.max_tensor_elements`)",
                t.size()
            )));
        }
    }
    Ok(())
}

/// Fills each step's `release` list: a slot is released right after its last reader, unless it is an output.
fn compute_releases(steps: &mut [Step], outputs: &[Src], slot_count: usize) {
    let mut last_use: Vec<Option<usize>> = vec![None; slot_count];
    for (i, step) in steps.iter().enumerate() {
        for s in &step.inputs {
            if let Src::Slot(k) = *s {
                last_use[k] = Some(i);
            }
        }
        // An output nobody reads is released by the step that made it.
        for k in step.outputs.iter().flatten() {
            if last_use[*k].is_none() {
                last_use[*k] = Some(i);
            }
        }
    }
    for s in outputs {
        if let Src::Slot(k) = *s {
            last_use[k] = None;
        }
    }
    for (k, last) in last_use.into_iter().enumerate() {
        if let Some(i) = last {
            steps[i].release.push(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(inputs: Vec<Src>, outputs: Vec<Option<usize>>) -> Step {
        Step {
            node: Node {
                name: String::new(),
                op_type: "Identity".into(),
                domain: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                attributes: Vec::new(),
            },
            op: ops::lookup("Identity").unwrap(),
            inputs,
            outputs,
            release: Vec::new(),
        }
    }

    /// slot 0 = graph input; 1 = a(x); 2 = b(a) (unused output 3); 4 = c(a, b) is the graph output.
    #[test]
    fn each_slot_is_released_after_its_last_reader_but_outputs_are_kept() {
        let mut steps = vec![
            step(vec![Src::Slot(0)], vec![Some(1)]),
            step(vec![Src::Slot(1), Src::Const(0)], vec![Some(2), Some(3)]),
            step(vec![Src::Slot(1), Src::Slot(2)], vec![Some(4)]),
        ];
        compute_releases(&mut steps, &[Src::Slot(4)], 5);
        assert_eq!(steps[0].release, vec![0]);
        assert_eq!(steps[1].release, vec![3]);
        assert_eq!(steps[2].release, vec![1, 2]);
    }
}
