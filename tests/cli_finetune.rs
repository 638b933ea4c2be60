//! `robustd finetune` as a user runs it: BAT end to end into a written-back ONNX that onnxruntime loads with the
//! trained model's logits, a valid report, and a run stopped by SIGTERM that the same command resumes and completes.

mod cli_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use robustd::config::{Limits, Method};
use robustd::model::{Classifier, InputAdapter, Scorer};
use robustd::onnx::{OnnxModel, OrtScorer, TchModel, TchOptions};
use robustd::report::validate_report_file;

/// The first `n` Fashion-MNIST test images, as the models take them.
fn test_images(n: usize) -> tch::Tensor {
    let spec = robustd::config::DatasetSpec::first("fashion-mnist", 1, n);
    robustd::data::Dataset::load(&spec, 0).unwrap().test.x
}

fn ort_logits(model: &Path, x: &tch::Tensor) -> tch::Tensor {
    OrtScorer::new(model, InputAdapter::identity(), 1)
        .unwrap()
        .logits(x)
        .unwrap()
}

fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn finetune_bat_writes_an_onnx_model_onnxruntime_runs_with_parity_and_a_valid_report() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let model = trained_model();
    let original_bytes = std::fs::read(&model).unwrap();
    let run = robustd(
        root,
        &[
            "finetune",
            s(&model),
            "--config",
            s(&config),
            "--method",
            "bat",
            "--epochs",
            "1",
            "--train-samples",
            "400",
            "--attacks",
            "pgd",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    assert!(run.stdout.contains("method: bat"), "{}", run.text());

    // Default directory: models/<stem>/<key12>-finetune/; the checkpoint is gone once the report is written.
    let dirs = entries(&root.join("models/fmnist_cnn_small"));
    assert!(
        dirs.len() == 1 && dirs[0].ends_with("-finetune"),
        "{dirs:?}"
    );
    let out = root.join("models/fmnist_cnn_small").join(&dirs[0]);
    assert!(entries(&root.join("state/cli")).is_empty());

    let report = validate_report_file(&out.join("report.yaml")).unwrap();
    let training = report.training.as_ref().unwrap();
    assert_eq!(training.method, Method::Bat);
    assert_eq!(training.epochs, 1);
    assert_eq!(training.resumed_from, None);
    let atypicality = training.atypicality.as_ref().unwrap();
    assert!(atypicality.source.contains("holdout"), "{atypicality:?}");
    assert_eq!(
        report.summary.after.as_ref().unwrap().method.as_deref(),
        Some("bat")
    );
    let after = report.evaluation.as_ref().unwrap().after.as_ref().unwrap();
    // The evaluation after fine-tuning compared the trained tch model with onnxruntime on the written file.
    assert!(
        after.ort_recheck.clean_max_logit_diff <= 1e-4,
        "{:?}",
        after.ort_recheck
    );
    assert_eq!(after.ort_recheck.clean_disagreements, 0);
    assert!(out.join("train_log.csv").is_file() && out.join("plots/training.png").is_file());

    // The written-back file: onnxruntime and robustd's own interpreter agree on it, and its weights changed.
    let tuned = out.join("fmnist_cnn_small.bat.onnx");
    assert_eq!(
        report.artifacts.fine_tuned_model.as_ref().unwrap().path,
        "fmnist_cnn_small.bat.onnx"
    );
    let x = test_images(64);
    let ort = ort_logits(&tuned, &x);
    let onnx = OnnxModel::load(&tuned, &Limits::default()).unwrap();
    let tch_model = TchModel::new(
        &onnx,
        InputAdapter::identity(),
        tch::Device::Cpu,
        TchOptions::default(),
    )
    .unwrap();
    let ours = tch::no_grad(|| tch_model.forward(&x).unwrap());
    assert!(max_diff(&ours, &ort) <= 1e-4, "{}", max_diff(&ours, &ort));
    assert!(
        max_diff(&ort, &ort_logits(&model, &x)) > 1e-3,
        "fine-tuning changed nothing"
    );
    assert_eq!(
        std::fs::read(&model).unwrap(),
        original_bytes,
        "the input model changed"
    );
}

#[test]
fn a_finetune_stopped_by_sigterm_resumes_when_run_again_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let model = trained_model();
    let args = [
        "finetune",
        s(&model),
        "--config",
        s(&config),
        "--method",
        "pgd-at",
        "--epochs",
        "3",
        "--train-samples",
        "600",
        "--attacks",
        "pgd",
        "--out",
        "out",
    ];
    let stderr_path = root.join("first.log");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(root)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // The training log appears after the first epoch: stop the run in the middle of training.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !root.join("out/train_log.csv").is_file() {
        assert!(Instant::now() < deadline, "no epoch finished in time");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{log}");
    assert!(
        log.contains("run the same command again to resume"),
        "{log}"
    );
    assert!(!root.join("out/report.yaml").exists());
    let kept = entries(&root.join("state/cli"));
    assert!(
        kept.len() == 1 && kept[0].starts_with("finetune-"),
        "{kept:?}"
    );

    let second = robustd(root, &args);
    assert_eq!(second.code, 0, "{}", second.text());
    assert!(
        second.stderr.contains("resuming training from checkpoint"),
        "{}",
        second.text()
    );
    let report = validate_report_file(&root.join("out/report.yaml")).unwrap();
    let training = report.training.as_ref().unwrap();
    assert_eq!(training.epochs, 3);
    let [epoch, _] = training.resumed_from.expect("the second run resumed");
    assert!(
        epoch >= 1,
        "resumed after the first epoch: {:?}",
        training.resumed_from
    );
    assert_eq!(training.curves.len(), 3);
    assert!(entries(&root.join("state/cli")).is_empty());
}
