//! The one place robustd builds onnxruntime sessions: from the process-wide environment (the library found or set
//! by `runtime.ort_library`), with the configured intra-op thread count, on a model file whose external data
//! onnxruntime resolves next to it. [`OrtScorer`](super::OrtScorer), the triage runner and `robustd inspect` open
//! their sessions here.

use std::path::{Path, PathBuf};

use ort::session::Session;
use thiserror::Error;

use crate::runtime::{self, RuntimeError};

#[derive(Debug, Error)]
pub enum SessionError {
    /// The onnxruntime library itself cannot be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{}: onnxruntime cannot load the model: {message}", file_name(path))]
    Load { path: PathBuf, message: String },
}

/// A session on the model at `path`. `ort_library` is the configured library (`None`: the one already loaded, or
/// found); `intra_threads` 0 keeps onnxruntime's default.
pub fn ort_session(
    path: &Path,
    ort_library: Option<&Path>,
    intra_threads: usize,
) -> Result<Session, SessionError> {
    let (_, env) = runtime::ort_environment(ort_library)?;
    let load_err = |e: &dyn std::fmt::Display| SessionError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut builder = Session::builder(env).map_err(|e| load_err(&e))?;
    if intra_threads > 0 {
        builder = builder
            .with_intra_threads(intra_threads)
            .map_err(|e| load_err(&e))?;
    }
    builder.commit_from_file(path).map_err(|e| load_err(&e))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
