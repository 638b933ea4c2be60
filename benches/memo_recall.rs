//! The robustd side of the memorization recall benchmark (`make memo-recall`, scripts/memo_recall.sh): one
//! estimator run on real Fashion-MNIST with a few percent of the labels flipped, printed as one JSON line — the
//! share of flipped samples in the top decile of the scores (recall; chance is 10 %), for the soft score robustd
//! ranks by and the 0/1 score beside it, with the time and the self-checks. scripts/memo_recall_reference.py does
//! the same in PyTorch on the same data (the flip rule is `tests/memo_support::mislabel`).
//!
//!     cargo bench --bench memo_recall -- --arch cnn --estimator learning-speed --epochs 8
//!     cargo bench --bench memo_recall -- --arch mlp --estimator feldman-zhang --k 8 --ratio 0.7 \
//!         --fit-target 0.99 --max-epochs 60
//!
//! Options (defaults in brackets): `--arch` mlp|cnn [mlp] (tests/fixtures/generated/mlp_legacy.onnx, or the demo
//! CNN's graph fmnist_cnn_small.onnx; re-initialized per model), `--samples` [3000], `--test` [1000], `--period`
//! [33] (every 33rd label flipped: 3 %), `--estimator` [learning-speed], `--epochs` [8], `--k` [8], `--ratio`
//! [0.7], `--fit-target` [0.99], `--max-epochs` [60], `--lr` [0.05], `--seed` [0], `--threads` [1]. Everything
//! else is robustd's default config (SGD momentum 0.9, cosine, weight decay 5e-4, batch 128).

#[path = "../tests/memo_support/mod.rs"]
mod memo_support;

use std::collections::HashMap;
use std::time::Instant;

use memo_support::{cpu_factory, mislabel, top_decile_recall};
use robustd::config::{Config, DatasetSpec, Estimator, Limits};
use robustd::data::{Augmentation, Dataset};
use robustd::memo::{estimate, Estimate, EstimatorOptions, Identity, ScoreSource, TrainScores};
use robustd::onnx::OnnxModel;

fn main() {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|kv| {
            let key = kv[0].trim_start_matches("--").to_string();
            (key, kv.get(1).cloned().unwrap_or_default())
        })
        .collect();
    let get = |key: &str, default: &str| args.get(key).cloned().unwrap_or_else(|| default.into());
    let num = |key: &str, default: &str| -> f64 {
        get(key, default)
            .parse()
            .unwrap_or_else(|_| panic!("--{key}: a number"))
    };
    let arch = get("arch", "mlp");
    let (samples, test, period) = (
        num("samples", "3000") as usize,
        num("test", "1000") as usize,
        num("period", "33") as usize,
    );
    let threads = num("threads", "1") as i32;
    tch::set_num_threads(threads);

    let mut config = Config::default();
    let m = &mut config.memorization;
    m.estimator = serde_norway::from_str(&get("estimator", "learning-speed"))
        .expect("--estimator learning-speed|feldman-zhang|holdout");
    m.epochs = num("epochs", "8") as usize;
    m.k = num("k", "8") as usize;
    m.subset_ratio = num("ratio", "0.7");
    m.fit_target = num("fit-target", "0.99");
    m.max_epochs = num("max-epochs", "60") as usize;
    m.lr = num("lr", "0.05");
    config.runtime.seed = num("seed", "0") as u64;

    let data = Dataset::load(&DatasetSpec::first("fashion-mnist", samples, test), 0)
        .expect("Fashion-MNIST (apt-get install dataset-fashion-mnist)");
    let (noisy, flipped) = mislabel(&data.train, period);
    let model = memo_support::fixture(match arch.as_str() {
        "mlp" => "mlp_legacy",
        "cnn" => "fmnist_cnn_small",
        other => panic!("--arch {other}: mlp or cnn"),
    });
    let onnx = OnnxModel::load(&model, &Limits::default()).expect("model");
    let mut options = EstimatorOptions::from_config(&config, Augmentation::None);
    options.cache_root = None;
    let mut factory = cpu_factory(&onnx);
    let identity = Identity {
        dataset_sha256: &data.sha256,
        architecture: onnx.structure_hash(),
    };
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let e = estimate(&noisy, Some(&data.test), identity, &mut factory, &options).expect("estimate");
    let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());

    let hard = TrainScores {
        scores: hard_scores(&e),
        ..e.scores.clone()
    };
    let check = e.self_check.clone().expect("self-check");
    let budget = match config.memorization.estimator {
        Estimator::FeldmanZhang => format!(
            r#"{{"k": {}, "ratio": {}, "fit_target": {}, "max_epochs": {}}}"#,
            config.memorization.k,
            config.memorization.subset_ratio,
            config.memorization.fit_target,
            config.memorization.max_epochs
        ),
        _ => format!(r#"{{"epochs": {}}}"#, config.memorization.epochs),
    };
    let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.4}"));
    let epochs: Vec<String> = e.models.iter().map(|f| f.epochs.to_string()).collect();
    println!(
        r#"{{"side": "robustd", "arch": "{arch}", "estimator": "{}", "samples": {samples}, "flipped": {}, "budget": {budget}, "recall": {{"soft": {:.4}, "hard": {:.4}}}, "checks": {{"seconds": {wall:.2}, "cpu_seconds": {cpu:.2}, "train_seconds": {:.2}, "in_subset_acc_mean": {}, "in_subset_acc_min": {}, "held_out_acc_mean": {}, "test_acc_mean": {}, "split_half_spearman": {}, "split_half_top_decile": {}, "reliable": {}, "epochs_per_model": [{}]}}, "threads": {threads}}}"#,
        config.memorization.estimator.name(),
        flipped.len(),
        top_decile_recall(&e.scores, &flipped),
        top_decile_recall(&hard, &flipped),
        e.models.iter().map(|f| f.seconds).sum::<f64>(),
        opt(check.in_subset_acc),
        opt(check.in_subset_acc_min),
        opt(check.held_out_acc),
        opt(check.test_acc),
        opt(check.split_half_spearman),
        opt(check.split_half_top_decile),
        check.reliable,
        epochs.join(", "),
    );
}

/// The 0/1 version of each estimator's score: correctness in place of `p(y|x)`.
fn hard_scores(e: &Estimate) -> Vec<Option<f64>> {
    match (&e.scores.source, &e.tally, &e.passes) {
        (ScoreSource::FeldmanZhang { .. }, Some(t), _) => t.scores(),
        (ScoreSource::Holdout { .. }, Some(t), _) => (0..t.len())
            .map(|i| Some(1.0 - t.out_accuracy(i)?))
            .collect(),
        (ScoreSource::LearningSpeed { .. }, _, Some(c)) => (0..c.len())
            .map(|i| {
                let passes = c.passes_even[i] + c.passes_odd[i];
                (passes > 0).then(|| {
                    1.0 - f64::from(c.correct_even[i] + c.correct_odd[i]) / f64::from(passes)
                })
            })
            .collect(),
        _ => e.scores.scores.clone(),
    }
}

/// CPU time of this process (user + system), seconds: the cost of a run on a shared machine.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}
