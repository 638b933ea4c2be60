//! Training through the interpreter: 50 SGD steps on imported models lower the training loss (BatchNorm kept and
//! trained, or folded), the written-back ONNX reloads in onnxruntime with the trained model's logits, and the
//! checkpoint / re-initialization API behaves (round trip, seeded determinism).

mod onnx_support;

use onnx_support::{assert_engines_agree, fixture, load, max_abs_diff, npz_f32, sgd};
use robustd::config::InputLayout;
use robustd::model::{Classifier, InputAdapter, Scorer};
use robustd::onnx::{write_back, OrtScorer, TchModel, TchOptions};
use tch::{Device, Kind, Tensor};

fn model(name: &str, train_batchnorm: bool) -> (robustd::onnx::OnnxModel, TchModel) {
    let onnx = load(name);
    let options = TchOptions {
        train_batchnorm,
        ..TchOptions::default()
    };
    let tch = TchModel::with_layout(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
        options,
    )
    .unwrap();
    (onnx, tch)
}

/// A learnable synthetic task: 64 images, labels from a fixed random linear map of the pixels.
fn task(chw: [i64; 3], classes: i64) -> (Tensor, Tensor) {
    tch::manual_seed(11);
    let [c, h, w] = chw;
    let x = Tensor::rand([64, c, h, w], (Kind::Float, Device::Cpu));
    let proj = Tensor::randn([c * h * w, classes], (Kind::Float, Device::Cpu));
    let y = (x.flatten(1, -1) - 0.5).matmul(&proj).argmax(1, false);
    (x, y)
}

#[test]
fn fifty_sgd_steps_lower_the_loss_and_write_back_keeps_parity() {
    let dir = tempfile::tempdir().unwrap();
    for (name, train_bn) in [
        ("vgg_bn_bnkept_legacy", true),
        ("vgg_bn_bnkept_dynamo", true),
        ("cnn_bn_legacy", false),
        ("resdw_dynamo", false),
    ] {
        let (onnx, mut tch) = model(name, train_bn);
        let (x, y) = task(tch.input_chw(), tch.num_classes());
        let stats_before: Vec<(String, Tensor)> = tch
            .state_dict()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let (before, after) = sgd(&mut tch, &x, &y, 50, 0.05);
        println!("{name}: loss {before:.4} -> {after:.4}");
        assert!(after < before * 0.99, "{name}: loss {before} -> {after}");
        if train_bn {
            // BatchNorm in training mode updated every running statistic.
            let stats: Vec<_> = tch
                .state_dict()
                .into_iter()
                .zip(&stats_before)
                .filter(|((n, _), _)| n.ends_with("running_mean") || n.ends_with("running_var"))
                .map(|((n, now), (_, was))| (n, max_abs_diff(&now, was)))
                .collect();
            assert_eq!(stats.len(), 8, "{name}: {stats:?}");
            assert!(stats.iter().all(|(_, d)| *d > 0.0), "{name}: {stats:?}");
        }
        let out = dir.path().join(format!("{name}.bat.onnx"));
        write_back(&onnx, &tch, &out, &[("robustd.method", "sgd-smoke-test")]).unwrap();
        tch.set_train(false);
        let probe = npz_f32(&fixture(name).with_extension("npz"), "x");
        let ours = tch::no_grad(|| tch.forward(&probe).unwrap());
        let mut ort = OrtScorer::new(&out, tch.adapter().clone(), 1).unwrap();
        // Trained weights have no PyTorch reference: the two engines must agree (in float32 ulps).
        let ulps = assert_engines_agree(name, &ours, &ort.logits(&probe).unwrap());
        println!("{name}: written-back |tch-ort| = {ulps:.1} ulp");
    }
}

#[test]
fn batchnorm_stays_frozen_without_train_batchnorm() {
    let (_, mut tch) = model("vgg_bn_bnkept_legacy", false);
    let frozen: Vec<(String, Tensor)> = tch
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let trainable: Vec<String> = tch.named_parameters().into_iter().map(|(n, _)| n).collect();
    let (x, y) = task(tch.input_chw(), tch.num_classes());
    sgd(&mut tch, &x, &y, 5, 0.05);
    for ((name, now), (_, was)) in tch.state_dict().iter().zip(&frozen) {
        let changed = max_abs_diff(now, was) > 0.0;
        assert_eq!(
            changed,
            trainable.contains(name),
            "{name}: changed = {changed}"
        );
    }
    // Only conv/linear weights and biases train: the 4 BatchNorm layers contribute none of their 4 tensors.
    assert_eq!(tch.state_dict().len() - trainable.len(), 16);
}

#[test]
fn checkpoints_round_trip_and_reinitialization_is_seeded() {
    let (_, mut a) = model("resnet18_legacy", false);
    let (_, mut b) = model("resnet18_legacy", false);
    let x = npz_f32(&fixture("resnet18_legacy").with_extension("npz"), "x");
    a.reinitialize(1).unwrap();
    b.reinitialize(1).unwrap();
    assert_eq!(
        max_abs_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()),
        0.0
    );
    b.reinitialize(2).unwrap();
    assert!(max_abs_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()) > 1e-3);
    let saved: Vec<(String, Tensor)> = a
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    b.load_named(&saved).unwrap();
    assert_eq!(
        max_abs_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()),
        0.0
    );
    let bad = vec![(
        "no_such_tensor".to_string(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    )];
    assert!(b
        .load_named(&bad)
        .unwrap_err()
        .to_string()
        .contains("no_such_tensor"));
}
