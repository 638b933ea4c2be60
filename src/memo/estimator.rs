//! What every estimator shares: its options (from `memorization.*`), the result ([`Estimate`]: scores, the models'
//! fit, self-checks, budget), the cache key, the factory of fresh models, and [`train_and_answer`] — train one
//! model from fresh weights with the shared training loop, then ask it about every scored training sample and every
//! test sample (correct or not, and `p(y|x)`).
//!
//! [`estimate`] runs the configured estimator: [`super::speed`] (learning-speed) or [`super::subsets`]
//! (Feldman–Zhang, holdout). Imported scores need no training ([`super::estimate_from_config`] reads them).
//!
//! Models come from a caller's factory `seed → fresh model` (for a dropped ONNX file: its own graph, re-initialized
//! with that seed — [`onnx_factory`]), so tests can use small models. With a cache root, finished models' answers
//! are saved one by one and a run continues where a killed one stopped (see [`super::cache`]); when every model's
//! answers are cached, nothing is trained.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use tch::{Device, Kind};

use super::cache::{split_digests, CacheKey, ModelPredictions, PassCounts, CACHE_FORMAT};
use super::design::SubsetDesign;
use super::scores::{ScoreSource, TrainScores};
use super::tally::Tally;
use super::MemoError;
use crate::config::{Config, Estimator, InputLayout, Method, ThreatModel, TrainSpec};
use crate::data::{Augmentation, BatchOptions, Split};
use crate::model::{Classifier, InputAdapter, ModelError};
use crate::onnx::{OnnxModel, TchModel, TchOptions};
use crate::report::{MemoBudget, Memorization, SelfCheck};
use crate::train::{train, SampleObserver, TrainError, TrainRun};

/// Makes a model with fresh weights drawn from the seed.
pub type ModelFactory<'f> = dyn FnMut(u64) -> Result<Box<dyn Classifier>, TrainError> + 'f;

/// The quantile a learning-speed τ sits at by default: the top decile is atypical.
const TOP_DECILE: f64 = 0.9;

/// Salt of the per-model seeds.
const MODEL_SALT: u64 = 0x4D45_4D4F_0000_0001;

/// How the estimator runs.
#[derive(Debug, Clone)]
pub struct EstimatorOptions<'a> {
    pub estimator: Estimator,
    /// Feldman–Zhang: number of subset models K (at least 2).
    pub k: usize,
    /// Feldman–Zhang: share of the scored samples each model sees (the design rounds it to `m / K`).
    pub subset_ratio: f64,
    /// Feldman–Zhang: a subset model stops once its training accuracy reaches this.
    pub fit_target: f64,
    /// Feldman–Zhang: the most epochs per subset model.
    pub max_epochs: usize,
    /// Learning-speed and holdout: epochs per model.
    pub epochs: usize,
    pub seed: u64,
    /// The models' training: method standard or PGD-AT, the peak rate `memorization.lr`, no validation split, no
    /// early stopping (its `epochs` is set per estimator).
    pub spec: TrainSpec,
    pub threat: ThreatModel,
    pub augmentation: Augmentation,
    /// `<paths.state>/memo`; `None` = keep nothing on disk (no reuse, no resume).
    pub cache_root: Option<PathBuf>,
    pub cancel: Option<&'a AtomicBool>,
}

impl EstimatorOptions<'_> {
    /// From the config: `memorization.*`; the rest of the `train` optimizer and the batch size; `runtime.seed`;
    /// the cache in `paths.state/memo`.
    pub fn from_config(config: &Config, augmentation: Augmentation) -> Self {
        let m = &config.memorization;
        let mut spec = config.train.clone();
        spec.method = if m.adversarial {
            Method::PgdAt
        } else {
            Method::Standard
        };
        spec.optimizer.lr = m.lr;
        spec.val_fraction = 0.0;
        spec.early_stop_patience = 0;
        Self {
            estimator: m.estimator,
            k: m.k,
            subset_ratio: m.subset_ratio,
            fit_target: m.fit_target,
            max_epochs: m.max_epochs,
            epochs: m.epochs,
            seed: config.runtime.seed,
            spec,
            threat: config.threat.clone(),
            augmentation,
            cache_root: Some(config.paths.state.join("memo")),
            cancel: None,
        }
    }

    /// What the estimator may spend, as the report shows it.
    pub fn budget(&self, samples: usize) -> MemoBudget {
        let (models, epochs, fit_target) = match self.estimator {
            Estimator::FeldmanZhang => (self.k, self.max_epochs, Some(self.fit_target)),
            Estimator::Holdout => (2, self.epochs, None),
            Estimator::LearningSpeed => (1, self.epochs, None),
            Estimator::Import => (0, 0, None),
        };
        MemoBudget {
            samples: samples as u64,
            models: models as u64,
            epochs: epochs as u64,
            fit_target,
            lr: self.spec.optimizer.lr,
            training: if self.spec.method == Method::PgdAt {
                "pgd-at".into()
            } else {
                "standard".into()
            },
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

/// How one trained model did on the samples it trained on, on the scored samples it never saw, and on the test
/// samples (after training, eval mode).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFit {
    pub in_subset_acc: f64,
    /// `None` when the model trained on every scored sample (learning-speed).
    pub out_of_subset_acc: Option<f64>,
    pub test_acc: Option<f64>,
    pub epochs: usize,
    pub seconds: f64,
    /// Trained in this run (else loaded from the cache).
    pub trained_now: bool,
}

/// Per test sample: source index and consistency score (the models' mean `p(y|x)`; none of them saw it).
#[derive(Debug, Clone, PartialEq)]
pub struct TestConsistency {
    pub indices: Vec<i64>,
    pub scores: Vec<f64>,
}

/// The estimator's result.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// The score of every scored training sample.
    pub scores: TrainScores,
    pub models: Vec<ModelFit>,
    pub consistency: Option<TestConsistency>,
    /// Feldman–Zhang and holdout: the design and the per-sample counts over the models.
    pub design: Option<SubsetDesign>,
    pub tally: Option<Tally>,
    /// Learning-speed: the training passes per sample.
    pub passes: Option<PassCounts>,
    pub self_check: Option<SelfCheck>,
    pub budget: Option<MemoBudget>,
    /// The cache entry, when caching.
    pub cache_dir: Option<PathBuf>,
}

impl Estimate {
    /// Scores that needed no training (imported).
    pub fn untrained(scores: TrainScores) -> Self {
        Self {
            scores,
            models: Vec::new(),
            consistency: None,
            design: None,
            tally: None,
            passes: None,
            self_check: None,
            budget: None,
            cache_dir: None,
        }
    }

    /// Whether every model came from the cache.
    pub fn cached(&self) -> bool {
        self.models.iter().all(|m| !m.trained_now)
    }

    /// Models trained in this run.
    pub fn trained(&self) -> usize {
        self.models.iter().filter(|m| m.trained_now).count()
    }

    /// τ for these scores: `configured` (`memorization.threshold`), else the source's default
    /// ([`Estimator::default_threshold`]) — for learning-speed the 90th percentile of the scores, so the top
    /// decile is atypical.
    pub fn threshold(&self, configured: Option<f64>) -> f64 {
        let default = match self.scores.source {
            ScoreSource::LearningSpeed { .. } => Estimator::LearningSpeed,
            ScoreSource::FeldmanZhang { .. } => Estimator::FeldmanZhang,
            ScoreSource::Holdout { .. } => Estimator::Holdout,
            ScoreSource::Imported { .. } => Estimator::Import,
        }
        .default_threshold();
        configured
            .or(default)
            .unwrap_or_else(|| self.scores.quantile(TOP_DECILE))
    }

    /// The report's `memorization:` section: the scores' section with the estimator's budget and self-checks.
    pub fn report_section(
        &self,
        threshold: f64,
        harmful: Vec<crate::report::HarmfulSample>,
    ) -> Memorization {
        let mut section = self.scores.report_section(threshold, harmful);
        section.budget = self.budget.clone();
        section.self_check = self.self_check.clone();
        section
    }
}

/// Runs (or loads) the configured estimator for the samples of `scored`, with consistency scores for `test`
/// when given.
pub fn estimate(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
) -> Result<Estimate, MemoError> {
    if scored.is_empty() {
        return Err(MemoError::Invalid {
            key: "memorization.train_samples",
            message: "no training samples to score".into(),
        });
    }
    let mut estimate = match options.estimator {
        Estimator::LearningSpeed => {
            super::speed::estimate(scored, test, identity, factory, options)
        }
        Estimator::FeldmanZhang => {
            super::subsets::feldman_zhang(scored, test, identity, factory, options)
        }
        Estimator::Holdout => super::subsets::holdout(scored, test, identity, factory, options),
        Estimator::Import => Err(MemoError::Invalid {
            key: "memorization.estimator",
            message: "imported scores are read, not estimated (memorization.scores)".into(),
        }),
    }?;
    estimate.budget = Some(options.budget(scored.len()));
    if let Some(check) = &estimate.self_check {
        for warning in &check.warnings {
            tracing::warn!(estimator = options.estimator.name(), "{warning}");
        }
    }
    Ok(estimate)
}

/// One model to train: its seed, epochs, and what watches it.
pub(super) struct Training<'a> {
    pub seed: u64,
    pub epochs: usize,
    pub fit_target: Option<f64>,
    pub observer: Option<&'a dyn SampleObserver>,
    pub checkpoint_dir: Option<PathBuf>,
}

/// Trains a fresh model from `factory` on `train_on` and returns its answers on every sample of `scored` and of
/// `test`. A cancellation comes back as [`TrainError::Cancelled`] inside [`MemoError::Train`].
pub(super) fn train_and_answer(
    train_on: &Split,
    scored: &Split,
    test: Option<&Split>,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
    training: Training,
) -> Result<ModelPredictions, MemoError> {
    let mut net = factory(training.seed)?;
    let mut spec = options.spec.clone();
    spec.epochs = training.epochs;
    let mut run = TrainRun::new(&spec, &options.threat, training.seed, options.augmentation)?;
    run.cancel = options.cancel;
    run.checkpoint_dir = training.checkpoint_dir;
    run.observer = training.observer;
    run.fit_target = training.fit_target;
    run.lr_key = "memorization.lr";
    let result = train(net.as_mut(), train_on, &run)?;
    let batch = options.spec.batch_size;
    let (train_correct, train_p) = answers(net.as_mut(), scored, batch)?;
    let (test_correct, test_p) = match test {
        Some(t) => answers(net.as_mut(), t, batch)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(ModelPredictions {
        train_correct,
        train_p,
        test_correct,
        test_p,
        seconds: result.seconds,
        epochs: result.epochs as u32,
        passes: None,
    })
}

/// Per sample of `split`: classified correctly, and `p(y|x)` (eval mode).
fn answers(
    model: &mut dyn Classifier,
    split: &Split,
    batch_size: usize,
) -> Result<(Vec<bool>, Vec<f32>), MemoError> {
    model.set_train(false);
    let device = model.device();
    let (mut correct, mut p) = (
        Vec::with_capacity(split.len()),
        Vec::with_capacity(split.len()),
    );
    for batch in split.batches(&BatchOptions::eval(batch_size.max(1)))? {
        let batch = batch?;
        let x = batch.x.f_to_device(device)?;
        let y = batch.y.f_to_device(device)?.f_unsqueeze(1)?;
        let logits = tch::no_grad(|| model.forward(&x))?;
        let right = logits
            .f_argmax(1, true)?
            .f_eq_tensor(&y)?
            .f_squeeze_dim(1)?;
        let prob = logits
            .f_softmax(1, Kind::Float)?
            .f_gather(1, &y, false)?
            .f_squeeze_dim(1)?;
        correct.extend(Vec::<bool>::try_from(&right.f_to_device(Device::Cpu)?)?);
        p.extend(Vec::<f32>::try_from(&prob.f_to_device(Device::Cpu)?)?);
    }
    Ok((correct, p))
}

/// The seed of model `model` (its weights and its training order).
pub fn model_seed(seed: u64, model: usize) -> u64 {
    let mut z =
        (seed ^ MODEL_SALT).wrapping_add((model as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The labels of a split on the host.
pub(super) fn host_labels(split: &Split) -> Result<Vec<i64>, MemoError> {
    Ok(Vec::<i64>::try_from(
        &split.y.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?,
    )?)
}

/// The cache key of an estimator run training `models` models for `epochs` epochs each (the cap for
/// Feldman–Zhang).
pub(super) fn cache_key(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    options: &EstimatorOptions,
    (models, subset_ratio, epochs): (usize, f64, usize),
    fit_target: Option<f64>,
) -> Result<CacheKey, MemoError> {
    let (train_indices_sha256, train_labels_sha256) = split_digests(scored)?;
    let (test_indices_sha256, test_labels_sha256) = match test {
        Some(t) => split_digests(t)?,
        None => (String::new(), String::new()),
    };
    let mut spec = options.spec.clone();
    spec.epochs = epochs;
    let training = serde_norway::to_string(&(&spec, &options.threat, options.augmentation.name()))
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
        estimator: options.estimator.name().into(),
        k: models,
        subset_ratio,
        fit_target,
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
