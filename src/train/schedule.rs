//! The learning rate at every optimizer step: an optional linear warm-up, then cosine annealing to 0, piecewise
//! decay (×0.1 from 50 % and ×0.01 from 75 % of the epochs), or a constant rate (`train.optimizer`).

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::config::OptimizerSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Piecewise,
    Constant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub kind: ScheduleKind,
    pub warmup_epochs: usize,
    pub epochs: usize,
}

impl LrSchedule {
    pub fn from_spec(spec: &OptimizerSpec, epochs: usize) -> Result<Self, TrainError> {
        let kind = match spec.schedule.as_str() {
            "cosine" => ScheduleKind::Cosine,
            "piecewise" => ScheduleKind::Piecewise,
            "constant" => ScheduleKind::Constant,
            other => {
                return Err(TrainError::Invalid {
                    key: "train.optimizer.schedule",
                    message: format!("`{other}`: expected cosine, piecewise or constant"),
                })
            }
        };
        if !(spec.lr.is_finite() && spec.lr > 0.0) {
            return Err(TrainError::Invalid {
                key: "train.optimizer.lr",
                message: format!("{} is not a finite positive learning rate", spec.lr),
            });
        }
        Ok(Self {
            base: spec.lr,
            kind,
            warmup_epochs: spec.warmup_epochs,
            epochs,
        })
    }

    /// The rate for step `batch` (0-based) of `batches` in `epoch` (0-based).
    pub fn lr(&self, epoch: usize, batch: usize, batches: usize) -> f64 {
        let batches = batches.max(1);
        let step = (epoch * batches + batch) as f64;
        let warmup_steps = (self.warmup_epochs * batches) as f64;
        if step < warmup_steps {
            return self.base * (step + 1.0) / warmup_steps;
        }
        match self.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Piecewise => {
                let e = epoch as f64;
                let total = self.epochs as f64;
                if e >= 0.75 * total {
                    self.base * 0.01
                } else if e >= 0.5 * total {
                    self.base * 0.1
                } else {
                    self.base
                }
            }
            ScheduleKind::Cosine => {
                let span = (self.epochs.saturating_sub(self.warmup_epochs) * batches).max(1) as f64;
                let t = ((step - warmup_steps) / span).clamp(0.0, 1.0);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Piecewise => "piecewise",
            ScheduleKind::Constant => "constant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: &str, warmup: usize, epochs: usize) -> LrSchedule {
        let spec = OptimizerSpec {
            lr: 0.1,
            schedule: kind.into(),
            warmup_epochs: warmup,
            ..OptimizerSpec::default()
        };
        LrSchedule::from_spec(&spec, epochs).unwrap()
    }

    #[test]
    fn warmup_rises_linearly_to_the_base_rate() {
        let s = schedule("constant", 2, 5);
        assert!((s.lr(0, 0, 10) - 0.1 / 20.0).abs() < 1e-12);
        assert!((s.lr(1, 9, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(2, 0, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn cosine_starts_at_base_and_falls_towards_zero_after_warmup() {
        let s = schedule("cosine", 1, 3);
        assert!((s.lr(1, 0, 4) - 0.1).abs() < 1e-12);
        assert!((s.lr(2, 0, 4) - 0.05).abs() < 1e-12);
        assert!(s.lr(2, 3, 4) < 0.01);
    }

    #[test]
    fn piecewise_decays_at_half_and_three_quarters() {
        let s = schedule("piecewise", 0, 8);
        assert_eq!(s.lr(3, 0, 1), 0.1);
        assert!((s.lr(4, 0, 1) - 0.01).abs() < 1e-12);
        assert!((s.lr(6, 0, 1) - 0.001).abs() < 1e-12);
    }
}
