//! [`TchModel`]: an ONNX image classifier as a [`Classifier`] — the [`Interpreter`] plus the input adapter
//! (normalization and layout inside the forward path, so attacks work in [0,1] NCHW pixel space), the image size
//! and the class count (learned from one probe forward pass).

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::error::OnnxError;
use super::interpreter::{Interpreter, TchOptions};
use super::layout::{infer_input_chw, resolve_layout};
use super::model::OnnxModel;
use crate::config::InputLayout;
use crate::device::amp;
use crate::model::{Classifier, InputAdapter, ModelError};

/// Polled before every forward pass: `true` makes the pass fail with [`OnnxError::Interrupted`], so a cancelled
/// or timed-out job stops inside a long evaluation or attack instead of at the next stage boundary.
pub type Interrupt = Arc<dyn Fn() -> bool + Send + Sync>;

/// An ONNX classifier on tch. See the module docs.
pub struct TchModel {
    graph: Interpreter,
    adapter: InputAdapter,
    input_chw: [i64; 3],
    num_classes: i64,
    interrupt: Option<Interrupt>,
    precision: Precision,
}

/// How a [`TchModel`]'s forward passes compute: bfloat16 autocast and channels-last inputs (the daemon turns them
/// on for CUDA devices only; see [`crate::device::amp`]). Default: float32, contiguous NCHW.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Precision {
    pub amp: bool,
    pub channels_last: bool,
}

impl TchModel {
    /// Builds the interpreter on `device` and probes one forward pass to learn the class count. The image size
    /// comes from `options.input_chw`, else from the ONNX input shape and the adapter's layout.
    pub fn new(
        model: &OnnxModel,
        adapter: InputAdapter,
        device: Device,
        options: TchOptions,
    ) -> Result<Self, OnnxError> {
        let file = model.path();
        let info = model
            .inputs()
            .first()
            .ok_or_else(|| OnnxError::model(file, "the graph has no inputs"))?;
        if model.inputs().len() != 1 {
            return Err(OnnxError::model(
                file,
                format!(
                    "a classifier takes one image input; this graph has {}",
                    model.inputs().len()
                ),
            ));
        }
        if model.outputs().len() != 1 {
            return Err(OnnxError::model(
                file,
                format!(
                    "a classifier has one output, the logits [N, classes]; this graph has {} ({})",
                    model.outputs().len(),
                    model
                        .outputs()
                        .iter()
                        .map(|o| format!("`{}` {}", o.name, o.shape_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !info.dtype().is_some_and(|d| d.is_float()) {
            return Err(OnnxError::model(
                file,
                format!(
                    "input `{}` is {}; a classifier needs a floating-point image input",
                    info.name,
                    info.dtype_name()
                ),
            ));
        }
        let input_chw = match options.input_chw {
            Some(chw) => chw,
            None => infer_input_chw(info, adapter.layout).ok_or_else(|| {
                OnnxError::model(
                    file,
                    format!(
                        "cannot tell the image size from input `{}` {}; set it explicitly (input_chw)",
                        info.name,
                        info.shape_string()
                    ),
                )
            })?,
        };
        let graph = Interpreter::new(model, device, options)?;
        let mut m = Self {
            graph,
            adapter,
            input_chw,
            num_classes: 0,
            interrupt: None,
            precision: Precision::default(),
        };
        m.num_classes = m.probe_classes(model)?;
        Ok(m)
    }

    /// Sets how later forward passes compute (see [`Precision`]); logits stay float32 either way.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Makes every later forward pass check `interrupt` first (see [`Interrupt`]).
    pub fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    /// Builds with the input layout resolved from the config (`auto` inspects the ONNX input shape).
    pub fn with_layout(
        model: &OnnxModel,
        mut adapter: InputAdapter,
        layout: InputLayout,
        device: Device,
        options: TchOptions,
    ) -> Result<Self, OnnxError> {
        let info = model
            .inputs()
            .first()
            .ok_or_else(|| OnnxError::model(model.path(), "the graph has no inputs"))?;
        adapter.layout = resolve_layout(info, layout)
            .map_err(|e| OnnxError::model(model.path(), e.to_string()))?;
        Self::new(model, adapter, device, options)
    }

    /// One forward pass on an all-zero image: the class count from the output shape, and the first check that
    /// the model computes finite logits (NaN weights are refused at load; Inf weights and graphs that make
    /// NaN/Inf themselves are caught here, naming the initializers that hold Inf).
    fn probe_classes(&self, model: &OnnxModel) -> Result<i64, OnnxError> {
        let _guard = tch::no_grad_guard();
        let [c, h, w] = self.input_chw;
        let x = Tensor::f_zeros([1, c, h, w], (Kind::Float, self.graph.device())).map_err(
            |source| OnnxError::Torch {
                file: self.graph.file().to_path_buf(),
                message: "probe input".into(),
                source,
            },
        )?;
        let y = self.logits(&x)?;
        let n = match y.size().as_slice() {
            [1, n] if *n >= 2 => *n,
            [1, n] => {
                return Err(OnnxError::model(
                    self.graph.file(),
                    format!("the output has {n} classes for one image; a classifier gives [N, classes] with 2 or more classes"),
                ))
            }
            other => {
                return Err(OnnxError::model(
                    self.graph.file(),
                    format!(
                        "the output has shape {other:?} for one image; a classifier gives [N, classes]"
                    ),
                ))
            }
        };
        let finite = y
            .f_isfinite()
            .and_then(|f| f.f_all())
            .and_then(|a| a.f_int64_value(&[]))
            .map_err(|source| OnnxError::Torch {
                file: self.graph.file().to_path_buf(),
                message: "checking the probe's logits".into(),
                source,
            })?;
        if finite == 0 {
            let holding: Vec<String> = model
                .initializers()
                .iter()
                .filter_map(|i| {
                    let n = i.data.inf_count();
                    (n > 0).then(|| format!("`{}` ({n} Inf)", i.name))
                })
                .take(8)
                .collect();
            let why = if holding.is_empty() {
                "no initializer holds NaN/Inf, so the graph itself makes them (a log of 0, a division by 0?)"
                    .to_owned()
            } else {
                format!("initializers holding Inf: {}", holding.join(", "))
            };
            return Err(OnnxError::model(
                self.graph.file(),
                format!("the logits for an all-zero image are not finite (NaN/Inf); {why}"),
            ));
        }
        Ok(n)
    }

    /// Logits for pixel-space `[N, C, H, W]` input: adapter (normalization, layout), then the graph.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, OnnxError> {
        let size = x.size();
        let [c, h, w] = self.input_chw;
        if size.len() != 4 || size[1..] != self.input_chw[..] {
            return Err(OnnxError::model(
                self.graph.file(),
                format!("input batch has shape {size:?}; this model takes [N, {c}, {h}, {w}]"),
            ));
        }
        if self.interrupt.as_ref().is_some_and(|stop| stop()) {
            return Err(OnnxError::Interrupted {
                file: self.graph.file().to_path_buf(),
            });
        }
        let adapted = self.adapter.apply(x);
        let adapted = match self.graph.input_kinds().first() {
            Some(&k) if k != adapted.kind() => {
                adapted.f_to_kind(k).map_err(|source| OnnxError::Torch {
                    file: self.graph.file().to_path_buf(),
                    message: "casting the input".into(),
                    source,
                })?
            }
            _ => adapted,
        };
        let torch_err = |message: &str| {
            let file = self.graph.file().to_path_buf();
            let message = message.to_owned();
            move |source| OnnxError::Torch {
                file,
                message,
                source,
            }
        };
        let adapted = amp::channels_last(&adapted, self.precision.channels_last)
            .map_err(torch_err("channels-last input"))?;
        let input_kind = adapted.kind();
        let mut out = amp::with_autocast(self.device(), self.precision.amp, || {
            self.graph.run(&[adapted])
        })?;
        let logits = out.swap_remove(0);
        if logits.kind() == Kind::BFloat16 && input_kind != Kind::BFloat16 {
            // Autocast's output: float32 logits for the losses and verdicts.
            return logits
                .f_to_kind(Kind::Float)
                .map_err(torch_err("casting autocast logits"));
        }
        Ok(logits)
    }

    /// The interpreter underneath (raw multi-output runs, step count).
    pub fn graph(&self) -> &Interpreter {
        &self.graph
    }

    /// Fresh seeded weights; see [`Interpreter::reinitialize`].
    pub fn reinitialize(&mut self, seed: u64) -> Result<(), OnnxError> {
        self.graph.reinitialize(seed)
    }

    /// The trainable initializers by name (shared with the model: in-place updates change it).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.graph.named_parameters()
    }

    /// Every floating-point initializer by name (parameters and BatchNorm statistics): a checkpoint.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.graph.state_dict()
    }

    /// Copies values into the named initializers in place.
    pub fn load_named(&mut self, named: &[(String, Tensor)]) -> Result<(), OnnxError> {
        self.graph.load_named(named)
    }

    /// The value write-back stores for a state tensor (see [`Interpreter::stored_value`]).
    pub(crate) fn stored_value(
        &self,
        name: &str,
    ) -> Option<Result<super::tensor_data::TensorData, OnnxError>> {
        self.graph.stored_value(name)
    }

    pub fn adapter(&self) -> &InputAdapter {
        &self.adapter
    }

    pub fn options(&self) -> &TchOptions {
        self.graph.options()
    }

    pub fn is_train(&self) -> bool {
        self.graph.is_train()
    }
}

impl Classifier for TchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.logits(x)
            .map_err(|e| ModelError::Forward(e.to_string()))
    }

    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.graph
            .named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Training mode also switches gradients on for the trainable initializers (off in eval mode).
    fn set_train(&mut self, train: bool) {
        self.graph.set_train(train);
    }

    fn input_chw(&self) -> [i64; 3] {
        self.input_chw
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn device(&self) -> Device {
        self.graph.device()
    }

    /// Every floating-point initializer (parameters and BatchNorm statistics), so training checkpoints hold them.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.graph.state_dict()
    }

    fn load_state_dict(&mut self, named: &[(String, Tensor)]) -> Result<(), ModelError> {
        self.graph
            .load_named(named)
            .map_err(|e| ModelError::Forward(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    /// Workers move models and sessions onto their own threads (torch work stays off async tasks).
    #[test]
    fn engines_can_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<super::TchModel>();
        send::<super::super::OrtScorer>();
        send::<super::super::OnnxModel>();
        sync::<super::super::OnnxModel>();
    }
}
