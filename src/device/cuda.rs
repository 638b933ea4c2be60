//! What the NVIDIA driver says about a CUDA device — its model name and its free memory — read through the CUDA
//! driver API (`libcuda.so.1`, part of every NVIDIA driver install), loaded with `dlopen` at first use. No
//! `nvidia-smi`, and no new link-time dependency: on a host without the driver every query answers `None`.
//! Device indices are the ones libtorch uses (both honour `CUDA_VISIBLE_DEVICES`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;

/// The driver entry points robustd calls (CUDA driver API, stable since CUDA 4).
struct Driver {
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_push: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_pop: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
}

// SAFETY: plain function pointers into the driver library, which stays loaded for the life of the process.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

fn driver() -> Option<&'static Driver> {
    static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
    DRIVER.get_or_init(load).as_ref()
}

/// A symbol of the driver library as the function pointer type `F`.
///
/// # Safety
/// `F` must be the `unsafe extern "C" fn` type of the symbol, and `handle` an open library that stays loaded.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &CStr) -> Option<F> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: per the contract above.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

fn load() -> Option<Driver> {
    // SAFETY: dlopen with a NUL-terminated name; the handle is never closed, so the pointers stay valid; each
    // symbol is read as its documented CUDA driver API signature.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let init = symbol::<unsafe extern "C" fn(c_uint) -> CuResult>(handle, c"cuInit")?;
        if init(0) != 0 {
            return None;
        }
        Some(Driver {
            device_get: symbol(handle, c"cuDeviceGet")?,
            device_get_name: symbol(handle, c"cuDeviceGetName")?,
            primary_ctx_retain: symbol(handle, c"cuDevicePrimaryCtxRetain")?,
            primary_ctx_release: symbol(handle, c"cuDevicePrimaryCtxRelease_v2")?,
            ctx_push: symbol(handle, c"cuCtxPushCurrent_v2")?,
            ctx_pop: symbol(handle, c"cuCtxPopCurrent_v2")?,
            mem_get_info: symbol(handle, c"cuMemGetInfo_v2")?,
        })
    }
}

fn device(d: &Driver, index: usize) -> Option<CuDevice> {
    let mut dev: CuDevice = 0;
    // SAFETY: out-pointer to a local.
    (unsafe { (d.device_get)(&mut dev, c_int::try_from(index).ok()?) } == 0).then_some(dev)
}

/// The model name of CUDA device `index` (`NVIDIA H200`), if the driver is present and knows the device.
pub fn gpu_name(index: usize) -> Option<String> {
    let d = driver()?;
    let dev = device(d, index)?;
    let mut buf = [0 as c_char; 256];
    // SAFETY: the buffer's length is passed; the driver NUL-terminates.
    if unsafe { (d.device_get_name)(buf.as_mut_ptr(), buf.len() as c_int, dev) } != 0 {
        return None;
    }
    // SAFETY: NUL-terminated by the driver within the buffer.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().trim().to_owned())
}

/// `(free, total)` bytes of CUDA device `index`, from its primary context (the one libtorch uses, so asking costs
/// no memory once libtorch runs there). Memory libtorch's caching allocator holds but does not use counts as used.
pub fn memory_info(index: usize) -> Option<(u64, u64)> {
    let d = driver()?;
    let dev = device(d, index)?;
    let mut ctx: CuContext = std::ptr::null_mut();
    // SAFETY: retain/push/query/pop/release on the device's primary context, balanced on every path.
    unsafe {
        if (d.primary_ctx_retain)(&mut ctx, dev) != 0 {
            return None;
        }
        let mut out = None;
        if (d.ctx_push)(ctx) == 0 {
            let (mut free, mut total) = (0usize, 0usize);
            if (d.mem_get_info)(&mut free, &mut total) == 0 {
                out = Some((free as u64, total as u64));
            }
            let mut popped: CuContext = std::ptr::null_mut();
            (d.ctx_pop)(&mut popped);
        }
        (d.primary_ctx_release)(dev);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_agree_with_libtorch_about_the_host() {
        // On a host without the driver (this CI) both are None; with one, every device libtorch sees has both.
        let count = tch::Cuda::device_count() as usize;
        for i in 0..count {
            assert!(gpu_name(i).is_some_and(|n| !n.is_empty()));
            let (free, total) = memory_info(i).unwrap();
            assert!(free <= total && total > 0);
        }
        assert_eq!(gpu_name(count + 64), None);
        assert_eq!(memory_info(count + 64), None);
    }
}
