//! Parity of the tch interpreter and onnxruntime with PyTorch on the exported fixtures (both exporters): logits
//! and input gradients within a small multiple of PyTorch's own float32 error from a float64 evaluation of the same
//! model (`onnx_support::assert_float32_error`), and write-back files that reload in onnxruntime with the same
//! logits.
//!
//! Why not one absolute tolerance: float32 precision depends on the model (deep ones lose more digits), and an
//! input gradient is discontinuous at ReLU/ReLU6/max-pool ties, where float32 rounding alone decides where the
//! gradient flows. So the bound follows PyTorch's float32 error, and the fixture inputs are chosen away from ties
//! (scripts/export_fixtures.py `choose_inputs`: every kink input at least 3e-6 of its tensor's scale from its kink
//! in float64, 5x more than any float32 evaluation is off).

mod onnx_support;

use onnx_support::{
    assert_engines_agree, assert_float32_error, fixture, load, max_abs_diff, npz_f32, tch_model,
    FIXTURES,
};
use robustd::model::{Classifier, Scorer};
use robustd::onnx::{write_back, OnnxModel, OrtScorer};
use tch::Tensor;

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
        let r_tch = assert_float32_error(&format!("{name}: tch logits"), &ours, &npz, "logits");
        let r_ort = assert_float32_error(
            &format!("{name}: onnxruntime logits"),
            &theirs,
            &npz,
            "logits",
        );
        println!(
            "{name}: logit error / PyTorch's float32 error: tch {r_tch:.2}, onnxruntime {r_ort:.2} \
             (|tch-pytorch| = {:.2e})",
            max_abs_diff(&ours, &reference)
        );
        assert_eq!(tch.num_classes(), 10);
        assert_eq!(tch.input_chw()[1..], x.size()[2..]);
    }
}

#[test]
fn shape_only_values_follow_the_batch_size_from_run_to_run() {
    // The interpreter evaluates the integer subgraphs that read the input only through its shape once per input
    // shape: a batch of another size must recompute them, and coming back to a size must not use stale values.
    for name in FIXTURES {
        let model = load(name);
        let tch = tch_model(&model);
        let x = npz_f32(&fixture(name).with_extension("npz"), "x");
        let n = x.size()[0];
        let mut ort = OrtScorer::new(model.path(), tch.adapter().clone(), 1).unwrap();
        for rows in [n, 1, n.min(3), n, n.min(3), 1] {
            let part = x.narrow(0, 0, rows);
            let ours = tch.forward(&part).unwrap();
            let theirs = ort.logits(&part).unwrap();
            assert_eq!(ours.size(), [rows, 10], "{name} at batch {rows}");
            let diff = max_abs_diff(&ours, &theirs);
            assert!(
                diff < 1e-3,
                "{name} at batch {rows}: |tch - onnxruntime| = {diff:.2e}"
            );
        }
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
        let logits = tch.forward(&x).unwrap();
        let grads =
            Tensor::run_backward(&[(logits * w).sum(tch::Kind::Float)], &[&x], false, false);
        let ratio =
            assert_float32_error(&format!("{name}: input gradient"), &grads[0], &npz, "grad");
        println!(
            "{name}: gradient error / PyTorch's float32 error: {ratio:.2} (|grad - pytorch grad| = {:.2e})",
            max_abs_diff(&grads[0], &npz_f32(&npz, "grad"))
        );
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
        // Reinitialized weights have no PyTorch reference: the two engines must agree (in float32 ulps).
        let ulps = assert_engines_agree(
            &format!("{name} written back"),
            &ours,
            &ort.logits(&x).unwrap(),
        );
        println!("{name}: written-back |tch-ort| = {ulps:.1} ulp");
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
