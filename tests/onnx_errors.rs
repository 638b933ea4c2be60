//! Malformed and hostile models give clear errors that name the file, and the node and op where one is at fault:
//! truncated files, files that are not ONNX, unsupported element types, cycles, missing inputs, unsupported ops
//! (all listed at once), external data that escapes the model directory or runs past its file, and limits.
//! Broken models are made by decoding a real exported fixture, changing one thing, and encoding it again.

mod onnx_support;

use std::path::{Path, PathBuf};

use prost::Message;
use robustd::config::Limits;
use robustd::onnx::proto::{data_type, ModelProto, StringStringEntryProto};
use robustd::onnx::{OnnxError, OnnxModel};

fn decode(name: &str) -> ModelProto {
    ModelProto::decode(
        std::fs::read(onnx_support::fixture(name))
            .unwrap()
            .as_slice(),
    )
    .unwrap()
}

fn write(dir: &Path, file: &str, model: &ModelProto) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

fn load_err(path: &Path) -> (OnnxError, String) {
    let err = OnnxModel::load(path, &Limits::default()).expect_err("the model should be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    (err, msg)
}

#[test]
fn truncated_file_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(onnx_support::fixture("cnn_bn_legacy")).unwrap();
    let path = dir.path().join("truncated.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (err, msg) = load_err(&path);
    assert!(matches!(err, OnnxError::Decode { .. }), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not_a_model.onnx");
    // An npz (zip) file: real bytes of the wrong kind.
    std::fs::copy(
        onnx_support::fixture("mlp_legacy").with_extension("npz"),
        &path,
    )
    .unwrap();
    let (_, msg) = load_err(&path);
    assert!(
        msg.contains("not a valid ONNX model") || msg.contains("no graph"),
        "{msg}"
    );
}

#[test]
fn unsupported_initializer_type_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = decode("mlp_legacy");
    let init = &mut m.graph.as_mut().unwrap().initializer[0];
    init.data_type = data_type::STRING;
    let name = init.name.clone();
    let (err, msg) = load_err(&write(dir.path(), "string_weight.onnx", &m));
    assert!(matches!(err, OnnxError::Tensor { .. }), "{msg}");
    assert!(msg.contains(&name) && msg.contains("string"), "{msg}");
}

#[test]
fn cycle_is_reported_with_the_nodes_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = decode("mlp_legacy");
    let g = m.graph.as_mut().unwrap();
    // Feed the first node from the last node's output: Flatten -> Gemm -> Relu -> Gemm -> Flatten.
    let last = g.node.last().unwrap().output[0].clone();
    let last_out = g.output[0].name.clone();
    g.node[0].input[0] = last.clone();
    assert_eq!(last, last_out);
    let (_, msg) = load_err(&write(dir.path(), "cycle.onnx", &m));
    assert!(msg.contains("cycle") && msg.contains("Gemm"), "{msg}");
}

#[test]
fn missing_input_names_node_op_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = decode("cnn_bn_legacy");
    let g = m.graph.as_mut().unwrap();
    let node = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    node.input[0] = "no_such_value".into();
    let node_name = node.name.clone();
    let (err, msg) = load_err(&write(dir.path(), "missing.onnx", &m));
    assert!(matches!(err, OnnxError::Node { .. }), "{msg}");
    assert!(
        msg.contains("no_such_value") && msg.contains(&node_name) && msg.contains("Relu"),
        "{msg}"
    );
}

#[test]
fn unsupported_ops_are_listed_all_at_once_with_counts_and_opset() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = decode("cnn_bn_legacy");
    let g = m.graph.as_mut().unwrap();
    for n in g.node.iter_mut().filter(|n| n.op_type == "Relu") {
        n.op_type = "FancyRelu".into();
    }
    g.node
        .iter_mut()
        .find(|n| n.op_type == "MaxPool")
        .unwrap()
        .op_type = "FancyPool".into();
    g.node
        .iter_mut()
        .find(|n| n.op_type == "Conv")
        .unwrap()
        .domain = "com.example".into();
    let (err, msg) = load_err(&write(dir.path(), "unsupported.onnx", &m));
    match &err {
        OnnxError::UnsupportedOps { opset, ops, .. } => {
            assert_eq!(*opset, 17);
            assert!(ops.contains(&("FancyRelu".to_string(), 3)), "{ops:?}");
            assert!(ops.contains(&("FancyPool".to_string(), 1)), "{ops:?}");
            assert!(
                ops.contains(&("com.example::Conv".to_string(), 1)),
                "{ops:?}"
            );
        }
        other => panic!("expected UnsupportedOps, got {other}"),
    }
    assert!(
        msg.contains("FancyRelu (3 nodes)") && msg.contains("opset 17"),
        "{msg}"
    );
    // inspect-style loading still describes the model.
    let (model, unsupported) =
        OnnxModel::load_lenient(&dir.path().join("unsupported.onnx"), &Limits::default()).unwrap();
    assert!(unsupported.is_some());
    assert_eq!(model.opset(), 17);
}

/// A copy of the dynamo MLP (external data) in its own directory, with one initializer's external entry rewritten.
fn external_variant(dir: &Path, edit: impl Fn(&mut Vec<StringStringEntryProto>)) -> PathBuf {
    let src = onnx_support::fixture("mlp_dynamo");
    let data_name = "mlp_dynamo.onnx.data";
    std::fs::copy(src.with_file_name(data_name), dir.join(data_name)).unwrap();
    let mut m = decode("mlp_dynamo");
    let g = m.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| !t.external_data.is_empty())
        .unwrap();
    edit(&mut t.external_data);
    write(dir, "model.onnx", &m)
}

fn set(entries: &mut [StringStringEntryProto], key: &str, value: &str) {
    entries.iter_mut().find(|e| e.key == key).unwrap().value = value.into();
}

#[test]
fn external_data_must_stay_inside_the_model_directory() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(outer.path().join("secret.bin"), vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.bin"), dir.join("link.bin")).unwrap();
    let abs = outer.path().join("secret.bin").display().to_string();
    for (location, expected) in [
        ("../secret.bin", "`..`"),
        (abs.as_str(), "absolute"),
        ("link.bin", "outside the model's directory"),
        ("missing.bin", "cannot open"),
    ] {
        let path = external_variant(&dir, |e| set(e, "location", location));
        let (err, msg) = load_err(&path);
        assert!(
            matches!(err, OnnxError::ExternalData { .. }),
            "{location}: {msg}"
        );
        assert!(msg.contains(expected), "{location}: {msg}");
    }
}

#[test]
fn external_data_past_the_end_of_its_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = external_variant(dir.path(), |e| set(e, "offset", "100000000"));
    let (_, msg) = load_err(&path);
    assert!(msg.contains("past the end"), "{msg}");
    let path = external_variant(dir.path(), |e| set(e, "length", "12"));
    let (_, msg) = load_err(&path);
    assert!(msg.contains("holds 12 bytes"), "{msg}");
}

#[test]
fn limits_from_the_config_are_enforced() {
    let path = onnx_support::fixture("cnn_bn_legacy");
    let limits = Limits {
        max_nodes: 3,
        ..Limits::default()
    };
    let msg = OnnxModel::load(&path, &limits).unwrap_err().to_string();
    assert!(
        msg.contains("node count") && msg.contains("limit of 3"),
        "{msg}"
    );
    let limits = Limits {
        max_tensor_elements: 1000,
        ..Limits::default()
    };
    let msg = OnnxModel::load(&path, &limits).unwrap_err().to_string();
    assert!(msg.contains("element count"), "{msg}");
    let limits = Limits {
        max_model_bytes: 1000,
        ..Limits::default()
    };
    let msg = OnnxModel::load(&path, &limits).unwrap_err().to_string();
    assert!(msg.contains("bytes"), "{msg}");
}

#[test]
fn classifier_inputs_are_checked_instead_of_panicking() {
    use robustd::model::{Classifier, InputAdapter, Layout, Scorer};
    use robustd::onnx::{OrtScorer, TchModel, TchOptions};
    let model = onnx_support::load("cnn_bn_legacy");
    let tch = TchModel::new(
        &model,
        InputAdapter::identity(),
        tch::Device::Cpu,
        TchOptions::default(),
    )
    .unwrap();
    let wrong = tch::Tensor::zeros([2, 3, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
    let msg = tch.forward(&wrong).unwrap_err().to_string();
    assert!(msg.contains("[N, 1, 28, 28]"), "{msg}");
    let adapter = InputAdapter {
        mean: vec![0.5],
        std: vec![0.25],
        layout: Layout::Nchw,
    };
    let mut ort = OrtScorer::new(model.path(), adapter, 1).unwrap();
    let msg = ort.logits(&wrong).unwrap_err().to_string();
    assert!(msg.contains("C = 1"), "{msg}");
}

#[test]
fn integer_image_inputs_are_refused_by_the_classifier() {
    use robustd::model::InputAdapter;
    use robustd::onnx::{TchModel, TchOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut m = decode("mlp_legacy");
    let input = &mut m.graph.as_mut().unwrap().input[0];
    match input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(robustd::onnx::proto::TypeValue::TensorType(t)) => t.elem_type = data_type::UINT8,
        other => panic!("unexpected input type {other:?}"),
    }
    let path = write(dir.path(), "uint8_input.onnx", &m);
    let model = OnnxModel::load(&path, &Limits::default()).unwrap();
    let err = TchModel::new(
        &model,
        InputAdapter::identity(),
        tch::Device::Cpu,
        TchOptions::default(),
    )
    .err()
    .expect("uint8 input refused");
    assert!(err.to_string().contains("uint8"), "{err}");
}
