//! The files the memorization stage writes (by `robustd memorization`, and by the pipeline into a job's output):
//!
//! | file | content |
//! |---|---|
//! | `scores.npy` | float64 `[max index + 1]`: score by source index (0 = unscored or undefined) — importable again with `train.bat.atypicality: PATH/scores.npy` |
//! | `memorization.npz` | `index` int64 `[N]`, `score` float64 `[N]` (0 where undefined), `defined` bool `[N]`; for the subset estimators also `in_seen`, `in_correct`, `out_seen`, `out_correct` uint32 `[N]`, `mem_hard` (the 0/1 score) and `standard_error` float64 `[N]` (NaN where undefined); for learning-speed `passes`, `correct_passes` uint32 `[N]`; for every estimator `test_index` int64 `[M]`, `consistency` float64 `[M]` |
//! | `files.csv` | image-file datasets only: `index,file,label` of each scored sample (`index` as in `memorization.npz` and the position in `scores.npy`, `file` relative to the dataset root) |
//! | `memorization.yaml` | [`Summary`]: the report's `memorization:` section (estimator, budget, self-checks), the model's `groups:`, each trained model's fit |
//! | `memorization_hist.png` | histogram of the scores with the threshold |
//! | `harmful_atypical.png` | image grid of the harmful atypical samples |

use std::path::Path;

use ndarray::Array1;
use ndarray_npy::{NpzWriter, WriteNpyExt};
use serde::{Deserialize, Serialize};

use super::estimator::{Estimate, ModelFit};
use super::scores::TrainScores;
use super::MemoError;
use crate::data::Split;
use crate::durable::{write_atomic, write_atomic_with, write_yaml_atomic};
use crate::report::plots::memorization_histogram;
use crate::report::{Groups, Memorization};

pub const SCORES_NPY: &str = "scores.npy";
pub const DETAILS_NPZ: &str = "memorization.npz";
pub const FILES_CSV: &str = "files.csv";
pub const SUMMARY_YAML: &str = "memorization.yaml";
pub const HISTOGRAM_PNG: &str = "memorization_hist.png";
pub const HARMFUL_PNG: &str = "harmful_atypical.png";
/// The `schema` of [`Summary`].
pub const SUMMARY_SCHEMA: &str = "robustd.memorization/v1";

/// `memorization.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub schema: String,
    /// The model file the groups and harmful samples were measured on.
    pub model: String,
    pub dataset: String,
    /// Exactly the report's `memorization:` section.
    pub memorization: Memorization,
    /// The model's accuracy per group (train: clean / PGD on training samples; test: clean / PGD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Groups>,
    /// How each of the estimator's models fit the samples it trained on, the samples it never saw, and the test
    /// samples.
    #[serde(default)]
    pub subset_models: Vec<SubsetModel>,
    /// The files written beside this one.
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetModel {
    pub in_subset_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_subset_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    pub epochs: usize,
    pub seconds: f64,
    pub cached: bool,
}

impl From<&ModelFit> for SubsetModel {
    fn from(f: &ModelFit) -> Self {
        Self {
            in_subset_acc: f.in_subset_acc,
            out_of_subset_acc: f.out_of_subset_acc,
            test_acc: f.test_acc,
            epochs: f.epochs,
            seconds: f.seconds,
            cached: !f.trained_now,
        }
    }
}

/// One line on where a memorization section's scores came from and whether they can be trusted, e.g.
/// `learning-speed, 1 model, 8 epochs, 5000 samples, 41 s; reliable (split-half 0.93)`.
pub fn run_line(m: &Memorization) -> String {
    let mut line = m.estimator.clone();
    if let Some(b) = &m.budget {
        line.push_str(&format!(
            ", {} model{}, {} {}, {} samples",
            b.models,
            if b.models == 1 { "" } else { "s" },
            b.epochs,
            if b.fit_target.is_some() {
                "epochs at most"
            } else {
                "epochs"
            },
            b.samples
        ));
        if let Some(t) = b.fit_target {
            line.push_str(&format!(" (until {:.0} % fitted)", 100.0 * t));
        }
    }
    if let Some(s) = m.seconds {
        line.push_str(&format!(", {s:.0} s"));
    }
    if let Some(c) = &m.self_check {
        line.push_str(if c.reliable {
            "; reliable"
        } else {
            "; UNRELIABLE"
        });
        if let Some(r) = c.split_half_spearman {
            line.push_str(&format!(" (split-half {r:.2})"));
        }
    }
    line
}

/// `scores.npy`.
pub fn write_scores_npy(path: &Path, scores: &TrainScores) -> Result<(), MemoError> {
    let dense = Array1::from_vec(scores.dense_by_source_index());
    write_atomic_with(path, |w| dense.write_npy(w).map_err(std::io::Error::other))?;
    Ok(())
}

/// `memorization.npz` (the estimator's counts and consistency scores when `estimate` is given).
pub fn write_details_npz(
    path: &Path,
    scores: &TrainScores,
    estimate: Option<&Estimate>,
) -> Result<(), MemoError> {
    let bad = |e: ndarray_npy::WriteNpzError| MemoError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    // NpzWriter needs Write + Seek: build the archive in memory, then write it atomically.
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut npz = NpzWriter::new(&mut buffer);
        npz.add_array("index", &Array1::from_vec(scores.indices.clone()))
            .map_err(bad)?;
        let values: Vec<f64> = scores.scores.iter().map(|s| s.unwrap_or(0.0)).collect();
        npz.add_array("score", &Array1::from_vec(values))
            .map_err(bad)?;
        let defined: Vec<bool> = scores.scores.iter().map(Option::is_some).collect();
        npz.add_array("defined", &Array1::from_vec(defined))
            .map_err(bad)?;
        if let Some(t) = estimate.and_then(|e| e.tally.as_ref()) {
            for (name, counts) in [
                ("in_seen", &t.in_seen),
                ("in_correct", &t.in_correct),
                ("out_seen", &t.out_seen),
                ("out_correct", &t.out_correct),
            ] {
                npz.add_array(name, &Array1::from_vec(counts.clone()))
                    .map_err(bad)?;
            }
            let n = t.len();
            let hard: Vec<f64> = (0..n).map(|i| t.mem(i).unwrap_or(f64::NAN)).collect();
            let errors: Vec<f64> = (0..n)
                .map(|i| t.standard_error(i).unwrap_or(f64::NAN))
                .collect();
            npz.add_array("mem_hard", &Array1::from_vec(hard))
                .map_err(bad)?;
            npz.add_array("standard_error", &Array1::from_vec(errors))
                .map_err(bad)?;
        }
        if let Some(c) = estimate.and_then(|e| e.passes.as_ref()) {
            let sum = |a: &[u32], b: &[u32]| -> Vec<u32> {
                a.iter().zip(b).map(|(x, y)| x + y).collect()
            };
            npz.add_array(
                "passes",
                &Array1::from_vec(sum(&c.passes_even, &c.passes_odd)),
            )
            .map_err(bad)?;
            npz.add_array(
                "correct_passes",
                &Array1::from_vec(sum(&c.correct_even, &c.correct_odd)),
            )
            .map_err(bad)?;
        }
        if let Some(e) = estimate {
            if let Some(c) = &e.consistency {
                npz.add_array("test_index", &Array1::from_vec(c.indices.clone()))
                    .map_err(bad)?;
                npz.add_array("consistency", &Array1::from_vec(c.scores.clone()))
                    .map_err(bad)?;
            }
        }
        npz.finish().map_err(bad)?;
    }
    write_atomic(path, buffer.get_ref())?;
    Ok(())
}

/// `files.csv`: the scored samples of an image-file split as `index,file,label`, so the source indices of
/// `scores.npy` and `memorization.npz` name their image files. Returns false (writing nothing) for an in-RAM split.
pub fn write_files_csv(path: &Path, scored: &Split) -> Result<bool, MemoError> {
    if scored.source.is_none() {
        return Ok(false);
    }
    let labels = Vec::<i64>::try_from(&scored.y.f_to_kind(tch::Kind::Int64)?)?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| MemoError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    writer
        .write_record(["index", "file", "label"])
        .map_err(bad)?;
    for (position, (&index, label)) in scored.indices.iter().zip(&labels).enumerate() {
        let file = scored
            .file(position)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        writer
            .write_record([index.to_string(), file, label.to_string()])
            .map_err(bad)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| bad(csv::Error::from(e.into_error())))?;
    write_atomic(path, &bytes)?;
    Ok(true)
}

/// `memorization_hist.png`.
pub fn write_histogram(path: &Path, scores: &TrainScores, threshold: f64) -> Result<(), MemoError> {
    let h = scores.histogram();
    memorization_histogram(path, &h.bins, &h.counts, Some(threshold))?;
    Ok(())
}

/// `memorization.yaml`.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), MemoError> {
    write_yaml_atomic(path, summary)?;
    Ok(())
}
