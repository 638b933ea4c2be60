//! The learning-speed proxy: a cheap atypicality score recorded during any training run (e.g. the fine-tuning
//! itself), with no extra models. Samples a network learns late are the atypical ones (Jiang et al. 2021 found
//! cumulative training accuracy to track the consistency score closely), so the score of a sample is
//! `1 − (share of its training passes that classified it correctly)`: 0 for a sample right from the first batch
//! on, 1 for one never fitted. It lives on a different scale than `mem(i)`; compare groups by decile, or pick τ
//! for it deliberately.
//!
//! Attach a [`LearningSpeed`] to a run through `TrainRun::observer`; correctness is judged on what the objective
//! computed (clean logits for standard training and TRADES, adversarial ones for PGD-AT and BAT). Counts cover
//! the batches run in this process: after a resume from a checkpoint, the epochs before it are not counted.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::scores::{ScoreSource, TrainScores};
use crate::data::Split;
use crate::train::SampleObserver;

/// Per-sample counts of training passes and correct ones, by source index.
#[derive(Debug, Default)]
pub struct LearningSpeed {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// source index → (passes, correct passes)
    samples: HashMap<i64, (u32, u32)>,
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
        self.lock().samples.get(&source_index).copied()
    }

    /// Scores for the samples of `split` (samples never trained on are undefined).
    pub fn scores(&self, split: &Split) -> TrainScores {
        let counts = self.lock();
        TrainScores {
            source: ScoreSource::LearningSpeed {
                epochs: counts.epochs.len(),
            },
            indices: split.indices.clone(),
            scores: split
                .indices
                .iter()
                .map(|i| {
                    counts
                        .samples
                        .get(i)
                        .filter(|(n, _)| *n > 0)
                        .map(|&(n, c)| 1.0 - f64::from(c) / f64::from(n))
                })
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SampleObserver for LearningSpeed {
    fn observe(&self, epoch: usize, source_indices: &[i64], correct: &[bool]) {
        let mut counts = self.lock();
        counts.epochs.insert(epoch);
        for (&i, &c) in source_indices.iter().zip(correct) {
            let entry = counts.samples.entry(i).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += u32::from(c);
        }
    }
}
