//! The one place robustd builds onnxruntime sessions: from the process-wide environment (the library found or set
//! by `runtime.ort_library`), with the configured intra-op thread count, on a model file whose external data
//! onnxruntime resolves next to it, with the execution provider of the job's device ([`choose_provider`]): CUDA on
//! a GPU when the loaded onnxruntime has it (the `onnxruntime-gpu` wheel), else the CPU, the reason recorded.
//! [`OrtScorer`](super::OrtScorer), the triage runner and `robustd inspect` open their sessions here.

use std::path::{Path, PathBuf};

use ort::session::Session;
use thiserror::Error;

use crate::device::DeviceId;
use crate::runtime::{self, RuntimeError};

/// The execution provider a session runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    Cpu {
        /// Why not CUDA, when the job's device is a GPU.
        fallback: Option<String>,
    },
    Cuda(usize),
}

impl Provider {
    /// How reports and `robustd info` name it: `CUDAExecutionProvider (cuda:0)`, `CPUExecutionProvider`, or
    /// `CPUExecutionProvider (CUDA unavailable: ...)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Cuda(i) => format!("CUDAExecutionProvider (cuda:{i})"),
            Self::Cpu { fallback: None } => "CPUExecutionProvider".into(),
            Self::Cpu {
                fallback: Some(why),
            } => format!("CPUExecutionProvider (CUDA unavailable: {why})"),
        }
    }
}

/// The provider for a session on `device`, given whether the loaded onnxruntime has the CUDA provider: CUDA on
/// the same GPU as the job's libtorch work, else the CPU (with the reason when the job is on a GPU).
pub fn choose_provider(device: DeviceId, ort_has_cuda: bool) -> Provider {
    match device {
        DeviceId::Cpu => Provider::Cpu { fallback: None },
        DeviceId::Cuda(i) if ort_has_cuda => Provider::Cuda(i),
        DeviceId::Cuda(_) => Provider::Cpu {
            fallback: Some(
                "the loaded onnxruntime has no CUDA execution provider (install onnxruntime-gpu: \
                 `ROBUSTD_GPU=1 make setup`)"
                    .into(),
            ),
        },
    }
}

#[derive(Debug, Error)]
pub enum SessionError {
    /// The onnxruntime library itself cannot be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{}: onnxruntime cannot load the model: {message}", file_name(path))]
    Load { path: PathBuf, message: String },
}

/// Whether a session's intra-op threads spin-wait for the next run after one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spinning {
    /// onnxruntime's default: the least latency between back-to-back runs (inference loops, one-off sessions).
    On,
    /// The threads sleep as soon as a run ends: for sessions whose runs alternate with libtorch work on the same
    /// cores (the evaluation's scorer between attack steps, the curve's stages, the re-checks), where a spinning
    /// thread holds a core that libtorch's OpenMP team needs for the next steps. Measured on 2 cores
    /// (`robustd eval --attacks pgd --n 500`, small benchmark CNN and ViT, 3 alternating pairs): the eps curve's
    /// stages 0.20 vs 0.34 s and 0.12–0.17 vs 0.30 s, the clean pass 0.11 vs 0.14 s; Square, which runs the
    /// scorer back to back, about 5 % slower.
    Off,
}

/// A CPU session on the model at `path`. `ort_library` is the configured library (`None`: the one already loaded,
/// or found); `intra_threads` 0 keeps onnxruntime's default.
pub fn ort_session(
    path: &Path,
    ort_library: Option<&Path>,
    intra_threads: usize,
) -> Result<Session, SessionError> {
    ort_session_on(
        path,
        ort_library,
        intra_threads,
        DeviceId::Cpu,
        Spinning::On,
    )
    .map(|(s, _)| s)
}

/// A session on `device`'s provider ([`choose_provider`]), and the provider it got. A CUDA provider that fails to
/// register (CUDA or cuDNN libraries missing, the GPU full) leaves the session on the CPU, with the reason.
pub fn ort_session_on(
    path: &Path,
    ort_library: Option<&Path>,
    intra_threads: usize,
    device: DeviceId,
    spinning: Spinning,
) -> Result<(Session, Provider), SessionError> {
    let (_, env) = runtime::ort_environment(ort_library)?;
    let load_err = |e: &dyn std::fmt::Display| SessionError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let builder = || -> Result<_, SessionError> {
        let mut builder = Session::builder(env).map_err(|e| load_err(&e))?;
        if spinning == Spinning::Off {
            builder = builder
                .with_intra_op_spinning(false)
                .map_err(|e| load_err(&e))?;
        }
        if intra_threads > 0 {
            return builder
                .with_intra_threads(intra_threads)
                .map_err(|e| load_err(&e));
        }
        Ok(builder)
    };
    let provider = choose_provider(device, device.is_cuda() && runtime::ort_has_cuda());
    if let Provider::Cuda(index) = provider {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(index as i32)
            .build()
            .error_on_failure();
        let registered = builder()?
            .with_execution_providers([cuda])
            .map_err(|e| e.to_string())
            .and_then(|mut b| b.commit_from_file(path).map_err(|e| e.to_string()));
        match registered {
            Ok(session) => return Ok((session, provider)),
            Err(why) => {
                tracing::warn!(file = %path.display(), "onnxruntime's CUDA provider failed ({why}); this session runs on the CPU");
                let session = builder()?
                    .commit_from_file(path)
                    .map_err(|e| load_err(&e))?;
                return Ok((
                    session,
                    Provider::Cpu {
                        fallback: Some(why),
                    },
                ));
            }
        }
    }
    let session = builder()?
        .commit_from_file(path)
        .map_err(|e| load_err(&e))?;
    Ok((session, provider))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_follows_the_device_and_the_build() {
        assert_eq!(
            choose_provider(DeviceId::Cpu, true),
            Provider::Cpu { fallback: None }
        );
        assert_eq!(
            choose_provider(DeviceId::Cpu, false).describe(),
            "CPUExecutionProvider"
        );
        assert_eq!(choose_provider(DeviceId::Cuda(1), true), Provider::Cuda(1));
        assert_eq!(
            choose_provider(DeviceId::Cuda(1), true).describe(),
            "CUDAExecutionProvider (cuda:1)"
        );
        let fallback = choose_provider(DeviceId::Cuda(0), false).describe();
        assert!(
            fallback.starts_with(
                "CPUExecutionProvider (CUDA unavailable: the loaded onnxruntime has no CUDA"
            ),
            "{fallback}"
        );
    }
}
