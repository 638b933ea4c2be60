//! The estimator's arithmetic: per-sample counts over the subset models, and the scores they give.
//!
//! For training sample `i`, each model either saw it (`i ∈ S_k`) or not, and either classifies it correctly or
//! not. [`Tally`] keeps the four counts per sample — in-seen, in-correct, out-seen, out-correct — and
//! `mem(i) = in_correct/in_seen − out_correct/out_seen`. A score is *undefined* when either side has no model
//! (`in_seen = 0` or `out_seen = 0`): [`Tally::mem`] returns `None` for it, and everything downstream treats such a
//! sample as unscored (typical for BAT, left out of the histogram and the deciles, written as 0 with `defined = 0`
//! in the score files). The balanced design never produces undefined scores; hand-built designs and imported
//! partial tables can.
//!
//! For test samples no model saw them, so [`Consistency`] is simply the share of models that classify each
//! correctly (Feldman & Zhang's consistency score: low = atypical).

use super::MemoError;

/// Per-sample counts over the models added so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub in_seen: Vec<u32>,
    pub in_correct: Vec<u32>,
    pub out_seen: Vec<u32>,
    pub out_correct: Vec<u32>,
}

impl Tally {
    /// Empty counts for `n` samples.
    pub fn new(n: usize) -> Self {
        Self {
            in_seen: vec![0; n],
            in_correct: vec![0; n],
            out_seen: vec![0; n],
            out_correct: vec![0; n],
        }
    }

    /// Counts of `models` given as membership and correctness rows (`[model][sample]`).
    pub fn from_rows(membership: &[&[bool]], correct: &[&[bool]]) -> Result<Self, MemoError> {
        let n = membership.first().map_or(0, |r| r.len());
        let mut tally = Self::new(n);
        if membership.len() != correct.len() {
            return Err(MemoError::Invalid {
                key: "tally",
                message: format!(
                    "{} membership rows for {} correctness rows",
                    membership.len(),
                    correct.len()
                ),
            });
        }
        for (m, c) in membership.iter().zip(correct) {
            tally.add_model(m, c)?;
        }
        Ok(tally)
    }

    pub fn len(&self) -> usize {
        self.in_seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_seen.is_empty()
    }

    /// Adds one model: `member[i]` says whether it trained on sample `i`, `correct[i]` whether it classifies it
    /// correctly.
    pub fn add_model(&mut self, member: &[bool], correct: &[bool]) -> Result<(), MemoError> {
        if member.len() != self.len() || correct.len() != self.len() {
            return Err(MemoError::Invalid {
                key: "tally",
                message: format!(
                    "a model row has {} memberships and {} predictions for {} samples",
                    member.len(),
                    correct.len(),
                    self.len()
                ),
            });
        }
        for (i, (&m, &c)) in member.iter().zip(correct).enumerate() {
            let (seen, right) = if m {
                (&mut self.in_seen[i], &mut self.in_correct[i])
            } else {
                (&mut self.out_seen[i], &mut self.out_correct[i])
            };
            *seen += 1;
            *right += u32::from(c);
        }
        Ok(())
    }

    /// `P[correct | seen]` of sample `i`, if any model saw it.
    pub fn in_accuracy(&self, i: usize) -> Option<f64> {
        ratio(self.in_correct[i], self.in_seen[i])
    }

    /// `P[correct | not seen]` of sample `i`, if any model left it out.
    pub fn out_accuracy(&self, i: usize) -> Option<f64> {
        ratio(self.out_correct[i], self.out_seen[i])
    }

    /// `mem(i)`; `None` when no model saw the sample or none left it out.
    pub fn mem(&self, i: usize) -> Option<f64> {
        Some(self.in_accuracy(i)? - self.out_accuracy(i)?)
    }

    /// `mem(i)` for every sample.
    pub fn scores(&self) -> Vec<Option<f64>> {
        (0..self.len()).map(|i| self.mem(i)).collect()
    }

    /// Samples whose score is undefined.
    pub fn undefined(&self) -> usize {
        (0..self.len()).filter(|&i| self.mem(i).is_none()).count()
    }
}

/// Per test sample: how many of the models classify it correctly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Consistency {
    pub correct: Vec<u32>,
    pub models: u32,
}

impl Consistency {
    pub fn new(n: usize) -> Self {
        Self {
            correct: vec![0; n],
            models: 0,
        }
    }

    /// Adds one model's correctness on every test sample.
    pub fn add_model(&mut self, correct: &[bool]) -> Result<(), MemoError> {
        if correct.len() != self.correct.len() {
            return Err(MemoError::Invalid {
                key: "consistency",
                message: format!(
                    "{} predictions for {} test samples",
                    correct.len(),
                    self.correct.len()
                ),
            });
        }
        for (count, &c) in self.correct.iter_mut().zip(correct) {
            *count += u32::from(c);
        }
        self.models += 1;
        Ok(())
    }

    /// Mean accuracy of the models per sample (0 for every sample when no model was added).
    pub fn scores(&self) -> Vec<f64> {
        self.correct
            .iter()
            .map(|&c| ratio(c, self.models).unwrap_or(0.0))
            .collect()
    }
}

fn ratio(k: u32, n: u32) -> Option<f64> {
    (n > 0).then(|| f64::from(k) / f64::from(n))
}
