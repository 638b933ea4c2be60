//! The Feldman–Zhang subsampling estimator: K models, each trained from fresh weights on its subset of the scored
//! training samples (the [`SubsetDesign`]) with the shared training loop — standard training, or PGD-AT when
//! `memorization.adversarial` — then asked to classify every scored training sample and every test sample. The
//! [`Tally`] turns their answers into `mem(i)`; the test answers into consistency scores.
//!
//! Models come from a caller's factory `seed → fresh model` (for a dropped ONNX file: its own graph,
//! re-initialized with that seed — [`onnx_factory`]), so tests can use small models. With a cache root, finished
//! models' predictions are saved one by one and a run continues where a killed one stopped (see
//! [`super::cache`]); when every model's predictions are cached, nothing is trained. The cancellation flag is
//! checked before each model and inside the training loop (which checkpoints the model's position).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind};

use super::cache::{split_digests, CacheKey, ModelPredictions, Store, CACHE_FORMAT};
use super::design::SubsetDesign;
use super::scores::{ScoreSource, TrainScores};
use super::tally::{Consistency, Tally};
use super::MemoError;
use crate::config::{Config, InputLayout, ThreatModel, TrainSpec};
use crate::data::{Augmentation, Split};
use crate::logfmt::Sig;
use crate::model::{Classifier, InputAdapter, ModelError};
use crate::onnx::{OnnxModel, TchModel, TchOptions};
use crate::train::validate::predictions;
use crate::train::{train, HoldoutOptions, TrainError, TrainRun};

/// Makes a model with fresh weights drawn from the seed.
pub type ModelFactory<'f> = dyn FnMut(u64) -> Result<Box<dyn Classifier>, TrainError> + 'f;

/// Salt of the per-model seeds.
const MODEL_SALT: u64 = 0x4D45_4D4F_0000_0001;

/// How the estimator runs.
#[derive(Debug, Clone)]
pub struct EstimatorOptions<'a> {
    /// Number of subset models K (at least 2).
    pub k: usize,
    /// Share of the scored samples each model sees (the design rounds it to `m / K`).
    pub subset_ratio: f64,
    pub seed: u64,
    /// Each subset model's training: method standard or PGD-AT, no validation split, no early stopping.
    pub spec: TrainSpec,
    pub threat: ThreatModel,
    pub augmentation: Augmentation,
    /// `<paths.state>/memo`; `None` = keep nothing on disk (no reuse, no resume).
    pub cache_root: Option<PathBuf>,
    pub cancel: Option<&'a AtomicBool>,
}

impl EstimatorOptions<'_> {
    /// From the config: `memorization.k`, `subset_ratio`, `epochs`, `adversarial` and `lr`; the rest of the
    /// `train` optimizer and the batch size (the holdout estimate's rules, [`HoldoutOptions::from_config`]);
    /// `runtime.seed`; the cache in `paths.state/memo`.
    pub fn from_config(config: &Config, augmentation: Augmentation) -> Self {
        let training = HoldoutOptions::from_config(config, augmentation);
        let mut spec = training.spec;
        spec.optimizer.lr = config.memorization.lr;
        Self {
            k: config.memorization.k,
            subset_ratio: config.memorization.subset_ratio,
            seed: config.runtime.seed,
            spec,
            threat: training.threat,
            augmentation,
            cache_root: Some(config.paths.state.join("memo")),
            cancel: None,
        }
    }
}

/// What identifies the data and the architecture in the cache key.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// `Dataset::sha256`.
    pub dataset_sha256: &'a str,
    /// `OnnxModel::structure_hash()`.
    pub architecture: &'a str,
}

/// How one subset model did on its own subset, on the samples it never saw, and on the test samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFit {
    pub in_subset_acc: f64,
    pub out_of_subset_acc: f64,
    pub test_acc: Option<f64>,
    pub seconds: f64,
    /// Trained in this run (else loaded from the cache).
    pub trained_now: bool,
}

/// Per test sample: source index and consistency score.
#[derive(Debug, Clone, PartialEq)]
pub struct TestConsistency {
    pub indices: Vec<i64>,
    pub counts: Consistency,
    /// Mean accuracy of the K models.
    pub scores: Vec<f64>,
}

/// The estimator's result.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// `mem(i)` of every scored training sample.
    pub scores: TrainScores,
    pub tally: Tally,
    pub consistency: Option<TestConsistency>,
    pub design: SubsetDesign,
    pub models: Vec<ModelFit>,
    /// The cache entry, when caching.
    pub cache_dir: Option<PathBuf>,
}

impl Estimate {
    /// Whether every model came from the cache.
    pub fn cached(&self) -> bool {
        self.models.iter().all(|m| !m.trained_now)
    }

    /// Models trained in this run.
    pub fn trained(&self) -> usize {
        self.models.iter().filter(|m| m.trained_now).count()
    }
}

/// Runs (or loads) the estimator for the samples of `scored`, with consistency scores for `test` when given.
pub fn estimate(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
) -> Result<Estimate, MemoError> {
    let n = scored.len();
    if n == 0 {
        return Err(MemoError::Invalid {
            key: "memorization.train_samples",
            message: "no training samples to score".into(),
        });
    }
    let design = SubsetDesign::balanced(n, options.k, options.subset_ratio, options.seed)?;
    let store = match &options.cache_root {
        Some(root) => Some(Store::open(
            root,
            &cache_key(scored, test, identity, options)?,
        )?),
        None => None,
    };
    let train_labels = host_labels(scored)?;
    let test_labels = test.map(host_labels).transpose()?;
    let test_len = test.map_or(0, Split::len);
    let mut tally = Tally::new(n);
    let mut consistency = Consistency::new(test_len);
    let mut models = Vec::with_capacity(options.k);
    for model in 0..options.k {
        let cached = match &store {
            Some(s) => s.load(model, n, test_len)?,
            None => None,
        };
        let (predicted, trained_now) = match cached {
            Some(p) => (p, false),
            None => {
                if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(MemoError::Cancelled {
                        completed: model,
                        models: options.k,
                        cache: store.as_ref().map(|s| s.dir().to_path_buf()),
                    });
                }
                let p = train_one(
                    model,
                    scored,
                    test,
                    &design,
                    (&train_labels, test_labels.as_deref()),
                    factory,
                    options,
                    store.as_ref(),
                )?;
                if let Some(s) = &store {
                    s.save(model, &p)?;
                }
                (p, true)
            }
        };
        let member = design.membership(model);
        tally.add_model(member, &predicted.train_correct)?;
        if test.is_some() {
            consistency.add_model(&predicted.test_correct)?;
        }
        let fit = model_fit(member, &predicted, test.is_some(), trained_now);
        tracing::info!(
            model = model + 1,
            of = options.k,
            in_subset_acc = %Sig(fit.in_subset_acc),
            out_of_subset_acc = %Sig(fit.out_of_subset_acc),
            test_acc = fit.test_acc.map(|v| tracing::field::display(Sig(v))),
            seconds = %Sig(fit.seconds),
            cached = !trained_now,
            "memorization subset model"
        );
        models.push(fit);
    }
    let seconds = models.iter().map(|m| m.seconds).sum();
    let cached = models.iter().all(|m| !m.trained_now);
    let scores = TrainScores {
        source: ScoreSource::FeldmanZhang {
            models: options.k,
            per_sample: design.per_sample(),
            configured_ratio: options.subset_ratio,
            cached,
            seconds,
        },
        indices: scored.indices.clone(),
        scores: tally.scores(),
    };
    let consistency = test.map(|t| TestConsistency {
        indices: t.indices.clone(),
        scores: consistency.scores(),
        counts: consistency,
    });
    Ok(Estimate {
        scores,
        tally,
        consistency,
        design,
        models,
        cache_dir: store.map(|s| s.dir().to_path_buf()),
    })
}

/// Trains subset model `model` from fresh weights and records what it gets right.
#[allow(clippy::too_many_arguments)]
fn train_one(
    model: usize,
    scored: &Split,
    test: Option<&Split>,
    design: &SubsetDesign,
    (train_labels, test_labels): (&[i64], Option<&[i64]>),
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
    store: Option<&Store>,
) -> Result<ModelPredictions, MemoError> {
    let seed = model_seed(options.seed, model);
    let mut net = factory(seed)?;
    let mut run = TrainRun::new(&options.spec, &options.threat, seed, options.augmentation)?;
    run.cancel = options.cancel;
    run.checkpoint_dir = store.map(|s| s.checkpoint_dir(model));
    let subset = scored.select(&design.positions(model))?;
    let result = match train(net.as_mut(), &subset, &run) {
        Ok(r) => r,
        Err(TrainError::Cancelled { .. }) => {
            return Err(MemoError::Cancelled {
                completed: model,
                models: options.k,
                cache: store.map(|s| s.dir().to_path_buf()),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let batch = options.spec.batch_size;
    let train_correct = correct(net.as_mut(), scored, train_labels, batch)?;
    let test_correct = match (test, test_labels) {
        (Some(t), Some(labels)) => correct(net.as_mut(), t, labels, batch)?,
        _ => Vec::new(),
    };
    Ok(ModelPredictions {
        train_correct,
        test_correct,
        seconds: result.seconds,
    })
}

/// The seed of subset model `model` (its weights and its training order).
pub fn model_seed(seed: u64, model: usize) -> u64 {
    let mut z =
        (seed ^ MODEL_SALT).wrapping_add((model as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn correct(
    model: &mut dyn Classifier,
    split: &Split,
    labels: &[i64],
    batch_size: usize,
) -> Result<Vec<bool>, MemoError> {
    let predicted = Vec::<i64>::try_from(&predictions(model, split, batch_size)?)?;
    Ok(predicted.iter().zip(labels).map(|(p, y)| p == y).collect())
}

fn host_labels(split: &Split) -> Result<Vec<i64>, MemoError> {
    Ok(Vec::<i64>::try_from(
        &split.y.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?,
    )?)
}

fn model_fit(
    member: &[bool],
    predicted: &ModelPredictions,
    with_test: bool,
    trained_now: bool,
) -> ModelFit {
    let share = |pick: bool| {
        let (seen, right) = member
            .iter()
            .zip(&predicted.train_correct)
            .filter(|(&m, _)| m == pick)
            .fold((0usize, 0usize), |(s, r), (_, &c)| {
                (s + 1, r + usize::from(c))
            });
        if seen == 0 {
            0.0
        } else {
            right as f64 / seen as f64
        }
    };
    let test_acc = (with_test && !predicted.test_correct.is_empty()).then(|| {
        predicted.test_correct.iter().filter(|&&c| c).count() as f64
            / predicted.test_correct.len() as f64
    });
    ModelFit {
        in_subset_acc: share(true),
        out_of_subset_acc: share(false),
        test_acc,
        seconds: predicted.seconds,
        trained_now,
    }
}

fn cache_key(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    options: &EstimatorOptions,
) -> Result<CacheKey, MemoError> {
    let (train_indices_sha256, train_labels_sha256) = split_digests(scored)?;
    let (test_indices_sha256, test_labels_sha256) = match test {
        Some(t) => split_digests(t)?,
        None => (String::new(), String::new()),
    };
    let training =
        serde_norway::to_string(&(&options.spec, &options.threat, options.augmentation.name()))
            .map_err(|e| MemoError::Invalid {
                key: "train",
                message: e.to_string(),
            })?;
    Ok(CacheKey {
        format: CACHE_FORMAT.into(),
        dataset_sha256: identity.dataset_sha256.into(),
        architecture: identity.architecture.into(),
        train_samples: scored.len(),
        train_indices_sha256,
        train_labels_sha256,
        test_samples: test.map_or(0, Split::len),
        test_indices_sha256,
        test_labels_sha256,
        k: options.k,
        subset_ratio: options.subset_ratio,
        seed: options.seed,
        training,
    })
}

/// A factory of fresh copies of `onnx`'s own graph: built on `device` with `adapter` and `layout`, BatchNorm
/// trained (running statistics must be learned from scratch), weights re-initialized from the seed
/// ([`TchModel::reinitialize`]: Kaiming/Xavier by op type).
pub fn onnx_factory<'m>(
    onnx: &'m OnnxModel,
    adapter: InputAdapter,
    layout: InputLayout,
    device: Device,
) -> impl FnMut(u64) -> Result<Box<dyn Classifier>, TrainError> + 'm {
    move |seed| {
        let as_train =
            |e: crate::onnx::OnnxError| TrainError::Model(ModelError::Forward(e.to_string()));
        let options = TchOptions {
            train_batchnorm: true,
            ..TchOptions::default()
        };
        let mut model = TchModel::with_layout(onnx, adapter.clone(), layout, device, options)
            .map_err(as_train)?;
        model.reinitialize(seed).map_err(as_train)?;
        Ok(Box::new(model) as Box<dyn Classifier>)
    }
}
