//! Training collapse: the model has given up and predicts (nearly) one class for everything. Seen with too high a
//! learning rate or TRADES β: the loss sits at `ln C`, accuracy at chance, and every later epoch only wastes
//! time — then the evaluation finds a robust accuracy "at chance", which can even look like an improvement over a
//! non-robust model. [`CollapseWatch`] spots it at the batch it becomes unmistakable so the loop stops that run.
//!
//! Judged over a sliding window of the last [`WINDOW`] training batches (fewer when an epoch has fewer), on the
//! logits the objective computed (clean where it has them — standard training, TRADES — else the adversarial ones):
//! a run has collapsed when, over a full window,
//! - accuracy is at most `1.5 / C` (chance is `1 / C`),
//! - within each batch one class takes at least 80 % of the predictions, on average (a collapsed network outputs a
//!   near-constant, whose winning class may drift from step to step as the last bias moves),
//! - the mean cross-entropy is at least `0.9 · ln C` (no better than guessing uniformly),
//!
//! and the run either was above `2 / C` in an earlier full window (it fell back), or — judged on clean logits
//! only — is past its first epoch. The last condition keeps fresh models (the memorization estimators train from
//! random weights, which start exactly like that) from counting before they had an epoch to learn; and it keeps
//! adversarial logits from counting at all until the run has once been above chance on them: a model that is not
//! (yet) robust puts most PGD examples into one class at chance accuracy for epochs while learning normally
//! (measured: a weakly trained CNN under BAT at eps 0.1, 5 % adversarial accuracy, 82 % one class in its second
//! epoch). A PGD-AT or BAT run that never rises above chance on its adversarial examples is therefore not stopped
//! here; if it ends near chance on clean data, the pipeline's verdict (`degraded`, "the training collapsed the
//! model") names it after the fact.

use std::collections::VecDeque;

/// Batches the window spans (at most).
pub const WINDOW: usize = 20;
/// Largest share of a class's predictions, as a multiple of chance, that counts as "at chance".
const CHANCE_FACTOR: f64 = 1.5;
/// A window above this multiple of chance shows the model had learned something.
const LEARNED_FACTOR: f64 = 2.0;
const ONE_CLASS_SHARE: f64 = 0.8;
const LOSS_FLOOR: f64 = 0.9;

/// What one batch showed about the judged logits.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchView {
    pub samples: f64,
    pub correct: f64,
    /// Sum of the per-sample cross-entropy.
    pub cross_entropy: f64,
    /// Predictions per class.
    pub predicted: Vec<f64>,
    /// Judged on clean logits (else adversarial ones).
    pub clean: bool,
}

/// A detected collapse, with the window's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Collapse {
    /// 1-based epoch and batch where it was detected.
    pub epoch: usize,
    pub batch: usize,
    /// Batches judged.
    pub batches: usize,
    pub accuracy: f64,
    pub classes: usize,
    pub cross_entropy: f64,
    /// The class most predicted over the window.
    pub class: usize,
    /// The mean share of its batch that each batch's most predicted class took.
    pub class_share: f64,
}

/// The sliding window over a run's batches.
#[derive(Debug, Clone)]
pub struct CollapseWatch {
    window: VecDeque<BatchView>,
    capacity: usize,
    learned: bool,
}

impl CollapseWatch {
    /// A watch for a run of `batches_per_epoch` batches per epoch.
    pub fn new(batches_per_epoch: usize) -> Self {
        let capacity = batches_per_epoch.clamp(1, WINDOW);
        Self {
            window: VecDeque::with_capacity(capacity),
            capacity,
            learned: false,
        }
    }

    /// Adds batch `batch` (0-based) of `epoch` (0-based); returns the collapse when this batch makes it one.
    pub fn observe(&mut self, epoch: usize, batch: usize, view: BatchView) -> Option<Collapse> {
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back(view);
        if self.window.len() < self.capacity {
            return None;
        }
        let classes = self.window.iter().map(|v| v.predicted.len()).max()?;
        if classes < 2 {
            return None;
        }
        let samples: f64 = self.window.iter().map(|v| v.samples).sum();
        if samples <= 0.0 {
            return None;
        }
        let accuracy = self.window.iter().map(|v| v.correct).sum::<f64>() / samples;
        let chance = 1.0 / classes as f64;
        if accuracy > LEARNED_FACTOR * chance {
            self.learned = true;
            return None;
        }
        let mut predicted = vec![0.0; classes];
        for v in &self.window {
            for (total, count) in predicted.iter_mut().zip(&v.predicted) {
                *total += count;
            }
        }
        let (class, _) = predicted
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let batch_tops: f64 = self
            .window
            .iter()
            .map(|v| v.predicted.iter().copied().fold(0.0, f64::max))
            .sum();
        let class_share = batch_tops / samples;
        let cross_entropy = self.window.iter().map(|v| v.cross_entropy).sum::<f64>() / samples;
        let collapsed = accuracy <= CHANCE_FACTOR * chance
            && class_share >= ONE_CLASS_SHARE
            && cross_entropy >= LOSS_FLOOR * (classes as f64).ln()
            && (self.learned || (epoch >= 1 && self.window.iter().all(|v| v.clean)));
        collapsed.then(|| Collapse {
            epoch: epoch + 1,
            batch: batch + 1,
            batches: self.window.len(),
            accuracy,
            classes,
            cross_entropy,
            class,
            class_share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(correct: f64, ce: f64, predicted: &[f64]) -> BatchView {
        BatchView {
            samples: predicted.iter().sum(),
            correct,
            cross_entropy: ce,
            predicted: predicted.to_vec(),
            clean: true,
        }
    }

    fn collapsed_batch() -> BatchView {
        // 100 samples, 10 classes, all predicted as class 3, 10 right, CE ln 10 each.
        let mut p = vec![0.0; 10];
        p[3] = 100.0;
        view(10.0, 100.0 * 10f64.ln(), &p)
    }

    fn healthy_batch() -> BatchView {
        view(70.0, 100.0 * 0.8, &[10.0; 10])
    }

    #[test]
    fn a_run_that_falls_to_one_class_is_caught_within_a_window() {
        let mut w = CollapseWatch::new(50);
        for b in 0..30 {
            assert_eq!(w.observe(0, b, healthy_batch()), None);
        }
        let mut found = None;
        for b in 30..50 {
            found = found.or(w.observe(0, b, collapsed_batch()));
        }
        // Caught once the window is (almost) all collapsed batches: 19 of 20 already cross every bar.
        let c = found.expect("a full window of collapsed batches");
        assert_eq!((c.epoch, c.class, c.classes, c.batches), (1, 3, 10, 20));
        assert!((40..=50).contains(&c.batch), "{c:?}");
        assert!(c.accuracy <= 0.15 && c.class_share >= 0.9, "{c:?}");
    }

    #[test]
    fn a_constant_output_whose_class_drifts_is_a_collapse_too() {
        let mut w = CollapseWatch::new(20);
        let mut found = None;
        for b in 0..20 {
            let mut p = vec![0.0; 10];
            p[b % 3] = 100.0;
            found = found.or(w.observe(1, b, view(10.0, 100.0 * 2.4, &p)));
        }
        let c = found.expect("one class per batch");
        assert!((c.class_share - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_fresh_model_gets_its_first_epoch_and_healthy_runs_never_count() {
        let mut w = CollapseWatch::new(30);
        for b in 0..30 {
            assert_eq!(
                w.observe(0, b, collapsed_batch()),
                None,
                "first epoch, never learned"
            );
        }
        assert!(
            w.observe(1, 0, collapsed_batch()).is_some(),
            "still there a whole epoch later"
        );

        let mut w = CollapseWatch::new(30);
        for e in 0..3 {
            for b in 0..30 {
                assert_eq!(w.observe(e, b, healthy_batch()), None);
            }
        }
        // Adversarial logits of a model not yet robust look collapsed for epochs: only a fall back counts.
        let adversarial = |v: BatchView| BatchView { clean: false, ..v };
        let mut w = CollapseWatch::new(30);
        for e in 0..3 {
            for b in 0..30 {
                assert_eq!(
                    w.observe(e, b, adversarial(collapsed_batch())),
                    None,
                    "never above chance"
                );
            }
        }
        for b in 0..30 {
            assert_eq!(w.observe(3, b, adversarial(healthy_batch())), None);
        }
        let fell_back = (0..30).find_map(|b| w.observe(4, b, adversarial(collapsed_batch())));
        assert!(fell_back.is_some(), "robust once, then one class");

        // Low accuracy spread over classes (a hard task) is not a collapse.
        let mut w = CollapseWatch::new(5);
        for b in 0..20 {
            assert_eq!(w.observe(2, b, view(10.0, 230.0, &[10.0; 10])), None);
        }
    }
}
