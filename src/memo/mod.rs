//! Memorization and atypicality: which training samples a model can only fit by memorizing them, and what that
//! does to its clean and robust accuracy.
//!
//! Estimators (`memorization.estimator`), each scoring every sample of the *scored split* (the first
//! `memorization.train_samples` training samples) on its own scale, thresholded at τ:
//! - [`speed`] **learning-speed** (the default): one model from fresh weights, `1 − mean p(y|x)` over its training
//!   passes;
//! - [`subsets`] **feldman-zhang**: K subset models trained until they fit their subsets, the soft
//!   `E[p(y|x) | in] − E[p(y|x) | out]`; and **holdout**: two half models, `1 − p(y|x)` under the one that never
//!   saw the sample;
//! - **import**: scores from a file (`memorization.scores`, or a path in `train.bat.atypicality`).
//!
//! Module map (each owns one thing):
//! - [`estimator`]: options, the [`Estimate`], training one model and collecting its answers, the cache key;
//! - [`speed`], [`subsets`]: the estimators; [`checks`]: their self-checks (fit, consistency), in every report;
//! - [`design`]: which subset model sees which sample (balanced: each sample in exactly `round(ratio·K)` subsets);
//! - [`tally`]: per-sample in/out counts and probability sums, the 0/1 and soft scores, standard errors, test
//!   consistency — the arithmetic, with undefined scores explicit;
//! - [`cache`]: the estimators' entries in `<paths.state>/memo/<key>/`, reuse across models of one architecture and
//!   resume after a kill;
//! - [`scores`]: scores from any source and what derives from them — BAT's atypicality flags, deciles, histogram,
//!   the report's `memorization:` section;
//! - [`groups`]: a model's clean/adversarial accuracy per typical/atypical group and per decile;
//! - [`harmful`]: the harmful atypical samples and their image grid;
//! - [`output`]: the files `robustd memorization` (and the pipeline) write.
//!
//! Typical pipeline use: [`estimate_from_config`] → [`bat_atypicality`] for BAT → [`groups::model_groups`] before
//! and after fine-tuning → [`harmful::harmful_atypical`] → [`Estimate::report_section`].

pub mod cache;
pub mod checks;
pub mod design;
pub mod estimator;
pub mod groups;
pub mod harmful;
pub mod output;
pub mod scores;
pub mod speed;
pub mod subsets;
pub mod tally;

use std::path::PathBuf;

use thiserror::Error;

use crate::config::{Config, Estimator, MemorizationSpec};
use crate::data::{DataError, Dataset, Split};
use crate::durable::WriteError;
use crate::report::plots::PlotError;
use crate::train::{Atypicality, AtypicalitySetting, ScoreTable, TrainError};

pub use design::SubsetDesign;
pub use estimator::{
    estimate, onnx_factory, Estimate, EstimatorOptions, Identity, ModelFactory, ModelFit,
    TestConsistency,
};
pub use groups::{model_groups, GroupOptions, ModelGroups, SampleOutcome};
pub use harmful::{harmful_atypical, harmful_grid};
pub use scores::{ScoreSource, TrainScores};
pub use speed::LearningSpeed;
pub use tally::{Answers, Consistency, Tally};

#[derive(Debug, Error)]
pub enum MemoError {
    #[error("training a subset model: {0}")]
    Train(#[from] TrainError),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("attack while measuring groups: {0}")]
    Attack(#[from] crate::attack::AttackError),
    #[error("invalid memorization setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("memorization cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(
        "memorization cancelled after {completed} of {models} subset models{}",
        match cache { Some(dir) => format!("; progress kept in {}, run again to resume", dir.display()),
                      None => String::new() }
    )]
    Cancelled {
        completed: usize,
        models: usize,
        cache: Option<PathBuf>,
    },
}

/// The scored training samples: the first `samples` of `train` (0 = all; more than it holds = all).
pub fn scored_split(train: &Split, samples: usize) -> Result<Split, MemoError> {
    let take = if samples == 0 {
        train.len()
    } else {
        samples.min(train.len())
    };
    Ok(train.select(&(0..take as i64).collect::<Vec<_>>())?)
}

/// The `memorization` settings in force: `train.bat.atypicality: holdout` and a score path there are shorthands
/// for `memorization.estimator: holdout` and `import` (with that file); `memorization` leaves the section as is.
pub fn effective_spec(config: &Config) -> MemorizationSpec {
    let mut spec = config.memorization.clone();
    match AtypicalitySetting::parse(&config.train.bat.atypicality) {
        AtypicalitySetting::Memorization => {}
        AtypicalitySetting::Holdout => spec.estimator = Estimator::Holdout,
        AtypicalitySetting::File { .. } => {
            spec.estimator = Estimator::Import;
            spec.scores = Some(config.train.bat.atypicality.clone());
        }
    }
    spec
}

/// Runs (or loads from `paths.state/memo`) the estimator in force ([`effective_spec`]) for `dataset` and a model
/// whose graph-structure hash is `architecture`: scores the first `memorization.train_samples` training samples
/// and gives every test sample a consistency score. Imported scores cover every loaded training sample. Returns
/// the scored split beside the estimate.
pub fn estimate_from_config(
    config: &Config,
    dataset: &Dataset,
    architecture: &str,
    factory: &mut ModelFactory,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(Split, Estimate), MemoError> {
    let spec = effective_spec(config);
    if spec.estimator == Estimator::Import {
        let setting = spec.scores.as_deref().unwrap_or_default();
        let AtypicalitySetting::File { path, key } = AtypicalitySetting::parse(setting) else {
            return Err(MemoError::Invalid {
                key: "memorization.scores",
                message: format!("`{setting}` is not a score file"),
            });
        };
        let table = ScoreTable::load(&path, key.as_deref())?;
        let scored = scored_split(&dataset.train, 0)?;
        let scores = TrainScores::from_table(&table, &scored);
        return Ok((scored, Estimate::untrained(scores)));
    }
    let scored = scored_split(&dataset.train, spec.train_samples)?;
    let mut resolved = config.clone();
    resolved.memorization = spec;
    let mut options = EstimatorOptions::from_config(&resolved, dataset.augmentation);
    options.cancel = cancel;
    let identity = Identity {
        dataset_sha256: &dataset.sha256,
        architecture,
    };
    let estimate = estimate(&scored, Some(&dataset.test), identity, factory, &options)?;
    Ok((scored, estimate))
}

/// BAT's atypicality input: the flags of the fine-tuning split from the estimate's scores, atypical when the score
/// is above τ; fine-tuning samples the estimator did not score count as typical.
pub fn bat_atypicality(estimate: &Estimate, finetune: &Split, threshold: f64) -> Atypicality {
    estimate.scores.atypicality(finetune, threshold)
}
