//! The training loop on real Fashion-MNIST subsets: the loss goes down, a cancelled-and-resumed run ends with the
//! same weights as an uninterrupted one, a non-finite loss aborts and restores the model, validation picks the
//! best epoch and stops early, a run that collapses to one class stops at that epoch with a hint, and the CSV log
//! and `TrainResult` carry what the report needs.

mod train_support;

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use robustd::config::{Method, Norm, ThreatModel};
use robustd::data::Augmentation;
use robustd::train::validate::clean_and_robust;
use robustd::train::{train, validation_split, Atypicality, ScoreTable, TrainError, TrainRun};
use train_support::{
    fashion_mnist, identical, quick_spec, weights, CancelAfter, NanAfter, SmallCnn,
};

fn threat() -> ThreatModel {
    ThreatModel {
        norm: Norm::Linf,
        eps: 0.1,
    }
}

#[test]
fn standard_and_bat_training_lower_the_loss_on_fashion_mnist() {
    let data = fashion_mnist(1000, 1);
    for method in [Method::Standard, Method::Bat] {
        let mut spec = quick_spec(method, 3, 50);
        spec.optimizer.lr = 0.02;
        // Scores as the memorization module would hand them over: every fifth sample above the threshold.
        let scores = ScoreTable::from_pairs(
            "test scores",
            (0..1000).map(|i| (i, if i % 5 == 0 { 0.4 } else { 0.0 })),
        );
        let atypicality = scores.flags(&data.train, 0.15);
        assert_eq!(atypicality.atypical(), 200);
        let mut run = TrainRun::new(&spec, &threat(), 1, Augmentation::None).unwrap();
        run.atypicality = Some(&atypicality);
        let mut model = SmallCnn::new(11, false);
        let result = train(&mut model, &data.train, &run).unwrap();
        let losses: Vec<f64> = result.curves.iter().map(|r| r.loss).collect();
        assert_eq!(losses.len(), 3);
        assert!(
            losses[2] < 0.9 * losses[0],
            "{method:?}: loss did not fall: {losses:?}"
        );
        if method == Method::Bat {
            let last = result.curves.last().unwrap();
            let w_atyp = last.weight_atypical_mean.unwrap();
            assert!(
                w_atyp < 1.0,
                "atypical samples should weigh less than average, got {w_atyp}"
            );
            assert!(last.weight_min.unwrap() < last.weight_max.unwrap());
            assert!((last.weight_mean.unwrap() - 1.0).abs() < 1e-6);
            assert!(last.train_adv_acc.unwrap() > 0.1);
            assert_eq!(result.atypicality.as_ref().unwrap().atypical, 200);
            assert_eq!(result.constants.get("threshold"), Some(&0.15));
        } else {
            assert!(result.curves[2].train_clean_acc.unwrap() > 0.6);
        }
    }
}

#[test]
fn a_cancelled_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let data = fashion_mnist(400, 1);
    let mut spec = quick_spec(Method::Trades, 2, 64);
    spec.val_fraction = 0.2;
    spec.augmentation = "crop-flip".into();
    spec.optimizer.schedule = "cosine".into();
    spec.optimizer.nesterov = true;
    let dir = tempfile::tempdir().unwrap();

    let uninterrupted_dir = dir.path().join("whole");
    let mut run = TrainRun::new(&spec, &threat(), 5, Augmentation::None).unwrap();
    run.checkpoint_dir = Some(uninterrupted_dir);
    let mut whole = SmallCnn::new(2, true);
    let whole_result = train(&mut whole, &data.train, &run).unwrap();

    // Forward passes: TRADES takes 1 + 3 (PGD) + 2 per batch, 5 batches of 64 from 320 training samples (30);
    // validation takes 1 + 4 (PGD keeping the adversarial iterate) + 1 per batch, 2 batches from 80 (12); the flag is
    // read before every training and validation batch. Pass 13 falls in batch 3 of epoch 1 (stop after 3
    // batches); pass 33 in the first validation batch (stop after all 5 batches, before validation ends); after the
    // resume re-validates (37..48), pass 48 ends epoch 1 (stop at epoch 2, batch 0); pass 62 falls in batch 3 of
    // epoch 2.
    let flag = Arc::new(AtomicBool::new(false));
    let resumed_dir = dir.path().join("resumed");
    let mut attempts = 0;
    let mut stops = Vec::new();
    let mut interrupted = CancelAfter {
        inner: SmallCnn::new(2, true),
        calls: Cell::new(0),
        limits: vec![13, 33, 48, 62],
        flag: flag.clone(),
    };
    let result = loop {
        attempts += 1;
        let mut run = TrainRun::new(&spec, &threat(), 5, Augmentation::None).unwrap();
        run.checkpoint_dir = Some(resumed_dir.clone());
        run.cancel = Some(&flag);
        match train(&mut interrupted, &data.train, &run) {
            Ok(r) => break r,
            Err(TrainError::Cancelled {
                epoch,
                batch,
                checkpoint,
            }) => {
                stops.push((epoch, batch));
                assert_eq!(checkpoint.as_deref(), Some(resumed_dir.as_path()));
                flag.store(false, std::sync::atomic::Ordering::SeqCst);
                // A fresh model, as after a restart: everything must come from the checkpoint.
                interrupted.inner = SmallCnn::new(99, true);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(attempts < 6);
    };
    assert_eq!(
        stops,
        [(1, 3), (1, 5), (2, 0), (2, 3)],
        "cancelled at (epoch, batches done)"
    );
    assert!(result.resumed_from.is_some());
    assert!(
        identical(&weights(&whole), &weights(&interrupted.inner)),
        "resumed run diverged"
    );
    assert_eq!(whole_result.curves.len(), result.curves.len());
    for (a, b) in whole_result.curves.iter().zip(&result.curves) {
        assert_eq!(
            (a.loss, a.val_robust_acc, a.train_adv_acc),
            (b.loss, b.val_robust_acc, b.train_adv_acc)
        );
    }
    assert_eq!(whole_result.best_epoch, result.best_epoch);

    // The finished checkpoint resumes to the same end state without training again.
    let mut again = SmallCnn::new(42, true);
    let mut run = TrainRun::new(&spec, &threat(), 5, Augmentation::None).unwrap();
    run.checkpoint_dir = Some(resumed_dir.clone());
    let r = train(&mut again, &data.train, &run).unwrap();
    assert_eq!(r.curves.len(), 2);
    assert!(identical(&weights(&whole), &weights(&again)));

    // A different run refuses the checkpoint instead of continuing someone else's state.
    let mut other = spec.clone();
    other.epochs = 3;
    let mut run = TrainRun::new(&other, &threat(), 5, Augmentation::None).unwrap();
    run.checkpoint_dir = Some(resumed_dir);
    let err = train(&mut SmallCnn::new(2, true), &data.train, &run).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
}

#[test]
fn a_non_finite_loss_aborts_with_its_position_and_restores_the_model() {
    let data = fashion_mnist(256, 1);
    let spec = quick_spec(Method::PgdAt, 2, 64);
    let run = TrainRun::new(&spec, &threat(), 0, Augmentation::None).unwrap();
    // PGD-AT: 3 attack passes + 1 training pass per batch; pass 9 is the third batch's first attack step.
    let mut model = NanAfter {
        inner: SmallCnn::new(4, true),
        calls: Cell::new(0),
        from: 9,
    };
    let before = weights(&model);
    let err = train(&mut model, &data.train, &run).unwrap_err();
    match &err {
        TrainError::NonFiniteLoss {
            epoch,
            batch,
            value,
        } => {
            assert_eq!((*epoch, *batch), (1, 3));
            assert!(value.is_nan());
        }
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
    assert!(err.to_string().contains("epoch 1, batch 3"), "{err}");
    assert!(
        model.calls.get() > 8,
        "two batches should have trained before the NaN"
    );
    assert!(
        identical(&before, &weights(&model)),
        "the model was not restored"
    );
}

#[test]
fn validation_keeps_the_best_epoch_and_stops_early() {
    let data = fashion_mnist(500, 1);
    // A learning rate so small that no weight changes: every epoch has the same validation accuracy, so the first
    // stays best and patience 2 ends the run after epoch 3.
    let mut spec = quick_spec(Method::PgdAt, 6, 50);
    spec.val_fraction = 0.2;
    spec.early_stop_patience = 2;
    spec.optimizer.lr = 1e-30;
    spec.optimizer.momentum = 0.0;
    spec.optimizer.weight_decay = 0.0;
    let run = TrainRun::new(&spec, &threat(), 3, Augmentation::None).unwrap();
    let mut model = SmallCnn::new(8, false);
    let result = train(&mut model, &data.train, &run).unwrap();
    assert!(result.early_stopped);
    assert_eq!(result.epochs, 3);
    assert_eq!(result.best_epoch, 1);
    assert_eq!((result.train_samples, result.val_samples), (400, 100));

    // A real run: the model ends with the best epoch's weights, which reproduce the recorded accuracy.
    let mut spec = quick_spec(Method::PgdAt, 3, 50);
    spec.val_fraction = 0.2;
    let run = TrainRun::new(&spec, &threat(), 3, Augmentation::None).unwrap();
    let mut model = SmallCnn::new(8, false);
    let result = train(&mut model, &data.train, &run).unwrap();
    let best = result.curves[result.best_epoch - 1].val_robust_acc.unwrap();
    let max = result
        .curves
        .iter()
        .filter_map(|r| r.val_robust_acc)
        .fold(0.0, f64::max);
    assert_eq!(best, max);
    assert_eq!(result.best_val_robust_acc, Some(best));
    let (_, val_positions) = validation_split(data.train.len(), 0.2, 3);
    let val = data.train.select(&val_positions).unwrap();
    let again = clean_and_robust(&mut model, &val, &run.val_attack(), 50).unwrap();
    assert_eq!(again.robust, best);
    assert_eq!(
        Some(again.clean),
        result.curves[result.best_epoch - 1].val_clean_acc
    );
}

#[test]
fn the_log_and_result_carry_what_the_report_needs() {
    let data = fashion_mnist(200, 1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("train_log.csv");
    let mut spec = quick_spec(Method::Bat, 2, 50);
    spec.val_fraction = 0.25;
    spec.bat.w_max = Some(1.2);
    let flags = Atypicality {
        flags: (0..200).map(|i| i % 4 == 0).collect(),
        source: "quarter".into(),
        threshold: Some(0.15),
        scored: 200,
    };
    let mut run = TrainRun::new(&spec, &threat(), 9, Augmentation::None).unwrap();
    run.atypicality = Some(&flags);
    run.log_csv = Some(log.clone());
    let mut model = SmallCnn::new(1, false);
    let result = train(&mut model, &data.train, &run).unwrap();

    let csv = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("epoch,loss,val_clean_acc,val_robust_acc"));
    let cells: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(cells.len(), lines[0].split(',').count());
    assert_eq!(cells[0], "2");
    assert!(
        cells[8].parse::<f64>().unwrap() <= 1.2 + 1e-9,
        "w_max clamp: {}",
        lines[2]
    );

    let yaml = serde_norway::to_string(&result).unwrap();
    for key in [
        "method: bat",
        "formula:",
        "constants:",
        "optimizer:",
        "epochs: 2",
        "best_epoch:",
        "log:",
        "seconds:",
    ] {
        assert!(yaml.contains(key), "missing `{key}` in\n{yaml}");
    }
    for constant in [
        "beta",
        "lambda",
        "w_max",
        "threshold",
        "eps",
        "pgd_steps",
        "step_size",
    ] {
        assert!(
            result.constants.contains_key(constant),
            "missing constant {constant}"
        );
    }
    assert_eq!(result.constants["step_size"], 0.05);
    assert!(result
        .curves
        .iter()
        .all(|r| r.samples_per_s > 0.0 && r.seconds > 0.0));
    assert_eq!(result.device, "cpu");
    assert!(!result.amp && !result.channels_last);
}

#[test]
fn bat_refuses_to_run_without_atypicality_and_with_misaligned_flags() {
    let data = fashion_mnist(64, 1);
    let spec = quick_spec(Method::Bat, 1, 32);
    let mut model = SmallCnn::new(0, false);
    let before = weights(&model);
    let run = TrainRun::new(&spec, &threat(), 0, Augmentation::None).unwrap();
    assert!(matches!(
        train(&mut model, &data.train, &run),
        Err(TrainError::Invalid { .. })
    ));
    let short = Atypicality {
        flags: vec![false; 10],
        source: "short".into(),
        threshold: None,
        scored: 10,
    };
    let mut run = TrainRun::new(&spec, &threat(), 0, Augmentation::None).unwrap();
    run.atypicality = Some(&short);
    assert!(matches!(
        train(&mut model, &data.train, &run),
        Err(TrainError::Invalid { .. })
    ));
    assert!(identical(&before, &weights(&model)));
}

#[test]
fn a_run_that_collapses_to_one_class_stops_at_that_epoch_with_a_hint() {
    // TRADES at a learning rate far too high for it: the network dies into a constant output within the first
    // epochs (loss at ln 10, one class per batch, accuracy at chance) and the loop stops there.
    let data = fashion_mnist(1000, 1);
    let mut spec = quick_spec(Method::Trades, 8, 50);
    spec.optimizer.lr = 2.0;
    let run = TrainRun::new(&spec, &threat(), 3, Augmentation::None).unwrap();
    let mut model = SmallCnn::new(3, false);
    let before = weights(&model);
    let err = train(&mut model, &data.train, &run).unwrap_err();
    eprintln!("{err}");
    let TrainError::Collapsed {
        epoch,
        accuracy,
        class_share,
        cross_entropy,
        ref hint,
        ..
    } = err
    else {
        panic!("expected a collapse, got: {err}")
    };
    assert!(
        epoch < 8,
        "stopped at the epoch it happened, not after the run"
    );
    assert!(accuracy <= 0.15 && class_share >= 0.8 && cross_entropy >= 0.9 * 10f64.ln());
    for wanted in [
        "train.optimizer.lr (now 2)",
        "train.trades_beta (now 6)",
        "train.optimizer.warmup_epochs",
    ] {
        assert!(hint.contains(wanted), "{hint}");
    }
    assert!(err.to_string().contains("collapsed at epoch"));
    assert!(
        identical(&before, &weights(&model)),
        "the model is left as it was given"
    );

    // The same model and data at a sane rate train normally: the watch does not fire on healthy runs.
    spec.optimizer.lr = 0.05;
    spec.epochs = 2;
    let run = TrainRun::new(&spec, &threat(), 3, Augmentation::None).unwrap();
    train(&mut SmallCnn::new(3, false), &data.train, &run).unwrap();
}
