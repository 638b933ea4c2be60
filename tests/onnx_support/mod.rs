//! Shared helpers for the ONNX engine tests: fixture paths, npz reference data as tch tensors, and comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use tch::Tensor;

use robustd::config::Limits;
use robustd::onnx::OnnxModel;

/// Every exported fixture (scripts/export_fixtures.py `VARIANTS`): each architecture through both exporters, the
/// VGG with BatchNorm kept, older-opset legacy exports, and the ViTs (the opset-23 one with the ONNX Attention and
/// RMSNormalization ops).
pub const FIXTURES: &[&str] = &[
    "mlp_legacy",
    "mlp_dynamo",
    "cnn_bn_legacy",
    "cnn_bn_dynamo",
    "resdw_legacy",
    "resdw_dynamo",
    "lenet_legacy",
    "lenet_dynamo",
    "lenet_legacy_opset9",
    "resnet18_legacy",
    "resnet18_dynamo",
    "resnet18_legacy_opset13",
    "mobilenetv2_legacy",
    "mobilenetv2_dynamo",
    "mobilenetv2_legacy_opset11",
    "vgg_bn_legacy",
    "vgg_bn_dynamo",
    "vgg_bn_bnkept_legacy",
    "vgg_bn_bnkept_dynamo",
    "vit_legacy",
    "vit_dynamo",
    "vit_sdpa_dynamo_opset23",
];

pub fn generated_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generated");
    assert!(
        dir.join("mlp_legacy.onnx").is_file(),
        "fixtures missing in {}: run `make fixtures`",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    generated_dir().join(format!("{name}.onnx"))
}

pub fn load(name: &str) -> OnnxModel {
    OnnxModel::load(&fixture(name), &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads a float32 array from an npz file as a tch tensor.
pub fn npz_f32(path: &Path, key: &str) -> Tensor {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut npz = NpzReader::new(file).unwrap();
    let a: ArrayD<f32> = npz
        .by_name(key)
        .unwrap_or_else(|e| panic!("{} [{key}]: {e}", path.display()));
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&data).reshape(shape)
}

/// Largest absolute elementwise difference (after broadcasting the shapes must match exactly).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let a = a.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    (a - b).abs().max().double_value(&[])
}
