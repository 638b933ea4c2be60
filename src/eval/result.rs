//! The evaluation's summary as it appears in `report.yaml` under `evaluation.before` / `evaluation.after`
//! (schema in /work/shared/report-example.yaml): clean and per-attack robust accuracy, worst case, the onnxruntime
//! re-check, the robust-accuracy-vs-eps curve, trust warnings and the reproducibility block.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::trust::TrustWarning;
use super::Mode;
use crate::config::Norm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Samples evaluated.
    pub samples: usize,
    pub threat: Threat,
    /// `ensemble`: each attack runs only on points still robust after the previous ones (AutoAttack order), and
    /// an attack's `robust_acc` is the accuracy left after it; `standalone`: every attack runs on every clean-correct
    /// point and `robust_acc` is its own.
    pub mode: Mode,
    /// Accuracy of the shipped file (the scorer) on the clean samples.
    pub clean_acc: f64,
    /// Per attack, in the order run.
    pub attacks: OrderedMap<String, AttackSummary>,
    /// Share of samples classified correctly and not broken by any attack.
    pub worst_case_acc: f64,
    pub ort_recheck: OrtRecheck,
    /// PGD robust accuracy at each radius of `eval.eps_curve` (eps 0 = clean accuracy).
    pub robust_acc_vs_eps: OrderedMap<f64, f64>,
    pub warnings: Vec<TrustWarning>,
    pub reproducibility: Reproducibility,
    /// Wall-clock time of the whole evaluation.
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
    pub robust_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<usize>,
    /// Query budget per sample (Square).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<usize>,
    /// Mean queries spent per attacked sample (Square).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_queries: Option<f64>,
    /// Samples this attack ran on.
    pub attacked: usize,
    /// Samples it broke (verified on the scorer).
    pub broken: usize,
    pub seconds: f64,
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
