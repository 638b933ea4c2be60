//! The input adapter inside both engines: layouts detected from the ONNX input shape (NHWC, flat), normalization
//! applied identically by the tch interpreter and by onnxruntime, and attacks' pixel-space NCHW input in all cases.

mod onnx_support;

use onnx_support::{
    assert_engines_agree, assert_float32_error, fixture, load, max_abs_diff, npz_f32,
};
use robustd::config::InputLayout;
use robustd::model::{Classifier, InputAdapter, Layout, Scorer};
use robustd::onnx::{OrtScorer, TchModel, TchOptions};
use tch::Device;

#[test]
fn nhwc_models_take_nchw_pixels_through_the_adapter() {
    for name in ["lenet_nhwc_legacy", "lenet_nhwc_dynamo"] {
        let model = load(name);
        let tch = TchModel::with_layout(
            &model,
            InputAdapter::identity(),
            InputLayout::Auto,
            Device::Cpu,
            TchOptions::default(),
        )
        .unwrap();
        assert_eq!(tch.adapter().layout, Layout::Nhwc, "{name}");
        assert_eq!(tch.input_chw(), [1, 28, 28]);
        let npz = fixture(name).with_extension("npz");
        // The reference inputs are NHWC; the classifier contract is NCHW pixel space.
        let x_nchw = npz_f32(&npz, "x").permute([0, 3, 1, 2]).contiguous();
        // Both engines within a small multiple of PyTorch's own float32 error (see onnx_parity.rs).
        let ours = tch.forward(&x_nchw).unwrap();
        assert_float32_error(&format!("{name}: tch"), &ours, &npz, "logits");
        let mut ort = OrtScorer::new(model.path(), tch.adapter().clone(), 1).unwrap();
        let theirs = ort.logits(&x_nchw).unwrap();
        assert_float32_error(&format!("{name}: onnxruntime"), &theirs, &npz, "logits");
    }
}

#[test]
fn flat_models_need_the_image_size_and_take_nchw_pixels() {
    for name in ["mlp_flat_legacy", "mlp_flat_dynamo"] {
        let model = load(name);
        let err = TchModel::with_layout(
            &model,
            InputAdapter::identity(),
            InputLayout::Auto,
            Device::Cpu,
            TchOptions::default(),
        )
        .err()
        .expect("a flat input does not say the image size");
        assert!(err.to_string().contains("input_chw"), "{err}");
        let options = TchOptions {
            input_chw: Some([1, 28, 28]),
            ..TchOptions::default()
        };
        let tch = TchModel::with_layout(
            &model,
            InputAdapter::identity(),
            InputLayout::Auto,
            Device::Cpu,
            options,
        )
        .unwrap();
        assert_eq!(tch.adapter().layout, Layout::Flat);
        let npz = fixture(name).with_extension("npz");
        let x = npz_f32(&npz, "x").view([-1, 1, 28, 28]);
        assert_float32_error(name, &tch.forward(&x).unwrap(), &npz, "logits");
    }
}

#[test]
fn normalization_is_applied_identically_by_both_engines() {
    let model = load("resnet18_dynamo");
    let adapter = InputAdapter {
        mean: vec![0.49, 0.48, 0.45],
        std: vec![0.25, 0.24, 0.26],
        layout: Layout::Nchw,
    };
    let tch = TchModel::new(&model, adapter.clone(), Device::Cpu, TchOptions::default()).unwrap();
    let x = npz_f32(&fixture("resnet18_dynamo").with_extension("npz"), "x");
    let ours = tch.forward(&x).unwrap();
    let mut ort = OrtScorer::new(model.path(), adapter, 1).unwrap();
    assert_engines_agree(
        "normalized resnet18_dynamo",
        &ours,
        &ort.logits(&x).unwrap(),
    );
    // And it really changes the input: the unnormalized logits differ.
    let plain = TchModel::new(
        &model,
        InputAdapter::identity(),
        Device::Cpu,
        TchOptions::default(),
    )
    .unwrap();
    assert!(max_abs_diff(&ours, &plain.forward(&x).unwrap()) > 1e-2);
}

#[test]
fn shape_subgraphs_over_constants_are_folded_once() {
    // The opset-11 legacy export carries its Clip bounds as Constant nodes: they are evaluated at build time.
    let model = load("mobilenetv2_legacy_opset11");
    let constants = model
        .nodes()
        .iter()
        .filter(|n| n.op_type == "Constant")
        .count();
    assert!(constants > 0);
    let tch = TchModel::new(
        &model,
        InputAdapter::identity(),
        Device::Cpu,
        TchOptions::default(),
    )
    .unwrap();
    assert_eq!(tch.graph().step_count(), model.nodes().len() - constants);
}
