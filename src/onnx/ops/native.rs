//! Safe calls into `native/ops.cpp`: libtorch functions tch does not bind with all their arguments, on tch's own
//! tensor handles (so autograd, devices and dtypes are libtorch's, as for any tch call).

use std::ffi::{c_char, CStr};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn robustd_leaky_relu(
        x: *const C_tensor,
        negative_slope: f64,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// `torch::leaky_relu(x, negative_slope)`: one fused kernel forward, `leaky_relu_backward` backward.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor, TchError> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x.as_ptr()` is a live tch handle for the duration of the call; the C++ side only reads it. A
    // non-null result is a fresh `at::Tensor*` nobody else owns, which `Tensor::from_ptr` takes over (and frees
    // on drop); on failure the result is null and `error`, when set, a malloc'd C string we free here.
    unsafe {
        let out = robustd_leaky_relu(x.as_ptr(), negative_slope, &mut error);
        if out.is_null() {
            let message = if error.is_null() {
                "leaky_relu failed without a message".to_owned()
            } else {
                let m = CStr::from_ptr(error).to_string_lossy().into_owned();
                libc::free(error.cast());
                m
            };
            return Err(TchError::Torch(message));
        }
        Ok(Tensor::from_ptr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Values and input gradients equal the definition (`x` where `x > 0`, `slope·x` elsewhere), and a libtorch
    /// error comes back as an `Err` naming its cause instead of unwinding through the C boundary.
    #[test]
    fn leaky_relu_at_any_slope_is_the_definition_with_its_gradient() {
        let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.25, 3.0]).set_requires_grad(true);
        let y = leaky_relu(&x, 0.2).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&y).unwrap(),
            vec![-0.4, -0.1, 0.25, 3.0]
        );
        y.sum(Kind::Float).backward();
        assert_eq!(
            Vec::<f32>::try_from(&x.grad()).unwrap(),
            vec![0.2, 0.2, 1.0, 1.0]
        );
        let ints = Tensor::from_slice(&[1i64, -1]).to_device(Device::Cpu);
        let err = leaky_relu(&ints, 0.2).unwrap_err().to_string();
        assert!(!err.is_empty(), "{err}");
    }
}
