//! The evaluation's summary as it appears in `report.yaml` under `evaluation.before` / `evaluation.after`
//! (schema in /work/shared/report-example.yaml): the preset, clean and per-attack robust accuracy with every
//! budget, worst case, per class, the onnxruntime re-check, the robust-accuracy-vs-eps curve, trust warnings and the
//! reproducibility block.
//!
//! Every accuracy comes with its 95 % Clopper–Pearson interval (`*_ci95: [lower, upper]`). Numbers are written
//! rounded where people read them ([`rounded`]): accuracies to 4 decimals, times to milliseconds; the exact
//! per-sample outcomes stay in the npz files.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::stats::Interval;
use super::trust::TrustWarning;
use super::Mode;
use crate::config::Norm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Samples evaluated.
    pub samples: usize,
    pub threat: Threat,
    /// The attack suite (`eval.preset`): `fast`, `autoattack-standard`, `autoattack-plus` or `autoattack-rand`.
    #[serde(default = "fast_preset")]
    pub preset: String,
    /// `ensemble`: each attack runs only on points still robust after the previous ones (AutoAttack order), and
    /// an attack's `robust_acc` is the accuracy left after it; `standalone`: every attack runs on every clean-correct
    /// point and `robust_acc` is its own.
    pub mode: Mode,
    /// Accuracy of the shipped file (the scorer) on the clean samples.
    #[serde(serialize_with = "rounded::accuracy")]
    pub clean_acc: f64,
    #[serde(default)]
    pub clean_acc_ci95: Interval,
    /// Per attack, in the order run.
    pub attacks: OrderedMap<String, AttackSummary>,
    /// Share of samples classified correctly and not broken by any attack.
    #[serde(serialize_with = "rounded::accuracy")]
    pub worst_case_acc: f64,
    #[serde(default)]
    pub worst_case_acc_ci95: Interval,
    /// Clean and worst-case robust accuracy per true class.
    #[serde(default)]
    pub per_class: OrderedMap<i64, ClassAccuracy>,
    pub ort_recheck: OrtRecheck,
    /// PGD robust accuracy at each radius of `eval.eps_curve` (eps 0 = clean accuracy).
    #[serde(serialize_with = "rounded::accuracy_curve")]
    pub robust_acc_vs_eps: OrderedMap<f64, f64>,
    #[serde(default)]
    pub robust_acc_vs_eps_ci95: OrderedMap<f64, Interval>,
    /// How the curve was measured, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<CurveInfo>,
    /// The adversarial examples of broken samples (npz) and their picture, when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial_examples: Option<ExamplesFiles>,
    pub warnings: Vec<TrustWarning>,
    pub reproducibility: Reproducibility,
    /// Wall-clock time of the whole evaluation.
    #[serde(serialize_with = "rounded::seconds")]
    pub seconds: f64,
    /// Accuracy of typical vs atypical samples (set by the pipeline once memorization scores exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<crate::report::Groups>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threat {
    pub norm: Norm,
    pub eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSummary {
    /// See [`EvalResult::mode`].
    #[serde(serialize_with = "rounded::accuracy")]
    pub robust_acc: f64,
    #[serde(default)]
    pub robust_acc_ci95: Interval,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<usize>,
    /// Target classes per sample (APGD-T, FAB-T), as configured; see `note` when the model has fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<usize>,
    /// Forward/backward passes averaged per gradient (EOT), when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eot: Option<usize>,
    /// Query budget per sample (Square).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<usize>,
    /// Square's initial window fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_init: Option<f64>,
    /// Mean queries spent per attacked sample (Square).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rounded::tenths"
    )]
    pub mean_queries: Option<f64>,
    /// Samples this attack ran on.
    pub attacked: usize,
    /// Samples it broke (verified on the scorer).
    pub broken: usize,
    /// How the attack was adapted to the model (few classes), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(serialize_with = "rounded::seconds")]
    pub seconds: f64,
}

/// Accuracy on the samples of one true class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    pub samples: usize,
    #[serde(serialize_with = "rounded::accuracy")]
    pub clean: f64,
    pub clean_ci95: Interval,
    /// Worst-case robust accuracy.
    #[serde(serialize_with = "rounded::accuracy")]
    pub robust: f64,
    pub robust_ci95: Interval,
}

/// How `robust_acc_vs_eps` was measured (`eval.curve_protocol`) and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurveInfo {
    pub protocol: crate::config::CurveProtocol,
    /// `sweep`: the radius whose verdict is the configured attacks' worst case (`threat.eps`), reused as it is;
    /// the other radii are swept outward from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<f64>,
    /// What decided the anchor's verdict: the configured attacks by name, or the curve's own PGD when no attack
    /// was configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchor_attacks: Vec<String>,
    /// `sweep`: where the curve's PGD starts a sample (`warm`: from the point the sweep already has for it;
    /// `random`: as `eval.pgd.random_start` says). `independent` starts as `eval.pgd` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::config::CurveStart>,
    /// The curve's PGD at each radius.
    pub steps: usize,
    pub restarts: usize,
    pub step_size_factor: f64,
    /// `sweep` stops attacking a sample at its first misclassified iterate (`first-adversarial`); `independent`
    /// keeps the best iterate of every step (`adversarial`).
    pub keep: String,
    /// Sample × radius attacks run for the curve.
    pub attacked: usize,
    /// Sample × radius verdicts below the anchor decided without an attack: an adversarial example already
    /// found (by any attack, verified on the scorer) lies within that radius (FAB's minimal perturbations mostly).
    #[serde(default)]
    pub from_perturbation: usize,
    /// Sample × radius verdicts below the anchor decided by one scorer pass instead of an attack: the sample's
    /// adversarial example from a larger radius, projected onto this radius's ball, still fools the model.
    #[serde(default)]
    pub from_projection: usize,
    #[serde(serialize_with = "rounded::seconds")]
    pub seconds: f64,
}

/// Where the adversarial examples were written, relative to the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamplesFiles {
    /// Broken samples whose example is in the file (at most `eval.examples.max`).
    pub saved: usize,
    /// Broken samples in all.
    pub broken: usize,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<String>,
}

fn fast_preset() -> String {
    "fast".to_owned()
}

/// Serde writers for numbers people read: accuracies to 4 decimals, seconds to milliseconds.
pub mod rounded {
    use serde::ser::SerializeMap;
    use serde::Serializer;

    use super::OrderedMap;

    fn round(v: f64, decimals: i32) -> f64 {
        let scale = 10f64.powi(decimals);
        (v * scale).round() / scale
    }

    pub fn accuracy<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(round(*v, 4))
    }

    pub fn seconds<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(round(*v, 3))
    }

    /// Optional seconds, to the millisecond.
    pub fn milliseconds<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_f64(round(*v, 3)),
            None => s.serialize_none(),
        }
    }

    pub fn tenths<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_f64(round(*v, 1)),
            None => s.serialize_none(),
        }
    }

    pub fn accuracy_curve<S: Serializer>(
        curve: &OrderedMap<f64, f64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(curve.0.len()))?;
        for (eps, acc) in &curve.0 {
            map.serialize_entry(eps, &round(*acc, 4))?;
        }
        map.end()
    }
}

/// The adversarial examples found with tch, re-scored by the shipped file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrtRecheck {
    /// Adversarial examples from gradient attacks that were re-scored.
    pub examples: usize,
    /// Of those, how many tch and the scorer classify differently (should be 0).
    pub disagreements: usize,
    /// Largest |logit difference| between tch and the scorer on those examples.
    pub max_logit_diff: f64,
    /// The same comparison on the clean samples.
    pub clean_disagreements: usize,
    pub clean_max_logit_diff: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reproducibility {
    /// Master seed; each attack's seed is derived from it and the attack's name.
    pub seed: u64,
    /// Dataset indices evaluated, as inclusive ranges (`"0-999"`).
    pub sample_indices: IndexRanges,
    /// Dataset indices still robust in the worst case.
    pub worst_case_robust: IndexRanges,
    pub batch_size: usize,
    pub device: String,
    pub robustd: String,
    pub libtorch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
    /// The per-sample npz file, once saved (set by the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample_file: Option<String>,
}

/// A set of indices written compactly as sorted runs: a single index as a number, a run as `"lo-hi"` (inclusive),
/// e.g. `["0-999", 1204]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexRanges(pub Vec<(u64, u64)>);

impl IndexRanges {
    pub fn from_indices(indices: &[u64]) -> Self {
        let mut sorted = indices.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in sorted {
            match runs.last_mut() {
                Some((_, hi)) if *hi + 1 == i => *hi = i,
                _ => runs.push((i, i)),
            }
        }
        Self(runs)
    }

    pub fn to_indices(&self) -> Vec<u64> {
        self.0.iter().flat_map(|&(lo, hi)| lo..=hi).collect()
    }
}

/// One entry of [`IndexRanges`] as written: a number or a `"lo-hi"` string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum IndexRun {
    Single(u64),
    Range(String),
}

impl Serialize for IndexRanges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&(lo, hi)| {
            if lo == hi {
                IndexRun::Single(lo)
            } else {
                IndexRun::Range(format!("{lo}-{hi}"))
            }
        }))
    }
}

impl<'de> Deserialize<'de> for IndexRanges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let runs = Vec::<IndexRun>::deserialize(deserializer)?;
        runs.into_iter()
            .map(|run| match run {
                IndexRun::Single(i) => Ok((i, i)),
                IndexRun::Range(text) => {
                    let bad = || {
                        serde::de::Error::custom(format!("`{text}` is not an index range lo-hi"))
                    };
                    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
                    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
                    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
                    if lo > hi {
                        return Err(bad());
                    }
                    Ok((lo, hi))
                }
            })
            .collect::<Result<_, _>>()
            .map(IndexRanges)
    }
}

/// A YAML mapping that keeps its order (attacks in the order run, radii ascending) and allows non-string keys.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: PartialEq, V> OrderedMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<K: Serialize, V: Serialize> Serialize for OrderedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}
