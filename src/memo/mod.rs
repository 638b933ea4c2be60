//! Memorization and atypicality: which training samples a model can only fit by memorizing them, and what that
//! does to its clean and robust accuracy.
//!
//! Module map (each owns one thing):
//! - [`design`]: which subset model sees which sample (balanced: each sample in exactly `round(ratio·K)` subsets);
//! - [`tally`]: per-sample in/out counts, `mem(i)`, test consistency — the arithmetic, with undefined scores
//!   explicit;
//! - [`estimator`]: trains the K subset models with the shared training loop and collects their predictions;
//! - [`cache`]: the estimator's entries in `<paths.state>/memo/<key>/`, reuse across models of one architecture and
//!   resume after a kill;
//! - [`scores`]: scores from any source (estimator, imported file, learning-speed proxy) and what derives from
//!   them — BAT's atypicality flags, deciles, histogram, the report's `memorization:` section;
//! - [`speed`]: the learning-speed proxy recorded during a training run;
//! - [`groups`]: a model's clean/adversarial accuracy per typical/atypical group and per decile;
//! - [`harmful`]: the harmful atypical samples and their image grid;
//! - [`output`]: the files `robustd memorization` (and the pipeline) write.
//!
//! Typical pipeline use: [`scored_split`] → [`estimator::estimate`] (or [`TrainScores::from_table`] for imported
//! scores) → [`TrainScores::atypicality`] for BAT → [`groups::model_groups`] before and after fine-tuning →
//! [`harmful::harmful_atypical`] → [`TrainScores::report_section`].

pub mod cache;
pub mod design;
pub mod estimator;
pub mod groups;
pub mod harmful;
pub mod output;
pub mod scores;
pub mod speed;
pub mod tally;

use std::path::PathBuf;

use thiserror::Error;

use crate::config::Config;
use crate::data::{DataError, Dataset, Split};
use crate::durable::WriteError;
use crate::report::plots::PlotError;
use crate::train::{Atypicality, TrainError};

pub use design::SubsetDesign;
pub use estimator::{
    estimate, onnx_factory, Estimate, EstimatorOptions, Identity, ModelFactory, ModelFit,
    TestConsistency,
};
pub use groups::{model_groups, GroupOptions, ModelGroups, SampleOutcome};
pub use harmful::{harmful_atypical, harmful_grid};
pub use scores::{ScoreSource, TrainScores};
pub use speed::LearningSpeed;
pub use tally::{Consistency, Tally};

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

/// Runs (or loads from `paths.state/memo`) the estimator the config describes for `dataset` and a model whose
/// graph-structure hash is `architecture`: scores the first `memorization.train_samples` training samples and
/// every test sample. Returns the scored split beside the estimate.
pub fn estimate_from_config(
    config: &Config,
    dataset: &Dataset,
    architecture: &str,
    factory: &mut ModelFactory,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(Split, Estimate), MemoError> {
    let scored = scored_split(&dataset.train, config.memorization.train_samples)?;
    let mut options = EstimatorOptions::from_config(config, dataset.augmentation);
    options.cancel = cancel;
    let identity = Identity {
        dataset_sha256: &dataset.sha256,
        architecture,
    };
    let estimate = estimate(&scored, Some(&dataset.test), identity, factory, &options)?;
    Ok((scored, estimate))
}

/// BAT's atypicality input for `train.bat.atypicality: memorization`: the flags of the fine-tuning split from the
/// estimator's scores, atypical when `mem(i) > memorization.threshold`; fine-tuning samples the estimator did not
/// score count as typical.
pub fn bat_atypicality(estimate: &Estimate, finetune: &Split, threshold: f64) -> Atypicality {
    estimate.scores.atypicality(finetune, threshold)
}
