//! White-box attacks on one projected-gradient core, and the score-based Square attack.
//!
//! - [`pgd`]: the core (PGD with random start and restarts, FGSM, CW-PGD) and its building blocks.
//! - [`losses`]: per-sample objectives (CE, CW margin, DLR, targeted DLR, TRADES KL).
//! - [`noise`]: seeded per-sample randomness, independent of batch size.
//!
//! Every attack works in [0,1] pixel space (normalization lives in the model's forward path), is seeded, and is
//! deterministic on CPU.

pub mod losses;
pub mod noise;
pub mod pgd;

use thiserror::Error;

use crate::model::ModelError;

#[derive(Debug, Error)]
pub enum AttackError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("attack loss must be per sample: expected shape [{expected}], got {got:?}")]
    LossShape { expected: i64, got: Vec<i64> },
}
