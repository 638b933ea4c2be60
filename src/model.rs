//! The contracts between the engines and the algorithms: a differentiable classifier (tch) that attacks and
//! trainers use, a forward-only scorer (onnxruntime) that Square and the re-checks use, and the input adapter that
//! puts normalization and layout inside the forward path so every attack works in [0,1] NCHW pixel space.

use tch::{Kind, Tensor};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Forward(String),
}

/// A classifier differentiable with respect to its input and its parameters.
///
/// Inputs are float32 `[N, C, H, W]` in [0,1] on the model's device; outputs are logits `[N, classes]`.
pub trait Classifier {
    /// Logits for a batch; gradients flow to `x` and to the trainable parameters.
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError>;
    /// The tensors an optimizer updates (leaf tensors with `requires_grad` in train mode).
    fn trainable_parameters(&self) -> Vec<Tensor>;
    /// Train mode (dropout active, BatchNorm per config) vs eval mode.
    fn set_train(&mut self, train: bool);
    /// `[C, H, W]` of one input image in pixel space.
    fn input_chw(&self) -> [i64; 3];
    fn num_classes(&self) -> i64;
    fn device(&self) -> tch::Device;

    /// Every floating-point state tensor by a stable name — the parameters and buffers such as BatchNorm running
    /// statistics — sharing storage with the model: what a training checkpoint saves and restores. The default
    /// names the trainable parameters by position (`param.0`, `param.1`, …); models with buffers override it.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.trainable_parameters()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("param.{i}"), t))
            .collect()
    }

    /// Copies values into the named state tensors in place (so anything holding them, e.g. an optimizer, stays
    /// valid). Unknown names and shape mismatches are errors. The default works on [`Classifier::state_dict`].
    fn load_state_dict(&mut self, named: &[(String, Tensor)]) -> Result<(), ModelError> {
        let mut own = self.state_dict();
        let _guard = tch::no_grad_guard();
        for (name, value) in named {
            let (_, target) = own.iter_mut().find(|(n, _)| n == name).ok_or_else(|| {
                ModelError::Forward(format!("no state tensor `{name}` in this model"))
            })?;
            if target.size() != value.size() {
                return Err(ModelError::Forward(format!(
                    "state tensor `{name}`: shape {:?} given, model has {:?}",
                    value.size(),
                    target.size()
                )));
            }
            target.f_copy_(value)?;
        }
        Ok(())
    }
}

/// A boxed classifier is a classifier (the memorization estimator's model factories return `Box<dyn Classifier>`),
/// so wrappers generic over `C: Classifier` take them too.
impl<C: Classifier + ?Sized> Classifier for Box<C> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        (**self).forward(x)
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        (**self).trainable_parameters()
    }
    fn set_train(&mut self, train: bool) {
        (**self).set_train(train)
    }
    fn input_chw(&self) -> [i64; 3] {
        (**self).input_chw()
    }
    fn num_classes(&self) -> i64 {
        (**self).num_classes()
    }
    fn device(&self) -> tch::Device {
        (**self).device()
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        (**self).state_dict()
    }
    fn load_state_dict(&mut self, named: &[(String, Tensor)]) -> Result<(), ModelError> {
        (**self).load_state_dict(named)
    }
}

/// A forward-only classifier (onnxruntime on the shipped file): what Square queries and what re-checks use.
pub trait Scorer {
    /// Logits `[N, classes]` (CPU, float32) for `[N, C, H, W]` inputs in [0,1].
    fn logits(&mut self, x: &Tensor) -> Result<Tensor, ModelError>;
}

/// How the model expects its input, applied inside every forward path (tch and onnxruntime alike).
#[derive(Debug, Clone, PartialEq)]
pub struct InputAdapter {
    /// Per-channel mean and std; empty = no normalization.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
}

/// The concrete layout of the model's first input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
    /// An MLP input: `[N, C*H*W]`.
    Flat,
}

impl InputAdapter {
    pub fn identity() -> Self {
        Self {
            mean: Vec::new(),
            std: Vec::new(),
            layout: Layout::Nchw,
        }
    }

    /// Maps pixel-space `[N, C, H, W]` to what the model's input expects.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        if !self.mean.is_empty() {
            let c = self.mean.len() as i64;
            let shape = [1, c, 1, 1];
            let mean = Tensor::from_slice(&self.mean)
                .to_device(x.device())
                .to_kind(Kind::Float)
                .view(shape);
            let std = Tensor::from_slice(&self.std)
                .to_device(x.device())
                .to_kind(Kind::Float)
                .view(shape);
            x = (x - mean) / std;
        }
        match self.layout {
            Layout::Nchw => x,
            Layout::Nhwc => x.permute([0, 2, 3, 1]).contiguous(),
            Layout::Flat => x.flatten(1, -1),
        }
    }

    /// Whether normalization is configured.
    pub fn normalizes(&self) -> bool {
        !self.mean.is_empty()
    }
}
