//! The two native runtimes robustd stands on: locating and initializing onnxruntime (loaded dynamically from the
//! PyPI wheel's shared library) and choosing the libtorch device and thread count.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thiserror::Error;

/// Environment variable that names the onnxruntime shared library, checked after the config key.
pub const ORT_LIB_ENV: &str = "ROBUSTD_ORT_LIB";

/// The libtorch version tch 0.24.0 is built against; checked at run time too (`robustd info`).
pub const LIBTORCH_VERSION: &str = "2.11.0";

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(
        "onnxruntime shared library not found (looked at: {}).\n\
         Fix: run `make setup` (installs onnxruntime==1.31.1 into .venv), or set {ORT_LIB_ENV}=/path/to/libonnxruntime.so.1.31.1, \
         or set `runtime.ort_library` in the config",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OrtLibraryMissing { tried: Vec<PathBuf> },
    #[error("cannot load onnxruntime from {path}: {cause}")]
    OrtLoad { path: PathBuf, cause: String },
    #[error("invalid device `{0}`: expected auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("device {0} requested but libtorch sees no CUDA device")]
    CudaUnavailable(String),
}

/// Where the onnxruntime library was found, in the order the lookup tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtSource {
    Config,
    Env,
    ProjectVenv,
}

/// Finds the onnxruntime shared library: the config key, then `$ROBUSTD_ORT_LIB`, then the project venv (the
/// `.venv` next to the sources this binary was built from, then `$VIRTUAL_ENV`).
pub fn locate_ort_library(configured: Option<&Path>) -> Result<(PathBuf, OrtSource), RuntimeError> {
    let mut tried = Vec::new();
    if let Some(p) = configured {
        if p.is_file() {
            return Ok((p.to_path_buf(), OrtSource::Config));
        }
        tried.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ORT_LIB_ENV).map(PathBuf::from) {
        if p.is_file() {
            return Ok((p, OrtSource::Env));
        }
        tried.push(p);
    }
    let mut venvs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv")];
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    for venv in venvs {
        match find_ort_in_venv(&venv) {
            Some(p) => return Ok((p, OrtSource::ProjectVenv)),
            None => tried
                .push(venv.join("lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")),
        }
    }
    Err(RuntimeError::OrtLibraryMissing { tried })
}

fn find_ort_in_venv(venv: &Path) -> Option<PathBuf> {
    let link = venv.join("libonnxruntime.so");
    if link.is_file() {
        return Some(link);
    }
    let lib = venv.join("lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
            })
            .collect();
        libs.sort();
        if let Some(p) = libs.pop() {
            return Some(p);
        }
    }
    None
}

/// The loaded library and its environment; the environment must stay alive for sessions to share it.
static ORT_INIT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();

/// Loads and initializes onnxruntime once per process; later calls are free and return the first library's path.
pub fn init_ort(configured: Option<&Path>) -> Result<&'static Path, RuntimeError> {
    ort_environment(configured).map(|(path, _)| path)
}

/// The process-wide onnxruntime environment that sessions are built from (initialized on first use).
pub fn ort_environment(
    configured: Option<&Path>,
) -> Result<(&'static Path, &'static ort::environment::Environment), RuntimeError> {
    if let Some((first, env)) = ORT_INIT.get() {
        return Ok((first.as_path(), env));
    }
    disable_ort_telemetry();
    let (path, source) = locate_ort_library(configured)?;
    let load_err = |cause: String| RuntimeError::OrtLoad {
        path: path.clone(),
        cause,
    };
    let env = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("robustd")
        // Off for the rest of the process too (see disable_ort_telemetry for the first event).
        .with_telemetry(false)
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    tracing::debug!(path = %path.display(), ?source, "onnxruntime loaded");
    let (stored, env) = ORT_INIT.get_or_init(|| (path.clone(), env));
    Ok((stored.as_path(), env))
}

/// The onnxruntime version (e.g. `1.31.1`): the loaded library's versioned file name
/// (`libonnxruntime.so.1.31.1`), else its build-info string.
pub fn ort_version() -> String {
    ORT_INIT
        .get()
        .and_then(|(path, _)| std::fs::canonicalize(path).ok())
        .and_then(|p| {
            p.file_name()?
                .to_str()?
                .strip_prefix("libonnxruntime.so.")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| ort::info().to_owned())
}

/// The onnxruntime version if this process has loaded it (never loads it).
pub fn loaded_ort_version() -> Option<String> {
    ORT_INIT.get().map(|_| ort_version())
}

/// Whether the loaded onnxruntime was built with the CUDA execution provider.
pub fn ort_has_cuda() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
}

/// The libtorch directory this binary was linked against (embedded by build.rs).
pub fn libtorch_dir() -> Option<&'static str> {
    option_env!("ROBUSTD_LIBTORCH_LIB")
}

/// Reads the libtorch version from the wheel's `version.py` beside the linked library directory, if present.
pub fn libtorch_version() -> String {
    libtorch_dir()
        .map(|lib| Path::new(lib).join("../version.py"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ").map(|v| {
                    v.trim_matches(|c| c == '\'' || c == '"')
                        .split('+')
                        .next()
                        .unwrap_or(v)
                        .to_owned()
                })
            })
        })
        .unwrap_or_else(|| LIBTORCH_VERSION.to_owned())
}

/// Parses `auto | cpu | cuda | cuda:N` into a tch device; `auto` picks CUDA when libtorch sees one.
pub fn parse_device(spec: &str) -> Result<tch::Device, RuntimeError> {
    match spec.trim() {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let idx = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| RuntimeError::BadDevice(s.to_owned()))?,
            };
            if idx >= tch::Cuda::device_count() as usize {
                return Err(RuntimeError::CudaUnavailable(s.to_owned()));
            }
            Ok(tch::Device::Cuda(idx))
        }
        other => Err(RuntimeError::BadDevice(other.to_owned())),
    }
}

/// glibc's mmap threshold under [`tune_allocator`] (bytes; 32 MiB is the largest glibc accepts).
pub const MALLOC_MMAP_THRESHOLD: usize = 32 << 20;
/// Free heap top glibc keeps instead of trimming, under [`tune_allocator`] (bytes).
pub const MALLOC_TRIM_THRESHOLD: usize = 128 << 20;

/// Seconds since this process was exec'd (Linux: `/proc/self/stat`'s start time against `/proc/uptime`, to the
/// kernel's clock tick, usually 10 ms); `None` elsewhere.
pub fn process_age_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (uptime - start_ticks / ticks as f64).max(0.0))
}

/// The variable that switches onnxruntime's telemetry off from library load on.
const ORT_TELEMETRY_OFF: &str = "ORT_DISABLE_TELEMETRY";

/// Keeps onnxruntime from recording telemetry. Its Linux builds (1.31.1, Microsoft's 1DS SDK) log events into
/// `~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db` for upload: the process's path, OS and CPU
/// model with a device id, and (measured in that file on a machine running robustd's tests) session creations,
/// model loads and runtime error messages. The environment option (`with_telemetry(false)`, onnxruntime's
/// `DisableTelemetryEvents`) takes effect only after the environment exists, by which time the process event has
/// been logged; `ORT_DISABLE_TELEMETRY=1` keeps onnxruntime away from that directory altogether. A value the user
/// set is kept (even then [`ort_environment`] switches events off once the environment exists). `main` calls this
/// before any thread starts (child processes inherit the variable); the call from [`ort_environment`] covers
/// library users. Idempotent.
pub fn disable_ort_telemetry() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        if std::env::var_os(ORT_TELEMETRY_OFF).is_none() {
            std::env::set_var(ORT_TELEMETRY_OFF, "1");
        }
    });
}

/// Keeps glibc's allocator from returning libtorch's large, short-lived buffers to the kernel after every use.
///
/// libtorch allocates each activation and gradient with `posix_memalign`. glibc serves blocks above its mmap
/// threshold with a fresh `mmap` and trims the heap top above its trim threshold, so a forward/backward loop whose
/// tensors are several MB each page-faults and zeroes the same memory on every step: measured on a 2-core Xeon, a
/// ResNet-18-style forward at batch 256 spent ~40 % of its time in the kernel (118 ms per batch vs 72 ms with the
/// settings below; PyTorch eager 64 ms). Blocks up to 32 MiB (glibc's maximum threshold) now come from the heap, and
/// up to 128 MiB of free heap top is kept for reuse. Peak RSS of a job does not grow (the same buffers are reused),
/// but an idle daemon may keep up to that much free heap per allocator arena after jobs ran, and fixing the
/// threshold turns off glibc's dynamic one. An allocator swap would not help: libtorch's C++ allocations do not go
/// through Rust's global allocator. Idempotent; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static TUNED: std::sync::Once = std::sync::Once::new();
        TUNED.call_once(|| {
            // SAFETY: mallopt only adjusts allocator parameters; it is safe to call at any time.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD as libc::c_int);
                libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD as libc::c_int);
            }
        });
    }
}

/// Sets libtorch's intra-op thread count; 0 keeps libtorch's default (one per core).
pub fn set_torch_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Runs libtorch single-threaded on the calling thread until dropped, then restores that thread's previous count.
///
/// For loops that alternate small libtorch bookkeeping ops with onnxruntime calls (the Square attack): every
/// libtorch op over ~32k elements otherwise wakes libtorch's OpenMP team, whose threads then spin-wait while
/// onnxruntime's own pool needs the same cores. Measured on 2 cores, Square on the small benchmark CNN spent over a
/// third of its CPU time in that spinning.
///
/// This sets OpenMP's per-thread `nthreads-var` directly rather than through `tch::set_num_threads`: ATen's setter
/// also stores a process-wide default that every thread which starts libtorch work later adopts, so a job running
/// Square would silently make a concurrent job single-threaded (the daemon runs evaluation jobs side by side).
/// ATen's `parallel_for` consults the calling thread's `omp_get_max_threads()`, so one thread is enough.
pub struct SingleThreadedTorch {
    previous: i32,
    /// The state belongs to the thread that entered: not `Send`.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

/// libgomp, which tch links (`torch-sys` emits `rustc-link-lib=gomp` on Linux) and libtorch itself uses; elsewhere
/// the guard does nothing.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod omp {
    use std::os::raw::c_int;
    extern "C" {
        fn omp_set_num_threads(n: c_int);
    }
    pub fn set_threads(n: i32) {
        // SAFETY: sets the calling thread's OpenMP nthreads-var; n >= 1.
        unsafe { omp_set_num_threads(n.max(1)) }
    }
}

#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
mod omp {
    pub fn set_threads(_n: i32) {}
}

impl SingleThreadedTorch {
    pub fn enter() -> Self {
        // Through ATen first: on a thread's first libtorch call this runs ATen's per-thread setup (which would
        // otherwise overwrite the 1 below on the first parallel op) and returns the count to restore.
        let previous = tch::get_num_threads();
        omp::set_threads(1);
        Self {
            previous,
            _thread_bound: std::marker::PhantomData,
        }
    }
}

impl Drop for SingleThreadedTorch {
    fn drop(&mut self) {
        omp::set_threads(self.previous);
    }
}

/// Human-readable device name for reports, e.g. `cpu` or `cuda:0`.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// Ends the process with `code` without running the C and C++ static destructors that `exit` would: libtorch
/// deregisters every one of its operators from the dispatcher and glibc consolidates the heap, ~80–100 ms with
/// no system call after a `robustd eval` had written its report (strace and perf on 2 cores), paid again by
/// every job process of the daemon. Call it once the command has returned, so everything it owned is dropped:
/// reports, models and checkpoints are written (and synced where the spool needs it) before that, logs go
/// unbuffered to stderr or journald, and stdout is flushed here. The kernel reclaims the rest as on any exit.
pub fn exit_now(code: std::process::ExitCode) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // `ExitCode` keeps its value private; it compares, so look it up.
    let status = (0u8..=255)
        .find(|&c| std::process::ExitCode::from(c) == code)
        .unwrap_or(1);
    // SAFETY: `_exit` ends the process at once; nothing after it runs and no Rust value is left half-updated
    // (the caller has returned from the command and holds nothing).
    unsafe { libc::_exit(i32::from(status)) }
}
