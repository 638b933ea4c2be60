//! `robustd eval` as a user runs it: a valid report with plots and per-sample results, the exit-code gate on
//! `--min-robust-acc`, identical numbers for the same seed, standalone mode, bad input failing with one line, and
//! the AutoAttack preset on a binary classifier (notes, intervals, per-class numbers, the adversarial examples).

mod cli_support;
mod common;

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
    if let Some(curve) = &mut result.curve {
        curve.seconds = 0.0;
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

/// Fashion-MNIST test images of classes 0 (T-shirt) and 1 (trouser) as a two-class npz dataset (the same images as
/// training and test split), `n` of them.
fn binary_dataset(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    use ndarray::{Array1, Array4};
    let (x, y) = common::fashion_mnist("t10k", 400);
    let labels = Vec::<i64>::try_from(&y).unwrap();
    let keep: Vec<i64> = (0..400i64)
        .filter(|&i| labels[i as usize] < 2)
        .take(n)
        .collect();
    assert_eq!(keep.len(), n, "not enough images of classes 0 and 1");
    let index = tch::Tensor::from_slice(&keep);
    let images = Vec::<f32>::try_from(&x.index_select(0, &index).flatten(0, -1)).unwrap();
    let x = Array4::from_shape_vec((n, 1, 28, 28), images).unwrap();
    let y: Array1<i64> = keep.iter().map(|&i| labels[i as usize]).collect();
    let path = dir.join("binary.npz");
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&path).unwrap());
    for (xk, yk) in [("x", "y"), ("x_test", "y_test")] {
        npz.add_array(xk, &x).unwrap();
        npz.add_array(yk, &y).unwrap();
    }
    npz.finish().unwrap();
    path
}

/// Digits after the decimal point of every number in `key: number` lines of a YAML text, largest.
fn most_decimals(yaml: &str, key: &str) -> usize {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .filter_map(|v| v.split_once('.').map(|(_, d)| d.len()))
        .max()
        .unwrap_or(0)
}

#[test]
fn eval_with_the_autoattack_preset_on_a_binary_model_notes_adaptations_and_keeps_the_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = binary_dataset(root, 24);
    let config = root.join("binary.yaml");
    std::fs::write(
        &config,
        format!(
            "runtime: {{threads: 1, device: cpu}}\n\
             dataset: {{name: npz, path: {}, eval_samples: 24}}\n\
             eval: {{preset: autoattack-standard, eps_curve: [0.0, 0.05], examples: {{max: 6, grid: 3}}}}\n",
            data.display()
        ),
    )
    .unwrap();
    let model = fixture("mlp_binary_legacy.onnx");
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            s(&model),
            "--config",
            s(&config),
            "--eps",
            "0.05",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        robustd(root, &args)
    };
    let first = run("a", &[]);
    assert_eq!(first.code, 0, "{}", first.text());
    let report_path = root.join("a/report.yaml");
    validate_report_file(&report_path).unwrap();
    let text = std::fs::read_to_string(&report_path).unwrap();
    let report: Report = serde_norway::from_str(&text).unwrap();
    let e = evaluation(&report);
    assert_eq!(e.preset, "autoattack-standard");
    let names: Vec<&str> = e.attacks.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    for name in ["apgd-t", "fab-t"] {
        let a = e.attacks.get(&name.to_owned()).unwrap();
        assert_eq!(a.targets, Some(9));
        assert!(
            a.note
                .as_deref()
                .is_some_and(|n| n.contains("1 target classes")),
            "{name}: {:?}",
            a.note
        );
    }
    assert_eq!(
        e.attacks.get(&"square".to_owned()).unwrap().queries,
        Some(5000)
    );
    // Intervals around every accuracy, per class numbers, rounded where people read them.
    assert!(e.clean_acc_ci95.lower <= e.clean_acc && e.clean_acc <= e.clean_acc_ci95.upper);
    assert_eq!(
        e.per_class.0.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        e.per_class.0.iter().map(|(_, a)| a.samples).sum::<usize>(),
        24
    );
    // The evaluation block: from `evaluation:` to the next top-level key.
    let block = text
        .split("\nevaluation:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n");
    for key in [
        "clean_acc",
        "robust_acc",
        "worst_case_acc",
        "clean",
        "robust",
    ] {
        assert!(
            most_decimals(&block, key) <= 4,
            "{key} has more than 4 decimals"
        );
    }
    assert!(most_decimals(&block, "seconds") <= 3, "{block}");
    assert!(most_decimals(&text, "robust_acc_worst") <= 4);
    let before = report.summary.before.as_ref().unwrap();
    assert_eq!(before.preset.as_deref(), Some("autoattack-standard"));
    let ci = before.robust_acc_worst_ci95.expect("summary interval");
    assert!(ci.lower <= before.robust_acc_worst && before.robust_acc_worst <= ci.upper);

    // The examples: as many as broken (at most 6), readable by numpy, and the grid among the plots.
    let files = e
        .adversarial_examples
        .clone()
        .expect("adversarial examples");
    assert!(files.broken > 0, "nothing broken at eps 0.05: a weak test");
    assert_eq!(files.saved, files.broken.min(6));
    let grid = files.grid.clone().expect("grid");
    assert!(
        report.artifacts.plots.contains(&grid),
        "{:?}",
        report.artifacts.plots
    );
    let check = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"))
        .arg("-c")
        .arg(format!(
            "import numpy as np; f = np.load({:?}); n = len(f['index']); \
             assert n == {}, n; assert f['x_adv'].shape == (n, 1, 28, 28); \
             assert (f['pred'] != f['label']).all(); assert str(f['attack'][0]) in \
             ('apgd-ce', 'apgd-t', 'fab-t', 'square'), f['attack']; \
             d = np.abs(f['x_adv'] - f['x']).reshape(n, -1).max(1); assert (d <= 0.05 + 1e-6).all(), d; \
             assert np.allclose(d, f['norm'], atol=1e-6); assert str(f['threat_norm'][0]) == 'linf'",
            root.join("a").join(&files.file).display(),
            files.saved
        ))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The lower-bound gate is stricter than the point gate at the same threshold.
    let worst = before.robust_acc_worst;
    if worst > 0.0 {
        let min = format!("{worst}");
        let point = run("b", &["--min-robust-acc", &min]);
        assert_eq!(point.code, 0, "{}", point.text());
        let bound = run("c", &["--min-robust-acc", &min, "--gate", "lower-bound"]);
        assert_eq!(bound.code, 3, "{}", bound.text());
        assert!(
            bound.stderr.contains("95 % lower bound"),
            "{}",
            bound.text()
        );
    }
}
