//! Shared helpers for the ONNX engine tests: fixture paths, npz reference data as tch tensors, and comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use tch::{Device, Kind, Tensor};

use robustd::config::{InputLayout, Limits};
use robustd::model::{Classifier, InputAdapter};
use robustd::onnx::{OnnxModel, TchModel, TchOptions};

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
    "vit_legacy_opset14",
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

/// The interpreter as a classifier: identity adapter, layout from the input shape, default options.
pub fn tch_model(model: &OnnxModel) -> TchModel {
    TchModel::with_layout(
        model,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
        TchOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn loss(m: &TchModel, x: &Tensor, y: &Tensor) -> Tensor {
    m.forward(x).unwrap().cross_entropy_for_logits(y)
}

/// Plain SGD on the model's trainable parameters, minibatches of up to 16 rows in turn; returns (loss before,
/// loss after) on all rows, both in eval mode.
pub fn sgd(m: &mut TchModel, x: &Tensor, y: &Tensor, steps: usize, lr: f64) -> (f64, f64) {
    let eval_loss = |m: &mut TchModel| {
        m.set_train(false);
        tch::no_grad(|| loss(m, x, y).double_value(&[]))
    };
    let before = eval_loss(m);
    m.set_train(true);
    let mut params = m.trainable_parameters();
    assert!(!params.is_empty());
    let rows = x.size()[0];
    let batch = rows.min(16);
    for step in 0..steps {
        let start = (step as i64 * batch) % rows;
        let index =
            Tensor::arange_start(start, (start + batch).min(rows), (Kind::Int64, Device::Cpu));
        let l = loss(m, &x.index_select(0, &index), &y.index_select(0, &index));
        for p in params.iter_mut() {
            p.zero_grad();
        }
        l.backward();
        tch::no_grad(|| {
            for p in &params {
                let g = p.grad();
                if g.defined() {
                    let _ = p.shallow_clone().f_sub_(&(g * lr)).unwrap();
                }
            }
        });
    }
    (before, eval_loss(m))
}
