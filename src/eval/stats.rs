//! Confidence intervals for the accuracies a report gives: the exact (Clopper–Pearson) binomial interval, which
//! never undercovers, also at 0 or n successes and for small n, where the normal approximation fails.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF};

/// Two-sided confidence level of every interval in the report.
pub const CONFIDENCE: f64 = 0.95;

/// `[lower, upper]` bounds of an accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
}

impl From<[f64; 2]> for Interval {
    fn from([lower, upper]: [f64; 2]) -> Self {
        Self { lower, upper }
    }
}

impl From<Interval> for [f64; 2] {
    /// Written rounded to 4 decimals, outwards, so the printed interval still covers the exact one.
    fn from(i: Interval) -> Self {
        [outwards(i.lower, f64::floor), outwards(i.upper, f64::ceil)]
    }
}

/// `v` on the 4-decimal grid by `direction` (floor or ceil); a value already on the grid up to float error (as one
/// read back from a report is: `0.0003 * 1e4` is `2.9999999999999996`) stays where it is, so rewriting a report
/// does not move its bounds.
fn outwards(v: f64, direction: fn(f64) -> f64) -> f64 {
    let scaled = v * 1e4;
    let nearest = scaled.round();
    if (scaled - nearest).abs() < 1e-6 {
        nearest / 1e4
    } else {
        direction(scaled) / 1e4
    }
}

/// The 95 % Clopper–Pearson interval of a proportion of `successes` out of `trials`: the `α/2` quantile of
/// Beta(k, n − k + 1) and the `1 − α/2` quantile of Beta(k + 1, n − k), with 0 and 1 at the ends. No trials: [0, 1].
pub fn clopper_pearson(successes: usize, trials: usize) -> Interval {
    let (k, n) = (successes.min(trials) as f64, trials as f64);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    let quantile = |a: f64, b: f64, p: f64| {
        Beta::new(a, b)
            .map(|beta| beta.inverse_cdf(p))
            .unwrap_or(f64::NAN)
    };
    let lower = if successes == 0 || trials == 0 {
        0.0
    } else {
        quantile(k, n - k + 1.0, tail)
    };
    let upper = if successes >= trials {
        1.0
    } else {
        quantile(k + 1.0, n - k, 1.0 - tail)
    };
    Interval { lower, upper }
}
