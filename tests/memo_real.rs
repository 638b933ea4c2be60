//! Every memorization estimator on real Fashion-MNIST — the sanity check a memorization score must pass: with a few
//! percent of the training labels moved to another class, the moved samples can only be fitted by memorizing them,
//! so they must rank at the top of the scores. The first 1200 training images, every 25th label flipped (48
//! samples), the exported MLP re-initialized per model, the product's training defaults (SGD, cosine, batch 128,
//! `memorization.lr`). Sized for seconds; the full-size measurement with the PyTorch reference is
//! `benches/memo_recall.rs`. Also: each estimator's self-checks, and imported scores through the config.

mod memo_support;

use memo_support::{cpu_factory, mislabel, mlp, top_decile_recall};
use robustd::config::{Config, DatasetSpec, Estimator};
use robustd::data::{Augmentation, Dataset, Split};
use robustd::memo::output::write_scores_npy;
use robustd::memo::{
    bat_atypicality, estimate, estimate_from_config, Estimate, EstimatorOptions, Identity,
};

const SAMPLES: usize = 1200;
const PERIOD: usize = 25;

fn data() -> (Dataset, Split, Vec<usize>) {
    let data = Dataset::load(&DatasetSpec::first("fashion-mnist", SAMPLES, 200), 0)
        .expect("Fashion-MNIST from /usr/share/datasets/fashion-mnist");
    let (noisy, flipped) = mislabel(&data.train, PERIOD);
    assert_eq!(flipped.len(), SAMPLES / PERIOD);
    (data, noisy, flipped)
}

fn config(estimator: Estimator) -> Config {
    let mut config = Config::default();
    config.memorization.estimator = estimator;
    config.runtime.threads = 2;
    config
}

fn run(config: &Config, data: &Dataset, noisy: &Split) -> Estimate {
    let onnx = mlp();
    let mut options = EstimatorOptions::from_config(config, Augmentation::None);
    options.cache_root = None;
    let identity = Identity {
        dataset_sha256: &data.sha256,
        architecture: onnx.structure_hash(),
    };
    let mut factory = cpu_factory(&onnx);
    estimate(noisy, Some(&data.test), identity, &mut factory, &options).unwrap()
}

#[test]
fn learning_speed_ranks_flipped_labels_at_the_top_of_real_data() {
    let (data, noisy, flipped) = data();
    let mut config = config(Estimator::LearningSpeed);
    config.memorization.epochs = 8;
    let e = run(&config, &data, &noisy);
    let recall = top_decile_recall(&e.scores, &flipped);
    let check = e.self_check.as_ref().unwrap();
    eprintln!("learning-speed: recall {recall:.3}; {check:?}");
    assert!(recall >= 0.8, "{recall}");
    assert!(check.reliable, "{check:?}");
    assert_eq!(check.epochs_counted, Some(8));
    assert!(check.split_half_spearman.unwrap() > 0.8, "{check:?}");
    assert!(check.split_half_top_decile.unwrap() > 0.6, "{check:?}");
    assert_eq!(e.models.len(), 1);
    assert_eq!(
        e.models[0].out_of_subset_acc, None,
        "it trained on every sample"
    );
    let passes = e.passes.as_ref().unwrap();
    assert!((0..SAMPLES).all(|i| passes.passes_even[i] + passes.passes_odd[i] == 8));
    // BAT's flags at the estimator's τ hold most flipped samples and few others.
    // BAT's flags at the estimator's τ: the top decile, which holds most flipped samples.
    let tau = e.threshold(None);
    assert_eq!(tau, e.scores.quantile(0.9));
    let flags = bat_atypicality(&e, &noisy, tau);
    let caught = flipped.iter().filter(|&&i| flags.flags[i]).count();
    eprintln!(
        "learning-speed: tau {tau:.3}, {caught} of {} flipped flagged, {:.3} flagged",
        flipped.len(),
        flags.share()
    );
    assert!((flags.share() - 0.1).abs() < 0.01, "{}", flags.share());
    assert!(caught * 10 >= flipped.len() * 7, "{caught}");
}

#[test]
fn feldman_zhang_fitted_to_its_subsets_ranks_flipped_labels_at_the_top_of_real_data() {
    let (data, noisy, flipped) = data();
    let mut config = config(Estimator::FeldmanZhang);
    config.memorization.k = 4;
    config.memorization.max_epochs = 150;
    let e = run(&config, &data, &noisy);
    let recall = top_decile_recall(&e.scores, &flipped);
    let check = e.self_check.as_ref().unwrap();
    eprintln!(
        "feldman-zhang: recall {recall:.3}; {check:?}; {:?}",
        e.models
    );
    assert!(
        e.models.iter().all(|m| m.in_subset_acc >= 0.95),
        "trained until fitted: {:?}",
        e.models
    );
    assert!(check.reliable, "{check:?}");
    assert!(recall >= 0.5, "{recall}");
    let tally = e.tally.as_ref().unwrap();
    // The soft score breaks the 0/1 score's ties: many more distinct values.
    let distinct = |v: Vec<f64>| {
        let mut v: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let hard = distinct((0..SAMPLES).filter_map(|i| tally.mem(i)).collect());
    let soft = distinct(e.scores.scores.iter().flatten().copied().collect());
    assert!(hard <= 8 && soft > 100 * hard, "{hard} vs {soft}");
}

#[test]
fn holdout_ranks_flipped_labels_at_the_top_of_real_data() {
    let (data, noisy, flipped) = data();
    let mut config = config(Estimator::Holdout);
    config.memorization.epochs = 8;
    let e = run(&config, &data, &noisy);
    let recall = top_decile_recall(&e.scores, &flipped);
    let check = e.self_check.as_ref().unwrap();
    eprintln!("holdout: recall {recall:.3}; {check:?}");
    assert_eq!(e.models.len(), 2);
    assert!(check.reliable, "{check:?}");
    assert!(check.held_out_acc.unwrap() > 0.6, "{check:?}");
    assert!(recall >= 0.6, "{recall}");
}

#[test]
fn imported_scores_come_back_through_the_config_as_the_same_flags() {
    let (data, noisy, _) = data();
    let mut config = config(Estimator::LearningSpeed);
    config.memorization.epochs = 2;
    let e = run(&config, &data, &noisy);
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("scores.npy");
    write_scores_npy(&npy, &e.scores).unwrap();

    let mut imported = config.clone();
    imported.memorization.estimator = Estimator::Import;
    imported.memorization.scores = Some(npy.display().to_string());
    imported.memorization.threshold = Some(0.5);
    let onnx = mlp();
    let mut factory = cpu_factory(&onnx);
    // Imports are keyed by source index; the labels play no part.
    let (scored, back) =
        estimate_from_config(&imported, &data, onnx.structure_hash(), &mut factory, None).unwrap();
    assert_eq!(scored.len(), SAMPLES, "imports cover every loaded sample");
    assert_eq!(back.scores.source.name(), "imported");
    assert!(back.models.is_empty() && back.self_check.is_none());
    assert_eq!(
        bat_atypicality(&back, &noisy, 0.5).flags,
        bat_atypicality(&e, &noisy, 0.5).flags
    );
    // The same through the shorthand in train.bat.atypicality.
    let mut shorthand = config.clone();
    shorthand.train.bat.atypicality = npy.display().to_string();
    let (_, again) =
        estimate_from_config(&shorthand, &data, onnx.structure_hash(), &mut factory, None).unwrap();
    assert_eq!(again.scores.scores, back.scores.scores);
}
