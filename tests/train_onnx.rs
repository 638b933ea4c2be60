//! The trainer on imported ONNX models (the ONNX → tch interpreter): the fine-tuning path the `finetune` command
//! will run — the memorization module's holdout atypicality from re-initialized copies, BAT with checkpoints, a cancellation and resume that
//! ends bit-identical (BatchNorm statistics included), write-back, and onnxruntime parity of the written file.

mod fixtures;
mod train_support;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use robustd::config::{Config, Estimator, InputLayout, Limits, Method, Norm, ThreatModel};
use robustd::data::{Augmentation, Split};
use robustd::memo::{bat_atypicality, estimate, EstimatorOptions, Identity};
use robustd::model::{Classifier, InputAdapter, Scorer};
use robustd::onnx::{write_back, OnnxModel, OrtScorer, TchModel, TchOptions};
use robustd::train::{train, TrainError, TrainRun};
use train_support::{fashion_mnist, identical, quick_spec, weights, CancelAfter};

fn fixture(name: &str) -> PathBuf {
    fixtures::generated(&format!("{name}.onnx"))
}

fn tch_model(onnx: &OnnxModel, train_batchnorm: bool) -> TchModel {
    let options = TchOptions {
        train_batchnorm,
        ..TchOptions::default()
    };
    TchModel::with_layout(
        onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        tch::Device::Cpu,
        options,
    )
    .unwrap()
}

fn threat() -> ThreatModel {
    ThreatModel {
        norm: Norm::Linf,
        eps: 0.1,
    }
}

#[test]
fn bat_fine_tunes_an_onnx_model_and_the_written_back_file_matches_on_onnxruntime() {
    let path = fixture("cnn_bn_legacy");
    let original_bytes = std::fs::read(&path).unwrap();
    let onnx = OnnxModel::load(&path, &Limits::default()).unwrap();
    let data = fashion_mnist(300, 1);

    // Atypicality from the holdout estimator: fresh seeded copies of the same architecture.
    let mut config = Config::default();
    config.memorization.estimator = Estimator::Holdout;
    config.memorization.epochs = 2;
    config.memorization.lr = 0.05;
    config.train.batch_size = 50;
    let mut options = EstimatorOptions::from_config(&config, Augmentation::None);
    options.cache_root = None;
    let mut factory = |seed: u64| -> Result<Box<dyn Classifier>, TrainError> {
        let mut m = tch_model(&onnx, false);
        m.reinitialize(seed).map_err(|e| TrainError::Invalid {
            key: "model",
            message: e.to_string(),
        })?;
        Ok(Box::new(m))
    };
    let identity = Identity {
        dataset_sha256: "fashion-mnist",
        architecture: onnx.structure_hash(),
    };
    let scores = estimate(&data.train, None, identity, &mut factory, &options).unwrap();
    assert_eq!(scores.models.len(), 2);
    let atypicality = bat_atypicality(&scores, &data.train, scores.threshold(None));
    assert!(atypicality.atypical() > 0 && atypicality.atypical() < 300);

    let mut spec = quick_spec(Method::Bat, 2, 50);
    spec.val_fraction = 0.2;
    spec.optimizer.lr = 0.01;
    let mut run = TrainRun::new(&spec, &threat(), 4, Augmentation::None).unwrap();
    run.atypicality = Some(&atypicality);
    let mut model = tch_model(&onnx, false);
    let before = weights(&model);
    let result = train(&mut model, &data.train, &run).unwrap();
    assert_eq!(result.method, Method::Bat);
    assert!(!identical(&before, &weights(&model)));
    assert!(result
        .curves
        .iter()
        .all(|r| r.loss.is_finite() && r.val_robust_acc.is_some()));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn_bn_legacy.bat.onnx");
    write_back(&onnx, &model, &out, &[("robustd.method", "bat")]).unwrap();
    let probe = data.train.x.narrow(0, 0, 16);
    let ours = tch::no_grad(|| model.forward(&probe).unwrap());
    let mut ort = OrtScorer::new(&out, InputAdapter::identity(), 1).unwrap();
    let theirs = ort.logits(&probe).unwrap();
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4,
        "written-back logits differ from the trained model by {diff}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        original_bytes,
        "the input model file changed"
    );
}

/// Fashion-MNIST as 3×32×32 images (zero-padded, gray repeated over three channels) for the CIFAR-shaped fixtures.
fn as_rgb32(split: &Split) -> Split {
    Split {
        x: split.x.constant_pad_nd([2, 2, 2, 2]).repeat([1, 3, 1, 1]),
        y: split.y.shallow_clone(),
        indices: split.indices.clone(),
        source_len: split.source_len,
        source: None,
    }
}

#[test]
fn a_resumed_run_on_an_onnx_model_with_trained_batchnorm_matches_an_uninterrupted_one() {
    let onnx = OnnxModel::load(&fixture("vgg_bn_bnkept_legacy"), &Limits::default()).unwrap();
    let data = as_rgb32(&fashion_mnist(160, 1).train);
    let mut spec = quick_spec(Method::PgdAt, 2, 32);
    spec.pgd.steps = 2;
    spec.optimizer.lr = 0.01;
    spec.train_batchnorm = true;
    let dir = tempfile::tempdir().unwrap();

    let mut run = TrainRun::new(&spec, &threat(), 8, Augmentation::None).unwrap();
    run.checkpoint_dir = Some(dir.path().join("whole"));
    let mut whole = tch_model(&onnx, true);
    let start = weights(&whole);
    train(&mut whole, &data, &run).unwrap();
    let end = weights(&whole);
    let stats_moved = start
        .iter()
        .zip(&end)
        .filter(|((n, _), _)| {
            n.contains("running_mean") || n.contains("running_var") || n.contains("bn")
        })
        .any(|((_, a), (_, b))| !a.equal(b));
    assert!(stats_moved, "BatchNorm statistics should train in this run");

    // PGD-AT: 2 attack passes + 1 training pass per batch, 5 batches per epoch: pass 10 is in batch 4 of epoch 1.
    let flag = Arc::new(AtomicBool::new(false));
    let mut interrupted = CancelAfter {
        inner: tch_model(&onnx, true),
        calls: Cell::new(0),
        limits: vec![10],
        flag: flag.clone(),
    };
    let mut run = TrainRun::new(&spec, &threat(), 8, Augmentation::None).unwrap();
    run.checkpoint_dir = Some(dir.path().join("resumed"));
    run.cancel = Some(&flag);
    let err = train(&mut interrupted, &data, &run).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Cancelled {
                epoch: 1,
                batch: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        identical(&start, &weights(&interrupted)),
        "a cancelled run restores the weights it was given"
    );
    flag.store(false, Ordering::SeqCst);
    // A new process would load the ONNX file again.
    let mut resumed = tch_model(&onnx, true);
    let result = train(&mut resumed, &data, &run).unwrap();
    assert_eq!(result.resumed_from, Some([0, 4]));
    assert!(identical(&end, &weights(&resumed)), "resumed run diverged");
    let probe = data.x.narrow(0, 0, 8);
    let a = tch::no_grad(|| whole.forward(&probe).unwrap());
    let b = tch::no_grad(|| resumed.forward(&probe).unwrap());
    assert!(a.equal(&b));
}
