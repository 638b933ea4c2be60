//! `robustd eval` as a user runs it: a valid report with plots and per-sample results, the exit-code gate on
//! `--min-robust-acc`, identical numbers for the same seed, standalone mode, and bad input failing with one line.

mod cli_support;

use cli_support::*;
use robustd::eval::{EvalResult, PerSample};
use robustd::report::{validate_report_file, Report};

fn evaluation(report: &Report) -> EvalResult {
    let mut result = report
        .evaluation
        .as_ref()
        .and_then(|e| e.before.clone())
        .expect("evaluation.before");
    // Wall-clock times are the only fields allowed to differ between two runs.
    result.seconds = 0.0;
    for (_, attack) in result.attacks.0.iter_mut() {
        attack.seconds = 0.0;
    }
    result
}

#[test]
fn eval_writes_a_valid_report_gates_on_min_robust_acc_and_repeats_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let model = trained_model();
    let eval = |out: &str, min: &str| {
        robustd(
            root,
            &[
                "eval",
                s(&model),
                "--config",
                s(&config),
                "--eps",
                "0.05",
                "--attacks",
                "pgd,apgd-ce,square",
                "--n",
                "40",
                "--min-robust-acc",
                min,
                "--out",
                out,
            ],
        )
    };

    // Below the threshold: exit code 3, and still a complete, valid report.
    let first = eval("a", "1.0");
    assert_eq!(first.code, 3, "{}", first.text());
    assert!(
        first.stderr.contains("below --min-robust-acc 1"),
        "{}",
        first.text()
    );
    assert!(
        first.stdout.starts_with("summary:") && first.stdout.contains("verdict: evaluation-only"),
        "{}",
        first.text()
    );
    let a = root.join("a");
    let report_a = validate_report_file(&a.join("report.yaml")).unwrap();
    let before = report_a.summary.before.clone().unwrap();
    assert!(before.clean_acc > 0.5, "trained model: {before:?}");
    assert!(
        before.robust_acc_worst > 0.0 && before.robust_acc_worst < before.clean_acc,
        "{before:?}"
    );
    let result_a = evaluation(&report_a);
    assert_eq!(result_a.samples, 40);
    let attacks: Vec<&str> = result_a.attacks.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(attacks, ["pgd", "apgd-ce", "square"]);
    assert_eq!(result_a.ort_recheck.disagreements, 0);
    assert_eq!(
        report_a.artifacts.per_sample.as_deref(),
        Some("per_sample_before.npz")
    );
    assert!(a.join("plots/robust_vs_eps.png").is_file());
    assert!(
        a.join("fmnist_cnn_small.onnx").is_file() && a.join("fmnist_cnn_small.onnx.data").is_file()
    );

    // At the threshold: exit code 0; the same seed gives the same numbers, sample by sample.
    let threshold = format!("{}", before.robust_acc_worst);
    let second = eval("b", &threshold);
    assert_eq!(second.code, 0, "{}", second.text());
    let b = root.join("b");
    let report_b = validate_report_file(&b.join("report.yaml")).unwrap();
    assert_eq!(evaluation(&report_a), evaluation(&report_b));
    assert_eq!(
        PerSample::load_npz(&a.join("per_sample_before.npz")).unwrap(),
        PerSample::load_npz(&b.join("per_sample_before.npz")).unwrap()
    );
}

#[test]
fn standalone_mode_runs_every_attack_on_every_clean_correct_sample_into_the_default_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let run = robustd(
        root,
        &[
            "eval",
            s(&trained_model()),
            "--config",
            s(&config),
            "--attacks",
            "fgsm,pgd",
            "--mode",
            "standalone",
            "--n",
            "30",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    // Default output directory: models/<stem>/<key12>-eval/.
    let stem_dir = root.join("models/fmnist_cnn_small");
    let dirs = entries(&stem_dir);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(
        dirs[0].len() == 12 + "-eval".len() && dirs[0].ends_with("-eval"),
        "{dirs:?}"
    );
    let report = validate_report_file(&stem_dir.join(&dirs[0]).join("report.yaml")).unwrap();
    let result = evaluation(&report);
    assert_eq!(result.mode, robustd::eval::Mode::Standalone);
    let clean_correct = (result.clean_acc * 30.0).round() as usize;
    let mut lowest: f64 = 1.0;
    for (name, attack) in &result.attacks.0 {
        // Standalone: each attack on every clean-correct sample, its robust accuracy its own.
        assert_eq!(attack.attacked, clean_correct, "{name}");
        let own = (clean_correct - attack.broken) as f64 / 30.0;
        assert!((attack.robust_acc - own).abs() < 1e-9, "{name}: {attack:?}");
        lowest = lowest.min(own);
    }
    assert!(result.worst_case_acc <= lowest + 1e-9);
}

#[test]
fn bad_input_exits_1_with_a_one_line_cause_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let cases = [
        // A file that does not exist.
        root.join("missing.onnx"),
        // A CIFAR-shaped model (3x32x32) against Fashion-MNIST.
        fixture("resnet18_legacy.onnx"),
        // Not an ONNX file.
        {
            let p = root.join("garbage.onnx");
            std::fs::write(&p, b"this is not a protobuf").unwrap();
            p
        },
    ];
    for model in &cases {
        for command in ["eval", "finetune"] {
            let run = robustd(
                root,
                &[command, s(model), "--config", s(&config), "--out", "out"],
            );
            assert_eq!(run.code, 1, "{command} {}: {}", model.display(), run.text());
            let line = run.error_line();
            assert!(
                line.contains(s(model)),
                "the cause names the file: {}",
                run.text()
            );
            assert!(
                !run.stderr.contains("panicked"),
                "{command}: {}",
                run.text()
            );
        }
    }
    // Nothing was written for the failed runs.
    assert!(entries(&root.join("out")).is_empty());
    assert!(entries(&root.join("state/cli")).is_empty());
}
