//! The learning-speed estimator: one model trained from fresh weights of the architecture on every scored sample,
//! and per sample the mean over its training passes (one per epoch) of `p(y|x)`. Samples a network learns late are
//! the atypical ones — Jiang et al. (2021) found cumulative training accuracy to track Feldman & Zhang's
//! consistency score closely — and a mislabelled sample is learned last or never. Score:
//! `1 − mean over the passes of p(y|x)`: near 0 for a sample fitted from the first batches on, near 1 for one never
//! fitted. The probability rather than the 0/1 correctness, because a handful of epochs leaves the 0/1 version
//! with many ties (measured on Fashion-MNIST: `benches/MEMO_RECALL.md`).
//!
//! The passes are recorded by a [`LearningSpeed`] observer on the shared training loop (`TrainRun::observer`), on
//! the logits the objective computed (clean for standard training, adversarial for PGD-AT), with the weights of
//! that moment. Self-checks: the model's accuracy after training (it must have learned something), the epochs
//! counted, and the split-half consistency of the scores from even against odd epochs.
//!
//! The observer keeps its counts in memory: a run cancelled while the model trains starts that model again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::cache::{PassCounts, Store};
use super::checks::{self, Evidence};
use super::estimator::{
    cache_key, host_labels, model_seed, train_and_answer, Estimate, EstimatorOptions, Identity,
    ModelFactory, ModelFit, TestConsistency, Training,
};
use super::scores::{ScoreSource, TrainScores};
use super::subsets::accuracy;
use super::MemoError;
use crate::config::Estimator;
use crate::data::Split;
use crate::train::{SampleObserver, TrainError};

/// Per-sample training passes by epoch parity, by source index.
#[derive(Debug, Default)]
pub struct LearningSpeed {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// source index → [even epochs, odd epochs] of (passes, correct passes, Σ p(y|x))
    samples: HashMap<i64, [(u32, u32, f64); 2]>,
    epochs: BTreeSet<usize>,
}

impl LearningSpeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Epochs seen so far.
    pub fn epochs(&self) -> usize {
        self.lock().epochs.len()
    }

    /// `(passes, correct passes)` of a sample.
    pub fn counts(&self, source_index: i64) -> Option<(u32, u32)> {
        self.lock()
            .samples
            .get(&source_index)
            .map(|[e, o]| (e.0 + o.0, e.1 + o.1))
    }

    /// The passes of every sample of `split`, in split order (zeros for samples never trained on).
    pub fn pass_counts(&self, split: &Split) -> PassCounts {
        let counts = self.lock();
        let mut out = PassCounts::default();
        for i in &split.indices {
            let [even, odd] = counts.samples.get(i).copied().unwrap_or([(0, 0, 0.0); 2]);
            out.passes_even.push(even.0);
            out.passes_odd.push(odd.0);
            out.correct_even.push(even.1);
            out.correct_odd.push(odd.1);
            out.p_even.push(even.2);
            out.p_odd.push(odd.2);
        }
        out
    }

    /// Scores for the samples of `split` (samples never trained on are undefined).
    pub fn scores(&self, split: &Split) -> TrainScores {
        TrainScores {
            source: ScoreSource::LearningSpeed {
                epochs: self.epochs(),
                cached: false,
                seconds: 0.0,
            },
            indices: split.indices.clone(),
            scores: scores(&self.pass_counts(split)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SampleObserver for LearningSpeed {
    fn observe(&self, epoch: usize, source_indices: &[i64], correct: &[bool], p_label: &[f32]) {
        let mut counts = self.lock();
        counts.epochs.insert(epoch);
        for ((&i, &c), &p) in source_indices.iter().zip(correct).zip(p_label) {
            let entry = &mut counts.samples.entry(i).or_insert([(0, 0, 0.0); 2])[epoch % 2];
            entry.0 += 1;
            entry.1 += u32::from(c);
            entry.2 += f64::from(p);
        }
    }
}

/// `1 − mean p(y|x)` over all passes (`None` without passes).
pub fn scores(c: &PassCounts) -> Vec<Option<f64>> {
    (0..c.len())
        .map(|i| soft(c.p_even[i] + c.p_odd[i], c.passes_even[i] + c.passes_odd[i]))
        .collect()
}

fn soft(p_sum: f64, passes: u32) -> Option<f64> {
    (passes > 0).then(|| 1.0 - p_sum / f64::from(passes))
}

/// The learning-speed estimate of `scored` (with the model's `p(y|x)` on `test` as consistency).
pub fn estimate(
    scored: &Split,
    test: Option<&Split>,
    identity: Identity,
    factory: &mut ModelFactory,
    options: &EstimatorOptions,
) -> Result<Estimate, MemoError> {
    let (n, test_len) = (scored.len(), test.map_or(0, Split::len));
    let store = match &options.cache_root {
        Some(root) => Some(Store::open(
            root,
            &cache_key(
                scored,
                test,
                identity,
                options,
                (1, 1.0, options.epochs),
                None,
            )?,
        )?),
        None => None,
    };
    let cached = match &store {
        Some(s) => s.load(0, n, test_len)?.filter(|p| p.passes.is_some()),
        None => None,
    };
    let cancelled = || MemoError::Cancelled {
        completed: 0,
        models: 1,
        cache: None,
    };
    let (predicted, trained_now) = match cached {
        Some(p) => (p, false),
        None => {
            if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(cancelled());
            }
            let speed = LearningSpeed::new();
            let training = Training {
                seed: model_seed(options.seed, 0),
                epochs: options.epochs,
                fit_target: None,
                observer: Some(&speed),
                checkpoint_dir: None,
            };
            let mut p = match train_and_answer(scored, scored, test, factory, options, training) {
                Err(MemoError::Train(TrainError::Cancelled { .. })) => return Err(cancelled()),
                other => other?,
            };
            p.passes = Some(speed.pass_counts(scored));
            if let Some(s) = &store {
                s.save(0, &p)?;
            }
            (p, true)
        }
    };
    let passes = predicted.passes.clone().unwrap_or_default();
    let (even, odd): (Vec<f64>, Vec<f64>) = (0..n)
        .filter_map(|i| {
            Some((
                soft(passes.p_even[i], passes.passes_even[i])?,
                soft(passes.p_odd[i], passes.passes_odd[i])?,
            ))
        })
        .unzip();
    let fit = ModelFit {
        in_subset_acc: accuracy(&predicted.train_correct).unwrap_or(0.0),
        out_of_subset_acc: None,
        test_acc: test.and_then(|_| accuracy(&predicted.test_correct)),
        epochs: predicted.epochs as usize,
        seconds: predicted.seconds,
        trained_now,
    };
    tracing::info!(
        epochs = fit.epochs,
        train_acc = %format!("{:.3}", fit.in_subset_acc),
        test_acc = %format!("{:.3}", fit.test_acc.unwrap_or(f64::NAN)),
        seconds = %format!("{:.1}", fit.seconds),
        cached = !trained_now,
        "learning-speed model"
    );
    let classes = host_labels(scored)?
        .into_iter()
        .max()
        .map_or(1, |m| m as usize + 1);
    let fits = vec![fit];
    let self_check = checks::self_check(&Evidence {
        estimator: Estimator::LearningSpeed,
        fits: &fits,
        split_half: (predicted.epochs >= 2).then(|| (even, odd, "even vs odd epochs".to_string())),
        epochs_counted: Some(predicted.epochs as usize),
        mean_standard_error: None,
        classes,
        max_epochs: options.epochs,
    });
    Ok(Estimate {
        scores: TrainScores {
            source: ScoreSource::LearningSpeed {
                epochs: predicted.epochs as usize,
                cached: !trained_now,
                seconds: predicted.seconds,
            },
            indices: scored.indices.clone(),
            scores: scores(&passes),
        },
        models: fits,
        consistency: test.map(|t| TestConsistency {
            indices: t.indices.clone(),
            scores: predicted.test_p.iter().map(|&p| f64::from(p)).collect(),
        }),
        design: None,
        tally: None,
        passes: Some(passes),
        self_check: Some(self_check),
        budget: None,
        cache_dir: store.map(|s| s.dir().to_path_buf()),
    })
}
