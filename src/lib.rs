//! robustd: measures the adversarial robustness of ONNX image classifiers, scores how much they memorize atypical
//! training samples, fine-tunes them with Benign Adversarial Training, and writes back ONNX plus a YAML report.
//!
//! Module map (each owns one thing):
//! - [`config`]: the YAML configuration and sidecar overrides.
//! - [`runtime`]: loading onnxruntime, libtorch devices and threads.
//! - [`model`]: the classifier/scorer contracts and the input adapter (normalization + layout).
//! - [`data`]: datasets (IDX, CIFAR binary, npz) as tensors in [0,1].
//! - [`onnx`]: ONNX parsing, the trainable tch interpreter, onnxruntime sessions, write-back.
//! - [`attack`]: white-box attacks on one PGD core, and Square on onnxruntime.
//! - [`eval`]: the robustness evaluation protocol and trust checks.
//! - [`train`]: standard, PGD-AT, TRADES and BAT fine-tuning with checkpoints.
//! - [`memo`]: Feldman–Zhang memorization scores and typical/atypical groups.
//! - [`report`]: the versioned YAML report, plots, atomic file writes.
//! - [`daemon`]: the watched inbox, job spool and service loop.
//! - [`commands`]: one function per CLI subcommand; `main.rs` only wires them.

pub mod attack;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod data;
pub mod durable;
pub mod eval;
pub mod job;
pub mod memo;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod queue;
pub mod report;
pub mod runtime;
pub mod store;
pub mod train;
