//! White-box attacks on one projected-gradient core, and the score-based Square attack.
//!
//! - [`pgd`]: the core (PGD with random start and restarts, FGSM, CW-PGD) and its building blocks.
//! - [`apgd`]: APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020) on those building blocks.
//! - [`square`]: the Square attack, L∞ and L2, through [`Scorer`] forward passes only.
//! - [`losses`]: per-sample objectives (CE, CW margin, DLR, targeted DLR, TRADES KL).
//! - [`noise`]: seeded per-sample randomness, independent of batch size.
//!
//! [`Attack`] names one configured attack (`eval.attacks` in the config) and runs it on a batch. Every attack works
//! in [0,1] pixel space (normalization lives in the model's forward path), is seeded, and is deterministic on CPU.

pub mod apgd;
pub mod losses;
pub mod noise;
pub mod pgd;
pub mod square;

use tch::{Device, Tensor};
use thiserror::Error;

use crate::config::{EvalSpec, Norm};
use crate::model::{Classifier, ModelError, Scorer};
use apgd::{ApgdLoss, ApgdParams};
use pgd::{Keep, PgdParams};
use square::SquareParams;

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
    #[error("unknown attack `{0}` (known: fgsm, pgd, cw, apgd-ce, apgd-dlr, apgd-t, square)")]
    Unknown(String),
}

/// Target classes APGD-T tries (AutoAttack's standard setting), capped at `classes − 1`.
pub const APGD_T_TARGETS: usize = 9;

/// One configured attack.
#[derive(Debug, Clone, PartialEq)]
pub enum Attack {
    Fgsm(PgdParams),
    Pgd(PgdParams),
    /// PGD on the Carlini–Wagner margin.
    Cw(PgdParams),
    /// APGD-CE, APGD-DLR or APGD-T, by [`ApgdParams::loss`].
    Apgd(ApgdParams),
    Square(SquareParams),
}

/// The budget an attack spends, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub steps: Option<usize>,
    pub restarts: Option<usize>,
    pub queries: Option<usize>,
}

/// The adversarial examples of one batch (CPU, `[N, C, H, W]`) and, for Square, the queries each sample used.
#[derive(Debug)]
pub struct AttackRun {
    pub x_adv: Tensor,
    pub queries: Option<Vec<usize>>,
}

impl Attack {
    /// The attack called `name` in `eval.attacks`, configured from the `eval` block for the given threat model.
    /// Each attack's seed is derived from the master seed and its name, so adding or reordering attacks does not
    /// change another attack's randomness.
    pub fn from_config(
        name: &str,
        spec: &EvalSpec,
        norm: Norm,
        eps: f64,
        seed: u64,
    ) -> Result<Self, AttackError> {
        let seed = noise::derive_seed(seed, name);
        let pgd = || PgdParams::from_spec(&spec.pgd, norm, eps, seed, Keep::Adversarial);
        let apgd = |loss| ApgdParams::new(norm, eps, spec.apgd_steps, loss, seed);
        Ok(match name {
            "fgsm" => Attack::Fgsm(PgdParams::fgsm(norm, eps)),
            "pgd" => Attack::Pgd(pgd()),
            "cw" => Attack::Cw(pgd()),
            "apgd-ce" => Attack::Apgd(apgd(ApgdLoss::Ce)),
            "apgd-dlr" => Attack::Apgd(apgd(ApgdLoss::Dlr)),
            "apgd-t" => Attack::Apgd(apgd(ApgdLoss::TargetedDlr {
                targets: APGD_T_TARGETS,
            })),
            "square" => Attack::Square(SquareParams {
                norm,
                eps,
                queries: spec.square_queries,
                p_init: spec.square_p_init,
                seed,
            }),
            other => return Err(AttackError::Unknown(other.to_owned())),
        })
    }

    /// The name used in configs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Attack::Fgsm(_) => "fgsm",
            Attack::Pgd(_) => "pgd",
            Attack::Cw(_) => "cw",
            Attack::Apgd(p) => match p.loss {
                ApgdLoss::Ce => "apgd-ce",
                ApgdLoss::Dlr => "apgd-dlr",
                ApgdLoss::TargetedDlr { .. } => "apgd-t",
            },
            Attack::Square(_) => "square",
        }
    }

    /// Whether the attack differentiates the model (everything but Square).
    pub fn uses_gradients(&self) -> bool {
        !matches!(self, Attack::Square(_))
    }

    pub fn budget(&self) -> Budget {
        match self {
            Attack::Fgsm(p) | Attack::Pgd(p) | Attack::Cw(p) => Budget {
                steps: Some(p.steps),
                restarts: Some(p.restarts),
                queries: None,
            },
            Attack::Apgd(p) => Budget {
                steps: Some(p.steps),
                restarts: Some(p.restarts),
                queries: None,
            },
            Attack::Square(p) => Budget {
                steps: None,
                restarts: None,
                queries: Some(p.queries),
            },
        }
    }

    /// The attacked threat model.
    pub fn threat(&self) -> (Norm, f64) {
        match self {
            Attack::Fgsm(p) | Attack::Pgd(p) | Attack::Cw(p) => (p.norm, p.eps),
            Attack::Apgd(p) => (p.norm, p.eps),
            Attack::Square(p) => (p.norm, p.eps),
        }
    }

    /// Runs the attack on one batch: `x` `[N, C, H, W]` in [0,1], `y` `[N]`, `rows[i]` the key of row `i`'s
    /// randomness. Gradient attacks run on the model's device; Square only queries the scorer.
    pub fn run(
        &self,
        model: &dyn Classifier,
        scorer: &mut dyn Scorer,
        x: &Tensor,
        y: &Tensor,
        rows: &[u64],
    ) -> Result<AttackRun, AttackError> {
        let x_adv = match self {
            Attack::Fgsm(p) | Attack::Pgd(p) => {
                pgd::pgd_rows(model, x, y, Some(rows), p, &losses::cross_entropy)?
            }
            Attack::Cw(p) => pgd::pgd_rows(model, x, y, Some(rows), p, &losses::cw_margin)?,
            Attack::Apgd(p) => apgd::apgd(model, x, y, Some(rows), p)?,
            Attack::Square(p) => {
                let out = square::square(scorer, x, y, Some(rows), p)?;
                return Ok(AttackRun {
                    x_adv: out.x_adv,
                    queries: Some(out.queries),
                });
            }
        };
        Ok(AttackRun {
            x_adv: x_adv.f_to_device(Device::Cpu)?,
            queries: None,
        })
    }
}
