//! The ONNX engine: parsing ONNX files into a validated graph ([`OnnxModel`]), interpreting that graph with tch so
//! attacks and training get gradients ([`TchModel`]), running the original file on onnxruntime ([`OrtScorer`]),
//! and writing trained weights back into the original graph ([`write_back`]).
//!
//! Submodules, each owning one thing:
//! - `proto`: the ONNX protobuf messages (prost derives, no protoc), the one protobuf reader; `scan`: a cheap look
//!   (opset, parameters, external-data files) before loading;
//! - `tensor_data`: initializer payloads ↔ bytes ↔ tch tensors; `external`: external-data files, confined;
//! - `node`: nodes and typed attributes; `constants`: values carried in nodes;
//! - `model`: loading, validation, topological order, structure hash; `form`: the shipped form (precision,
//!   quantization, contrib ops) and what it allows;
//! - `ops`: the operator registry (default domain and onnxruntime's `com.microsoft`); `params`: what each
//!   initializer is (weight, bias, BN statistic…); `quantized`: quantized weights and their float32 masters;
//! - `interpreter`: the plan and its evaluation (its `rewrite` submodule: fused GELU/SiLU/linear, channels-last
//!   convolution kernels); `tch_model`: the classifier on top; `layout`: input layout and image size;
//! - `session`: the one onnxruntime session builder; `ort_scorer`: the classifier on a session; `write_back`:
//!   trained weights into a new file.

pub(crate) mod constants;
mod error;
pub mod external;
mod form;
mod interpreter;
mod layout;
mod model;
pub mod node;
pub mod ops;
mod ort_scorer;
mod params;
pub mod proto;
mod quantized;
pub mod scan;
mod session;
mod tch_model;
pub mod tensor_data;
mod write_back;

pub use error::OnnxError;
pub use form::{GraphForm, Quantization};
pub use interpreter::{Interpreter, TchOptions};
pub use layout::{infer_input_chw, resolve_layout, LayoutError};
pub use model::{Dim, Initializer, OnnxModel, ValueInfo, MAX_OPSET, MIN_OPSET};
pub use ort_scorer::OrtScorer;
pub use params::Role;
pub use scan::{scan_model, ModelScan, ScanError};
pub use session::{choose_provider, ort_session, ort_session_on, Provider, SessionError, Spinning};
pub use tch_model::{Interrupt, Precision, TchModel};
pub use write_back::{write_back, WrittenModel, EXTERNAL_DATA_THRESHOLD, VERSION_KEY};
