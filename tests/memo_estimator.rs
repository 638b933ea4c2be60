//! The subset estimators' machinery end to end with real training (the exported MLP, re-initialized per subset
//! model, through the shared training loop) on a synthetic task: Feldman–Zhang trained to its fit target puts
//! flipped labels in the top decile and they become BAT's atypical samples; the per-sample counts, probability sums,
//! soft scores and test consistency equal a recount from the saved predictions; a second model of the same
//! architecture hits the cache and trains nothing; a run cancelled inside a subset model resumes to identical
//! scores. (The same estimators on real Fashion-MNIST: `memo_real.rs`.)

mod memo_support;

use std::cell::Cell;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use memo_support::{counting_factory, flip_labels, mlp, quick_options, synthetic, CancelAfter};
use ndarray::Array1;
use ndarray_npy::NpzReader;
use robustd::config::{InputLayout, Limits};
use robustd::memo::{bat_atypicality, estimate, onnx_factory, Identity, MemoError};
use robustd::model::{Classifier, InputAdapter};
use robustd::onnx::{write_back, OnnxModel, TchModel, TchOptions};
use tch::Device;

fn read<T: ndarray_npy::ReadableElement + Clone>(path: &std::path::Path, name: &str) -> Vec<T> {
    let mut npz = NpzReader::new(File::open(path).unwrap()).unwrap();
    let a: Array1<T> = npz.by_name(name).unwrap();
    a.to_vec()
}

#[test]
fn flipped_labels_score_in_the_top_decile() {
    let train = synthetic(2000, 1, 0);
    let test = synthetic(200, 2, 0);
    // 2 % of the labels moved to another class.
    let (noisy, flipped) = flip_labels(&train, 50);
    assert_eq!(flipped.len(), 40);
    let onnx = mlp();
    let made = Cell::new(0);
    let mut factory = counting_factory(&onnx, &made);
    let mut options = quick_options(8, 30, 0, None);
    options.fit_target = 0.99;
    let e = estimate(
        &noisy,
        Some(&test),
        Identity {
            dataset_sha256: "synthetic",
            architecture: onnx.structure_hash(),
        },
        &mut factory,
        &options,
    )
    .unwrap();
    assert_eq!(made.get(), 8, "one fresh model per subset");
    assert_eq!(
        e.design.as_ref().unwrap().per_sample(),
        6,
        "round(0.7 * 8) subsets per sample"
    );
    assert_eq!(
        e.tally.as_ref().unwrap().undefined(),
        0,
        "the balanced design scores every sample"
    );
    assert!(
        e.models.iter().all(|m| m.in_subset_acc > 0.97),
        "the subset models fit their subsets: {:?}",
        e.models
    );
    assert!(
        e.models.iter().all(|m| m.epochs < 30),
        "each stopped at the fit target: {:?}",
        e.models
    );
    let check = e.self_check.as_ref().unwrap();
    assert!(check.reliable, "{check:?}");
    assert!(check.split_half_top_decile.unwrap() > 0.5, "{check:?}");

    let deciles = e.scores.deciles();
    let top = flipped.iter().filter(|&&i| deciles[i] == Some(9)).count();
    let mean = |flip: bool| {
        let v: Vec<f64> = (0..noisy.len())
            .filter(|i| (i % 50 == 0) == flip)
            .map(|i| e.scores.scores[i].unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    eprintln!(
        "flipped in the top decile: {top}/40; mean mem flipped {:.3}, others {:.3}",
        mean(true),
        mean(false)
    );
    assert!(top >= 32, "{top} of 40 flipped samples in the top decile");

    // BAT's atypicality source: the fine-tuning split's flags from the scores at tau = 0.15.
    let flags = bat_atypicality(&e, &noisy, 0.15);
    assert_eq!(flags.flags.len(), noisy.len());
    assert_eq!(flags.threshold, Some(0.15));
    let flagged_flipped = flipped.iter().filter(|&&i| flags.flags[i]).count();
    assert!(
        flagged_flipped >= 32,
        "{flagged_flipped} of 40 flipped flagged"
    );
    assert!(flags.share() < 0.15, "atypical share {}", flags.share());

    // Test samples: none of the models saw them; consistency is their mean p(y|x), checked against a recount in
    // the cache test below.
    let c = e.consistency.as_ref().unwrap();
    assert_eq!(c.scores.len(), 200);
    assert!(c.scores.iter().all(|s| (0.0..=1.0).contains(s)));
}

#[test]
fn counts_match_a_recount_and_a_second_model_of_the_same_architecture_hits_the_cache() {
    let train = synthetic(600, 3, 1000);
    let test = synthetic(100, 4, 0);
    let state = tempfile::tempdir().unwrap();
    let onnx = mlp();
    let options = quick_options(4, 4, 7, Some(state.path()));
    let identity = Identity {
        dataset_sha256: "synthetic",
        architecture: onnx.structure_hash(),
    };
    let made = Cell::new(0);
    let first = estimate(
        &train,
        Some(&test),
        identity,
        &mut counting_factory(&onnx, &made),
        &options,
    )
    .unwrap();
    assert_eq!(made.get(), 4);
    assert_eq!(first.trained(), 4);
    assert!(!first.cached());

    // Recount in/out from the saved per-model predictions and the design.
    let dir = first.cache_dir.clone().unwrap();
    let design = first.design.as_ref().unwrap();
    let tally = first.tally.as_ref().unwrap();
    let n = train.len();
    let (mut in_seen, mut in_right, mut out_seen, mut out_right) =
        (vec![0u32; n], vec![0u32; n], vec![0u32; n], vec![0u32; n]);
    let (mut in_p, mut out_p) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut test_p = vec![0.0f64; 100];
    for k in 0..4 {
        let file = dir.join(format!("model-{k:02}.npz"));
        assert!(!dir.join(format!("model-{k:02}.ckpt")).exists());
        let correct: Vec<bool> = read(&file, "train_correct");
        let p: Vec<f32> = read(&file, "train_p");
        assert_eq!(read::<bool>(&file, "test_correct").len(), 100);
        for (j, q) in read::<f32>(&file, "test_p").iter().enumerate() {
            test_p[j] += f64::from(*q) / 4.0;
        }
        for i in 0..n {
            if design.membership(k)[i] {
                in_seen[i] += 1;
                in_right[i] += correct[i] as u32;
                in_p[i] += f64::from(p[i]);
            } else {
                out_seen[i] += 1;
                out_right[i] += correct[i] as u32;
                out_p[i] += f64::from(p[i]);
            }
        }
    }
    assert_eq!(tally.in_seen, in_seen);
    assert_eq!(tally.in_correct, in_right);
    assert_eq!(tally.out_seen, out_seen);
    assert_eq!(tally.out_correct, out_right);
    // K = 4 in two halves of two: each sample in one model of each half.
    assert!(in_seen.iter().all(|&s| s == 2) && out_seen.iter().all(|&s| s == 2));
    for i in 0..n {
        let hard = (in_right[i] as f64 - out_right[i] as f64) / 2.0;
        assert_eq!(tally.mem(i), Some(hard));
        let soft = (in_p[i] - out_p[i]) / 2.0;
        let got = first.scores.scores[i].unwrap();
        assert!((got - soft).abs() < 1e-9, "sample {i}: {got} vs {soft}");
        assert!(tally.standard_error(i).is_some(), "two models on each side");
    }
    let check = first.self_check.as_ref().unwrap();
    assert_eq!(check.split_half.as_deref(), Some("models 1-2 vs 3-4"));
    assert!(check.split_half_spearman.is_some());
    let consistency = &first.consistency.as_ref().unwrap().scores;
    for (got, want) in consistency.iter().zip(&test_p) {
        assert!((got - want).abs() < 1e-9);
    }
    assert_eq!(first.scores.indices, train.indices, "keyed by source index");

    // A second model file: the same graph with other weights (trained copy written back).
    let mut other = TchModel::with_layout(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
        TchOptions::default(),
    )
    .unwrap();
    other.reinitialize(99).unwrap();
    let second_path = state.path().join("second.onnx");
    write_back(&onnx, &other, &second_path, &[]).unwrap();
    let second = OnnxModel::load(&second_path, &Limits::default()).unwrap();
    assert_eq!(second.structure_hash(), onnx.structure_hash());
    assert_ne!(
        robustd::report::sha256_hex(&std::fs::read(&second_path).unwrap()),
        robustd::report::sha256_hex(&std::fs::read(onnx.path()).unwrap())
    );
    let made_again = Cell::new(0);
    let cached = estimate(
        &train,
        Some(&test),
        Identity {
            dataset_sha256: "synthetic",
            architecture: second.structure_hash(),
        },
        &mut counting_factory(&second, &made_again),
        &options,
    )
    .unwrap();
    assert_eq!(made_again.get(), 0, "a cache hit trains nothing");
    assert!(cached.cached());
    assert_eq!(cached.scores.scores, first.scores.scores);
    assert_eq!(cached.tally, first.tally);
    assert_eq!(cached.consistency, first.consistency);
    assert_eq!(cached.cache_dir, first.cache_dir);

    // Anything that changes the predictions changes the key: other labels, another seed.
    let (relabelled, _) = flip_labels(&train, 7);
    let made_relabelled = Cell::new(0);
    let e = estimate(
        &relabelled,
        Some(&test),
        identity,
        &mut counting_factory(&onnx, &made_relabelled),
        &quick_options(4, 1, 7, Some(state.path())),
    )
    .unwrap();
    assert_eq!(made_relabelled.get(), 4);
    assert_ne!(e.cache_dir, first.cache_dir);
}

#[test]
fn a_cancelled_run_resumes_inside_the_model_and_ends_with_identical_scores() {
    let train = synthetic(500, 5, 0);
    let test = synthetic(50, 6, 0);
    let onnx = mlp();
    let identity = Identity {
        dataset_sha256: "synthetic",
        architecture: onnx.structure_hash(),
    };
    let reference_state = tempfile::tempdir().unwrap();
    let reference = estimate(
        &train,
        Some(&test),
        identity,
        &mut onnx_factory(
            &onnx,
            InputAdapter::identity(),
            InputLayout::Auto,
            Device::Cpu,
        ),
        &quick_options(4, 4, 11, Some(reference_state.path())),
    )
    .unwrap();

    let state = tempfile::tempdir().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let mut options = quick_options(4, 4, 11, Some(state.path()));
    options.cancel = Some(&flag);
    let made = Cell::new(0);
    let mut inner = counting_factory(&onnx, &made);
    // The third subset model raises the flag in its 10th forward pass: inside its third epoch (each subset holds
    // half of the 500 samples, 4 batches of 64).
    let mut cancelling = |seed: u64| -> Result<Box<dyn Classifier>, robustd::train::TrainError> {
        let model = inner(seed)?;
        Ok(if made.get() == 3 {
            Box::new(CancelAfter {
                inner: model,
                calls: Cell::new(0),
                limits: vec![10],
                flag: flag.clone(),
            })
        } else {
            model
        })
    };
    let err = estimate(&train, Some(&test), identity, &mut cancelling, &options).unwrap_err();
    assert!(
        matches!(
            err,
            MemoError::Cancelled {
                completed: 2,
                models: 4,
                ..
            }
        ),
        "{err}"
    );
    let dir = state
        .path()
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(dir.join("model-00.npz").is_file() && dir.join("model-01.npz").is_file());
    assert!(!dir.join("model-02.npz").exists());
    assert!(
        dir.join("model-02.ckpt").is_dir(),
        "the interrupted model left its training checkpoint"
    );

    flag.store(false, std::sync::atomic::Ordering::SeqCst);
    let made_resume = Cell::new(0);
    let resumed = estimate(
        &train,
        Some(&test),
        identity,
        &mut counting_factory(&onnx, &made_resume),
        &options,
    )
    .unwrap();
    assert_eq!(made_resume.get(), 2, "models 0 and 1 come from the cache");
    assert_eq!(resumed.trained(), 2);
    assert_eq!(resumed.tally, reference.tally);
    assert_eq!(resumed.scores.scores, reference.scores.scores);
    assert_eq!(resumed.consistency, reference.consistency);
    assert!(!dir.join("model-02.ckpt").exists());
}
