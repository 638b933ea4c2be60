//! The subset estimators: models trained from fresh weights on subsets of the scored samples (the
//! [`SubsetDesign`]), each then asked about every scored sample and every test sample.
//!
//! - **Feldman–Zhang**: K models on the balanced design, each trained until its training accuracy on its subset
//!   reaches `memorization.fit_target` (at most `memorization.max_epochs`) — a model that has not fitted its
//!   subset has not memorized anything, and its `mem(i)` would be noise. Score: the soft
//!   `E[p(y|x) | in] − E[p(y|x) | out]` ([`Tally::mem_soft`]); the 0/1 `mem(i)`, per-sample counts and standard
//!   errors go into `memorization.npz`. Self-check halves: models `1..K/2` against the rest.
//! - **holdout**: two half models (each sample in exactly one half), `memorization.epochs` each; score
//!   `1 − p(y|x)` under the model that never saw the sample — no memorization needed, only generalization.
//!
//! Test samples get a consistency score: the models' mean `p(y|x)` (none of them saw a test sample).

use std::sync::atomic::Ordering;

use super::cache::{ModelPredictions, Store};
use super::checks::{self, Evidence};
use super::design::SubsetDesign;
use super::estimator::{
    cache_key, host_labels, model_seed, train_and_answer, Estimate, EstimatorOptions, Identity,
    ModelFactory, ModelFit, TestConsistency, Training,
};
use super::scores::{ScoreSource, TrainScores};
use super::tally::{Answers, Consistency, Tally};
use super::MemoError;
use crate::config::Estimator;
use crate::data::Split;
use crate::report::SelfCheck;
use crate::train::TrainError;

/// The Feldman–Zhang estimate of `scored` (consistency for `test`).
pub fn feldman_zhang(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
) -> Result<Estimate, MemoError> {
    let n = scored.len();
    let k = options.k;
    let design = SubsetDesign::balanced(n, k, options.subset_ratio, options.seed)?;
    let trained = train_subsets(
        scored,
        test,
        identity,
        factory,
        options,
        &design,
        (options.max_epochs, Some(options.fit_target)),
    )?;
    let mut tally = Tally::new(n);
    let mut halves = [Tally::new(n), Tally::new(n)];
    for (model, p) in trained.predictions.iter().enumerate() {
        let answers = Answers {
            correct: &p.train_correct,
            p: &p.train_p,
        };
        tally.add_model(design.membership(model), answers)?;
        halves[usize::from(2 * model >= k)].add_model(design.membership(model), answers)?;
    }
    let split_half = design.has_halves().then(|| {
        let (a, b): (Vec<f64>, Vec<f64>) = (0..n)
            .filter_map(|i| Some((halves[0].mem_soft(i)?, halves[1].mem_soft(i)?)))
            .unzip();
        (a, b, format!("models 1-{} vs {}-{k}", k / 2, k / 2 + 1))
    });
    let errors: Vec<f64> = (0..n).filter_map(|i| tally.standard_error(i)).collect();
    let self_check = checks::self_check(&Evidence {
        estimator: Estimator::FeldmanZhang,
        fits: &trained.fits,
        split_half,
        epochs_counted: None,
        mean_standard_error: (!errors.is_empty())
            .then(|| errors.iter().sum::<f64>() / errors.len() as f64),
        classes: trained.classes,
        max_epochs: options.max_epochs,
    });
    let scores = TrainScores {
        source: ScoreSource::FeldmanZhang {
            models: k,
            per_sample: design.per_sample(),
            configured_ratio: options.subset_ratio,
            cached: trained.cached(),
            seconds: trained.seconds(),
        },
        indices: scored.indices.clone(),
        scores: (0..n).map(|i| tally.mem_soft(i)).collect(),
    };
    trained.into_estimate(scores, test, design, tally, self_check)
}

/// The holdout estimate of `scored`: two half models, score `1 − p(y|x)` under the one that never saw a sample.
pub fn holdout(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
) -> Result<Estimate, MemoError> {
    let n = scored.len();
    if n < 2 {
        return Err(MemoError::Invalid {
            key: "memorization.train_samples",
            message: format!("the holdout estimate needs at least 2 training samples, got {n}"),
        });
    }
    let design = SubsetDesign::balanced(n, 2, 0.5, options.seed)?;
    let trained = train_subsets(
        scored,
        test,
        identity,
        factory,
        options,
        &design,
        (options.epochs, None),
    )?;
    let mut tally = Tally::new(n);
    for (model, p) in trained.predictions.iter().enumerate() {
        tally.add_model(
            design.membership(model),
            Answers {
                correct: &p.train_correct,
                p: &p.train_p,
            },
        )?;
    }
    let self_check = checks::self_check(&Evidence {
        estimator: Estimator::Holdout,
        fits: &trained.fits,
        split_half: None,
        epochs_counted: None,
        mean_standard_error: None,
        classes: trained.classes,
        max_epochs: options.epochs,
    });
    let scores = TrainScores {
        source: ScoreSource::Holdout {
            cached: trained.cached(),
            seconds: trained.seconds(),
        },
        indices: scored.indices.clone(),
        scores: (0..n).map(|i| Some(1.0 - tally.out_mean_p(i)?)).collect(),
    };
    trained.into_estimate(scores, test, design, tally, self_check)
}

/// The subset models' answers and fits.
struct Trained {
    predictions: Vec<ModelPredictions>,
    fits: Vec<ModelFit>,
    classes: usize,
    cache_dir: Option<std::path::PathBuf>,
}

impl Trained {
    fn cached(&self) -> bool {
        self.fits.iter().all(|f| !f.trained_now)
    }

    fn seconds(&self) -> f64 {
        self.fits.iter().map(|f| f.seconds).sum()
    }

    /// The estimate these models give with `scores` computed from them.
    fn into_estimate(
        self,
        scores: TrainScores,
        test: Option<&Split>,
        design: SubsetDesign,
        tally: Tally,
        self_check: SelfCheck,
    ) -> Result<Estimate, MemoError> {
        Ok(Estimate {
            scores,
            consistency: self.consistency(test)?,
            models: self.fits,
            design: Some(design),
            tally: Some(tally),
            passes: None,
            self_check: Some(self_check),
            budget: None,
            cache_dir: self.cache_dir,
        })
    }

    fn consistency(&self, test: Option<&Split>) -> Result<Option<TestConsistency>, MemoError> {
        let Some(test) = test else {
            return Ok(None);
        };
        let mut consistency = Consistency::new(test.len());
        for p in &self.predictions {
            consistency.add_model(Answers {
                correct: &p.test_correct,
                p: &p.test_p,
            })?;
        }
        Ok(Some(TestConsistency {
            indices: test.indices.clone(),
            scores: consistency.scores(),
        }))
    }
}

/// Trains (or loads from the cache) every model of `design` for at most `epochs` epochs, each stopping at
/// `fit_target` when given.
fn train_subsets(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
    design: &SubsetDesign,
    (epochs, fit_target): (usize, Option<f64>),
) -> Result<Trained, MemoError> {
    let (n, k) = (scored.len(), design.models());
    let store = match &options.cache_root {
        Some(root) => Some(Store::open(
            root,
            &cache_key(
                scored,
                test,
                identity,
                options,
                (k, design.effective_ratio(), epochs),
                fit_target,
            )?,
        )?),
        None => None,
    };
    let cache_dir = store.as_ref().map(|s| s.dir().to_path_buf());
    let test_len = test.map_or(0, Split::len);
    let mut labels = host_labels(scored)?;
    if let Some(t) = test {
        labels.extend(host_labels(t)?);
    }
    let classes = labels.iter().copied().max().map_or(1, |m| m as usize + 1);
    let mut predictions = Vec::with_capacity(k);
    let mut fits = Vec::with_capacity(k);
    for model in 0..k {
        let cancelled = |completed| MemoError::Cancelled {
            completed,
            models: k,
            cache: cache_dir.clone(),
        };
        let cached = match &store {
            Some(s) => s.load(model, n, test_len)?,
            None => None,
        };
        let (p, trained_now) = match cached {
            Some(p) => (p, false),
            None => {
                if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(cancelled(model));
                }
                let subset = scored.select(&design.positions(model))?;
                let training = Training {
                    seed: model_seed(options.seed, model),
                    epochs,
                    fit_target,
                    observer: None,
                    checkpoint_dir: store.as_ref().map(|s| s.checkpoint_dir(model)),
                };
                let p = match train_and_answer(&subset, scored, test, factory, options, training) {
                    Err(MemoError::Train(TrainError::Cancelled { .. })) => {
                        return Err(cancelled(model))
                    }
                    other => other?,
                };
                if let Some(s) = &store {
                    s.save(model, &p)?;
                }
                (p, true)
            }
        };
        let fit = model_fit(design.membership(model), &p, test.is_some(), trained_now);
        tracing::info!(
            model = model + 1,
            of = k,
            epochs = fit.epochs,
            in_subset_acc = %format!("{:.3}", fit.in_subset_acc),
            out_of_subset_acc = %format!("{:.3}", fit.out_of_subset_acc.unwrap_or(f64::NAN)),
            seconds = %format!("{:.1}", fit.seconds),
            cached = !trained_now,
            "memorization subset model"
        );
        predictions.push(p);
        fits.push(fit);
    }
    Ok(Trained {
        predictions,
        fits,
        classes,
        cache_dir,
    })
}

fn model_fit(
    member: &[bool],
    predicted: &ModelPredictions,
    with_test: bool,
    trained_now: bool,
) -> ModelFit {
    let share = |pick: bool| {
        let (seen, right) = member
            .iter()
            .zip(&predicted.train_correct)
            .filter(|(&m, _)| m == pick)
            .fold((0usize, 0usize), |(s, r), (_, &c)| {
                (s + 1, r + usize::from(c))
            });
        (seen > 0).then(|| right as f64 / seen as f64)
    };
    ModelFit {
        in_subset_acc: share(true).unwrap_or(0.0),
        out_of_subset_acc: share(false),
        test_acc: with_test
            .then(|| accuracy(&predicted.test_correct))
            .flatten(),
        epochs: predicted.epochs as usize,
        seconds: predicted.seconds,
        trained_now,
    }
}

/// Share of `true`; `None` for an empty list.
pub(super) fn accuracy(correct: &[bool]) -> Option<f64> {
    (!correct.is_empty())
        .then(|| correct.iter().filter(|&&c| c).count() as f64 / correct.len() as f64)
}
