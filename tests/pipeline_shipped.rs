//! Shipped forms through the real `robustd` binary on real Fashion-MNIST: a graph with ops robustd cannot
//! interpret is evaluated score-based (clean accuracy and Square on onnxruntime) and the report says so instead
//! of failing; a QDQ-quantized CNN is attacked through straight-through gradients and fine-tuned
//! quantization-aware into the same QDQ structure; a float16 CNN is fine-tuned with float32 master weights and
//! written back as float16; a dynamically quantized CNN is evaluated and its fine-tuning refused with the reason.

mod cli_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cli_support::*;
use robustd::config::Limits;
use robustd::onnx::OnnxModel;
use robustd::report::{validate_report_file, Report, Verdict};

fn shipped(name: &str) -> PathBuf {
    fixture(&format!("shipped/{name}.onnx"))
}

/// Runs `robustd ARGS --config tiny --out out` in a fresh directory; returns the validated report and the
/// output directory (kept alive by the returned temp dir).
fn run(command: &str, model: &Path, extra: &[&str]) -> (Report, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), "");
    let mut args = vec![command, s(model), "--config", s(&config), "--out", "out"];
    args.extend_from_slice(extra);
    let result = robustd(tmp.path(), &args);
    assert_eq!(result.code, 0, "{}", result.text());
    let out = tmp.path().join("out");
    let report = validate_report_file(&out.join("report.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{}", result.text()));
    assert!(result.stdout.contains("verdict:"), "{}", result.text());
    (report, out, tmp)
}

/// `robustd finetune MODEL --method pgd-at --epochs 1 --train-samples N` (see [`run`]).
fn finetune(model: &Path, train_samples: &str) -> (Report, PathBuf, tempfile::TempDir) {
    run(
        "finetune",
        model,
        &[
            "--method",
            "pgd-at",
            "--epochs",
            "1",
            "--train-samples",
            train_samples,
        ],
    )
}

fn op_counts(path: &Path) -> BTreeMap<String, usize> {
    let model = OnnxModel::load(path, &Limits::default()).unwrap();
    let mut counts = BTreeMap::new();
    for n in model.nodes() {
        *counts.entry(n.qualified_op()).or_default() += 1;
    }
    counts
}

#[test]
fn a_graph_robustd_cannot_interpret_is_evaluated_score_based_and_labelled() {
    // finetune asked for, but there are no gradients: evaluated, not failed, and said plainly.
    let (report, _, _tmp) = finetune(&shipped("fmnist_cnn_small_ort_all"), "100");
    let scope = report.summary.scope.as_deref().unwrap_or("");
    assert!(
        scope.starts_with("score-based evaluation only:")
            && scope.contains("com.microsoft.nchwc::Conv (2 nodes)")
            && scope.ends_with("not supported"),
        "{scope}"
    );
    assert_eq!(report.summary.verdict, Verdict::EvaluationOnly);
    assert!(report.training.is_none() && report.artifacts.fine_tuned_model.is_none());
    assert!(
        report
            .summary
            .warnings
            .iter()
            .any(|w| w.contains("skipped")),
        "{:?}",
        report.summary.warnings
    );
    let form = report.model.form.as_ref().unwrap();
    assert!(form.gradients.starts_with("none"), "{form:?}");
    let before = report.evaluation.as_ref().unwrap().before.as_ref().unwrap();
    let attacks: Vec<&str> = before.attacks.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(attacks, ["square"]);
    assert!(before.clean_acc > 0.0 && before.worst_case_acc <= before.clean_acc);
    assert_eq!(report.model.classes, Some(10));
}

#[test]
fn a_qdq_model_is_attacked_straight_through_and_fine_tuned_into_the_same_qdq_graph() {
    let model = shipped("fmnist_cnn_small_qdq");
    let (report, out, _tmp) = finetune(&model, "400");
    let form = report.model.form.as_ref().unwrap();
    assert_eq!(form.quantization.as_deref(), Some("qdq"));
    assert!(form.gradients.contains("straight-through"), "{form:?}");
    assert!(form.fine_tuning.contains("quantization-aware"), "{form:?}");
    assert!(report
        .summary
        .scope
        .as_deref()
        .unwrap_or("")
        .contains("straight-through"));
    let before = report.evaluation.as_ref().unwrap().before.as_ref().unwrap();
    // The white-box attack works through the quantizers: PGD breaks a standard-trained model.
    let pgd = before
        .attacks
        .0
        .iter()
        .find(|(n, _)| n == "pgd")
        .unwrap()
        .1
        .robust_acc;
    assert!(
        pgd < before.clean_acc * 0.7,
        "pgd {pgd} vs clean {}",
        before.clean_acc
    );
    let tuned = out.join(&report.artifacts.fine_tuned_model.as_ref().unwrap().path);
    assert_eq!(
        op_counts(&tuned),
        op_counts(&model),
        "the QDQ structure changed"
    );
    assert!(report.summary.after.is_some() && report.training.is_some());
}

#[test]
fn a_float16_model_is_fine_tuned_in_float32_and_written_back_as_float16() {
    let model = shipped("fmnist_cnn_small_fp16");
    let (report, out, _tmp) = finetune(&model, "400");
    let form = report.model.form.as_ref().unwrap();
    assert_eq!(form.precision, "float16");
    assert!(
        form.fine_tuning.contains("written back as float16"),
        "{form:?}"
    );
    assert!(report
        .summary
        .scope
        .as_deref()
        .unwrap_or("")
        .contains("float16"));
    let tuned = out.join(&report.artifacts.fine_tuned_model.as_ref().unwrap().path);
    let written = OnnxModel::load(&tuned, &Limits::default()).unwrap();
    let original = OnnxModel::load(&model, &Limits::default()).unwrap();
    for init in original.initializers() {
        assert_eq!(
            written.initializer(&init.name).unwrap().data.dtype,
            init.data.dtype
        );
    }
    assert_eq!(op_counts(&tuned), op_counts(&model));
}

#[test]
fn a_dynamically_quantized_model_is_evaluated_and_its_fine_tuning_refused_with_the_reason() {
    let (report, _, _tmp) = finetune(&shipped("cnn_bn_dynamic"), "100");
    assert_eq!(report.summary.verdict, Verdict::EvaluationOnly);
    assert!(report.training.is_none());
    let refusal = report
        .summary
        .warnings
        .iter()
        .find(|w| w.contains("refused"))
        .unwrap_or_else(|| panic!("{:?}", report.summary.warnings));
    assert!(refusal.contains("quantize_dynamic"), "{refusal}");
    assert_eq!(
        report.model.form.as_ref().unwrap().quantization.as_deref(),
        Some("dynamic")
    );
}

#[test]
fn a_transformer_optimized_by_onnxruntime_is_evaluated_white_box_through_its_fused_ops() {
    let (report, _, _tmp) = run("eval", &shipped("vit_transformers"), &["--attacks", "pgd"]);
    let form = report.model.form.as_ref().unwrap();
    for op in [
        "Attention",
        "SkipLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "QuickGelu",
    ] {
        assert!(
            form.contrib_ops
                .iter()
                .any(|c| c.starts_with(&format!("com.microsoft::{op} ("))),
            "{op} not in {:?}",
            form.contrib_ops
        );
    }
    assert!(
        form.unsupported_ops.is_empty() && report.summary.scope.is_none(),
        "{form:?}"
    );
    let before = report.evaluation.as_ref().unwrap().before.as_ref().unwrap();
    assert!(before.attacks.0.iter().any(|(n, _)| n == "pgd"));
    // Every adversarial example was re-checked on onnxruntime, and both engines agreed on the clean images.
    assert!(
        before.ort_recheck.clean_max_logit_diff <= 1e-4,
        "{:?}",
        before.ort_recheck
    );
}
