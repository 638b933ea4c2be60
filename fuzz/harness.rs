//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs` (which replays the committed corpus in the
//! normal test suite, so a crash the fuzzer once found stays fixed without nightly Rust or libFuzzer).
//!
//! - [`onnx_model`]: arbitrary bytes through the ONNX parser and validator (`OnnxModel::from_bytes`, external
//!   data refused), then the graph builder (the interpreter plan, which folds constant subgraphs by running ops)
//!   and one forward pass on zeros for inputs whose shape is small and known. Errors are fine; a panic, an
//!   abort or a hang is a bug.
//! - [`sidecar_config`]: arbitrary text as a sidecar on top of the default config (`Config::with_overrides`);
//!   whatever is accepted must serialize and parse back to the same config.

// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use std::path::Path;

use robustd::config::{Config, Limits};
use robustd::onnx::{Dim, Interpreter, OnnxModel, TchOptions};
use tch::{Device, Tensor};

/// Small limits keep one execution fast: the fuzzer looks for crashes, not for big models.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_model_bytes: 1 << 20,
        max_nodes: 256,
        max_tensor_elements: 1 << 16,
        ..Limits::default()
    }
}

/// Parser, graph builder, one forward pass.
pub fn onnx_model(data: &[u8]) {
    let limits = fuzz_limits();
    let Ok(model) = OnnxModel::from_bytes(
        Path::new("fuzz.onnx"),
        bytes::Bytes::copy_from_slice(data),
        &limits,
    ) else {
        return;
    };
    let _ = model.structure_hash();
    let Ok(interpreter) = Interpreter::new(&model, Device::Cpu, TchOptions::default()) else {
        return;
    };
    let mut inputs = Vec::new();
    for info in model.inputs() {
        let Some(dims) = &info.dims else { return };
        let shape: Vec<i64> = dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                _ => 1,
            })
            .collect();
        let numel = shape
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(i64::MAX);
        let Some(dtype) = info.dtype() else { return };
        if !(0..=4096).contains(&numel) {
            return;
        }
        let Ok(x) = Tensor::f_zeros(&shape, (dtype.kind(), Device::Cpu)) else {
            return;
        };
        inputs.push(x);
    }
    let _ = interpreter.run(&inputs);
}

/// A sidecar on top of the defaults; an accepted one must round-trip through YAML unchanged.
pub fn sidecar_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Config::default();
    if let Ok(config) = base.with_overrides(text, Path::new("fuzz.yaml")) {
        let yaml = config.to_yaml();
        let again = Config::from_yaml(&yaml, Path::new("roundtrip.yaml"))
            .unwrap_or_else(|e| panic!("an accepted config does not parse back: {e}\n{yaml}"));
        assert_eq!(
            again.to_yaml(),
            yaml,
            "the config changed in a YAML round trip"
        );
        let _ = config.hash_hex();
    }
    let _ = Config::from_yaml(text, Path::new("fuzz.yaml"));
}
