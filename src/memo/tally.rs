//! The subset estimators' arithmetic: per-sample counts and sums over the subset models, and the scores they give.
//!
//! For training sample `i`, each model either saw it (`i ∈ S_k`) or not, classifies it correctly or not, and gives
//! its label a probability `p(y_i | x_i)`. [`Tally`] keeps per sample the four counts — in-seen, in-correct,
//! out-seen, out-correct — and the sums of `p` and `p²` on each side. The 0/1 score is
//! `mem(i) = in_correct/in_seen − out_correct/out_seen`; the soft score `E[p | in] − E[p | out]`
//! ([`Tally::mem_soft`]) breaks the ties a handful of models leave, and [`Tally::standard_error`] is its standard
//! error from the spread of `p` on each side. A score is *undefined* when either side has no model
//! (`in_seen = 0` or `out_seen = 0`): [`Tally::mem`] returns `None` for it, and everything downstream treats such a
//! sample as unscored (typical for BAT, left out of the histogram and the deciles, written as 0 with `defined = 0`
//! in the score files). The balanced design never produces undefined scores; hand-built designs and imported
//! partial tables can.
//!
//! For test samples no model saw them, so [`Consistency`] is simply the share of models that classify each
//! correctly (Feldman & Zhang's consistency score: low = atypical).
//!
//! Sums are `f64`: a model's `p` arrives as `f32` and is widened before adding.

use super::MemoError;

/// Per-sample counts over the models added so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub in_seen: Vec<u32>,
    pub in_correct: Vec<u32>,
    pub out_seen: Vec<u32>,
    pub out_correct: Vec<u32>,
    /// Sums of `p(y|x)` and of its square over the models that saw the sample.
    pub in_p: Vec<f64>,
    pub in_p2: Vec<f64>,
    /// The same over the models that left it out.
    pub out_p: Vec<f64>,
    pub out_p2: Vec<f64>,
}

/// One model's answers on every scored sample.
#[derive(Debug, Clone, Copy)]
pub struct Answers<'a> {
    pub correct: &'a [bool],
    /// `p(y_i | x_i)`.
    pub p: &'a [f32],
}

impl Tally {
    /// Empty counts for `n` samples.
    pub fn new(n: usize) -> Self {
        Self {
            in_seen: vec![0; n],
            in_correct: vec![0; n],
            out_seen: vec![0; n],
            out_correct: vec![0; n],
            in_p: vec![0.0; n],
            in_p2: vec![0.0; n],
            out_p: vec![0.0; n],
            out_p2: vec![0.0; n],
        }
    }

    /// Counts of `models` given as membership and answer rows (`[model][sample]`).
    pub fn from_rows(membership: &[&[bool]], answers: &[Answers]) -> Result<Self, MemoError> {
        let n = membership.first().map_or(0, |r| r.len());
        let mut tally = Self::new(n);
        if membership.len() != answers.len() {
            return Err(MemoError::Invalid {
                key: "tally",
                message: format!(
                    "{} membership rows for {} answer rows",
                    membership.len(),
                    answers.len()
                ),
            });
        }
        for (m, a) in membership.iter().zip(answers) {
            tally.add_model(m, *a)?;
        }
        Ok(tally)
    }

    pub fn len(&self) -> usize {
        self.in_seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_seen.is_empty()
    }

    /// Adds one model: `member[i]` says whether it trained on sample `i`, `answers` what it says about it.
    pub fn add_model(&mut self, member: &[bool], answers: Answers) -> Result<(), MemoError> {
        let n = self.len();
        if member.len() != n || answers.correct.len() != n || answers.p.len() != n {
            return Err(MemoError::Invalid {
                key: "tally",
                message: format!(
                    "a model row has {} memberships, {} predictions and {} probabilities for {n} samples",
                    member.len(),
                    answers.correct.len(),
                    answers.p.len(),
                ),
            });
        }
        for (i, (&m, (&c, &p))) in member
            .iter()
            .zip(answers.correct.iter().zip(answers.p))
            .enumerate()
        {
            let p = f64::from(p);
            let (seen, right, sum, squares) = if m {
                (
                    &mut self.in_seen[i],
                    &mut self.in_correct[i],
                    &mut self.in_p[i],
                    &mut self.in_p2[i],
                )
            } else {
                (
                    &mut self.out_seen[i],
                    &mut self.out_correct[i],
                    &mut self.out_p[i],
                    &mut self.out_p2[i],
                )
            };
            *seen += 1;
            *right += u32::from(c);
            *sum += p;
            *squares += p * p;
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

    /// `E[p | seen]` of sample `i`.
    pub fn in_mean_p(&self, i: usize) -> Option<f64> {
        mean(self.in_p[i], self.in_seen[i])
    }

    /// `E[p | not seen]` of sample `i`.
    pub fn out_mean_p(&self, i: usize) -> Option<f64> {
        mean(self.out_p[i], self.out_seen[i])
    }

    /// The soft score `E[p(y|x) | seen] − E[p(y|x) | not seen]`; `None` where `mem` is undefined.
    pub fn mem_soft(&self, i: usize) -> Option<f64> {
        Some(self.in_mean_p(i)? - self.out_mean_p(i)?)
    }

    /// The standard error of [`Tally::mem_soft`]: `sqrt(s²_in / n_in + s²_out / n_out)` with the sample variances
    /// of `p` on each side; `None` unless each side has at least two models.
    pub fn standard_error(&self, i: usize) -> Option<f64> {
        let in_var = sample_variance(self.in_p[i], self.in_p2[i], self.in_seen[i])?;
        let out_var = sample_variance(self.out_p[i], self.out_p2[i], self.out_seen[i])?;
        Some((in_var / f64::from(self.in_seen[i]) + out_var / f64::from(self.out_seen[i])).sqrt())
    }

    /// Samples whose score is undefined.
    pub fn undefined(&self) -> usize {
        (0..self.len()).filter(|&i| self.mem(i).is_none()).count()
    }
}

/// Per test sample: how many of the models classify it correctly, and the sum of the probabilities they give its
/// label.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Consistency {
    pub correct: Vec<u32>,
    pub p: Vec<f64>,
    pub models: u32,
}

impl Consistency {
    pub fn new(n: usize) -> Self {
        Self {
            correct: vec![0; n],
            p: vec![0.0; n],
            models: 0,
        }
    }

    /// Adds one model's answers on every test sample.
    pub fn add_model(&mut self, answers: Answers) -> Result<(), MemoError> {
        let n = self.correct.len();
        if answers.correct.len() != n || answers.p.len() != n {
            return Err(MemoError::Invalid {
                key: "consistency",
                message: format!(
                    "{} predictions and {} probabilities for {n} test samples",
                    answers.correct.len(),
                    answers.p.len()
                ),
            });
        }
        for (i, (&c, &p)) in answers.correct.iter().zip(answers.p).enumerate() {
            self.correct[i] += u32::from(c);
            self.p[i] += f64::from(p);
        }
        self.models += 1;
        Ok(())
    }

    /// The consistency score per sample: the models' mean `p(y|x)` (0 for every sample when no model was added).
    pub fn scores(&self) -> Vec<f64> {
        self.p
            .iter()
            .map(|&p| mean(p, self.models).unwrap_or(0.0))
            .collect()
    }

    /// The share of models right on each sample.
    pub fn accuracy(&self) -> Vec<f64> {
        self.correct
            .iter()
            .map(|&c| ratio(c, self.models).unwrap_or(0.0))
            .collect()
    }
}

fn mean(sum: f64, n: u32) -> Option<f64> {
    (n > 0).then(|| sum / f64::from(n))
}

/// `Σ(x − x̄)² / (n − 1)` from `Σx` and `Σx²`, clamped at 0 against rounding.
fn sample_variance(sum: f64, squares: f64, n: u32) -> Option<f64> {
    (n >= 2).then(|| {
        let n = f64::from(n);
        ((squares - sum * sum / n) / (n - 1.0)).max(0.0)
    })
}

fn ratio(k: u32, n: u32) -> Option<f64> {
    (n > 0).then(|| f64::from(k) / f64::from(n))
}
