//! Memorization on real Fashion-MNIST: how stable the Feldman–Zhang scores are between two independent estimator
//! runs (Spearman's rho, different seeds), and the seed paper's finding (a) — a PGD-AT model fits atypical training
//! samples cleanly but not adversarially, and does worse on atypical (low-consistency) test samples — measured
//! per group with `robustd::memo`.
//!
//! `cargo bench --bench memo_findings` (release profile). Environment (defaults in brackets):
//! `MEMO_MODEL` [tests/fixtures/generated/mlp_legacy.onnx] — the architecture (re-initialized for every model);
//! `MEMO_ESTIMATOR` [feldman-zhang] (or learning-speed, holdout);
//! `MEMO_SAMPLES` [5000] scored training samples; `MEMO_TEST` [1000] test samples; `MEMO_K` [8];
//! `MEMO_RATIO` [0.7]; `MEMO_EPOCHS` [60] per model (Feldman–Zhang: the cap; each stops at 99 % fitted);
//! `MEMO_LR` [0.05] (SGD, momentum 0.9, cosine, weight decay 5e-4, batch 128); `MEMO_SEEDS` [0,1] estimator
//! seeds; `MEMO_AT_EPOCHS` [30] of PGD-AT (eps 0.1, PGD-7 of 0.25·eps) and of standard training for contrast;
//! `MEMO_STATE` [target/memo-findings] cache (a rerun reuses finished subset models); `MEMO_THREADS` [2].

use std::path::{Path, PathBuf};
use std::time::Instant;

use robustd::attack::pgd::{Keep, PgdParams};
use robustd::config::{
    Config, DatasetSpec, InputLayout, Limits, Method, Norm, PgdSpec, ThreatModel,
};
use robustd::data::{Augmentation, Dataset};
use robustd::memo::scores::spearman;
use robustd::memo::{
    estimate, model_groups, onnx_factory, scored_split, Estimate, EstimatorOptions, GroupOptions,
    Identity,
};
use robustd::model::{Classifier, InputAdapter};
use robustd::onnx::OnnxModel;
use robustd::report::GroupPair;
use robustd::train::{train, TrainRun};
use tch::Device;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path: PathBuf = env(
        "MEMO_MODEL",
        root.join("tests/fixtures/generated/mlp_legacy.onnx"),
    );
    let samples: usize = env("MEMO_SAMPLES", 5000);
    let test_samples: usize = env("MEMO_TEST", 1000);
    let k: usize = env("MEMO_K", 8);
    let ratio: f64 = env("MEMO_RATIO", 0.7);
    let epochs: usize = env("MEMO_EPOCHS", 60);
    let lr: f64 = env("MEMO_LR", 0.05);
    let seeds: Vec<u64> = env("MEMO_SEEDS", "0,1".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let at_epochs: usize = env("MEMO_AT_EPOCHS", 30);
    let state: PathBuf = env("MEMO_STATE", root.join("target/memo-findings"));
    let threads: i32 = env("MEMO_THREADS", 2);
    tch::set_num_threads(threads);

    let data = Dataset::load(
        &DatasetSpec::first("fashion-mnist", samples, test_samples),
        0,
    )
    .expect("Fashion-MNIST");
    let scored = scored_split(&data.train, samples).expect("scored split");
    let onnx = OnnxModel::load(&model_path, &Limits::default()).expect("model");
    let mut factory = onnx_factory(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
    );
    let identity = Identity {
        dataset_sha256: &data.sha256,
        architecture: onnx.structure_hash(),
    };

    let mut config = Config::default();
    config.memorization.estimator =
        serde_norway::from_str(&env("MEMO_ESTIMATOR", "feldman-zhang".to_string()))
            .expect("MEMO_ESTIMATOR: learning-speed, feldman-zhang or holdout");
    config.memorization.k = k;
    config.memorization.subset_ratio = ratio;
    config.memorization.epochs = epochs;
    config.memorization.max_epochs = epochs;

    config.train.batch_size = 128;
    config.memorization.lr = lr;
    config.train.optimizer.lr = lr;
    config.train.optimizer.schedule = "cosine".into();
    config.train.optimizer.weight_decay = 5e-4;
    println!(
        "memo_findings: {} {} on {samples} Fashion-MNIST training + {test_samples} test samples, K={k}, ratio \
         {ratio}, {epochs} epochs (SGD lr {lr} cosine, batch 128), {threads} threads",
        config.memorization.estimator.name(),
        model_path.file_name().unwrap_or_default().to_string_lossy()
    );

    let mut runs: Vec<Estimate> = Vec::new();
    for &seed in &seeds {
        config.runtime.seed = seed;
        let mut options = EstimatorOptions::from_config(&config, Augmentation::None);
        options.cache_root = Some(state.clone());
        let started = Instant::now();
        let e = estimate(&scored, Some(&data.test), identity, &mut factory, &options)
            .expect("estimate");
        let tau = e.threshold(config.memorization.threshold);
        let fits = &e.models;
        let mean = |f: &dyn Fn(&robustd::memo::ModelFit) -> f64| {
            fits.iter().map(f).sum::<f64>() / fits.len() as f64
        };
        let defined: Vec<f64> = e.scores.scores.iter().flatten().copied().collect();
        println!(
            "  seed {seed}: {:.0} s ({} trained now; {:.0} s of training in total); subset models: in-subset acc \
             {:.3}, out-of-subset {:.3}, test {:.3}; mean score {:.3}; atypical (score > {tau}) {:.1} %",
            started.elapsed().as_secs_f64(),
            e.trained(),
            fits.iter().map(|f| f.seconds).sum::<f64>(),
            mean(&|f| f.in_subset_acc),
            mean(&|f| f.out_of_subset_acc.unwrap_or(f64::NAN)),
            mean(&|f| f.test_acc.unwrap_or(0.0)),
            defined.iter().sum::<f64>() / defined.len().max(1) as f64,
            100.0 * e.scores.atypical_share(tau)
        );
        runs.push(e);
    }
    let tau = match runs.first() {
        Some(e) => e.threshold(config.memorization.threshold),
        None => return,
    };
    if runs.len() >= 2 {
        let values = |e: &Estimate| -> Vec<f64> {
            e.scores.scores.iter().map(|s| s.unwrap_or(0.0)).collect()
        };
        let (a, b) = (&runs[0], &runs[1]);
        let rho = spearman(&values(a), &values(b)).unwrap_or(f64::NAN);
        let configured = config.memorization.threshold;
        let (fa, fb) = (
            a.scores.atypical(a.threshold(configured)),
            b.scores.atypical(b.threshold(configured)),
        );
        let both = fa.iter().zip(&fb).filter(|(x, y)| **x && **y).count();
        let either = fa.iter().zip(&fb).filter(|(x, y)| **x || **y).count();
        let ca = &a.consistency.as_ref().expect("consistency").scores;
        let cb = &b.consistency.as_ref().expect("consistency").scores;
        println!(
            "  between seeds {} and {}: Spearman rho of mem {rho:.3}; atypical sets Jaccard {:.3} ({both} of {either}); \
             Spearman rho of test consistency {:.3}",
            seeds[0],
            seeds[1],
            both as f64 / either.max(1) as f64,
            spearman(ca, cb).unwrap_or(f64::NAN)
        );
    }

    // Finding (a): a model trained with PGD-AT (and, for contrast, with standard training) from fresh weights on
    // all scored samples, measured per group with the first run's scores and consistency.
    let Some(reference) = runs.first() else {
        return;
    };
    let threat = ThreatModel {
        norm: Norm::Linf,
        eps: 0.1,
    };
    let consistency = &reference.consistency.as_ref().expect("consistency").scores;
    let groups = GroupOptions {
        attack: PgdParams::from_spec(
            &PgdSpec {
                steps: 20,
                restarts: 1,
                step_size_factor: 0.125,
                random_start: true,
            },
            threat.norm,
            threat.eps,
            7,
            Keep::Adversarial,
        ),
        batch_size: 250,
        threshold: tau,
    };
    for method in [Method::PgdAt, Method::Standard] {
        let mut spec = config.train.clone();
        spec.method = method;
        spec.epochs = at_epochs;
        spec.val_fraction = 0.0;
        spec.augmentation = "none".into();
        let run = TrainRun::new(&spec, &threat, 100, Augmentation::None).expect("run");
        let mut model: Box<dyn Classifier> = factory(100).expect("model");
        let started = Instant::now();
        train(model.as_mut(), &scored, &run).expect("training");
        let trained_s = started.elapsed().as_secs_f64();
        let measured = model_groups(
            model.as_mut(),
            &scored,
            &reference.scores,
            Some((&data.test, consistency)),
            &groups,
            None,
        )
        .expect("groups")
        .expect("not cancelled");
        let line = |name: &str, pair: &Option<GroupPair>, adv: &str| {
            match pair {
            Some(p) => println!(
                "    {name:<5} typical   clean {:.3}  {adv} {:.3}  ({} samples)\n          atypical  clean {:.3}  {adv} {:.3}  ({} samples)",
                p.typical.clean, p.typical.robust, p.typical.samples, p.atypical.clean, p.atypical.robust,
                p.atypical.samples
            ),
            None => println!("    {name}: a group is empty"),
        }
        };
        println!(
            "  {} model, {at_epochs} epochs ({trained_s:.0} s), PGD-20 eps 0.1; train groups by score > {tau}, \
             test groups by consistency < {}:",
            if method == Method::PgdAt { "PGD-AT" } else { "standard" },
            1.0 - tau
        );
        line("train", &measured.groups.train, "adv");
        line("test", &measured.groups.test, "rob");
        let deciles: Vec<String> = measured
            .groups
            .train_deciles
            .iter()
            .map(|d| format!("{}:{:.2}/{:.2}", d.decile, d.clean, d.robust))
            .collect();
        println!(
            "    train deciles of mem (clean/adv): {}",
            deciles.join(" ")
        );
    }
}
