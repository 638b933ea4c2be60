//! robustd: measures the adversarial robustness of ONNX image classifiers, scores how much they memorize atypical
//! training samples, fine-tunes them with Benign Adversarial Training, and writes back ONNX plus a YAML report.
//!
//! Module map, in layers: each module owns one thing and uses only modules of the layers below it.
//!
//! Foundation
//! - [`config`]: the YAML configuration and sidecar overrides.
//! - [`runtime`]: loading onnxruntime, libtorch devices and threads.
//! - [`durable`]: durable file writing (temp file, fsync, rename), the layer under every file robustd writes.
//! - [`failpoint`]: named crash points for the crash tests (compiled in only with the `failpoints` feature).
//! - [`model`]: the classifier/scorer contracts and the input adapter (normalization + layout).
//!
//! Engines and science
//! - [`data`]: datasets (IDX, CIFAR binary, npz) as tensors in [0,1].
//! - [`onnx`]: ONNX parsing (the one protobuf reader, and a cheap scan), the trainable tch interpreter, onnxruntime
//!   sessions (built in one place), write-back.
//! - [`attack`]: white-box attacks on one PGD core, and Square on onnxruntime.
//! - [`eval`]: the robustness evaluation protocol and trust checks.
//! - [`train`]: standard, PGD-AT, TRADES and BAT fine-tuning with checkpoints.
//! - [`memo`]: Feldman–Zhang memorization scores and typical/atypical groups.
//! - [`report`]: the versioned YAML report, `error.yaml`, the validator, plots.
//!
//! Jobs
//! - [`job`]: the job contract between schedulers and runners: the record, the `JobRunner` trait, outcome →
//!   report, cancellation, progress, the content key.
//! - [`pipeline`]: the runners: the whole job in stages (and `compare`), and the cheap triage runner.
//! - [`queue`]: the `Queue` trait (enqueue, claim, heartbeat, complete/fail/requeue, dedupe by content key) and
//!   the folder spool that implements it.
//! - [`store`]: the artifact store: published results (staged, renamed into place) and checkpoints.
//! - [`isolation`]: one process per job: the runner the daemon runs jobs through (a child process each, with its
//!   memory cap), and the child's side.
//!
//! Faces
//! - [`daemon`]: one machine's worker: the watched inbox, intake, the service loop, systemd.
//! - [`http`]: the read-only HTTP face the daemon serves: Prometheus metrics, probes, the JSON API, the dashboard.
//! - [`commands`]: one function per CLI subcommand; `main.rs` only wires them.

pub mod attack;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod data;
pub mod device;
pub mod durable;
pub mod eval;
pub mod failpoint;
pub mod http;
pub mod isolation;
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
