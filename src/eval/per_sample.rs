//! Per-sample evaluation results and their npz file (`per_sample.npz`), readable with `numpy.load`:
//!
//! | array | dtype | shape | meaning |
//! |---|---|---|---|
//! | `index` | int64 | `[N]` | dataset index of each evaluated sample |
//! | `label` | int64 | `[N]` | true label |
//! | `clean_pred` | int64 | `[N]` | the scorer's prediction on the clean input |
//! | `attack_<name>` | int8 | `[N]` | 1 broken, 0 attacked and held, −1 not attacked (already broken or misclassified) |
//! | `worst_case_robust` | bool | `[N]` | correct and held against every attack |
//! | `curve_eps` | float64 | `[E]` | radii of the robust-accuracy curve |
//! | `curve_robust` | bool | `[E, N]` | robust at each radius (under `eval.curve_protocol`) |

use std::fs::File;
use std::path::Path;

use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

use super::EvalError;

/// Outcome of one attack on one sample.
pub const BROKEN: i8 = 1;
pub const HELD: i8 = 0;
pub const NOT_ATTACKED: i8 = -1;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PerSample {
    pub index: Vec<u64>,
    pub label: Vec<i64>,
    pub clean_pred: Vec<i64>,
    /// Per attack in the order run: [`BROKEN`], [`HELD`] or [`NOT_ATTACKED`] per sample.
    pub attacks: Vec<(String, Vec<i8>)>,
    pub worst_case_robust: Vec<bool>,
    /// Per radius of the curve: robust per sample (see `eval::curve` for how).
    pub curve: Vec<(f64, Vec<bool>)>,
}

impl PerSample {
    pub fn clean_correct(&self) -> Vec<bool> {
        self.label
            .iter()
            .zip(&self.clean_pred)
            .map(|(y, p)| y == p)
            .collect()
    }

    /// Clean and worst-case robust accuracy on the samples where `mask` is true (e.g. a typical/atypical group);
    /// `None` for an empty group.
    pub fn accuracy_on(&self, mask: &[bool]) -> Option<(f64, f64)> {
        let clean = self.clean_correct();
        let chosen: Vec<usize> = (0..self.index.len())
            .filter(|&i| mask.get(i).copied().unwrap_or(false))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let share = |f: &dyn Fn(usize) -> bool| {
            chosen.iter().filter(|&&i| f(i)).count() as f64 / chosen.len() as f64
        };
        Some((share(&|i| clean[i]), share(&|i| self.worst_case_robust[i])))
    }

    /// Writes the npz atomically, through [`crate::durable`].
    pub fn save_npz(&self, path: &Path) -> Result<(), EvalError> {
        let as_i64 = |v: &[u64]| Array1::from_iter(v.iter().map(|&i| i as i64));
        let eps: Array1<f64> = self.curve.iter().map(|(e, _)| *e).collect();
        let n = self.index.len();
        let robust = Array2::from_shape_fn((self.curve.len(), n), |(e, i)| self.curve[e].1[i]);
        crate::durable::write_npz(path, |writer| {
            writer.add_array("index", &as_i64(&self.index))?;
            writer.add_array("label", &Array1::from_vec(self.label.clone()))?;
            writer.add_array("clean_pred", &Array1::from_vec(self.clean_pred.clone()))?;
            for (name, outcome) in &self.attacks {
                writer.add_array(format!("attack_{name}"), &Array1::from_vec(outcome.clone()))?;
            }
            writer.add_array(
                "worst_case_robust",
                &Array1::from_vec(self.worst_case_robust.clone()),
            )?;
            writer.add_array("curve_eps", &eps)?;
            writer.add_array("curve_robust", &robust)
        })?;
        Ok(())
    }

    /// Reads a file written by [`PerSample::save_npz`].
    pub fn load_npz(path: &Path) -> Result<Self, EvalError> {
        let npz = |message: String| EvalError::Npz {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = NpzReader::new(file).map_err(|e| npz(e.to_string()))?;
        let read_i64 = |reader: &mut NpzReader<File>, name: &str| -> Result<Vec<i64>, EvalError> {
            let a: Array1<i64> = reader
                .by_name(name)
                .map_err(|e| npz(format!("{name}: {e}")))?;
            Ok(a.to_vec())
        };
        let index = read_i64(&mut reader, "index")?
            .into_iter()
            .map(|i| i as u64)
            .collect();
        let label = read_i64(&mut reader, "label")?;
        let clean_pred = read_i64(&mut reader, "clean_pred")?;
        let mut attacks = Vec::new();
        let names = reader.names().map_err(|e| npz(e.to_string()))?;
        for name in names.iter().filter_map(|n| n.strip_prefix("attack_")) {
            let a: Array1<i8> = reader
                .by_name(&format!("attack_{name}"))
                .map_err(|e| npz(format!("attack_{name}: {e}")))?;
            attacks.push((name.to_owned(), a.to_vec()));
        }
        let worst: Array1<bool> = reader
            .by_name("worst_case_robust")
            .map_err(|e| npz(format!("worst_case_robust: {e}")))?;
        let eps: Array1<f64> = reader
            .by_name("curve_eps")
            .map_err(|e| npz(format!("curve_eps: {e}")))?;
        let robust: Array2<bool> = reader
            .by_name("curve_robust")
            .map_err(|e| npz(format!("curve_robust: {e}")))?;
        let curve = eps
            .iter()
            .zip(robust.outer_iter())
            .map(|(e, row)| (*e, row.to_vec()))
            .collect();
        Ok(Self {
            index,
            label,
            clean_pred,
            attacks,
            worst_case_robust: worst.to_vec(),
            curve,
        })
    }
}
