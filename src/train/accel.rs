//! CUDA-only speed options of training and the gradient computation that depends on them.
//!
//! - **AMP** (`train.amp`): forward passes (the PGD steps and the loss) run under libtorch's bfloat16 autocast
//!   ([`crate::device::amp`]). bfloat16 keeps float32's exponent range, so gradients need no loss scaling (unlike
//!   float16); parameters, optimizer state and the loss stay float32.
//! - **channels-last** (`train.channels_last`): input batches get NHWC strides (still shaped NCHW); cuDNN then picks
//!   its channels-last convolution kernels (it does when the input or the weight is channels-last).
//!
//! On the CPU both are ignored with a debug log: they only pay off on tensor-core GPUs and would change numerics.

use tch::{Device, Tensor};

use super::TrainError;
use crate::config::TrainSpec;
use crate::device::amp;

#[derive(Debug, Clone, PartialEq)]
pub struct Accel {
    pub amp: bool,
    pub channels_last: bool,
    device: Device,
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
        if cuda && spec.amp && !amp::autocast_available() {
            tracing::warn!(
                "this libtorch exports no autocast entry points; training runs in float32"
            );
        }
        Self::with(
            cuda && spec.amp && amp::autocast_available(),
            cuda && spec.channels_last,
            device,
        )
    }

    /// Exactly these options on `device`, CPU included (the CPU has a bfloat16 autocast too): how tests compare the
    /// CUDA code paths with float32 on a machine without a GPU.
    pub fn with(amp: bool, channels_last: bool, device: Device) -> Self {
        Self {
            amp,
            channels_last,
            device,
        }
    }

    /// The batch in the memory format the options ask for.
    pub fn input(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        Ok(amp::channels_last(x, self.channels_last)?)
    }

    /// Runs `f` under bfloat16 autocast when AMP is on.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        amp::with_autocast(self.device, self.amp, f)
    }

    /// Gradients of `loss` with respect to `params` (undefined for a parameter the loss does not reach), as float32.
    pub fn gradients(&self, loss: &Tensor, params: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
        Ok(Tensor::f_run_backward(&[loss], params, false, false)?)
    }
}
