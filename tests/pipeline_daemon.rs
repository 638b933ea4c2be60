//! The daemon running the full pipeline on real models, as a user meets it: a PyTorch-exported ONNX file dropped
//! into the inbox comes back as a validated report plus a fine-tuned ONNX file that onnxruntime loads with the
//! trained weights; a SIGKILL during fine-tuning is survived — the restarted daemon resumes the job from its
//! checkpoint and finishes it exactly once.

mod daemon_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::*;
use robustd::job::JobState;
use robustd::model::{InputAdapter, Scorer};
use robustd::onnx::OrtScorer;
use robustd::report::Verdict;
use tch::{Kind, Tensor};

/// The whole pipeline at a size a 2-core CI machine runs in seconds: real Fashion-MNIST, BAT with the K=2
/// holdout atypicality, two cheap attacks.
fn pipeline_config(root: &Path, epochs: usize, train_samples: usize) -> String {
    format!(
        "paths: {{watch: {r}/watch, models: {r}/models, state: {r}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         dataset: {{train_samples: {train_samples}, eval_samples: 64}}\n\
         eval: {{attacks: [fgsm, pgd], pgd: {{steps: 5, restarts: 1, step_size_factor: 0.5, random_start: true}}, \
                 eps_curve: [0.0, 0.1]}}\n\
         train: {{method: bat, epochs: {epochs}, batch_size: 64, val_fraction: 0.1, \
                  pgd: {{steps: 3, restarts: 1, step_size_factor: 0.5, random_start: true}}, \
                  bat: {{atypicality: holdout}}}}\n\
         memorization: {{epochs: 1}}\n\
         daemon: {{stable_ms: 100}}\n",
        r = root.display()
    )
}

#[test]
fn a_dropped_model_comes_back_fine_tuned_with_a_valid_report() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(root, &pipeline_config(root, 1, 600));
    drop_fixture(&d.watch(), "cnn_bn_dynamo.onnx", "shipped.onnx");
    let (job, report) = d.the_one_done(1, Duration::from_secs(300));
    let dir = job.record.result_dir.clone().unwrap();

    assert_eq!(report.summary.model, "shipped.onnx");
    assert_ne!(report.summary.verdict, Verdict::EvaluationOnly);
    assert_ne!(report.summary.verdict, Verdict::Failed);
    let evaluation = report.evaluation.as_ref().unwrap();
    let (before, after) = (
        evaluation.before.as_ref().unwrap(),
        evaluation.after.as_ref().unwrap(),
    );
    assert_eq!(before.samples, 64);
    assert_eq!(after.samples, 64);
    assert_eq!(before.ort_recheck.disagreements, 0);
    assert_eq!(after.ort_recheck.disagreements, 0);
    let training = report.training.as_ref().unwrap();
    assert_eq!(training.epochs, 1);
    assert!(training.formula.contains("lambda"), "{}", training.formula);
    assert!(training.atypicality.is_some());
    assert!(report.summary.atypical_share.is_some());
    for plot in [
        "plots/robust_vs_eps.png",
        "plots/training.png",
        "plots/tradeoff.png",
    ] {
        assert!(
            report.artifacts.plots.iter().any(|p| p == plot),
            "{plot} missing"
        );
    }

    // The fine-tuned file is the original graph with new weights: onnxruntime loads it, and it computes something
    // other than the shipped model on the same images.
    let tuned = dir.join(&report.artifacts.fine_tuned_model.as_ref().unwrap().path);
    assert_eq!(tuned.file_name().unwrap(), "shipped.bat.onnx");
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
    let mut scorer_tuned = OrtScorer::new(&tuned, InputAdapter::identity(), 1).unwrap();
    let mut scorer_orig =
        OrtScorer::new(&dir.join("shipped.onnx"), InputAdapter::identity(), 1).unwrap();
    let (a, b) = (
        scorer_tuned.logits(&x).unwrap(),
        scorer_orig.logits(&x).unwrap(),
    );
    assert_eq!(a.size(), [8, 10]);
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(
        diff > 1e-3,
        "fine-tuned logits equal the original ones (diff {diff})"
    );
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn sigkill_during_fine_tuning_resumes_from_the_checkpoint_and_finishes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = pipeline_config(root, 3, 1000);
    let mut d = Daemon::start(root, &config);
    drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "victim.onnx");

    // Kill once the first fine-tuning epoch is checkpointed.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        d.assert_alive();
        d.drain_notify();
        let checkpointed = d.jobs(JobState::Running).first().is_some_and(|job| {
            d.state()
                .join("checkpoints")
                .join(&job.record.key)
                .join("finetune/checkpoint.yaml")
                .is_file()
        });
        if checkpointed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fine-tuning checkpoint; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    assert_eq!(d.jobs(JobState::Running).len(), 1);

    let mut d = Daemon::start(root, &config);
    let (_, report) = d.the_one_done(1, Duration::from_secs(300));
    assert!(d.jobs(JobState::Failed).is_empty());
    let training = report.training.as_ref().unwrap();
    assert!(
        training.resumed_from.is_some(),
        "training did not resume: {training:?}"
    );
    assert_eq!(training.epochs, 3);
    assert!(
        d.log_text().contains("reused from the job's checkpoint"),
        "{}",
        d.log_text()
    );
    // Exactly one visible result for the model.
    let results: Vec<String> = entries(&d.models().join("victim"))
        .into_iter()
        .filter(|n| !n.starts_with('.') && n != "latest")
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let (ok, _) = d.terminate();
    assert!(ok);
}
