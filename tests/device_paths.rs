//! The GPU speed paths that also exist on the CPU, against float32 on the same model and data: bfloat16 autocast
//! through the ONNX interpreter (`eval.amp`) and through the trainer's [`Accel`] (`train.amp`), channels-last
//! inputs, and the automatic batch size probed against a CPU memory budget. On a GPU the daemon turns these on only
//! for CUDA devices; the code they run is the same.

mod common;
mod onnx_support;

use common::fashion_mnist;
use robustd::attack::losses;
use robustd::attack::pgd::{loss_and_input_grad, pgd, Keep, PgdParams};
use robustd::config::{Limits, Norm};
use robustd::eval::batch::{self, BatchSize, MAX_BATCH};
use robustd::model::Classifier;
use robustd::onnx::{OnnxModel, Precision, TchModel};
use robustd::train::accel::Accel;
use tch::{Device, Kind, Tensor};

const AMP: Precision = Precision {
    amp: true,
    channels_last: false,
};
const CHANNELS_LAST: Precision = Precision {
    amp: false,
    channels_last: true,
};

/// The trained demo-shaped CNN (1 epoch on 3000 Fashion-MNIST images) and two random-weight architectures.
fn models() -> Vec<(&'static str, TchModel)> {
    let trained = OnnxModel::load(
        &onnx_support::generated_dir().join("fmnist_cnn_small.onnx"),
        &Limits::default(),
    )
    .unwrap();
    vec![
        ("fmnist_cnn_small", onnx_support::tch_model(&trained)),
        (
            "cnn_bn_legacy",
            onnx_support::tch_model(&onnx_support::load("cnn_bn_legacy")),
        ),
        (
            "resnet18_legacy",
            onnx_support::tch_model(&onnx_support::load("resnet18_legacy")),
        ),
    ]
}

/// Fashion-MNIST images in the model's input size: zero-padded around the 28x28 image, the gray channel repeated.
fn images_for(m: &TchModel, x: &Tensor) -> Tensor {
    let [c, h, w] = m.input_chw();
    let (top, left) = ((h - 28) / 2, (w - 28) / 2);
    x.constant_pad_nd([left, w - 28 - left, top, h - 28 - top])
        .expand([-1, c, -1, -1], false)
        .contiguous()
}

fn logits(m: &mut TchModel, precision: Precision, x: &Tensor) -> Tensor {
    let x = images_for(m, x);
    let x = &x;
    m.set_precision(precision);
    let out = tch::no_grad(|| m.forward(x)).unwrap();
    m.set_precision(Precision::default());
    out
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.flatten(0, -1).to_kind(Kind::Double),
        b.flatten(0, -1).to_kind(Kind::Double),
    );
    (a.dot(&b) / (a.norm() * b.norm() + 1e-30)).double_value(&[])
}

fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.argmax(1, false)
        .eq_tensor(&b.argmax(1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

#[test]
fn autocast_logits_are_float32_and_close_to_float32() {
    let (x, _) = fashion_mnist("t10k", 64);
    for (name, mut m) in models() {
        let exact = logits(&mut m, Precision::default(), &x);
        let mixed = logits(&mut m, AMP, &x);
        assert_eq!(
            mixed.kind(),
            Kind::Float,
            "{name}: logits are cast back to float32"
        );
        let diff = max_abs(&(&mixed - &exact));
        let scale = max_abs(&exact).max(1.0);
        assert!(
            diff <= 0.05 * scale,
            "{name}: bf16 logits off by {diff} (scale {scale})"
        );
        let agree = agreement(&mixed, &exact);
        assert!(
            agree >= 0.95,
            "{name}: bf16 changes {:.0} % of predictions",
            (1.0 - agree) * 100.0
        );
        // Autocast is off again once the forward pass returned.
        assert!(
            logits(&mut m, Precision::default(), &x).equal(&exact),
            "{name}"
        );
    }
}

#[test]
fn channels_last_inputs_give_the_same_logits() {
    let (x, _) = fashion_mnist("t10k", 64);
    for (name, mut m) in models() {
        let exact = logits(&mut m, Precision::default(), &x);
        let nhwc = logits(&mut m, CHANNELS_LAST, &x);
        let diff = max_abs(&(&nhwc - &exact));
        assert!(
            diff <= 1e-4 * max_abs(&exact).max(1.0),
            "{name}: channels-last off by {diff}"
        );
    }
}

#[test]
fn autocast_attacks_find_what_float32_attacks_find() {
    let (mut m, (x, y)) = (models().swap_remove(0).1, fashion_mnist("t10k", 128));
    let robust = |m: &mut TchModel, precision: Precision| {
        m.set_precision(precision);
        let params = PgdParams {
            norm: Norm::Linf,
            eps: 0.1,
            step_size: 0.0125,
            steps: 20,
            random_start: true,
            restarts: 1,
            seed: 3,
            keep: Keep::Adversarial,
        };
        let adv = pgd(&*m, &x, &y, &params, &losses::cross_entropy).unwrap();
        let grad = loss_and_input_grad(&*m, &x, &y, &losses::cross_entropy)
            .unwrap()
            .grad;
        m.set_precision(Precision::default());
        // Verdicts in float32, as the evaluation's re-checks are.
        let held = tch::no_grad(|| m.forward(&adv))
            .unwrap()
            .argmax(1, false)
            .eq_tensor(&y);
        (
            held.to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
            grad,
        )
    };
    let (acc32, grad32) = robust(&mut m, Precision::default());
    let (acc16, grad16) = robust(&mut m, AMP);
    assert!(
        (acc32 - acc16).abs() <= 0.06,
        "PGD-20 robust accuracy {acc32} (fp32) vs {acc16} (bf16)"
    );
    let c = cosine(&grad32, &grad16);
    assert!(c >= 0.95, "input gradients: cosine {c}");
}

#[test]
fn accel_training_gradients_follow_float32() {
    let (x, y) = fashion_mnist("train", 64);
    let mut m = models().swap_remove(0).1;
    m.set_train(true);
    let params = m.trainable_parameters();
    let grads = |accel: &Accel| {
        let input = accel.input(&x).unwrap();
        let loss = accel.run(|| m.forward(&input).unwrap().cross_entropy_for_logits(&y));
        assert_eq!(loss.kind(), Kind::Float);
        accel.gradients(&loss, &params).unwrap()
    };
    let exact = grads(&Accel::with(false, false, Device::Cpu));
    let mixed = grads(&Accel::with(true, true, Device::Cpu));
    for (i, (a, b)) in exact.iter().zip(&mixed).enumerate() {
        assert_eq!(b.kind(), Kind::Float, "parameter {i}: float32 gradients");
        let c = cosine(a, b);
        assert!(c >= 0.98, "parameter {i}: gradient cosine {c}");
    }
    // On the CPU the trainer's own choice leaves both off.
    let spec = robustd::config::TrainSpec {
        amp: true,
        channels_last: true,
        ..Default::default()
    };
    let accel = Accel::new(&spec, Device::Cpu);
    assert!(!accel.amp && !accel.channels_last);
}

#[test]
fn automatic_batch_sizes_fit_the_cpu_budget_and_are_cached() {
    let (x, _) = fashion_mnist("t10k", 32);
    let m = models().swap_remove(1).1;
    let small = batch::batching(BatchSize::Auto { memory_mb: 64 }, &m, &x).unwrap();
    let large = batch::batching(BatchSize::Auto { memory_mb: 4096 }, &m, &x).unwrap();
    assert!(small.size >= 1 && small.size <= large.size && large.size <= MAX_BATCH);
    assert!(small.rows >= small.size && large.rows >= large.size);
    // The same structure, device and budget: the cached answer, without measuring again.
    let again = batch::batching(BatchSize::Auto { memory_mb: 64 }, &m, &x).unwrap();
    assert_eq!(again, small);
    // A fixed size is taken as it is.
    let fixed = batch::batching(BatchSize::Fixed(7), &m, &x).unwrap();
    assert_eq!((fixed.size, fixed.rows), (7, 7));
}
