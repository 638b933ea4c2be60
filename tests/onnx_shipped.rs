//! Models as they are shipped (scripts/export_shipped_fixtures.py, from the exported fixtures with the real
//! tools): onnxruntime-optimized graphs (basic/extended levels, the transformers optimizer on a ViT), float16 and
//! bfloat16 models, and quantized ones (QDQ, QOperator, dynamic). For each: logits against onnxruntime on the
//! same file; input gradients against PyTorch's autograd on the exported module and finite differences of
//! onnxruntime's outputs (optimized float32 graphs), against the float original's gradient (half precision: the
//! same function with rounded weights; quantized: straight-through); a few SGD steps and a write-back that keeps
//! the fused / half-precision / quantized form and reloads in onnxruntime with the trained model's logits. Plus
//! the input type checks and the score-based-only verdict for a graph with onnxruntime's NCHWc layout ops.

mod onnx_support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use onnx_support::{generated_dir, max_abs_diff, npz_f32, sgd, tch_model};
use robustd::config::Limits;
use robustd::model::{Classifier, InputAdapter, Scorer};
use robustd::onnx::{
    write_back, GraphForm, Interpreter, OnnxError, OnnxModel, OrtScorer, Quantization, TchModel,
    TchOptions,
};
use robustd::pipeline::parity_tolerance;
use tch::{Device, Kind, Tensor};

/// Float32 graphs onnxruntime's optimizers rewrote, and the fixture each was derived from.
const OPTIMIZED: &[(&str, &str)] = &[
    ("cnn_bn_ort_basic", "cnn_bn_legacy"),
    ("cnn_bn_ort_extended", "cnn_bn_legacy"),
    ("resnet18_ort_extended", "resnet18_legacy"),
    ("mobilenetv2_ort_extended", "mobilenetv2_legacy"),
    ("vit_ort_basic", "vit_legacy"),
    ("vit_ort_extended", "vit_legacy"),
    ("vit_transformers", "vit_legacy"),
    ("vit_transformers_mha", "vit_legacy"),
    ("vit_opset14_transformers", "vit_legacy_opset14"),
];
/// Half-precision models and the float32 model each was converted from.
const HALF: &[(&str, &str)] = &[
    ("cnn_bn_fp16", "cnn_bn_legacy"),
    ("resnet18_fp16_io", "resnet18_legacy"),
    ("vit_fp16", "vit_legacy"),
    ("fmnist_cnn_small_fp16", "fmnist_cnn_small"),
    ("cnn_bn_bf16", "cnn_bn_legacy"),
];
/// Quantized models and the float model each was quantized from.
const QUANTIZED: &[(&str, &str)] = &[
    ("cnn_bn_qdq", "cnn_bn_legacy"),
    ("cnn_bn_qoperator", "cnn_bn_legacy"),
    ("cnn_bn_dynamic", "cnn_bn_legacy"),
    ("resnet18_qdq_per_channel", "resnet18_legacy"),
    ("resnet18_qoperator", "resnet18_legacy"),
    ("vit_dynamic", "vit_legacy"),
    ("fmnist_cnn_small_qdq", "fmnist_cnn_small"),
    ("fmnist_cnn_small_qoperator", "fmnist_cnn_small"),
];

fn shipped(name: &str) -> PathBuf {
    let path = generated_dir().join("shipped").join(format!("{name}.onnx"));
    assert!(
        path.is_file(),
        "{} missing: run `make fixtures`",
        path.display()
    );
    path
}

fn load(path: &std::path::Path) -> OnnxModel {
    OnnxModel::load(path, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn ort_logits(path: &std::path::Path, x: &Tensor) -> Tensor {
    OrtScorer::new(path, InputAdapter::identity(), 1)
        .unwrap()
        .logits(x)
        .unwrap()
}

fn inputs(name: &str) -> (Tensor, Tensor) {
    let npz = shipped(name).with_extension("npz");
    (npz_f32(&npz, "x"), npz_f32(&npz, "grad_weights"))
}

/// tch vs onnxruntime on the shipped file: (max |diff|, tolerance of the form, argmax disagreements).
fn parity(name: &str) -> (f64, f64, i64) {
    let path = shipped(name);
    let model = load(&path);
    let tch = tch_model(&model);
    let (x, _) = inputs(name);
    let ours = tch::no_grad(|| tch.forward(&x).unwrap());
    let theirs = ort_logits(&path, &x);
    let disagree = ours
        .argmax(1, false)
        .ne_tensor(&theirs.argmax(1, false))
        .sum(Kind::Int64)
        .int64_value(&[]);
    let tolerance = parity_tolerance(&GraphForm::of(&model), &ours);
    (max_abs_diff(&ours, &theirs), tolerance, disagree)
}

#[test]
fn shipped_models_match_onnxruntime_on_the_same_file() {
    let mut failures = Vec::new();
    let names = OPTIMIZED
        .iter()
        .chain(HALF)
        .chain(QUANTIZED)
        .map(|(name, _)| name);
    for name in names {
        let (diff, tolerance, disagree) = parity(name);
        println!("{name}: |tch - onnxruntime| = {diff:.2e} (tolerance {tolerance:.1e}), {disagree} argmax disagreements of 8");
        if diff > tolerance || disagree > 0 {
            failures.push(format!(
                "{name}: {diff:.3e} > {tolerance:.1e} or {disagree} disagreements"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fused ops onnxruntime wrote are what the fixtures are for: check they are there (and stay there).
#[test]
fn the_optimizers_wrote_their_fused_contrib_ops() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in OPTIMIZED {
        let form = GraphForm::of(&load(&shipped(name)));
        assert_eq!(form.quantization, None);
        seen.extend(form.contrib_ops.into_iter().map(|(op, _)| op));
    }
    for op in [
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "BiasGelu",
        "FastGelu",
        "QuickGelu",
        "SkipLayerNormalization",
        "Attention",
        "MultiHeadAttention",
    ] {
        assert!(
            seen.contains(&format!("com.microsoft::{op}")),
            "{op} not among {seen:?}"
        );
    }
    // Below opset 17, LayerNormalization is onnxruntime's contrib op (registered in the default domain).
    let opset14 = load(&shipped("vit_opset14_transformers"));
    assert_eq!(opset14.opset(), 14);
    assert!(opset14
        .nodes()
        .iter()
        .any(|n| n.qualified_op() == "LayerNormalization"));
}

/// d/dx of Σ logits·w, by tch's autograd through the fused ops, against two references: PyTorch's autograd on
/// the module the graph was exported from (the source fixture's `grad`, exact up to float32 rounding), and
/// central differences of onnxruntime's logits on the shipped file along random directions (float32 graphs).
/// The step is 1e-2 along a unit direction (about 1e-4 per pixel): smaller steps drown the difference quotient
/// in onnxruntime's float32 rounding, which on these models is of the order of 1e-3 relative at h = 1e-3.
#[test]
fn input_gradients_of_optimized_graphs_agree_with_autograd_and_finite_differences() {
    tch::manual_seed(5);
    let h = 1e-2;
    for (name, source) in OPTIMIZED {
        let path = shipped(name);
        let tch = tch_model(&load(&path));
        let (x, w) = inputs(name);
        let (x, w) = (x.narrow(0, 0, 4), w.narrow(0, 0, 4));
        let grad = input_gradient(&tch, &x, &w);
        let source = generated_dir().join(format!("{source}.npz"));
        let reference = npz_f32(&source, "grad").narrow(0, 0, 4);
        let autograd_error =
            (&grad - &reference).norm().double_value(&[]) / reference.norm().double_value(&[]);
        let mut ort = OrtScorer::new(&path, InputAdapter::identity(), 1).unwrap();
        let mut f = |x: &Tensor| -> f64 {
            (ort.logits(x).unwrap() * &w)
                .sum(Kind::Double)
                .double_value(&[])
        };
        let mut worst: f64 = 0.0;
        let unit = |t: &Tensor| t / t.norm().double_value(&[]);
        for _ in 0..3 {
            // Half along the gradient, half random: a derivative large enough to stand above float32 noise.
            let v =
                unit(&(unit(&grad) + unit(&Tensor::randn(x.size(), (Kind::Float, Device::Cpu)))));
            let analytic = (&grad * &v).sum(Kind::Double).double_value(&[]);
            let numeric = (f(&(&x + &v * h)) - f(&(&x - &v * h))) / (2.0 * h);
            let error = (analytic - numeric).abs() / analytic.abs().max(1e-2);
            worst = worst.max(error);
        }
        println!(
            "{name}: relative L2 error vs PyTorch autograd {autograd_error:.2e}; directional derivative vs \
             finite differences, worst relative error {worst:.2e}"
        );
        assert!(
            autograd_error < 1e-4,
            "{name}: vs autograd {autograd_error}"
        );
        assert!(worst < 2e-2, "{name}: vs finite differences {worst}");
    }
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.flatten(0, -1).to_kind(Kind::Double),
        b.flatten(0, -1).to_kind(Kind::Double),
    );
    (&a * &b).sum(Kind::Double).double_value(&[])
        / (a.norm().double_value(&[]) * b.norm().double_value(&[])).max(1e-30)
}

fn input_gradient(model: &TchModel, x: &Tensor, w: &Tensor) -> Tensor {
    let xg = x.copy().set_requires_grad(true);
    let objective = (model.forward(&xg).unwrap() * w).sum(Kind::Double);
    Tensor::run_backward(&[objective], &[&xg], false, false).remove(0)
}

/// Gradients of a half-precision model (computed in float32 from its rounded weights) are those of the float32
/// model it was converted from, up to the weights' rounding — float16 keeps 11 significant bits, bfloat16 8 —
/// which also moves a few pre-activations across ReLU kinks (measured: relative L2 distance 1e-3 to 3e-2 for
/// float16, about 0.1 for bfloat16 on cnn_bn).
#[test]
fn gradients_of_half_precision_models_follow_their_float32_originals() {
    for (half, original) in HALF {
        let h = tch_model(&load(&shipped(half)));
        let f = tch_model(&load(&generated_dir().join(format!("{original}.onnx"))));
        let (x, w) = inputs(half);
        let (gh, gf) = (input_gradient(&h, &x, &w), input_gradient(&f, &x, &w));
        let distance = (&gh - &gf).norm().double_value(&[]) / gf.norm().double_value(&[]);
        let c = cosine(&gh, &gf);
        println!(
            "{half}: cosine to the {original} gradient {c:.4}, relative L2 distance {distance:.2e}"
        );
        assert!(c > 0.99, "{half}: cosine {c}");
    }
}

/// Straight-through (BPDA) gradients of a quantized model point where the float model's gradients point: the
/// quantizers are treated as the identity they approximate.
#[test]
fn straight_through_gradients_of_quantized_models_follow_their_float_originals() {
    for (quantized, original) in QUANTIZED {
        let q = tch_model(&load(&shipped(quantized)));
        let float_path = generated_dir().join(format!("{original}.onnx"));
        let f = tch_model(&load(&float_path));
        let (x, w) = inputs(quantized);
        let (gq, gf) = (input_gradient(&q, &x, &w), input_gradient(&f, &x, &w));
        let nonzero = gq
            .abs()
            .gt(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        let c = cosine(&gq, &gf);
        println!("{quantized}: cosine(straight-through gradient, {original} gradient) = {c:.3}, {:.0}% non-zero", nonzero * 100.0);
        assert!(c > 0.8, "{quantized}: cosine {c}");
        assert!(
            nonzero > 0.5,
            "{quantized}: only {nonzero} of the gradient is non-zero"
        );
    }
}

/// Op counts by domain-qualified type.
fn op_counts(model: &OnnxModel) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in model.nodes() {
        *counts.entry(n.qualified_op()).or_default() += 1;
    }
    counts
}

/// Fine-tuning keeps the shipped form: the same nodes (fused, QDQ, QOperator), every initializer in its original
/// element type, quantization scales untouched, and onnxruntime on the written file agrees with the trained model.
#[test]
fn fine_tuned_models_are_written_back_in_their_shipped_form() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "cnn_bn_ort_extended",
        "vit_transformers",
        "cnn_bn_fp16",
        "cnn_bn_bf16",
        "cnn_bn_qdq",
        "cnn_bn_qoperator",
        "resnet18_qdq_per_channel",
    ] {
        let path = shipped(name);
        let model = load(&path);
        let form = GraphForm::of(&model);
        assert!(
            form.fine_tuning().is_ok(),
            "{name}: {:?}",
            form.fine_tuning()
        );
        let mut tch = tch_model(&model);
        let (x, _) = inputs(name);
        // A learnable task: fixed labels for the fixture's inputs.
        let y =
            Tensor::arange(x.size()[0], (Kind::Int64, Device::Cpu)).remainder(tch.num_classes());
        let (before, after) = sgd(&mut tch, &x, &y, 8, 0.02);
        println!("{name}: loss {before:.4} -> {after:.4}");
        assert!(after < before, "{name}: loss {before} -> {after}");
        let out = dir.path().join(format!("{name}.pgd-at.onnx"));
        write_back(&model, &tch, &out, &[("robustd.method", "test")]).unwrap();
        let written = load(&out);
        assert_eq!(
            op_counts(&written),
            op_counts(&model),
            "{name}: nodes changed"
        );
        let mut changed = 0;
        for init in model.initializers() {
            let new = written.initializer(&init.name).unwrap();
            assert_eq!(
                new.data.dtype, init.data.dtype,
                "{name}: `{}` changed type",
                init.name
            );
            let is_scale = init.name.ends_with("_scale") || init.name.ends_with("_zero_point");
            if is_scale && form.quantization.is_some() {
                assert_eq!(
                    new.data.bytes, init.data.bytes,
                    "{name}: `{}` changed",
                    init.name
                );
            }
            changed += usize::from(new.data.bytes != init.data.bytes);
        }
        assert!(changed > 0, "{name}: no initializer changed");
        let ours = tch::no_grad(|| tch.forward(&x).unwrap());
        let theirs = ort_logits(&out, &x);
        let (diff, tolerance) = (max_abs_diff(&ours, &theirs), parity_tolerance(&form, &ours));
        println!("{name}: written back, {changed} initializers changed, |tch - onnxruntime| = {diff:.2e}");
        assert!(diff <= tolerance, "{name}: {diff} > {tolerance}");
    }
}

#[test]
fn forms_say_how_each_model_is_attacked_and_fine_tuned() {
    let form = |name: &str| GraphForm::of(&load(&shipped(name)));
    assert_eq!(form("cnn_bn_fp16").precision.name(), "float16");
    assert_eq!(form("cnn_bn_bf16").precision.name(), "bfloat16");
    assert_eq!(form("cnn_bn_qdq").quantization, Some(Quantization::Qdq));
    assert_eq!(
        form("cnn_bn_qoperator").quantization,
        Some(Quantization::QOperator)
    );
    let dynamic = form("cnn_bn_dynamic");
    assert_eq!(dynamic.quantization, Some(Quantization::Dynamic));
    let refusal = dynamic.fine_tuning().unwrap_err();
    assert!(refusal.contains("quantize_dynamic"), "{refusal}");
    assert!(form("cnn_bn_qdq")
        .fine_tuning()
        .unwrap()
        .contains("quantization-aware"));
    assert!(form("cnn_bn_fp16")
        .fine_tuning()
        .unwrap()
        .contains("written back as float16"));
    // Dynamic quantization leaves nothing to train quantization-aware: its int8 weights stay frozen.
    let dynamic_tch = tch_model(&load(&shipped("cnn_bn_dynamic")));
    assert!(!dynamic_tch.graph().has_quantized_weights());
    assert!(tch_model(&load(&shipped("cnn_bn_qdq")))
        .graph()
        .has_quantized_weights());
}

/// onnxruntime's `all` level writes NCHWc layout ops: robustd lists them all and leaves the model to the
/// score-based evaluation (tests/pipeline_shipped.rs runs it).
#[test]
fn nchwc_layout_ops_are_listed_as_unsupported() {
    let path = shipped("fmnist_cnn_small_ort_all");
    match OnnxModel::load(&path, &Limits::default()) {
        Err(OnnxError::UnsupportedOps { ops, .. }) => {
            let names: Vec<&str> = ops.iter().map(|(op, _)| op.as_str()).collect();
            assert!(names.contains(&"com.microsoft.nchwc::Conv"), "{names:?}");
            assert!(
                names.contains(&"com.microsoft.nchwc::ReorderOutput"),
                "{names:?}"
            );
        }
        other => panic!("expected UnsupportedOps, got {:?}", other.map(|_| ())),
    }
    let (model, unsupported) = OnnxModel::load_lenient(&path, &Limits::default()).unwrap();
    assert!(unsupported.is_some());
    assert_eq!(GraphForm::of(&model).quantization, None);
}

/// The interpreter checks inputs against the graph's declarations, as onnxruntime does.
#[test]
fn inputs_of_the_wrong_type_or_rank_are_refused_naming_the_declaration() {
    let ints = load(&generated_dir().join("ops/div_int_truncates/model.onnx"));
    let graph = Interpreter::new(&ints, Device::Cpu, TchOptions::default()).unwrap();
    let floats = [
        Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        Tensor::ones([3], (Kind::Float, Device::Cpu)),
    ];
    let err = graph.run(&floats).unwrap_err().to_string();
    assert!(
        err.contains("declared int64") && err.contains("given float"),
        "{err}"
    );
    let mlp = load(&generated_dir().join("mlp_legacy.onnx"));
    let graph = Interpreter::new(&mlp, Device::Cpu, TchOptions::default()).unwrap();
    let flat = Tensor::ones([2, 784], (Kind::Float, Device::Cpu));
    let err = graph.run(&[flat]).unwrap_err().to_string();
    assert!(
        err.contains("input `input`") && err.contains("[2, 784]"),
        "{err}"
    );
    // float16 inputs are taken as float16 or float32 (computed in float32).
    let half = load(&shipped("resnet18_fp16_io"));
    let graph = Interpreter::new(&half, Device::Cpu, TchOptions::default()).unwrap();
    let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let a = graph.run(&[x.to_kind(Kind::Half)]).unwrap().remove(0);
    let b = graph
        .run(&[x.to_kind(Kind::Half).to_kind(Kind::Float)])
        .unwrap()
        .remove(0);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}
