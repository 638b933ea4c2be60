//! Mixed precision and memory format on the job's device: bfloat16 autocast ([`with_autocast`]) and channels-last
//! input strides ([`channels_last`]).
//!
//! tch's own `autocast` only switches libtorch's deprecated CUDA-only flag, in float16, and does nothing without a
//! GPU. bfloat16 needs no loss scaling (it has float32's exponent range), so robustd sets the autocast dtype itself
//! through libtorch's exported C++ entry points (`at::autocast::set_autocast_enabled/set_autocast_dtype`, looked up
//! once with `dlsym` in the libtorch this binary is linked to). The same code path runs on the CPU, where libtorch
//! has a bfloat16 autocast too: that is how the tests check it against float32. Where the symbols are missing
//! (another libtorch), autocast is reported unavailable and computations stay in float32.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use tch::{Device, Tensor};

/// `c10::DeviceType` values.
const DEVICE_TYPE_CPU: i8 = 0;
const DEVICE_TYPE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const SCALAR_BFLOAT16: i8 = 15;

struct AutocastApi {
    is_enabled: unsafe extern "C" fn(i8) -> bool,
    set_enabled: unsafe extern "C" fn(i8, bool),
    get_dtype: unsafe extern "C" fn(i8) -> i8,
    set_dtype: unsafe extern "C" fn(i8, i8),
}

fn api() -> Option<&'static AutocastApi> {
    static API: OnceLock<Option<AutocastApi>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: dlsym on the process' global scope, which holds the linked libtorch_cpu; each symbol is the
        // Itanium-mangled name of a function with exactly these parameters (c10::DeviceType and c10::ScalarType are
        // int8 enums, passed as integers).
        unsafe {
            let sym = |name: &CStr| -> Option<*mut c_void> {
                let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(AutocastApi {
                is_enabled: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8) -> bool>(
                    sym(c"_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE")?,
                ),
                set_enabled: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8, bool)>(
                    sym(c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb")?,
                ),
                get_dtype: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8) -> i8>(sym(
                    c"_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE",
                )?),
                set_dtype: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8, i8)>(sym(
                    c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE",
                )?),
            })
        }
    })
    .as_ref()
}

/// Whether this libtorch lets robustd run bfloat16 autocast.
pub fn autocast_available() -> bool {
    api().is_some()
}

/// What a report says about the arithmetic of a stage: `bf16-autocast` or `fp32`.
pub fn precision_name(amp: bool) -> &'static str {
    if amp {
        "bf16-autocast"
    } else {
        "fp32"
    }
}

/// Runs `f` with libtorch's bfloat16 autocast on `device` when `on` (and available); autocast state is per thread
/// and restored afterwards, nested calls included. Outputs of autocast regions may be bfloat16: callers cast what
/// they keep (logits) back to float32.
pub fn with_autocast<T>(device: Device, on: bool, f: impl FnOnce() -> T) -> T {
    let device_type = match device {
        Device::Cuda(_) => DEVICE_TYPE_CUDA,
        _ => DEVICE_TYPE_CPU,
    };
    let Some(api) = api().filter(|_| on) else {
        return f();
    };
    // SAFETY: libtorch's thread-local autocast state; every change is undone below, in reverse order.
    let (was_enabled, was_dtype) = unsafe {
        let state = ((api.is_enabled)(device_type), (api.get_dtype)(device_type));
        (api.set_dtype)(device_type, SCALAR_BFLOAT16);
        (api.set_enabled)(device_type, true);
        torch_sys::at_autocast_increment_nesting();
        state
    };
    struct Restore<'a>(&'a AutocastApi, i8, bool, i8);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            // SAFETY: see above; runs on unwinding too.
            unsafe {
                if torch_sys::at_autocast_decrement_nesting() == 0 {
                    torch_sys::at_autocast_clear_cache();
                }
                (self.0.set_enabled)(self.1, self.2);
                (self.0.set_dtype)(self.1, self.3);
            }
        }
    }
    let _restore = Restore(api, device_type, was_enabled, was_dtype);
    f()
}

/// `x` with channels-last (NHWC) strides, still shaped NCHW, when `on` and `x` is 4-D; cuDNN and oneDNN then
/// pick their channels-last convolutions. Values are unchanged. The strides are set exactly (a copy into an
/// `empty_strided` tensor), not by permuting and calling `contiguous`: with one channel that permuted view already
/// counts as contiguous, so it would keep NCHW strides and libtorch would read the tensor as NCHW.
pub fn channels_last(x: &Tensor, on: bool) -> Result<Tensor, tch::TchError> {
    if !(on && x.dim() == 4) {
        return Ok(x.shallow_clone());
    }
    let size = x.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    let strides = [h * w * c, 1, w * c, c];
    let mut out = Tensor::f_empty_strided(&size, strides, (x.kind(), x.device()))?;
    out.f_copy_(x)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn autocast_runs_matmul_in_bfloat16_and_restores_the_state() {
        assert!(
            autocast_available(),
            "libtorch 2.11 exports the autocast entry points"
        );
        let a = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let exact = a.matmul(&b);
        let mixed = with_autocast(Device::Cpu, true, || {
            // Nested regions keep autocast on until the outermost ends.
            let inner = with_autocast(Device::Cpu, true, || a.matmul(&b));
            assert_eq!(inner.kind(), Kind::BFloat16);
            a.matmul(&b)
        });
        assert_eq!(mixed.kind(), Kind::BFloat16);
        let diff = f64::try_from((mixed.to_kind(Kind::Float) - &exact).abs().max()).unwrap();
        let scale = f64::try_from(exact.abs().max()).unwrap();
        assert!(
            diff <= 2e-2 * scale,
            "bf16 matmul off by {diff} (scale {scale})"
        );
        // Off again afterwards, and `on: false` never switches it on.
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert_eq!(
            with_autocast(Device::Cpu, false, || a.matmul(&b)).kind(),
            Kind::Float
        );
    }

    #[test]
    fn channels_last_keeps_values_and_shape() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = channels_last(&x, true).unwrap();
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), vec![60, 1, 15, 3]);
        assert!(y.equal(&x));
        assert_eq!(channels_last(&x, false).unwrap().stride(), x.stride());
    }
}
