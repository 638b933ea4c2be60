//! White-box attacks on one projected-gradient core, and the score-based Square attack.
//!
//! - [`pgd`]: the core (PGD with random start and restarts, FGSM, CW-PGD) and its building blocks.
//! - [`apgd`]: APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020) on those building blocks.
//! - [`fab`]: FAB and FAB-T, the minimal-perturbation attack, on the same blocks; [`hyperplane`] is its projection.
//! - [`square`]: the Square attack, L∞ and L2, through [`Scorer`] forward passes only.
//! - [`losses`]: per-sample objectives (CE, CW margin, DLR, targeted DLR and margin, TRADES KL) and the targets of
//!   the targeted attacks.
//! - [`noise`]: seeded per-sample randomness, independent of batch size.
//!
//! [`Attack`] names one configured attack (`eval.attacks` in the config) and runs it on a batch. Every attack works
//! in [0,1] pixel space (normalization lives in the model's forward path), is seeded, and is deterministic on CPU.

pub mod apgd;
pub mod fab;
pub mod hyperplane;
pub mod losses;
pub mod noise;
pub mod pgd;
pub mod square;

use tch::{Device, Tensor};
use thiserror::Error;

use crate::config::{EvalSpec, Norm};
use crate::model::{Classifier, ModelError, Scorer};
use apgd::{ApgdLoss, ApgdParams};
use fab::FabParams;
use pgd::{Keep, PgdParams};
use square::{SquareParams, SquareSampling};

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
    #[error("unknown attack `{0}` (known: fgsm, pgd, cw, apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square)")]
    Unknown(String),
}

/// One configured attack.
#[derive(Debug, Clone, PartialEq)]
pub enum Attack {
    Fgsm(PgdParams),
    Pgd(PgdParams),
    /// PGD on the Carlini–Wagner margin.
    Cw(PgdParams),
    /// APGD-CE, APGD-DLR or APGD-T, by [`ApgdParams::loss`].
    Apgd(ApgdParams),
    /// FAB (untargeted) or FAB-T, by [`FabParams::targets`].
    Fab(FabParams),
    Square(SquareParams),
}

/// The budget an attack spends, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Budget {
    pub steps: Option<usize>,
    pub restarts: Option<usize>,
    pub queries: Option<usize>,
    /// Target classes of a targeted attack (as configured; a model with fewer wrong classes gets fewer).
    pub targets: Option<usize>,
    /// Forward/backward passes averaged per gradient (EOT), when more than one.
    pub eot: Option<usize>,
    /// Square's initial window fraction.
    pub p_init: Option<f64>,
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
        let apgd = |loss| ApgdParams {
            restarts: spec.apgd_restarts.max(1),
            ..ApgdParams::new(norm, eps, spec.apgd_steps, loss, seed)
        };
        let targets = spec.target_classes;
        Ok(match name {
            "fgsm" => Attack::Fgsm(PgdParams::fgsm(norm, eps)),
            "pgd" => Attack::Pgd(pgd()),
            "cw" => Attack::Cw(pgd()),
            "apgd-ce" => Attack::Apgd(apgd(ApgdLoss::Ce)),
            "apgd-dlr" => Attack::Apgd(apgd(ApgdLoss::Dlr)),
            "apgd-t" => Attack::Apgd(apgd(ApgdLoss::TargetedDlr { targets })),
            "fab" => Attack::Fab(FabParams::new(norm, eps, spec.fab_steps, None, seed)),
            "fab-t" => Attack::Fab(FabParams::new(
                norm,
                eps,
                spec.fab_steps,
                Some(targets),
                seed,
            )),
            "square" => Attack::Square(SquareParams {
                norm,
                eps,
                queries: spec.square_queries,
                p_init: spec.square_p_init,
                seed,
                sampling: SquareSampling::PerSample,
                rescale_schedule: true,
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
            Attack::Fab(p) => match p.targets {
                None => "fab",
                Some(_) => "fab-t",
            },
            Attack::Square(_) => "square",
        }
    }

    /// What a model with `classes` outputs changes in this attack (fewer targets, a loss that needs more classes),
    /// in words for the report; `None` when it runs as configured.
    pub fn adapted_for(&self, classes: i64) -> Option<String> {
        match self {
            Attack::Apgd(p) => p.loss.adapted_for(classes),
            Attack::Fab(FabParams {
                targets: Some(targets),
                ..
            }) if *targets as i64 > classes - 1 => Some(format!(
                "{} target classes instead of {targets} (a model with {classes} classes has {} wrong ones)",
                classes - 1,
                classes - 1
            )),
            _ => None,
        }
    }

    /// Sets how many sample × class rows one pass of per-class gradients may hold (FAB); other attacks ignore it.
    pub fn set_row_budget(&mut self, rows: usize) {
        if let Attack::Fab(p) = self {
            p.max_rows = rows.max(1);
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
                ..Budget::default()
            },
            Attack::Apgd(p) => Budget {
                steps: Some(p.steps),
                restarts: Some(p.restarts),
                targets: match p.loss {
                    ApgdLoss::TargetedDlr { targets } => Some(targets),
                    _ => None,
                },
                eot: (p.eot > 1).then_some(p.eot),
                ..Budget::default()
            },
            Attack::Fab(p) => Budget {
                steps: Some(p.steps),
                restarts: Some(p.restarts),
                targets: p.targets,
                ..Budget::default()
            },
            Attack::Square(p) => Budget {
                queries: Some(p.queries),
                p_init: Some(p.p_init),
                ..Budget::default()
            },
        }
    }

    /// The attacked threat model.
    pub fn threat(&self) -> (Norm, f64) {
        match self {
            Attack::Fgsm(p) | Attack::Pgd(p) | Attack::Cw(p) => (p.norm, p.eps),
            Attack::Apgd(p) => (p.norm, p.eps),
            Attack::Fab(p) => (p.norm, p.eps),
            Attack::Square(p) => (p.norm, p.eps),
        }
    }

    /// Runs the attack on one batch: `x` `[N, C, H, W]` in [0,1], `y` `[N]`, `rows[i]` the key of row `i`'s
    /// randomness. Gradient attacks run on the model's device; Square only queries the scorer. `starts` warm-starts
    /// some rows: the PGD family (FGSM, PGD, CW-PGD) starts them at the given points ([`pgd::GivenStarts`]); APGD,
    /// FAB and Square choose their own starts and ignore them.
    pub fn run(
        &self,
        model: &dyn Classifier,
        scorer: &mut dyn Scorer,
        x: &Tensor,
        y: &Tensor,
        rows: &[u64],
        starts: Option<pgd::GivenStarts<'_>>,
    ) -> Result<AttackRun, AttackError> {
        let x_adv = match self {
            Attack::Fgsm(p) | Attack::Pgd(p) => {
                pgd::pgd_rows_from(model, x, y, Some(rows), starts, p, &losses::cross_entropy)?
            }
            Attack::Cw(p) => {
                pgd::pgd_rows_from(model, x, y, Some(rows), starts, p, &losses::cw_margin)?
            }
            Attack::Apgd(p) => apgd::apgd(model, x, y, Some(rows), p)?,
            Attack::Fab(p) => fab::fab(model, x, y, Some(rows), p)?.x_adv,
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
