//! Which subset model sees which sample: the balanced subset design of the Feldman–Zhang estimator.
//!
//! Feldman & Zhang draw each subset independently (every sample in each subset with probability `ratio`); with
//! the small K a 2-core machine affords, that leaves samples that no model left out (probability `ratio^K`, 5.8 %
//! at K = 8, ratio 0.7) or that every model left out, and those get no score. The balanced design fixes the
//! number of subsets each sample belongs to instead: sample `i` is in exactly `m = round(ratio · K)` subsets
//! (clamped to `1..=K-1`), chosen uniformly at random per sample. Every sample is then seen by `m` models and
//! judged by `K - m`, so every score is defined and all scores have the same variance; each subset holds about
//! `m/K · N` samples (the effective ratio, reported beside the configured one).
//!
//! For an even K ≥ 4 the models form two halves, models `0..K/2` and `K/2..K`, each balanced on its own: sample `i`
//! is in exactly `round(ratio · K/2)` subsets of each half (clamped to `1..=K/2-1`), so `m` is twice that. Each half
//! is then a complete estimator that scores every sample, and the self-check compares the two halves' scores
//! (split-half consistency) on every sample rather than on the few whose left-out models happen to split.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::MemoError;

/// Separates the design's random stream from the other draws derived from the estimator's seed.
const DESIGN_SALT: u64 = 0xD351_6E00_5EED_0001;

/// Membership of `n` samples in `k` subsets.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetDesign {
    /// `members[model][sample]`.
    members: Vec<Vec<bool>>,
    per_sample: usize,
}

impl SubsetDesign {
    /// The balanced design for `n` samples and `k` models: each sample in `round(ratio · k)` subsets (at least 1,
    /// at most `k - 1`) — for an even `k ≥ 4` in `round(ratio · k/2)` of each half — drawn from `seed`.
    pub fn balanced(n: usize, k: usize, ratio: f64, seed: u64) -> Result<Self, MemoError> {
        if k < 2 {
            return Err(MemoError::Invalid {
                key: "memorization.k",
                message: format!(
                    "{k}: the estimator needs at least 2 models (one that sees a sample, one that does not)"
                ),
            });
        }
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(MemoError::Invalid {
                key: "memorization.subset_ratio",
                message: format!("{ratio} is not in (0, 1)"),
            });
        }
        let halves = k >= 4 && k.is_multiple_of(2);
        let (groups, group_size) = if halves { (2, k / 2) } else { (1, k) };
        let per_group = ((ratio * group_size as f64).round() as usize).clamp(1, group_size - 1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DESIGN_SALT);
        let mut members = vec![Vec::with_capacity(n); k];
        for _ in 0..n {
            let mut column = vec![false; k];
            for group in 0..groups {
                for model in rand::seq::index::sample(&mut rng, group_size, per_group) {
                    column[group * group_size + model] = true;
                }
            }
            for (row, seen) in members.iter_mut().zip(column) {
                row.push(seen);
            }
        }
        Ok(Self {
            members,
            per_sample: groups * per_group,
        })
    }

    /// A design given explicitly, `members[model][sample]` (e.g. a hand-built case); every row the same length.
    pub fn from_members(members: Vec<Vec<bool>>) -> Result<Self, MemoError> {
        let n = members.first().map_or(0, Vec::len);
        if let Some(bad) = members.iter().position(|row| row.len() != n) {
            return Err(MemoError::Invalid {
                key: "design",
                message: format!(
                    "row {bad} has {} samples, row 0 has {n}",
                    members[bad].len()
                ),
            });
        }
        let per_sample = (0..n)
            .map(|i| members.iter().filter(|row| row[i]).count())
            .max()
            .unwrap_or(0);
        Ok(Self {
            members,
            per_sample,
        })
    }

    /// Whether the models form two halves that each score every sample (an even K ≥ 4 from
    /// [`SubsetDesign::balanced`]): models `0..K/2` and `K/2..K`.
    pub fn has_halves(&self) -> bool {
        let k = self.models();
        k >= 4
            && k.is_multiple_of(2)
            && (0..self.samples()).all(|i| {
                let seen =
                    |models: std::ops::Range<usize>| models.filter(|&m| self.members[m][i]).count();
                let (a, b) = (seen(0..k / 2), seen(k / 2..k));
                (1..k / 2).contains(&a) && (1..k / 2).contains(&b)
            })
    }

    /// Number of models.
    pub fn models(&self) -> usize {
        self.members.len()
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.members.first().map_or(0, Vec::len)
    }

    /// Subsets each sample belongs to (`m`; for a design from [`SubsetDesign::from_members`], the largest count).
    pub fn per_sample(&self) -> usize {
        self.per_sample
    }

    /// `m / K`: the share of models that see each sample.
    pub fn effective_ratio(&self) -> f64 {
        if self.members.is_empty() {
            0.0
        } else {
            self.per_sample as f64 / self.members.len() as f64
        }
    }

    /// Whether `model`'s subset holds `sample`, per sample.
    pub fn membership(&self, model: usize) -> &[bool] {
        &self.members[model]
    }

    /// The positions (in the scored split) of `model`'s subset, ascending.
    pub fn positions(&self, model: usize) -> Vec<i64> {
        self.members[model]
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(i, _)| i as i64)
            .collect()
    }
}
