//! Parity of the tch interpreter with onnxruntime and with PyTorch's own outputs on the exported fixtures (both
//! exporters): logits ≤ 1e-4 max abs, input gradients ≤ 1e-4 vs PyTorch autograd, and write-back files that
//! reload in onnxruntime with the same logits.

mod onnx_support;

use onnx_support::{fixture, load, max_abs_diff, npz_f32, tch_model, FIXTURES};
use robustd::model::{Classifier, Scorer};
use robustd::onnx::{write_back, OnnxModel, OrtScorer};
use tch::Tensor;

const TOL: f64 = 1e-4;

#[test]
fn logits_match_onnxruntime_and_pytorch_on_every_fixture() {
    for name in FIXTURES {
        let model = load(name);
        let tch = tch_model(&model);
        let npz = fixture(name).with_extension("npz");
        let x = npz_f32(&npz, "x");
        let reference = npz_f32(&npz, "logits");
        let ours = tch.forward(&x).unwrap();
        let mut ort = OrtScorer::new(model.path(), tch.adapter().clone(), 1).unwrap();
        let theirs = ort.logits(&x).unwrap();
        let d_ort = max_abs_diff(&ours, &theirs);
        let d_ref = max_abs_diff(&ours, &reference);
        println!("{name}: |tch-ort| = {d_ort:.2e}, |tch-pytorch| = {d_ref:.2e}");
        assert!(d_ort <= TOL, "{name}: tch vs onnxruntime {d_ort}");
        assert!(d_ref <= TOL, "{name}: tch vs PyTorch {d_ref}");
        assert_eq!(tch.num_classes(), 10);
        assert_eq!(tch.input_chw()[1..], x.size()[2..]);
    }
}

#[test]
fn input_gradients_match_pytorch_autograd() {
    for name in FIXTURES {
        let model = load(name);
        let tch = tch_model(&model);
        let npz = fixture(name).with_extension("npz");
        let x = npz_f32(&npz, "x").set_requires_grad(true);
        let w = npz_f32(&npz, "grad_weights");
        let expected = npz_f32(&npz, "grad");
        let logits = tch.forward(&x).unwrap();
        let grads =
            Tensor::run_backward(&[(logits * w).sum(tch::Kind::Float)], &[&x], false, false);
        let d = max_abs_diff(&grads[0], &expected);
        println!("{name}: |grad - pytorch grad| = {d:.2e}");
        assert!(d <= TOL, "{name}: input gradient differs by {d}");
    }
}

#[test]
fn written_back_models_reload_in_onnxruntime_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let model = load(name);
        let mut tch = tch_model(&model);
        // Perturb the weights so the check cannot pass by copying the original file.
        tch.reinitialize(7).unwrap();
        let out = dir.path().join(format!("{name}.bat.onnx"));
        let written = write_back(&model, &tch, &out, &[("robustd.method", "test")]).unwrap();
        assert_eq!(
            written.data.is_some(),
            model.uses_external_data(),
            "{name}: external data kept as in the original"
        );
        let x = npz_f32(&fixture(name).with_extension("npz"), "x");
        let ours = tch.forward(&x).unwrap();
        let mut ort = OrtScorer::new(&out, tch.adapter().clone(), 1).unwrap();
        let d = max_abs_diff(&ours, &ort.logits(&x).unwrap());
        println!("{name}: written-back |tch-ort| = {d:.2e}");
        assert!(d <= TOL, "{name}: written-back model differs by {d}");
        let reloaded = OnnxModel::load(&out, &Default::default()).unwrap();
        assert_eq!(reloaded.opset(), model.opset());
        assert_eq!(reloaded.ir_version(), model.ir_version());
        assert_eq!(
            reloaded.structure_hash(),
            model.structure_hash(),
            "{name}: structure unchanged"
        );
        let meta: Vec<_> = reloaded.metadata().to_vec();
        assert!(
            meta.contains(&("robustd.method".into(), "test".into())),
            "{meta:?}"
        );
        assert!(meta.iter().any(|(k, _)| k == "robustd.version"));
    }
}
