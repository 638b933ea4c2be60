//! [`Interpreter`]: the trainable ONNX interpreter on tch. It turns an [`OnnxModel`] into a plan once —
//! initializers as tch tensors on the device, integer/shape subgraphs over constants evaluated and folded, every
//! remaining node bound to its op function with slot numbers for its inputs and outputs, and each slot's last use
//! known so intermediates are dropped as soon as nothing needs them — then evaluates that plan with autograd.
//! The integer subgraphs that read the input only through its shape (a dynamic-batch export's `Shape` → `Gather`
//! → `Unsqueeze` → `Concat` chains feeding `Reshape`) are evaluated once per input shape ([`ShapeMemo`]).
//!
//! Which initializers train is decided by their role ([`super::Role`]): conv/linear weights, biases and PRelu
//! slopes always; BatchNorm/Instance/LayerNorm scale and bias only with `train_batchnorm`; running statistics
//! and every other float constant (in-graph normalization, clip bounds) never. Constants that never change are
//! folded through the nodes that read only them; an `If` whose condition folds to a constant is replaced by its
//! chosen branch.
//!
//! Shipped forms: float16/bfloat16 values are computed in float32 (the float32 copies are the master weights
//! fine-tuning updates; write-back converts back). Quantized weights (see [`super::quantized`]) are kept as
//! float32 masters and fake-quantized on every forward pass, so attacks get straight-through gradients and
//! fine-tuning is quantization-aware; write-back rounds them to the original integers with the same scales.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::error::OnnxError;
use super::model::{OnnxModel, ValueInfo};
use super::node::{is_default_domain, Node};
use super::ops::{self, OpCtx, OpFn};
use super::params::{assign_roles, Role};
use super::proto::GraphProto;
use super::quantized::{self, QuantizedWeight};
use super::tensor_data::{DType, TensorData};

/// How the interpreter treats the model beyond its graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TchOptions {
    /// In training mode, BatchNorm uses batch statistics, updates its running statistics, and its scale/bias
    /// train. Off: BatchNorm stays as exported (running statistics, frozen affine parameters).
    pub train_batchnorm: bool,
    /// `[C, H, W]` of one image when the ONNX input shape does not say (a flat MLP input, symbolic dims).
    pub input_chw: Option<[i64; 3]>,
}

mod rewrite;

/// Where a node input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A floating-point initializer, or the float32 master of a quantized one: the model's mutable state.
struct StateEntry {
    name: String,
    konst: usize,
    /// The element type in the file (write-back converts back to it).
    dtype: DType,
    role: Role,
    trainable: bool,
    /// Set for quantized weights: how the master maps back to the stored integers.
    quantized: Option<QuantizedWeight>,
}

/// Which steps compute values that depend on the graph's inputs only through tensor shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Memo {
    /// A value computed from data.
    No,
    /// `Shape` or `Size` of a computed tensor: its output is a function of that tensor's shape.
    Root,
    /// A deterministic default-domain op reading only immutable constants and the outputs of `Root` and
    /// `Derived` steps: its outputs are a function of the shapes those roots (step indices) read.
    Derived(Vec<usize>),
}

/// The last run's shape-only values. Why by hand: a dynamic-batch export recomputes ~100 integer ops per forward
/// pass from the input's shape (the small ViT: 27 Shape, 26 Gather, 25 Unsqueeze, 15 Concat), each a tensor op
/// with its dispatch cost, ~20 % of that model's forward time at batch 50; between runs of the same input shape
/// their values cannot change. A `Root` step whose input has the shape it had last time reuses its outputs, and a
/// `Derived` step whose roots all did reuses its own.
struct ShapeMemo {
    /// Per step: the input shape a `Root` last saw.
    shapes: Vec<Option<Vec<i64>>>,
    /// Per step: the outputs a `Root` or `Derived` step last produced.
    outputs: Vec<Option<Vec<Tensor>>>,
    /// The last run that used these values finished: a run stopped by an error may have left a root's new shape
    /// beside a derived value of its old one, so the next run starts afresh.
    complete: bool,
}

/// Marks the steps of `steps` whose values depend on the inputs only through shapes (see [`Memo`]).
fn shape_memo_plan(steps: &[Step], immutable: &[bool]) -> Vec<Memo> {
    // Per slot, the root steps it derives from, for slots made by `Root`/`Derived` steps.
    let mut derived: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut memo = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let default_domain = is_default_domain(&step.node.domain);
        let kind = if default_domain
            && matches!(step.node.op_type.as_str(), "Shape" | "Size")
            && matches!(step.inputs.first(), Some(Src::Slot(_)))
        {
            Memo::Root
        } else if default_domain && ops::is_foldable(&step.node.op_type) {
            let mut roots = Vec::new();
            let mut reads_shapes = false;
            let only_shapes = step.inputs.iter().all(|s| match s {
                Src::Const(k) => immutable.get(*k).copied().unwrap_or(false),
                Src::Absent => true,
                Src::Slot(k) => match derived.get(k) {
                    Some(r) => {
                        reads_shapes = true;
                        roots.extend_from_slice(r);
                        true
                    }
                    None => false,
                },
            });
            if only_shapes && reads_shapes {
                roots.sort_unstable();
                roots.dedup();
                Memo::Derived(roots)
            } else {
                Memo::No
            }
        } else {
            Memo::No
        };
        let roots = match &kind {
            Memo::Root => Some(vec![i]),
            Memo::Derived(r) => Some(r.clone()),
            Memo::No => None,
        };
        if let Some(roots) = roots {
            for k in step.outputs.iter().flatten() {
                derived.insert(*k, roots.clone());
            }
        }
        memo.push(kind);
    }
    memo
}

/// The ONNX graph as a differentiable, trainable computation on tch. See the module docs.
pub struct Interpreter {
    file: PathBuf,
    opset: i64,
    device: Device,
    options: TchOptions,
    consts: Vec<Tensor>,
    /// The constant index of every initializer, by name.
    const_index: HashMap<String, usize>,
    state: Vec<StateEntry>,
    steps: Vec<Step>,
    slot_count: usize,
    input_slots: Vec<usize>,
    /// The graph's inputs as declared: every run checks element type and rank against them.
    inputs: Vec<ValueInfo>,
    input_kinds: Vec<Kind>,
    outputs: Vec<Src>,
    train: bool,
    /// `limits.max_tensor_elements` of the model's load: no tensor the plan builds may be larger.
    max_elements: u64,
    /// Per step, whether its values depend on the inputs only through shapes.
    memo: Vec<Memo>,
    /// Their values from the last run; a run that finds it locked (another thread's) computes them.
    memo_values: std::sync::Mutex<ShapeMemo>,
}

/// Builds the plan: constants, value sources, folding, steps. Recursive for the chosen branches of `If`.
struct Planner<'a> {
    file: &'a std::path::Path,
    opset: i64,
    device: Device,
    max_elements: u64,
    consts: Vec<Tensor>,
    /// Whether each constant never changes (so nodes reading only such constants fold).
    immutable: Vec<bool>,
    sources: HashMap<String, Src>,
    steps: Vec<Step>,
    slot_count: usize,
    /// Quantized master weights by constant index: their fake-quantization node, and its slot once planned.
    masters: HashMap<usize, (Node, Option<usize>)>,
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
        let quantized = quantized::quantized_weights(model);
        let weights: HashMap<String, Vec<i64>> = model
            .initializers()
            .iter()
            .filter(|i| i.data.dtype.is_float() || quantized.contains_key(&i.name))
            .map(|i| (i.name.clone(), i.data.dims.clone()))
            .collect();
        let roles = assign_roles(model.nodes(), &weights);

        let mut planner = Planner {
            file: model.path(),
            opset: model.opset(),
            device,
            max_elements: model.limits().max_tensor_elements,
            consts: Vec::new(),
            immutable: Vec::new(),
            sources: HashMap::new(),
            steps: Vec::new(),
            slot_count: 0,
            masters: HashMap::new(),
        };
        let mut state = Vec::new();
        let mut const_index = HashMap::new();
        for init in model.initializers() {
            let q = quantized.get(&init.name);
            let t = match q {
                Some(q) => master_weight(model, &init.data, q),
                None => init.data.to_tch_compute(),
            }
            .and_then(|t| t.f_to_device(device))
            .map_err(torch_err(format!("initializer `{}`", init.name)))?;
            let k = planner.constant(&init.name, t, true);
            const_index.insert(init.name.clone(), k);
            let role = roles.get(&init.name).copied();
            if let Some(q) = q {
                planner
                    .masters
                    .insert(k, (quantized::fake_quantize_node(&init.name, q), None));
            }
            match role {
                Some(role) if init.data.dtype.is_float() || q.is_some() => {
                    let trainable = role.trainable(options.train_batchnorm);
                    planner.immutable[k] = !trainable && !role.is_running_stat() && q.is_none();
                    state.push(StateEntry {
                        name: init.name.clone(),
                        konst: k,
                        dtype: init.data.dtype,
                        role,
                        trainable,
                        quantized: q.cloned(),
                    });
                }
                _ => {}
            }
        }

        let mut input_slots = Vec::new();
        let mut input_kinds = Vec::new();
        for info in model.inputs() {
            planner
                .sources
                .insert(info.name.clone(), Src::Slot(planner.slot_count));
            input_slots.push(planner.slot_count);
            input_kinds.push(info.dtype().map_or(Kind::Float, DType::compute_kind));
            planner.slot_count += 1;
        }
        planner.plan(model.nodes())?;
        let outputs: Vec<Src> = model
            .outputs()
            .iter()
            .map(|o| lookup_source(&planner.sources, &o.name, &file))
            .collect::<Result<_, _>>()?;
        let Planner {
            mut consts,
            mut steps,
            slot_count,
            immutable,
            ..
        } = planner;
        let fused = rewrite::fuse_patterns(&mut steps, &consts, &outputs);
        tracing::debug!(file = %file.display(), fused, steps = steps.len(), "planned");
        rewrite::store_conv_weights_channels_last(&steps, &mut consts, device)
            .map_err(torch_err("channels-last convolution weights".into()))?;
        compute_releases(&mut steps, &outputs, slot_count);
        let memo = shape_memo_plan(&steps, &immutable);

        Ok(Self {
            file,
            opset: model.opset(),
            device,
            options,
            consts,
            const_index,
            state,
            steps,
            slot_count,
            input_slots,
            inputs: model.inputs().to_vec(),
            input_kinds,
            outputs,
            train: false,
            max_elements: model.limits().max_tensor_elements,
            memo_values: std::sync::Mutex::new(ShapeMemo {
                shapes: vec![None; memo.len()],
                outputs: (0..memo.len()).map(|_| None).collect(),
                complete: true,
            }),
            memo,
        })
    }

    /// Runs the raw graph: one tensor per declared input (in order, on this model's device), every output. Each
    /// input must have the declared element type (float16 inputs may come as float16 or float32: the graph
    /// computes them in float32) and rank, as onnxruntime requires.
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
        for ((&s, t), info) in self.input_slots.iter().zip(inputs).zip(&self.inputs) {
            slots[s] = Some(self.checked_input(t, info)?);
        }
        let mut memo = self.memo_values.try_lock().ok();
        if let Some(m) = memo.as_deref_mut() {
            if !m.complete {
                m.shapes.fill(None);
                m.outputs.iter_mut().for_each(|o| *o = None);
            }
            m.complete = false;
        }
        // Per step, whether a `Root` found the shape it saw last time.
        let mut same_shape = vec![false; self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let args: Vec<Option<&Tensor>> = step
                .inputs
                .iter()
                .map(|s| match *s {
                    Src::Const(k) => Some(&self.consts[k]),
                    Src::Slot(k) => slots[k].as_ref(),
                    Src::Absent => None,
                })
                .collect();
            let remembered = match (&self.memo[i], memo.as_deref_mut()) {
                (Memo::No, _) | (_, None) => None,
                (Memo::Root, Some(m)) => {
                    let shape = args.first().copied().flatten().map(Tensor::size);
                    same_shape[i] = shape.is_some() && m.shapes[i] == shape;
                    if !same_shape[i] {
                        m.shapes[i] = shape;
                        m.outputs[i] = None;
                    }
                    m.outputs[i].as_ref()
                }
                (Memo::Derived(roots), Some(m)) => {
                    if !roots.iter().all(|&r| same_shape[r]) {
                        m.outputs[i] = None;
                    }
                    m.outputs[i].as_ref()
                }
            };
            let outs = match remembered {
                Some(outs) => outs.iter().map(Tensor::shallow_clone).collect(),
                None => {
                    let ctx = OpCtx {
                        node: &step.node,
                        opset: self.opset,
                        train: self.train,
                        train_batchnorm: self.options.train_batchnorm,
                        max_elements: self.max_elements,
                    };
                    let outs = (step.op)(&ctx, &args)
                        .map_err(|e| node_error(&self.file, &step.node, e))?;
                    check_outputs(&outs, self.max_elements)
                        .map_err(|e| node_error(&self.file, &step.node, e))?;
                    if let (Memo::Root | Memo::Derived(_), Some(m)) =
                        (&self.memo[i], memo.as_deref_mut())
                    {
                        m.outputs[i] = Some(outs.iter().map(Tensor::shallow_clone).collect());
                    }
                    outs
                }
            };
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
        if let Some(m) = memo.as_deref_mut() {
            m.complete = true;
        }
        drop(memo);
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

    /// An input checked against its declaration (element type and rank), in the compute kind.
    fn checked_input(&self, t: &Tensor, info: &ValueInfo) -> Result<Tensor, OnnxError> {
        let declared = info.dtype();
        let kind_ok = match declared {
            None => info.elem_type == 0,
            Some(d) => t.kind() == d.compute_kind() || t.kind() == d.kind(),
        };
        let rank_ok = info.dims.as_ref().is_none_or(|d| d.len() == t.dim());
        if !(kind_ok && rank_ok) {
            let given = DType::from_kind(t.kind()).map_or("an unsupported type", DType::name);
            return Err(OnnxError::model(
                &self.file,
                format!(
                    "input `{}` is declared {} of shape {}; given {given} of shape {:?}",
                    info.name,
                    info.dtype_name(),
                    info.shape_string(),
                    t.size()
                ),
            ));
        }
        match declared.map(DType::compute_kind) {
            Some(k) if k != t.kind() => t.f_to_kind(k).map_err(|source| OnnxError::Torch {
                file: self.file.clone(),
                message: format!("widening input `{}`", info.name),
                source,
            }),
            _ => Ok(t.shallow_clone()),
        }
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

    /// What write-back stores for a state tensor: its value in the file's element type — float16 rounded from
    /// the float32 master, a quantized weight re-quantized with its own scale and zero point. `None` for names
    /// that are not state.
    pub(crate) fn stored_value(&self, name: &str) -> Option<Result<TensorData, OnnxError>> {
        let entry = self.state.iter().find(|e| e.name == name)?;
        let value = &self.consts[entry.konst];
        let torch = |source| OnnxError::Torch {
            file: self.file.clone(),
            message: format!("storing `{name}`"),
            source,
        };
        Some(match &entry.quantized {
            None => TensorData::from_tch(value, entry.dtype).map_err(torch),
            Some(q) => self.requantized(name, value, q, entry.dtype),
        })
    }

    /// A master weight rounded back to its integers with its own scale and zero point.
    fn requantized(
        &self,
        name: &str,
        value: &Tensor,
        q: &QuantizedWeight,
        dtype: DType,
    ) -> Result<TensorData, OnnxError> {
        let _guard = tch::no_grad_guard();
        let zp = q
            .zero_point
            .as_deref()
            .map(|z| self.named_const(z))
            .transpose()?;
        let ints = ops::fake_quantize(
            value,
            &self.named_const(&q.scale)?,
            zp.as_ref(),
            q.axis,
            q.range,
        )
        .map_err(|e| OnnxError::Tensor {
            file: self.file.clone(),
            tensor: name.to_owned(),
            message: format!("re-quantizing: {e}"),
        })?;
        TensorData::from_tch(&ints, dtype).map_err(|source| OnnxError::Torch {
            file: self.file.clone(),
            message: format!("storing `{name}`"),
            source,
        })
    }

    /// Whether any weight is quantized (fine-tuning is then quantization-aware).
    pub fn has_quantized_weights(&self) -> bool {
        self.state.iter().any(|e| e.quantized.is_some())
    }

    /// A constant by its graph name (a quantization parameter).
    fn named_const(&self, name: &str) -> Result<Tensor, OnnxError> {
        self.const_index
            .get(name)
            .map(|&k| self.consts[k].shallow_clone())
            .ok_or_else(|| OnnxError::model(&self.file, format!("no constant `{name}`")))
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

/// A quantized weight's float32 master in real units: `(q - zero_point) · scale`.
fn master_weight(
    model: &OnnxModel,
    data: &TensorData,
    q: &QuantizedWeight,
) -> Result<Tensor, tch::TchError> {
    let param = |name: &str| -> Result<Tensor, tch::TchError> {
        match model.initializer(name) {
            Some(i) => i.data.to_tch_compute(),
            None => Err(tch::TchError::Kind(format!("no initializer `{name}`"))),
        }
    };
    let zp = q.zero_point.as_deref().map(param).transpose()?;
    ops::dequantize(&data.to_tch()?, &param(&q.scale)?, zp.as_ref(), q.axis)
        .map_err(|e| tch::TchError::Kind(e.to_string()))?
        .f_to_kind(Kind::Float)
}

impl Planner<'_> {
    /// Adds a constant under `name`; returns its index.
    fn constant(&mut self, name: &str, t: Tensor, immutable: bool) -> usize {
        let k = self.consts.len();
        self.consts.push(t);
        self.immutable.push(immutable);
        self.sources.insert(name.to_owned(), Src::Const(k));
        k
    }

    fn torch_err(&self, message: String) -> impl Fn(tch::TchError) -> OnnxError + '_ {
        move |source| OnnxError::Torch {
            file: self.file.to_path_buf(),
            message: message.clone(),
            source,
        }
    }

    /// Plans `nodes` (in a valid order) one by one.
    fn plan(&mut self, nodes: &[Node]) -> Result<(), OnnxError> {
        for node in nodes {
            if node.op_type == "If" && is_default_domain(&node.domain) {
                self.plan_if(node)?;
            } else {
                self.plan_node(node)?;
            }
        }
        Ok(())
    }

    /// Where input `name` comes from; a quantized master weight is read through its fake-quantization step,
    /// planned before its first reader.
    fn source(&mut self, name: &str) -> Result<Src, OnnxError> {
        if name.is_empty() {
            return Ok(Src::Absent);
        }
        let src = lookup_source(&self.sources, name, self.file)?;
        let Src::Const(k) = src else { return Ok(src) };
        let Some((node, slot)) = self.masters.get(&k).cloned() else {
            return Ok(src);
        };
        if let Some(slot) = slot {
            return Ok(Src::Slot(slot));
        }
        let mut inputs = vec![Src::Const(k)];
        for n in &node.inputs[1..] {
            inputs.push(if n.is_empty() {
                Src::Absent
            } else {
                lookup_source(&self.sources, n, self.file)?
            });
        }
        let slot = self.slot_count;
        self.slot_count += 1;
        self.steps.push(Step {
            node,
            op: quantized::fake_quantize_op,
            inputs,
            outputs: vec![Some(slot)],
            release: Vec::new(),
        });
        if let Some(entry) = self.masters.get_mut(&k) {
            entry.1 = Some(slot);
        }
        Ok(Src::Slot(slot))
    }

    fn plan_node(&mut self, node: &Node) -> Result<(), OnnxError> {
        let op = ops::lookup(&node.domain, &node.op_type).ok_or_else(|| OnnxError::Node {
            file: self.file.to_path_buf(),
            node: node.display_name(),
            op: node.qualified_op(),
            message: "unsupported op".into(),
        })?;
        let inputs: Vec<Src> = node
            .inputs
            .iter()
            .map(|name| self.source(name))
            .collect::<Result<_, _>>()?;
        let foldable = ops::is_foldable(&node.op_type)
            && inputs.iter().all(|s| match s {
                Src::Const(k) => self.immutable[*k],
                Src::Absent => true,
                Src::Slot(_) => false,
            });
        if foldable {
            let _guard = tch::no_grad_guard();
            let args: Vec<Option<&Tensor>> = inputs
                .iter()
                .map(|s| match s {
                    Src::Const(k) => Some(&self.consts[*k]),
                    _ => None,
                })
                .collect();
            let ctx = OpCtx {
                node,
                opset: self.opset,
                train: false,
                train_batchnorm: false,
                max_elements: self.max_elements,
            };
            let outs = op(&ctx, &args).map_err(|e| node_error(self.file, node, e))?;
            check_outputs(&outs, self.max_elements).map_err(|e| node_error(self.file, node, e))?;
            drop(args);
            for (name, t) in node.outputs.iter().zip(outs) {
                if name.is_empty() {
                    continue;
                }
                let t = t
                    .f_to_device(self.device)
                    .map_err(self.torch_err(format!("folding `{name}`")))?;
                self.constant(name, t, true);
            }
            return Ok(());
        }
        let outputs = node
            .outputs
            .iter()
            .map(|name| {
                (!name.is_empty()).then(|| {
                    self.sources
                        .insert(name.clone(), Src::Slot(self.slot_count));
                    self.slot_count += 1;
                    self.slot_count - 1
                })
            })
            .collect();
        self.steps.push(Step {
            node: node.clone(),
            op,
            inputs,
            outputs,
            release: Vec::new(),
        });
        Ok(())
    }

    /// An `If` whose condition folded to a constant: the chosen branch's initializers and nodes join the plan,
    /// and the If's outputs are the branch's outputs. A condition computed from the input is not supported.
    fn plan_if(&mut self, node: &Node) -> Result<(), OnnxError> {
        let cond = match node.input_name(0).map(|c| self.source(c)).transpose()? {
            Some(Src::Const(k)) if self.immutable[k] => {
                ops::to_f64(&self.consts[k]).map_err(|e| node_error(self.file, node, e))?
            }
            _ => {
                return Err(OnnxError::UnsupportedOps {
                    file: self.file.to_path_buf(),
                    opset: self.opset,
                    ops: vec![("If (condition computed from the input)".into(), 1)],
                })
            }
        };
        let which = if cond != 0.0 {
            "then_branch"
        } else {
            "else_branch"
        };
        let branch: GraphProto = node
            .attr(which)
            .map_err(|e| node_error(self.file, node, e.into()))?
            .ok_or_else(|| {
                node_error(
                    self.file,
                    node,
                    ops::OpError::Invalid(format!("attribute `{which}` is required")),
                )
            })?;
        for t in &branch.initializer {
            let value = TensorData::from_proto(t, None)
                .map_err(|e| OnnxError::Tensor {
                    file: self.file.to_path_buf(),
                    tensor: t.name.clone(),
                    message: e.to_string(),
                })?
                .to_tch_compute()
                .and_then(|v| v.f_to_device(self.device))
                .map_err(self.torch_err(format!("branch initializer `{}`", t.name)))?;
            self.constant(&t.name, value, true);
        }
        let nodes: Vec<Node> = branch.node.iter().map(Node::from_proto).collect();
        self.plan(&nodes)?;
        if branch.output.len() < node.outputs.iter().filter(|o| !o.is_empty()).count() {
            return Err(node_error(
                self.file,
                node,
                ops::OpError::Invalid(format!(
                    "the {which} has {} outputs, the node {}",
                    branch.output.len(),
                    node.outputs.len()
                )),
            ));
        }
        for (name, out) in node.outputs.iter().zip(&branch.output) {
            if !name.is_empty() {
                let src = lookup_source(&self.sources, &out.name, self.file)?;
                self.sources.insert(name.clone(), src);
            }
        }
        Ok(())
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
        // Not `Tensor::numel`: its plain i64 product overflows on a view whose sizes multiply past 2^63.
        let size = t.size();
        match ops::checked_numel(&size) {
            Some(n) if n <= max_elements => {}
            numel => {
                return Err(ops::OpError::Invalid(format!(
                    "an output of shape {size:?} has {} elements, over the limit of {max_elements} (config \
                     `limits.max_tensor_elements`)",
                    numel.map_or_else(|| "more than 2^63".to_owned(), |n| n.to_string())
                )))
            }
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
            op: ops::lookup("", "Identity").unwrap(),
            inputs,
            outputs,
            release: Vec::new(),
        }
    }

    fn op_step(op_type: &str, inputs: Vec<Src>, outputs: Vec<Option<usize>>) -> Step {
        let mut s = step(inputs, outputs);
        s.node.op_type = op_type.into();
        s
    }

    /// slot 0 = input; Shape(0) → 1; Gather(1, c0) → 2; Unsqueeze(2) → 3; Concat(3, c1) → 4; Reshape(0, 4) → 5;
    /// Mul(4, c2) with c2 mutable → 6; RandomNormalLike(4) → 7; Add(5, 5) → 8.
    #[test]
    fn only_steps_reading_shapes_and_immutable_constants_are_remembered() {
        let steps = vec![
            op_step("Shape", vec![Src::Slot(0)], vec![Some(1)]),
            op_step("Gather", vec![Src::Slot(1), Src::Const(0)], vec![Some(2)]),
            op_step("Unsqueeze", vec![Src::Slot(2)], vec![Some(3)]),
            op_step("Concat", vec![Src::Slot(3), Src::Const(1)], vec![Some(4)]),
            op_step("Reshape", vec![Src::Slot(0), Src::Slot(4)], vec![Some(5)]),
            op_step("Mul", vec![Src::Slot(4), Src::Const(2)], vec![Some(6)]),
            op_step("RandomNormalLike", vec![Src::Slot(4)], vec![Some(7)]),
            op_step("Add", vec![Src::Slot(5), Src::Slot(5)], vec![Some(8)]),
        ];
        let memo = shape_memo_plan(&steps, &[true, true, false]);
        assert_eq!(
            memo,
            vec![
                Memo::Root,
                Memo::Derived(vec![0]),
                Memo::Derived(vec![0]),
                Memo::Derived(vec![0]),
                Memo::No,
                Memo::No,
                Memo::No,
                Memo::No,
            ]
        );
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
