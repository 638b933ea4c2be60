//! The attack suites `eval.preset` names. `fast` is the configured list (`eval.attacks` with the `eval` block's
//! budgets, by default PGD-20, APGD-CE, APGD-DLR and Square with 1000 queries); the others are AutoAttack's versions
//! (Croce & Hein 2020; `autoattack.py` of fra31/auto-attack, `set_version`) with its budgets exactly:
//!
//! | preset | attacks, in order |
//! |---|---|
//! | `autoattack-standard` | APGD-CE (100 it., 1 run), APGD-T (100 it., 9 targets), FAB-T (100 it., 9 targets), Square (5000 queries, p_init 0.8) |
//! | `autoattack-plus` | APGD-CE and APGD-DLR (100 it., 5 restarts), FAB (100 it., 5 restarts), Square (5000), APGD-T, FAB-T (9 targets) |
//! | `autoattack-rand` | APGD-CE and APGD-DLR (100 it., 1 run) with every gradient averaged over 20 passes (EOT) |
//!
//! Inside the AutoAttack presets Square runs as AutoAttack's does: one window position per iteration shared by the
//! batch, and its schedule on absolute iterations. Every attack's seed comes from the master seed and its name.

use crate::attack::apgd::{ApgdLoss, ApgdParams};
use crate::attack::fab::FabParams;
use crate::attack::noise::derive_seed;
use crate::attack::square::{SquareParams, SquareSampling};
use crate::attack::{Attack, AttackError};
use crate::config::{EvalPreset, EvalSpec, Norm};

/// AutoAttack's iterations for APGD, APGD-T and FAB.
pub const AUTOATTACK_ITERATIONS: usize = 100;
/// AutoAttack's target classes for APGD-T and FAB-T.
pub const AUTOATTACK_TARGETS: usize = 9;
/// Restarts of APGD-CE, APGD-DLR and FAB in the `plus` version.
pub const PLUS_RESTARTS: usize = 5;
/// Square's query budget and initial window fraction in AutoAttack.
pub const AUTOATTACK_SQUARE_QUERIES: usize = 5000;
pub const AUTOATTACK_SQUARE_P_INIT: f64 = 0.8;
/// Gradient passes averaged per step in the `rand` version.
pub const RAND_EOT_SAMPLES: usize = 20;

/// The preset's name as written in configs and reports.
pub fn name(preset: EvalPreset) -> &'static str {
    match preset {
        EvalPreset::Fast => "fast",
        EvalPreset::AutoattackStandard => "autoattack-standard",
        EvalPreset::AutoattackPlus => "autoattack-plus",
        EvalPreset::AutoattackRand => "autoattack-rand",
    }
}

/// The attacks of `spec.preset`, in the order they run, for the threat model `(norm, eps)` and master `seed`.
pub fn attacks(
    spec: &EvalSpec,
    norm: Norm,
    eps: f64,
    seed: u64,
) -> Result<Vec<Attack>, AttackError> {
    let apgd = |name: &str, loss, restarts, eot| {
        Attack::Apgd(ApgdParams {
            restarts,
            eot,
            ..ApgdParams::new(
                norm,
                eps,
                AUTOATTACK_ITERATIONS,
                loss,
                derive_seed(seed, name),
            )
        })
    };
    let fab = |name: &str, targets, restarts| {
        Attack::Fab(FabParams {
            restarts,
            ..FabParams::new(
                norm,
                eps,
                AUTOATTACK_ITERATIONS,
                targets,
                derive_seed(seed, name),
            )
        })
    };
    let square = || {
        Attack::Square(SquareParams {
            norm,
            eps,
            queries: AUTOATTACK_SQUARE_QUERIES,
            p_init: AUTOATTACK_SQUARE_P_INIT,
            seed: derive_seed(seed, "square"),
            sampling: SquareSampling::PerIteration,
            rescale_schedule: false,
        })
    };
    let targeted = ApgdLoss::TargetedDlr {
        targets: AUTOATTACK_TARGETS,
    };
    Ok(match spec.preset {
        EvalPreset::Fast => spec
            .attacks
            .iter()
            .map(|name| Attack::from_config(name, spec, norm, eps, seed))
            .collect::<Result<_, _>>()?,
        EvalPreset::AutoattackStandard => vec![
            apgd("apgd-ce", ApgdLoss::Ce, 1, 1),
            apgd("apgd-t", targeted, 1, 1),
            fab("fab-t", Some(AUTOATTACK_TARGETS), 1),
            square(),
        ],
        EvalPreset::AutoattackPlus => vec![
            apgd("apgd-ce", ApgdLoss::Ce, PLUS_RESTARTS, 1),
            apgd("apgd-dlr", ApgdLoss::Dlr, PLUS_RESTARTS, 1),
            fab("fab", None, PLUS_RESTARTS),
            square(),
            apgd("apgd-t", targeted, 1, 1),
            fab("fab-t", Some(AUTOATTACK_TARGETS), 1),
        ],
        EvalPreset::AutoattackRand => vec![
            apgd("apgd-ce", ApgdLoss::Ce, 1, RAND_EOT_SAMPLES),
            apgd("apgd-dlr", ApgdLoss::Dlr, 1, RAND_EOT_SAMPLES),
        ],
    })
}
