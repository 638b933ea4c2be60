//! Training: one loop for standard training, PGD-AT, TRADES and Benign Adversarial Training (BAT), with
//! checkpoints, resume, validation-based model selection and cancellation.
//!
//! Module map (each owns one thing):
//! - [`objective`]: what each method minimizes per batch (the BAT weights and regularizer live here).
//! - [`optim`]: hand-written SGD and Adam whose state is plain tensors (checkpointable).
//! - [`schedule`]: the learning rate per step (warm-up, cosine, piecewise, constant).
//! - [`atypical`]: which training samples are atypical — flags from scores (the memorization module's, or an
//!   imported file).
//! - [`collapse`]: spotting a run whose model collapsed to one class, at the batch it becomes clear.
//! - [`trainer`]: the loop ([`train`]) and its options ([`TrainRun`]).
//! - [`validate`]: clean and PGD robust accuracy on a held-out split.
//! - [`checkpoint`]: atomic per-epoch (and on-cancel) checkpoints and resume.
//! - [`record`]: per-epoch records, the CSV training log and the serializable [`TrainResult`].
//! - [`accel`]: CUDA-only speed options (bfloat16 AMP, channels-last inputs).
//!
//! Every adversarial example comes from the shared projected-gradient core ([`crate::attack::pgd`]); every random
//! draw is derived from `(seed, epoch, batch)`, so a run is reproducible and a resumed run on CPU ends with exactly
//! the weights of an uninterrupted one.

pub mod accel;
pub mod atypical;
pub mod checkpoint;
pub mod collapse;
pub mod objective;
pub mod optim;
pub mod record;
pub mod schedule;
pub mod trainer;
pub mod validate;

use std::path::PathBuf;

use thiserror::Error;

use crate::attack::AttackError;
use crate::data::DataError;
use crate::model::ModelError;

pub use atypical::{Atypicality, AtypicalitySetting, ScoreTable};
pub use objective::{bat_weights, BatParams, Objective};
pub use optim::Optimizer;
pub use record::{EpochRecord, TrainResult};
pub use schedule::LrSchedule;
pub use trainer::{train, validation_split, Claim, SampleObserver, TrainRun};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("attack while crafting training examples: {0}")]
    Attack(#[from] AttackError),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("invalid training setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(
        "the training loss became {value} at epoch {epoch}, batch {batch}; training stopped and the model was \
         left as it was given (try a lower train.optimizer.lr)"
    )]
    NonFiniteLoss {
        epoch: usize,
        batch: usize,
        value: f64,
    },
    #[error(
        "training collapsed at epoch {epoch} (batch {batch}): over the last {batches} batches the model gave one \
         class to {:.0} % of each batch (most often class {class}), accuracy {accuracy:.3} (chance {:.3}), \
         cross-entropy {cross_entropy:.2} (ln {classes} = {:.2}); the run was stopped and the model left as it \
         was given. Try: {hint}",
        100.0 * class_share, 1.0 / *classes as f64, (*classes as f64).ln()
    )]
    Collapsed {
        epoch: usize,
        batch: usize,
        batches: usize,
        accuracy: f64,
        classes: usize,
        cross_entropy: f64,
        class: usize,
        class_share: f64,
        /// What to change (learning rate, β, warm-up, eps), with the run's current values.
        hint: String,
    },
    #[error(
        "training cancelled at epoch {epoch}, batch {batch}{}",
        match checkpoint { Some(dir) => format!("; checkpoint saved in {}, run again to resume", dir.display()),
                           None => String::new() }
    )]
    Cancelled {
        epoch: usize,
        batch: usize,
        checkpoint: Option<PathBuf>,
    },
    #[error(
        "training stopped at epoch {epoch}, batch {batch} without writing {}: the run no longer owns it (another \
         worker took the job over and resumes from it)", dir.display()
    )]
    ClaimLost {
        epoch: usize,
        batch: usize,
        dir: PathBuf,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] crate::durable::WriteError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("atypicality scores {path}: {message}")]
    Scores { path: PathBuf, message: String },
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
