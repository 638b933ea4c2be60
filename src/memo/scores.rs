//! Training-sample scores from any source — the learning-speed, Feldman–Zhang or holdout estimators, or imported
//! files — and what every consumer derives from them: BAT's atypicality flags, the typical/atypical split at τ,
//! rank deciles, the histogram, and the report's `memorization:` section.
//!
//! Scores are aligned with the *scored split* (the first `memorization.train_samples` training samples), each
//! sample keyed by its source index. An undefined score (`None`, see [`super::tally`]) counts as typical, is left
//! out of the histogram and the deciles, and is written as 0 beside a `defined = false` flag in score files.

use crate::data::Split;
use crate::report::{HarmfulSample, Histogram, Memorization};
use crate::train::{Atypicality, ScoreTable};

/// Number of rank groups [`TrainScores::deciles`] forms.
pub const DECILES: usize = 10;

/// Where scores came from, with what the report says about it.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreSource {
    /// The subsampling estimator (soft score).
    FeldmanZhang {
        models: usize,
        /// Subsets each sample belongs to (`m`).
        per_sample: usize,
        /// `memorization.subset_ratio` as configured (the effective ratio is `per_sample / models`).
        configured_ratio: f64,
        /// Every model's predictions came from the cache (no training in this run).
        cached: bool,
        seconds: f64,
    },
    /// Two half models: `1 − p(y|x)` under the one that never saw the sample.
    Holdout { cached: bool, seconds: f64 },
    /// A file read by [`ScoreTable::load`].
    Imported { origin: String },
    /// `1 − mean p(y|x)` over the training passes of one model.
    LearningSpeed {
        epochs: usize,
        cached: bool,
        seconds: f64,
    },
}

impl ScoreSource {
    /// The report's `memorization.estimator`.
    pub fn name(&self) -> &'static str {
        match self {
            ScoreSource::FeldmanZhang { .. } => "feldman-zhang",
            ScoreSource::Holdout { .. } => "holdout",
            ScoreSource::Imported { .. } => "imported",
            ScoreSource::LearningSpeed { .. } => "learning-speed",
        }
    }

    /// What a score means, as a formula.
    pub fn formula(&self) -> Option<&'static str> {
        match self {
            ScoreSource::FeldmanZhang { .. } => {
                Some("E[p(y|x) | model trained on x] - E[p(y|x) | model not trained on x]")
            }
            ScoreSource::Holdout { .. } => Some("1 - p(y|x) under the half model not trained on x"),
            ScoreSource::LearningSpeed { .. } => {
                Some("1 - mean over the training passes (one per epoch) of p(y|x)")
            }
            ScoreSource::Imported { .. } => None,
        }
    }

    /// One line for logs, reports and BAT's atypicality source.
    pub fn describe(&self) -> String {
        match self {
            ScoreSource::FeldmanZhang {
                models,
                per_sample,
                configured_ratio,
                ..
            } => format!(
                "feldman-zhang K={models}, balanced: each sample in {per_sample} of {models} subsets \
                 (ratio {configured_ratio} rounded to {:.3})",
                *per_sample as f64 / *models as f64
            ),
            ScoreSource::Holdout { .. } => {
                "holdout: two half models, each judging the half it never saw".into()
            }
            ScoreSource::Imported { origin } => format!("imported {origin}"),
            ScoreSource::LearningSpeed { epochs, .. } => format!(
                "learning-speed: one model, 1 - mean p(y|x) over its training passes in {epochs} epoch(s)"
            ),
        }
    }
}

/// One score per sample of the scored split.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainScores {
    pub source: ScoreSource,
    /// Source index of each scored sample (the split's `indices`).
    pub indices: Vec<i64>,
    pub scores: Vec<Option<f64>>,
}

impl TrainScores {
    /// Imported scores for the samples of `split` (samples without a score are undefined).
    pub fn from_table(table: &ScoreTable, split: &Split) -> Self {
        Self {
            source: ScoreSource::Imported {
                origin: table.origin.clone(),
            },
            indices: split.indices.clone(),
            scores: split.indices.iter().map(|&i| table.get(i)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Samples with a defined score.
    pub fn defined(&self) -> usize {
        self.scores.iter().flatten().count()
    }

    /// The defined scores as a table by source index (what BAT and `ScoreTable::flags` consume).
    pub fn table(&self) -> ScoreTable {
        ScoreTable::from_pairs(
            self.source.describe(),
            self.indices
                .iter()
                .zip(&self.scores)
                .filter_map(|(&i, s)| s.map(|s| (i, s))),
        )
    }

    /// BAT's input: flags for the samples of `split` (e.g. the fine-tuning split), atypical when the score is
    /// above `threshold`; samples without a defined score, or outside the scored split, are typical.
    pub fn atypicality(&self, split: &Split, threshold: f64) -> Atypicality {
        self.table().flags(split, threshold)
    }

    /// Per scored sample: score above `threshold` (undefined = typical).
    pub fn atypical(&self, threshold: f64) -> Vec<bool> {
        self.scores
            .iter()
            .map(|s| s.is_some_and(|s| s > threshold))
            .collect()
    }

    /// The `q`-quantile of the defined scores (nearest rank; `q` in [0, 1]); 0 without defined scores.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut values: Vec<f64> = self.scores.iter().flatten().copied().collect();
        if values.is_empty() {
            return 0.0;
        }
        values.sort_by(f64::total_cmp);
        let rank =
            ((q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    }

    /// Share of scored samples above `threshold` (of all scored samples, undefined ones included as typical).
    pub fn atypical_share(&self, threshold: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.atypical(threshold).iter().filter(|&&a| a).count() as f64 / self.len() as f64
    }

    /// Rank decile of every sample with a defined score: 0 holds the lowest 10 % of scores, 9 the highest 10 %.
    /// Ranks break ties by position, so the ten groups have equal sizes (±1) even when scores are discrete.
    pub fn deciles(&self) -> Vec<Option<usize>> {
        let mut order: Vec<(usize, f64)> = self
            .scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let n = order.len();
        let mut out = vec![None; self.len()];
        for (rank, (i, _)) in order.into_iter().enumerate() {
            out[i] = Some(rank * DECILES / n);
        }
        out
    }

    /// Histogram of the defined scores: bins of width 0.05 (wider when scores span more than 2), edges on
    /// multiples of the width so a threshold such as 0.15 falls on an edge.
    pub fn histogram(&self) -> Histogram {
        let values: Vec<f64> = self.scores.iter().flatten().copied().collect();
        if values.is_empty() {
            return Histogram {
                bins: vec![0.0, 1.0],
                counts: vec![0],
            };
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let width = if max - min <= 2.0 {
            0.05
        } else {
            ((max - min) / 40.0).max(f64::MIN_POSITIVE)
        };
        let first = (min / width).floor() as i64;
        let bins_count = ((max / width).floor() as i64 - first + 1).max(1) as usize;
        let mut counts = vec![0u64; bins_count];
        for v in values {
            let bin = ((v / width).floor() as i64 - first).clamp(0, bins_count as i64 - 1);
            counts[bin as usize] += 1;
        }
        let bins = (0..=bins_count as i64)
            .map(|j| round6((first + j) as f64 * width))
            .collect();
        Histogram { bins, counts }
    }

    /// Scores by source index, length `max index + 1`: what `ScoreTable::load` reads back from an `.npy`.
    /// Unscored indices and undefined scores are 0 (typical at any τ ≥ 0).
    pub fn dense_by_source_index(&self) -> Vec<f64> {
        let len = self.indices.iter().copied().max().map_or(0, |m| m + 1) as usize;
        let mut out = vec![0.0; len];
        for (&i, s) in self.indices.iter().zip(&self.scores) {
            out[i as usize] = s.unwrap_or(0.0);
        }
        out
    }

    /// The report's `memorization:` section for these scores at `threshold`, with the model's harmful list and
    /// the test-group cut (see [`super::groups::test_cut`]).
    pub fn report_section(&self, threshold: f64, harmful: Vec<HarmfulSample>) -> Memorization {
        let (models, subset_ratio, cached, seconds) = match &self.source {
            ScoreSource::FeldmanZhang {
                models,
                per_sample,
                cached,
                seconds,
                ..
            } => (
                *models as u64,
                *per_sample as f64 / *models as f64,
                *cached,
                Some(*seconds),
            ),
            ScoreSource::Holdout { cached, seconds } => (2, 0.5, *cached, Some(*seconds)),
            ScoreSource::LearningSpeed {
                cached, seconds, ..
            } => (1, 1.0, *cached, Some(*seconds)),
            ScoreSource::Imported { .. } => (0, 0.0, false, None),
        };
        Memorization {
            estimator: self.source.name().into(),
            models,
            subset_ratio,
            threshold,
            cached,
            atypical_share: self.atypical_share(threshold),
            histogram: self.histogram(),
            harmful_atypical: harmful,
            source: Some(self.source.describe()),
            scored_samples: Some(self.len() as u64),
            undefined_scores: Some((self.len() - self.defined()) as u64),
            test_consistency_cut: Some(super::groups::test_cut(threshold)),
            seconds,
            score: self.source.formula().map(str::to_owned),
            budget: None,
            self_check: None,
        }
    }
}

/// Spearman's rank correlation of two equally long score lists (ties get their average rank); `None` for fewer
/// than two pairs or a constant list. Compares two estimator runs, or a proxy against the estimator.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (average_ranks(a), average_ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The share of `a`'s top decile (the highest 10 % of its values, ties by position) that is also in `b`'s; chance
/// is 0.1. `None` for fewer than ten pairs. What a split-half check asks of atypicality flags: Spearman's ρ over all
/// samples is dominated by the bulk of typical samples, whose scores are near-equal and ordered by noise.
pub fn top_decile_overlap(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < DECILES {
        return None;
    }
    let top = |v: &[f64]| -> Vec<bool> {
        let scores = TrainScores {
            source: ScoreSource::Imported {
                origin: String::new(),
            },
            indices: Vec::new(),
            scores: v.iter().map(|&x| Some(x)).collect(),
        };
        scores
            .deciles()
            .into_iter()
            .map(|d| d == Some(DECILES - 1))
            .collect()
    };
    let (ta, tb) = (top(a), top(b));
    let in_a = ta.iter().filter(|&&t| t).count();
    let both = ta.iter().zip(&tb).filter(|(x, y)| **x && **y).count();
    (in_a > 0).then(|| both as f64 / in_a as f64)
}

/// 1-based ranks, ties sharing the mean of the ranks they span.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}
