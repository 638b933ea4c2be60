//! Real parts for the memorization tests: training splits with a share of labels moved to another class, a synthetic
//! image task, the exported MLP fixture (`tests/fixtures/generated/mlp_legacy.onnx`, made by
//! `make fixtures`) re-initialized per subset model, and a fast training setting for it.
#![allow(dead_code)]

#[path = "../fixtures/mod.rs"]
mod fixtures;
#[path = "../train_support/mod.rs"]
mod train_support;

#[allow(unused_imports)] // used by some of the binaries that include this module
pub use train_support::CancelAfter;

use std::cell::Cell;
use std::path::{Path, PathBuf};

use robustd::config::{Config, Estimator, InputLayout, Limits, Method, TrainSpec};
use robustd::data::{Augmentation, Split};
use robustd::memo::EstimatorOptions;
use robustd::model::{Classifier, InputAdapter};
use robustd::onnx::OnnxModel;
use tch::{Device, Tensor};

/// `split` with the label of every `every`-th sample (positions 0, every, 2·every, …) moved to another class;
/// returns the moved positions.
pub fn flip_labels(split: &Split, every: usize) -> (Split, Vec<usize>) {
    relabel(split, every, |_, y| (y + 3) % 10)
}

/// `split` with a few percent of its labels moved to another class, by the rule the recall benchmark
/// (`benches/memo_recall.rs`) and its PyTorch reference (`scripts/memo_recall_reference.py`) share: position `i` is
/// flipped when `i % period == 0`, to class `(y + 1 + (i / period) % 9) % 10`. Returns the flipped positions.
pub fn mislabel(split: &Split, period: usize) -> (Split, Vec<usize>) {
    relabel(split, period, |i, y| {
        (y + 1 + ((i / period) % 9) as i64) % 10
    })
}

/// `split` with the label `y` of every `every`-th position `i` replaced by `to(i, y)`; returns those positions.
fn relabel(split: &Split, every: usize, to: impl Fn(usize, i64) -> i64) -> (Split, Vec<usize>) {
    let mut labels = Vec::<i64>::try_from(&split.y).unwrap();
    let flipped: Vec<usize> = (0..labels.len()).step_by(every).collect();
    for &i in &flipped {
        labels[i] = to(i, labels[i]);
    }
    let noisy = Split {
        x: split.x.shallow_clone(),
        y: Tensor::from_slice(&labels),
        indices: split.indices.clone(),
        source_len: split.source_len,
        source: None,
    };
    (noisy, flipped)
}

/// Share of `flipped` positions whose score is in the top decile (ranks as `TrainScores::deciles` forms them).
pub fn top_decile_recall(scores: &robustd::memo::TrainScores, flipped: &[usize]) -> f64 {
    let deciles = scores.deciles();
    flipped.iter().filter(|&&i| deciles[i] == Some(9)).count() as f64 / flipped.len() as f64
}

/// The generated model `<name>.onnx`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures::generated(&format!("{name}.onnx"))
}

/// The exported MLP (784 → 64 → 10).
pub fn mlp() -> OnnxModel {
    OnnxModel::load(&fixture("mlp_legacy"), &Limits::default()).unwrap()
}

/// Feldman–Zhang settings that make the MLP fit (and, with enough epochs, memorize) its subset in seconds: SGD
/// with momentum 0.9 at a constant rate 0.05, batches of 64, no weight decay, no validation; exactly `epochs`
/// epochs per subset model (fit target 100 %); cache under `cache`.
pub fn quick_options<'a>(
    k: usize,
    epochs: usize,
    seed: u64,
    cache: Option<&Path>,
) -> EstimatorOptions<'a> {
    let mut config = Config::default();
    config.memorization.estimator = Estimator::FeldmanZhang;
    config.memorization.k = k;
    config.memorization.max_epochs = epochs;
    config.memorization.fit_target = 1.0;
    config.memorization.epochs = epochs;
    config.runtime.seed = seed;
    config.train.batch_size = 64;
    config.memorization.lr = 0.05;
    config.train.optimizer.schedule = "constant".into();
    config.train.optimizer.weight_decay = 0.0;
    let mut options = EstimatorOptions::from_config(&config, Augmentation::None);
    options.cache_root = cache.map(Path::to_path_buf);
    assert_eq!(options.spec.method, Method::Standard);
    options
}

/// A fast training spec for the fine-tuning-side tests.
pub fn quick_spec(method: Method, epochs: usize) -> TrainSpec {
    // The fine-tuning tests' quick setting, at batch 64 and without weight decay.
    let mut spec = train_support::quick_spec(method, epochs, 64);
    spec.optimizer.weight_decay = 0.0;
    spec
}

/// Re-initialized copies of `onnx`'s graph on the CPU, identity input adapter, layout from the graph.
pub fn cpu_factory(
    onnx: &OnnxModel,
) -> impl FnMut(u64) -> Result<Box<dyn Classifier>, robustd::train::TrainError> + '_ {
    robustd::memo::onnx_factory(
        onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
    )
}

/// Re-initialized copies of the MLP, counting how many were made.
pub fn counting_factory<'m>(
    onnx: &'m OnnxModel,
    made: &'m Cell<usize>,
) -> impl FnMut(u64) -> Result<Box<dyn Classifier>, robustd::train::TrainError> + 'm {
    let mut inner = cpu_factory(onnx);
    move |seed| {
        made.set(made.get() + 1);
        inner(seed)
    }
}

/// A synthetic 10-class image task (`[n, 1, 28, 28]` in [0,1]): each class is a fixed pattern of four Gaussian
/// blobs; a sample blends its class pattern (weight λ ~ U(0.55, 1)) with another class's pattern, plus pixel
/// noise. Most samples are typical; those blended near λ = 0.55 are genuinely ambiguous. Source indices start at
/// `first_index`.
pub fn synthetic(n: usize, seed: u64, first_index: i64) -> Split {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5EED_0000 ^ seed);
    // The class patterns come from a fixed stream, so every call (train or test) shares them.
    let mut pattern_rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xC1A55);
    let patterns: Vec<Vec<f32>> = (0..10)
        .map(|_| {
            let blobs: Vec<(f32, f32, f32)> = (0..4)
                .map(|_| {
                    (
                        pattern_rng.random_range(4.0..24.0),
                        pattern_rng.random_range(4.0..24.0),
                        pattern_rng.random_range(2.0..5.0),
                    )
                })
                .collect();
            (0..784)
                .map(|p| {
                    let (r, c) = ((p / 28) as f32, (p % 28) as f32);
                    blobs
                        .iter()
                        .map(|&(br, bc, s)| {
                            (-((r - br).powi(2) + (c - bc).powi(2)) / (2.0 * s * s)).exp()
                        })
                        .sum::<f32>()
                        .min(1.0)
                })
                .collect()
        })
        .collect();
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.random_range(0..10usize);
        let other = (class + rng.random_range(1..10usize)) % 10;
        let lambda: f32 = rng.random_range(0.55..1.0);
        for (own, mixed) in patterns[class].iter().zip(&patterns[other]) {
            let noise: f32 = rng.random_range(-0.35..0.35);
            let v = lambda * own + (1.0 - lambda) * mixed + noise;
            pixels.push(v.clamp(0.0, 1.0));
        }
        labels.push(class as i64);
    }
    Split {
        x: Tensor::from_slice(&pixels).view([n as i64, 1, 28, 28]),
        y: Tensor::from_slice(&labels),
        indices: (0..n as i64).map(|i| i + first_index).collect(),
        source_len: n,
        source: None,
    }
}
