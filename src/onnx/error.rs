//! The ONNX engine's error type. Every variant names the model file; node-level errors add the node name and op
//! type, so a message alone says where to look.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("{file}: {action}: {source}")]
    Io {
        file: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{file}: {what} is {value}, over the limit of {limit} (config `limits`)")]
    Limit {
        file: PathBuf,
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("{file}: not a valid ONNX model (protobuf decoding failed: {source}); is the file truncated or not ONNX?")]
    Decode {
        file: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{file}: {message}")]
    Model { file: PathBuf, message: String },
    #[error("{file}: default-domain opset {opset} is not supported (robustd supports opsets {min}..={max})")]
    Opset {
        file: PathBuf,
        opset: i64,
        min: i64,
        max: i64,
    },
    #[error("{file}: unsupported operators at opset {opset}: {}", list_ops(.ops))]
    UnsupportedOps {
        file: PathBuf,
        opset: i64,
        /// (domain-qualified op type, number of nodes)
        ops: Vec<(String, usize)>,
    },
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{file}: tensor `{tensor}`: external data `{location}`: {source}")]
    ExternalData {
        file: PathBuf,
        tensor: String,
        location: String,
        source: Box<super::external::ExternalError>,
    },
    #[error("{file}: node `{node}` ({op}): {message}")]
    Node {
        file: PathBuf,
        node: String,
        op: String,
        message: String,
    },
    #[error("{file}: interrupted: the job was cancelled")]
    Interrupted { file: PathBuf },
    #[error("{file}: onnxruntime: {message}")]
    Ort { file: PathBuf, message: String },
    #[error("{file}: {message}: {source}")]
    Torch {
        file: PathBuf,
        message: String,
        source: tch::TchError,
    },
}

fn list_ops(ops: &[(String, usize)]) -> String {
    ops.iter()
        .map(|(op, n)| format!("{op} ({n} node{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

impl OnnxError {
    pub(crate) fn model(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Model {
            file: file.into(),
            message: message.into(),
        }
    }
}
