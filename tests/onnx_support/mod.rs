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
    npz_array::<f32>(path, key)
}

/// Reads a float64 array (the fixtures' `*_f64` references) from an npz file as a tch tensor.
pub fn npz_f64(path: &Path, key: &str) -> Tensor {
    npz_array::<f64>(path, key)
}

fn npz_array<T: ndarray_npy::ReadableElement + tch::kind::Element + Copy>(
    path: &Path,
    key: &str,
) -> Tensor {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut npz = NpzReader::new(file).unwrap();
    let a: ArrayD<T> = npz
        .by_name(key)
        .unwrap_or_else(|e| panic!("{} [{key}]: {e}", path.display()));
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let data: Vec<T> = a.iter().copied().collect();
    Tensor::from_slice(&data).reshape(shape)
}

/// How many times PyTorch's own float32 error an engine's float32 result may have. Measured on 5 seeds of every
/// architecture, both exporters, 256 inputs each: robustd's logit error is 0.45-3.0x PyTorch's (median 1.0, 2240
/// batches of 8), its gradient error on inputs away from ties 0.66-2.8x (median 1.14, 1412 batches); 8 leaves
/// room for other CPUs' kernels, and a real bug is off by orders of magnitude. (Near ties, 11 of 2240 gradient
/// batches were off by 10^3-10^5x: where one float32 evaluation flips a ReLU and the other does not, no tolerance
/// short of a wrong one holds, hence the fixtures' tie-free inputs.)
pub const FLOAT32_ERROR_MULTIPLE: f64 = 8.0;

/// The absolute floor under that bound, in float32 units in the last place of the reference's largest |value|:
/// for outputs PyTorch happens to get (almost) exactly right, where any multiple of its error is ~0.
pub const FLOAT32_FLOOR_ULPS: f64 = 4.0;

/// Checks `ours`, a float32 evaluation of fixture `npz`'s model, against the float64 evaluation `{key}_f64`
/// written by scripts/export_fixtures.py: its largest error must be within FLOAT32_ERROR_MULTIPLE times PyTorch's
/// own float32 error (`{key}`, same model, same inputs) plus FLOAT32_FLOOR_ULPS. The tolerance so follows each
/// model's float32 precision (deep models lose more digits) instead of one absolute number. Returns the ratio of
/// the two errors, for the test's output; panics naming `what` when the bound does not hold.
pub fn assert_float32_error(what: &str, ours: &Tensor, npz: &Path, key: &str) -> f64 {
    let reference = npz_f64(npz, &format!("{key}_f64"));
    let pytorch = npz_f32(npz, key);
    let ours_error = max_abs_diff(ours, &reference);
    let pytorch_error = max_abs_diff(&pytorch, &reference);
    let ulp = f64::from(f32::EPSILON) * reference.abs().max().double_value(&[]);
    let bound = FLOAT32_ERROR_MULTIPLE * pytorch_error + FLOAT32_FLOOR_ULPS * ulp;
    assert!(
        ours_error <= bound,
        "{what}: max error {ours_error:.3e} from float64, over the float32 bound {bound:.3e} \
         ({FLOAT32_ERROR_MULTIPLE} x PyTorch's own float32 error {pytorch_error:.3e} + {FLOAT32_FLOOR_ULPS} ulp)"
    );
    ours_error / pytorch_error.max(ulp)
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

/// Two float32 evaluations of one graph without a float64 reference (onnxruntime and tch on weights only robustd
/// has): they must agree within ENGINES_AGREE_ULPS float32 ulps of `theirs`' largest |value|, which scales with
/// the outputs instead of being one absolute number. Returns the difference in those ulps.
pub fn assert_engines_agree(what: &str, ours: &Tensor, theirs: &Tensor) -> f64 {
    let d = max_abs_diff(ours, theirs);
    let ulp = f64::from(f32::EPSILON) * theirs.abs().max().double_value(&[]);
    assert!(
        d <= ENGINES_AGREE_ULPS * ulp,
        "{what}: the engines differ by {d:.3e} = {:.1} ulp of the largest output (bound {ENGINES_AGREE_ULPS})",
        d / ulp
    );
    d / ulp
}

/// The bound of `assert_engines_agree`. On the fixtures, where a float64 reference exists, each engine is within
/// 8 such ulps of it, so two engines within 16; 64 leaves room for trained weights' larger dynamic range.
pub const ENGINES_AGREE_ULPS: f64 = 64.0;
