//! What each training method minimizes on one batch.
//!
//! - **standard**: `mean_i CE(f(x_i), y_i)`.
//! - **PGD-AT** (Madry et al. 2018): `mean_i CE(f(x'_i), y_i)`, `x'` from PGD on the CE loss.
//! - **TRADES** (Zhang et al. 2019): `mean_i CE(f(x_i), y_i) + β · mean_i KL(p(x_i) ‖ p(x'_i))`, `x'` from PGD on
//!   the KL term (the PGD core's uniform random start replaces TRADES' `0.001·N(0, I)` start); gradients flow
//!   through both distributions, as in the reference code.
//! - **BAT** (our interpretation of Xu et al. 2021, DESIGN.md §BAT), `x'` from PGD on CE:
//!   `w_i = 1` for typical samples, `w_i = stopgrad(p(y_i | x'_i))^β` for atypical ones; `w ← w / mean_batch(w)`,
//!   then clamped to `[w_min, w_max]` when set; loss `Σ_i w_i CE(f(x'_i), y_i) / Σ_i w_i + λ · mean_i
//!   max_{k≠y_i} p(k | x'_i)`. `λ = 0` is BAT-reweight-only, `β = 0` BAT-reg-only, and `β = λ = 0` is PGD-AT
//!   step for step.
//!
//! Adversarial examples are crafted with the model in eval mode (no dropout, BatchNorm running statistics
//! untouched by the attack's forward passes), as in the TRADES reference code; the loss is computed in train mode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::TrainError;
use crate::attack::losses::{cross_entropy, kl_from_clean, max_other};
use crate::attack::pgd::{pgd_rows, PgdParams};
use crate::config::{Method, TrainSpec};
use crate::model::Classifier;

/// A floor on `p(y_i | x'_i)` before the power, so a batch of atypical samples the model gives probability 0
/// cannot make every weight 0 (and the normalization 0/0).
const P_FLOOR: f64 = 1e-12;

/// BAT's constants (DESIGN.md §BAT).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatParams {
    /// Exponent of the stop-gradient adversarial confidence on atypical samples.
    pub beta: f64,
    /// Weight of the discrimination regularizer.
    pub lambda: f64,
    pub w_min: Option<f64>,
    pub w_max: Option<f64>,
}

/// A training objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    Standard,
    PgdAt,
    Trades { beta: f64 },
    Bat(BatParams),
}

/// What one batch's objective produced.
pub struct BatchLoss {
    /// The scalar to minimize (with its autograd graph).
    pub loss: Tensor,
    /// Detached logits on the clean inputs, where the objective computed them (standard, TRADES).
    pub clean_logits: Option<Tensor>,
    /// Detached logits on the adversarial inputs (PGD-AT, TRADES, BAT).
    pub adv_logits: Option<Tensor>,
    /// Detached per-sample BAT weights after normalization and clamping.
    pub weights: Option<Tensor>,
}

impl Objective {
    /// The objective `spec.method` names, with its constants from `spec`; `method: none` is not trainable.
    pub fn from_spec(spec: &TrainSpec) -> Result<Self, TrainError> {
        let bat = BatParams {
            beta: spec.bat.beta,
            lambda: spec.bat.lambda,
            w_min: spec.bat.w_min,
            w_max: spec.bat.w_max,
        };
        let objective = match spec.method {
            Method::Standard => Objective::Standard,
            Method::PgdAt => Objective::PgdAt,
            Method::Trades => Objective::Trades {
                beta: spec.trades_beta,
            },
            Method::Bat => Objective::Bat(bat),
            Method::BatReweightOnly => Objective::Bat(BatParams { lambda: 0.0, ..bat }),
            Method::BatRegOnly => Objective::Bat(BatParams { beta: 0.0, ..bat }),
            Method::None => {
                return Err(TrainError::Invalid {
                    key: "train.method",
                    message: "`none` evaluates only; there is nothing to train".into(),
                })
            }
        };
        objective.validate()?;
        Ok(objective)
    }

    /// Checks the constants' ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        let non_negative = |key: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(TrainError::Invalid {
                    key,
                    message: format!("{v} is not a finite non-negative number"),
                })
            }
        };
        match *self {
            Objective::Standard | Objective::PgdAt => Ok(()),
            Objective::Trades { beta } => non_negative("train.trades_beta", beta),
            Objective::Bat(p) => {
                non_negative("train.bat.beta", p.beta)?;
                non_negative("train.bat.lambda", p.lambda)?;
                if let Some(lo) = p.w_min {
                    non_negative("train.bat.w_min", lo)?;
                }
                if let Some(hi) = p.w_max {
                    if !(hi.is_finite() && hi > 0.0) {
                        return Err(TrainError::Invalid {
                            key: "train.bat.w_max",
                            message: format!("{hi} is not a finite positive number"),
                        });
                    }
                }
                if let (Some(lo), Some(hi)) = (p.w_min, p.w_max) {
                    if lo > hi {
                        return Err(TrainError::Invalid {
                            key: "train.bat.w_min",
                            message: format!("w_min {lo} is above w_max {hi}"),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// The method as the config and reports name it (a BAT with only one part active is its ablation).
    pub fn method(&self) -> Method {
        match *self {
            Objective::Standard => Method::Standard,
            Objective::PgdAt => Method::PgdAt,
            Objective::Trades { .. } => Method::Trades,
            Objective::Bat(p) if p.lambda == 0.0 && p.beta != 0.0 => Method::BatReweightOnly,
            Objective::Bat(p) if p.beta == 0.0 && p.lambda != 0.0 => Method::BatRegOnly,
            Objective::Bat(_) => Method::Bat,
        }
    }

    /// Whether training examples are crafted by PGD.
    pub fn is_adversarial(&self) -> bool {
        !matches!(self, Objective::Standard)
    }

    /// Whether the objective reads the atypicality flags (BAT with `β ≠ 0`).
    pub fn needs_atypicality(&self) -> bool {
        matches!(self, Objective::Bat(p) if p.beta != 0.0)
    }

    /// The loss as written into reports.
    pub fn formula(&self) -> String {
        match self {
            Objective::Standard => "mean_i CE(f(x_i), y_i)".into(),
            Objective::PgdAt => "mean_i CE(f(x'_i), y_i); x' = PGD on CE".into(),
            Objective::Trades { .. } => {
                "mean_i CE(f(x_i), y_i) + beta * mean_i KL(p(x_i) || p(x'_i)); x' = PGD on the KL term".into()
            }
            Objective::Bat(p) => {
                let clamp = match (p.w_min, p.w_max) {
                    (None, None) => String::new(),
                    (lo, hi) => format!(
                        ", then clamped to [{}, {}]",
                        lo.map_or("-inf".into(), |v| v.to_string()),
                        hi.map_or("inf".into(), |v| v.to_string())
                    ),
                };
                format!(
                    "sum_i w_i CE(f(x'_i), y_i) / sum_i w_i + lambda * mean_i max_{{k != y_i}} p(k | x'_i); \
                     w_i = stopgrad(p(y_i | x'_i))^beta on atypical samples, 1 otherwise; w normalized by its \
                     batch mean{clamp}; x' = PGD on CE"
                )
            }
        }
    }

    /// The objective's own constants (the trainer adds the attack's and the threshold).
    pub fn constants(&self) -> BTreeMap<String, f64> {
        let mut c = BTreeMap::new();
        match *self {
            Objective::Standard | Objective::PgdAt => {}
            Objective::Trades { beta } => {
                c.insert("beta".into(), beta);
            }
            Objective::Bat(p) => {
                c.insert("beta".into(), p.beta);
                c.insert("lambda".into(), p.lambda);
                if let Some(v) = p.w_min {
                    c.insert("w_min".into(), v);
                }
                if let Some(v) = p.w_max {
                    c.insert("w_max".into(), v);
                }
            }
        }
        c
    }

    /// The loss on one batch. `x`, `y` on the model's device; `atypical` (bool `[B]`) is read by BAT only (`None`
    /// = every sample typical); `rows` key each sample's PGD random start. Leaves the model in train mode.
    pub fn batch_loss(
        &self,
        model: &mut dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        atypical: Option<&Tensor>,
        attack: &PgdParams,
        rows: &[u64],
    ) -> Result<BatchLoss, TrainError> {
        match *self {
            Objective::Standard => {
                model.set_train(true);
                let logits = model.forward(x)?;
                Ok(BatchLoss {
                    loss: cross_entropy(&logits, y)?.f_mean(Kind::Float)?,
                    clean_logits: Some(logits.f_detach()?),
                    adv_logits: None,
                    weights: None,
                })
            }
            Objective::PgdAt => {
                let x_adv = craft(model, x, y, attack, rows, &cross_entropy)?;
                model.set_train(true);
                let logits = model.forward(&x_adv)?;
                Ok(BatchLoss {
                    loss: cross_entropy(&logits, y)?.f_mean(Kind::Float)?,
                    clean_logits: None,
                    adv_logits: Some(logits.f_detach()?),
                    weights: None,
                })
            }
            Objective::Trades { beta } => {
                model.set_train(false);
                let clean_fixed = tch::no_grad(|| model.forward(x))?;
                let kl_objective = kl_from_clean(&clean_fixed)?;
                let x_adv = craft(model, x, y, attack, rows, &kl_objective)?;
                model.set_train(true);
                let clean = model.forward(x)?;
                let adv = model.forward(&x_adv)?;
                let log_p = clean.f_log_softmax(1, Kind::Float)?;
                let log_q = adv.f_log_softmax(1, Kind::Float)?;
                let kl = log_p
                    .f_exp()?
                    .f_mul(&log_p.f_sub(&log_q)?)?
                    .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
                    .f_mean(Kind::Float)?;
                let natural = cross_entropy(&clean, y)?.f_mean(Kind::Float)?;
                Ok(BatchLoss {
                    loss: natural.f_add(&kl.f_mul_scalar(beta)?)?,
                    clean_logits: Some(clean.f_detach()?),
                    adv_logits: Some(adv.f_detach()?),
                    weights: None,
                })
            }
            Objective::Bat(p) => {
                let x_adv = craft(model, x, y, attack, rows, &cross_entropy)?;
                model.set_train(true);
                let logits = model.forward(&x_adv)?;
                let ce = cross_entropy(&logits, y)?;
                let probs = logits.f_softmax(1, Kind::Float)?;
                let p_true = probs
                    .f_detach()?
                    .f_gather(1, &y.f_unsqueeze(1)?, false)?
                    .f_squeeze_dim(1)?;
                let typical_everywhere;
                let atypical = match atypical {
                    Some(a) => a,
                    None => {
                        typical_everywhere = p_true.f_zeros_like()?.f_to_kind(Kind::Bool)?;
                        &typical_everywhere
                    }
                };
                let w = bat_weights(&p_true, atypical, &p)?;
                let weighted = w
                    .f_mul(&ce)?
                    .f_sum(Kind::Float)?
                    .f_div(&w.f_sum(Kind::Float)?)?;
                let loss = if p.lambda != 0.0 {
                    let confusion = max_other(&probs, y)?.f_mean(Kind::Float)?;
                    weighted.f_add(&confusion.f_mul_scalar(p.lambda)?)?
                } else {
                    weighted
                };
                Ok(BatchLoss {
                    loss,
                    clean_logits: None,
                    adv_logits: Some(logits.f_detach()?),
                    weights: Some(w),
                })
            }
        }
    }
}

/// BAT's per-sample weights from the (detached) true-class probabilities on the adversarial examples:
/// `p^β` on atypical samples, 1 on typical ones, divided by the batch mean, then clamped to `[w_min, w_max]`.
/// The result is detached whatever `p_true` is: no gradient flows through the weights.
pub fn bat_weights(
    p_true: &Tensor,
    atypical: &Tensor,
    params: &BatParams,
) -> Result<Tensor, TrainError> {
    let p = p_true.f_detach()?.f_to_kind(Kind::Float)?;
    let raw = p
        .f_clamp_min(P_FLOOR)?
        .f_pow_tensor_scalar(params.beta)?
        .f_where_self(atypical, &p.f_ones_like()?)?;
    let mut w = raw.f_div(&raw.f_mean(Kind::Float)?)?;
    if let Some(lo) = params.w_min {
        w = w.f_clamp_min(lo)?;
    }
    if let Some(hi) = params.w_max {
        w = w.f_clamp_max(hi)?;
    }
    Ok(w)
}

/// PGD examples with the model in eval mode.
fn craft(
    model: &mut dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    attack: &PgdParams,
    rows: &[u64],
    loss: &crate::attack::losses::LossFn,
) -> Result<Tensor, TrainError> {
    model.set_train(false);
    Ok(pgd_rows(&*model, x, y, Some(rows), attack, loss)?)
}
