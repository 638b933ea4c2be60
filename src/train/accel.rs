//! CUDA-only speed options and the gradient computation that depends on them.
//!
//! - **AMP** (`train.amp`): forward passes (the PGD steps and the loss) run under libtorch's CUDA autocast
//!   (float16), with a dynamic loss scaler as in `torch.cuda.amp.GradScaler`: the loss is multiplied by the scale
//!   before backward, gradients are divided by it, a step whose gradients overflow is skipped and halves the
//!   scale, and 2000 good steps in a row double it.
//! - **channels-last** (`train.channels_last`): input batches get NHWC strides (still shaped NCHW); cuDNN then picks
//!   its channels-last convolution kernels (it does when the input or the weight is channels-last).
//!
//! On the CPU both are ignored with a debug log: they only pay off on tensor-core GPUs and would change numerics.

use tch::{Device, Kind, Tensor};

use super::TrainError;
use crate::config::TrainSpec;

const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;

#[derive(Debug, Clone, PartialEq)]
pub struct Accel {
    pub amp: bool,
    pub channels_last: bool,
    scaler: Option<LossScaler>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct LossScaler {
    scale: f64,
    good_steps: u64,
}

impl Accel {
    /// The options `spec` asks for that `device` supports.
    pub fn new(spec: &TrainSpec, device: Device) -> Self {
        let cuda = device.is_cuda();
        if !cuda && (spec.amp || spec.channels_last) {
            tracing::debug!(
                amp = spec.amp,
                channels_last = spec.channels_last,
                "AMP and channels-last apply on CUDA only; ignored on the CPU"
            );
        }
        let amp = cuda && spec.amp;
        Self {
            amp,
            channels_last: cuda && spec.channels_last,
            scaler: amp.then_some(LossScaler {
                scale: INITIAL_SCALE,
                good_steps: 0,
            }),
        }
    }

    /// The batch in the memory format the options ask for.
    pub fn input(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        if self.channels_last && x.dim() == 4 {
            Ok(x.f_permute([0, 2, 3, 1])?
                .f_contiguous()?
                .f_permute([0, 3, 1, 2])?)
        } else {
            Ok(x.shallow_clone())
        }
    }

    /// Runs `f` under autocast when AMP is on.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.amp {
            tch::autocast(true, f)
        } else {
            f()
        }
    }

    /// Gradients of `loss` with respect to `params` (undefined for a parameter the loss does not reach), or `None`
    /// when AMP's scaled gradients overflowed and this step must be skipped.
    pub fn gradients(
        &mut self,
        loss: &Tensor,
        params: &[Tensor],
    ) -> Result<Option<Vec<Tensor>>, TrainError> {
        let Some(scaler) = self.scaler.as_mut() else {
            return Ok(Some(Tensor::f_run_backward(&[loss], params, false, false)?));
        };
        let scaled = loss.f_mul_scalar(scaler.scale)?;
        let grads = Tensor::f_run_backward(&[&scaled], params, false, false)?;
        let grads = grads
            .iter()
            .map(|g| {
                if g.defined() {
                    g.f_to_kind(Kind::Float)?.f_div_scalar(scaler.scale)
                } else {
                    Ok(g.shallow_clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sums: Vec<Tensor> = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| g.f_sum(Kind::Float))
            .collect::<Result<_, _>>()?;
        let finite =
            sums.is_empty() || bool::try_from(Tensor::f_stack(&sums, 0)?.f_isfinite()?.f_all()?)?;
        if finite {
            scaler.good_steps += 1;
            if scaler.good_steps >= GROWTH_INTERVAL {
                scaler.scale *= 2.0;
                scaler.good_steps = 0;
            }
            Ok(Some(grads))
        } else {
            scaler.scale /= 2.0;
            scaler.good_steps = 0;
            tracing::debug!(
                scale = scaler.scale,
                "AMP gradients overflowed; step skipped"
            );
            Ok(None)
        }
    }

    /// The loss scaler's `(scale, good steps)` for a checkpoint.
    pub fn scaler_state(&self) -> Option<(f64, u64)> {
        self.scaler.map(|s| (s.scale, s.good_steps))
    }

    pub fn restore_scaler(&mut self, state: Option<(f64, u64)>) {
        if let (Some(scaler), Some((scale, good_steps))) = (self.scaler.as_mut(), state) {
            *scaler = LossScaler { scale, good_steps };
        }
    }
}
