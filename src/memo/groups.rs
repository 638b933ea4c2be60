//! Typical vs atypical accuracy of one model: clean and adversarial accuracy on the scored training samples per
//! group and per score decile, clean and robust accuracy on the test samples per consistency group — the numbers
//! behind the method's finding that adversarial training fits atypical samples cleanly but not robustly.
//!
//! Groups: a training sample is atypical when its score is above τ (the estimator's threshold); a test sample is
//! atypical when its consistency score (the estimator's models' mean `p(y|x)`, none of which saw it) is below
//! [`test_cut`]`(τ) = 1 − τ` — the mirror image of the training rule: a training sample is atypical when the
//! models that did not see it give its label at least τ less probability than the models that did (or, for
//! learning-speed, when the model gave it on average less than `1 − τ` while learning), a test sample when the
//! models give its label less than `1 − τ`.
//!
//! Adversarial/robust accuracy is measured per sample with the shared PGD core ([`Keep::Adversarial`], each
//! sample's random start keyed by its position, so results do not depend on the batch size); the same pass
//! records `p(y | x')`, which ranks the harmful atypical samples ([`super::harmful`]).

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Tensor};

use super::scores::{TrainScores, DECILES};
use super::MemoError;
use crate::attack::losses::cross_entropy;
use crate::attack::pgd::{pgd_rows, Keep, PgdParams};
use crate::config::Config;
use crate::data::{BatchOptions, Split};
use crate::eval::PerSample;
use crate::model::Classifier;
use crate::report::{DecileAccuracy, GroupAccuracy, GroupPair, Groups};

/// Seed salt of the group measurement's attack (distinct from evaluation and training attacks).
const GROUP_ATTACK_SALT: u64 = 0x6752_4F55_5053_0001;

/// The consistency below which a test sample counts as atypical: `1 − τ`.
pub fn test_cut(threshold: f64) -> f64 {
    1.0 - threshold
}

/// Per test sample: consistency below [`test_cut`].
pub fn test_atypical(consistency: &[f64], threshold: f64) -> Vec<bool> {
    let cut = test_cut(threshold);
    consistency.iter().map(|&c| c < cut).collect()
}

/// How a model's groups are measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The attack on training and test samples (its `keep` is forced to [`Keep::Adversarial`]).
    pub attack: PgdParams,
    pub batch_size: usize,
    pub threshold: f64,
}

impl GroupOptions {
    /// `eval.pgd` under the config's threat model, τ (the estimate's, `Estimate::threshold`), `train.batch_size`.
    pub fn from_config(config: &Config, threshold: f64) -> Self {
        Self {
            attack: PgdParams::from_spec(
                &config.eval.pgd,
                config.threat.norm,
                config.threat.eps,
                config.runtime.seed ^ GROUP_ATTACK_SALT,
                Keep::Adversarial,
            ),
            batch_size: config.train.batch_size,
            threshold,
        }
    }
}

/// A model's per-sample results on a split.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleOutcome {
    pub clean_correct: Vec<bool>,
    pub adv_correct: Vec<bool>,
    /// `p(y | x')` for the PGD example `x'` of each sample.
    pub adv_confidence: Vec<f64>,
}

impl SampleOutcome {
    pub fn len(&self) -> usize {
        self.clean_correct.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clean_correct.is_empty()
    }

    /// Clean and adversarial accuracy of the samples where `mask` holds (`None` for an empty group).
    pub fn accuracy_on(&self, mask: &[bool]) -> Option<GroupAccuracy> {
        let chosen: Vec<usize> = (0..self.len())
            .filter(|&i| mask.get(i).copied().unwrap_or(false))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let share =
            |v: &[bool]| chosen.iter().filter(|&&i| v[i]).count() as f64 / chosen.len() as f64;
        Some(GroupAccuracy {
            samples: chosen.len() as u64,
            clean: share(&self.clean_correct),
            robust: share(&self.adv_correct),
        })
    }

    /// Typical (`!atypical`) and atypical accuracy; `None` when either group is empty.
    pub fn group_pair(&self, atypical: &[bool]) -> Option<GroupPair> {
        let typical: Vec<bool> = atypical.iter().map(|a| !a).collect();
        Some(GroupPair {
            typical: self.accuracy_on(&typical)?,
            atypical: self.accuracy_on(atypical)?,
        })
    }

    /// Accuracy per rank decile of `scores` (aligned with this outcome); deciles without samples are skipped.
    pub fn decile_accuracy(&self, scores: &TrainScores) -> Vec<DecileAccuracy> {
        let deciles = scores.deciles();
        (0..DECILES)
            .filter_map(|d| {
                let mask: Vec<bool> = deciles.iter().map(|&x| x == Some(d)).collect();
                let acc = self.accuracy_on(&mask)?;
                let in_decile = scores
                    .scores
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m)
                    .filter_map(|(s, _)| *s);
                let (lo, hi) = in_decile.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
                    (lo.min(s), hi.max(s))
                });
                Some(DecileAccuracy {
                    decile: d as u8 + 1,
                    min_score: lo,
                    max_score: hi,
                    samples: acc.samples,
                    clean: acc.clean,
                    robust: acc.robust,
                })
            })
            .collect()
    }
}

/// Clean correctness, adversarial correctness and `p(y | x')` of `model` on every sample of `split` (eval mode).
/// Returns `Ok(None)` when `cancel` is set between batches.
pub fn measure(
    model: &mut dyn Classifier,
    split: &Split,
    attack: &PgdParams,
    batch_size: usize,
    cancel: Option<&AtomicBool>,
) -> Result<Option<SampleOutcome>, MemoError> {
    model.set_train(false);
    let attack = PgdParams {
        keep: Keep::Adversarial,
        ..attack.clone()
    };
    let device = model.device();
    let mut out = SampleOutcome::default();
    for batch in split.batches(&BatchOptions::eval(batch_size.max(1)))? {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        let batch = batch?;
        let x = batch.x.f_to_device(device)?;
        let y = batch.y.f_to_device(device)?;
        let rows: Vec<u64> = Vec::<i64>::try_from(&batch.positions)?
            .into_iter()
            .map(|p| p as u64)
            .collect();
        let clean = tch::no_grad(|| model.forward(&x))?
            .f_argmax(1, false)?
            .f_eq_tensor(&y)?;
        let x_adv = pgd_rows(&*model, &x, &y, Some(&rows), &attack, &cross_entropy)?;
        let adv_logits = tch::no_grad(|| model.forward(&x_adv))?;
        let adv = adv_logits.f_argmax(1, false)?.f_eq_tensor(&y)?;
        let confidence = adv_logits
            .f_softmax(1, Kind::Double)?
            .f_gather(1, &y.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        out.clean_correct.extend(host_bools(&clean)?);
        out.adv_correct.extend(host_bools(&adv)?);
        out.adv_confidence
            .extend(Vec::<f64>::try_from(&confidence.f_to_device(Device::Cpu)?)?);
    }
    Ok(Some(out))
}

/// What [`model_groups`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGroups {
    /// The report's `groups:` block for this model.
    pub groups: Groups,
    /// Per scored training sample.
    pub train: SampleOutcome,
    /// Per test sample, when a test split was given.
    pub test: Option<SampleOutcome>,
}

/// Measures `model` on the scored training split (grouped by `scores` at τ, and by decile) and, when given, on
/// the test split grouped by `consistency`. `Ok(None)` = cancelled.
pub fn model_groups(
    model: &mut dyn Classifier,
    scored: &Split,
    scores: &TrainScores,
    test: Option<(&Split, &[f64])>,
    options: &GroupOptions,
    cancel: Option<&AtomicBool>,
) -> Result<Option<ModelGroups>, MemoError> {
    if scores.len() != scored.len() {
        return Err(MemoError::Invalid {
            key: "scores",
            message: format!(
                "{} scores for {} training samples",
                scores.len(),
                scored.len()
            ),
        });
    }
    let Some(train) = measure(model, scored, &options.attack, options.batch_size, cancel)? else {
        return Ok(None);
    };
    let train_pair = train.group_pair(&scores.atypical(options.threshold));
    let deciles = train.decile_accuracy(scores);
    let (test_outcome, test_pair) = match test {
        Some((split, consistency)) => {
            if consistency.len() != split.len() {
                return Err(MemoError::Invalid {
                    key: "consistency",
                    message: format!(
                        "{} consistency scores for {} test samples",
                        consistency.len(),
                        split.len()
                    ),
                });
            }
            let Some(outcome) = measure(model, split, &options.attack, options.batch_size, cancel)?
            else {
                return Ok(None);
            };
            let pair = outcome.group_pair(&test_atypical(consistency, options.threshold));
            (Some(outcome), pair)
        }
        None => (None, None),
    };
    for (name, pair) in [("train", &train_pair), ("test", &test_pair)] {
        if pair.is_none() && (name == "train" || test_outcome.is_some()) {
            tracing::warn!(
                group = name,
                threshold = options.threshold,
                "one of the typical/atypical groups is empty; no per-group accuracy"
            );
        }
    }
    Ok(Some(ModelGroups {
        groups: Groups {
            train: train_pair,
            test: test_pair,
            train_deciles: deciles,
        },
        train,
        test: test_outcome,
    }))
}

/// Test groups from an evaluation's per-sample results (clean and worst-case robust over every attack), matched
/// to the consistency scores by dataset index; samples the evaluation did not cover are skipped.
pub fn test_groups_from_eval(
    per_sample: &PerSample,
    test_indices: &[i64],
    consistency: &[f64],
    threshold: f64,
) -> Option<GroupPair> {
    let by_index: std::collections::HashMap<i64, f64> = test_indices
        .iter()
        .copied()
        .zip(consistency.iter().copied())
        .collect();
    let cut = test_cut(threshold);
    let clean = per_sample.clean_correct();
    let mut outcome = SampleOutcome::default();
    let mut atypical = Vec::new();
    for (k, &index) in per_sample.index.iter().enumerate() {
        let Some(&c) = by_index.get(&(index as i64)) else {
            continue;
        };
        outcome.clean_correct.push(clean[k]);
        outcome.adv_correct.push(
            per_sample
                .worst_case_robust
                .get(k)
                .copied()
                .unwrap_or(false),
        );
        atypical.push(c < cut);
    }
    outcome.group_pair(&atypical)
}

fn host_bools(t: &Tensor) -> Result<Vec<bool>, MemoError> {
    Ok(Vec::<bool>::try_from(&t.f_to_device(Device::Cpu)?)?)
}
