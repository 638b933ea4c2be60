//! Every supported op against onnxruntime on the same inputs: the single-op models written by
//! scripts/onnx_op_cases.py (through `make fixtures`) run through the tch interpreter and onnxruntime, and all
//! outputs must agree (shape, element type class, values within 1e-4 absolute + 1e-4 relative). Quantization ops
//! carry their integers in float tensors (so gradients pass straight through): there the integer values must be
//! the same, in a float tensor.

mod onnx_support;

use std::path::Path;

use prost::Message;
use robustd::config::Limits;
use robustd::model::InputAdapter;
use robustd::onnx::proto::TensorProto;
use robustd::onnx::tensor_data::TensorData;
use robustd::onnx::{Interpreter, OnnxModel, OrtScorer, TchOptions};
use tch::{Device, Kind, Tensor};

/// Reads a serialized TensorProto (`input_0.pb`) as a tch tensor.
pub fn read_pb(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let proto = TensorProto::decode(bytes.as_slice()).unwrap();
    TensorData::from_proto(&proto, None)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_tch()
        .unwrap()
}

fn inputs_of(dir: &Path) -> Vec<Tensor> {
    (0..)
        .map(|k| dir.join(format!("input_{k}.pb")))
        .take_while(|p| p.is_file())
        .map(|p| read_pb(&p))
        .collect()
}

/// Ops whose integer outputs the interpreter carries in float tensors.
const CARRYING: &[&str] = &[
    "QuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
];

/// Ops whose onnxruntime result depends on the float evaluation order of its kernel on the CPU at hand: a value
/// within float32 rounding of a midpoint may land one quantization step either way.
const ONE_STEP: &[&str] = &["QLinearAdd", "QLinearMul"];

/// `None` when equal within tolerance, else a description of the difference. `carried`: integer outputs may
/// come as integer-valued floats; `slack`: absolute difference allowed on top of the usual tolerance.
fn compare(ours: &Tensor, theirs: &Tensor, carried: bool, slack: f64) -> Option<String> {
    if ours.size() != theirs.size() {
        return Some(format!(
            "shape {:?} vs onnxruntime {:?}",
            ours.size(),
            theirs.size()
        ));
    }
    let carrier = carried && ours.is_floating_point() && !theirs.is_floating_point();
    if (ours.kind() == Kind::Bool) != (theirs.kind() == Kind::Bool)
        || (ours.is_floating_point() != theirs.is_floating_point() && !carrier)
    {
        return Some(format!(
            "element type {:?} vs onnxruntime {:?}",
            ours.kind(),
            theirs.kind()
        ));
    }
    if ours.numel() == 0 {
        return None;
    }
    let a = ours.to_kind(Kind::Double);
    let b = theirs.to_kind(Kind::Double);
    let excess = ((&a - &b).abs() - b.abs() * 1e-4 - 1e-4 - slack)
        .max()
        .double_value(&[]);
    (excess > 0.0).then(|| {
        format!(
            "values differ: max |diff| {:.3e}",
            (a - b).abs().max().double_value(&[])
        )
    })
}

#[test]
fn every_op_case_matches_onnxruntime() {
    let root = onnx_support::generated_dir().join("ops");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() > 100,
        "expected the op cases in {}",
        root.display()
    );
    let mut failures = Vec::new();
    let mut ops_seen = std::collections::BTreeSet::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let path = dir.join("model.onnx");
        let result = (|| -> Result<(), String> {
            let model = OnnxModel::load(&path, &Limits::default()).map_err(|e| e.to_string())?;
            ops_seen.extend(model.nodes().iter().map(|n| n.qualified_op()));
            let carried = model
                .nodes()
                .iter()
                .any(|n| CARRYING.contains(&n.op_type.as_str()));
            let slack = if model
                .nodes()
                .iter()
                .any(|n| ONE_STEP.contains(&n.op_type.as_str()))
            {
                1.0
            } else {
                0.0
            };
            let graph = Interpreter::new(&model, Device::Cpu, TchOptions::default())
                .map_err(|e| e.to_string())?;
            let inputs = inputs_of(dir);
            let ours = graph.run(&inputs).map_err(|e| e.to_string())?;
            let mut ort =
                OrtScorer::new(&path, InputAdapter::identity(), 1).map_err(|e| e.to_string())?;
            let theirs = ort.run(&inputs).map_err(|e| e.to_string())?;
            for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                if let Some(diff) = compare(a, b, carried, slack) {
                    return Err(format!("output {k}: {diff}"));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{name}: {e}"));
        }
    }
    println!(
        "{} cases over {} op types: {ops_seen:?}",
        dirs.len(),
        ops_seen.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn every_registered_op_has_a_case() {
    let root = onnx_support::generated_dir().join("ops");
    let mut covered = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let model = OnnxModel::load(&e.path().join("model.onnx"), &Limits::default()).unwrap();
        covered.extend(model.nodes().iter().map(|n| n.qualified_op()));
    }
    let missing: Vec<_> = robustd::onnx::ops::supported_ops()
        .into_iter()
        .filter(|op| !covered.contains(op))
        .collect();
    assert!(
        missing.is_empty(),
        "ops without an onnxruntime case: {missing:?}"
    );
}
