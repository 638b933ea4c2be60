//! Which training samples are atypical: the one input BAT's reweighting reads.
//!
//! Every source ends in an [`Atypicality`]: one flag per sample of a [`Split`], aligned with `Split::indices`
//! (flag `i` belongs to the sample at position `i`). Sources:
//! - **scores** ([`ScoreTable`]): a score per *source index* (the sample's index in the dataset's original
//!   training split); a sample is atypical when its score is above the threshold τ (`memorization.threshold`).
//!   Tables come from imported files ([`ScoreTable::load`]: `.npy` — a 1-D array indexed by source index; `.npz`
//!   — the same under a named key, `scores.npz#mem`; `.csv` — `index,score` rows, header optional) or from the
//!   memorization module, which builds one with [`ScoreTable::from_pairs`]. Samples without a score count as
//!   typical (the memorization module may score fewer samples than training uses).
//!
//! `train.bat.atypicality` names the source ([`AtypicalitySetting`]): `memorization` (the memorization module's
//! configured estimator), `holdout` (its half-split estimator) or a score file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt};

use super::TrainError;
use crate::data::Split;

/// How `train.bat.atypicality` says to find atypical samples.
#[derive(Debug, Clone, PartialEq)]
pub enum AtypicalitySetting {
    /// The memorization module's scores from `memorization.estimator` (thresholded at τ).
    Memorization,
    /// The memorization module's half-split holdout estimator, whatever `memorization.estimator` says.
    Holdout,
    /// Imported scores; `key` names the array inside an `.npz` (`path#key`).
    File { path: PathBuf, key: Option<String> },
}

impl AtypicalitySetting {
    pub fn parse(setting: &str) -> Self {
        match setting {
            "memorization" => Self::Memorization,
            "holdout" => Self::Holdout,
            other => match other.rsplit_once('#') {
                Some((path, key)) if path.ends_with(".npz") && !key.is_empty() => Self::File {
                    path: path.into(),
                    key: Some(key.to_string()),
                },
                _ => Self::File {
                    path: other.into(),
                    key: None,
                },
            },
        }
    }
}

/// One flag per sample of a split (aligned with `Split::indices`), and where the flags came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Atypicality {
    pub flags: Vec<bool>,
    /// Human-readable origin for reports, e.g. `scores.npz#mem (score > 0.15)` or `holdout K=2`.
    pub source: String,
    /// τ, when the flags come from thresholded scores.
    pub threshold: Option<f64>,
    /// Samples that had a score (the rest count as typical); all of them for the holdout estimate.
    pub scored: usize,
}

impl Atypicality {
    pub fn atypical(&self) -> usize {
        self.flags.iter().filter(|&&f| f).count()
    }

    pub fn share(&self) -> f64 {
        if self.flags.is_empty() {
            0.0
        } else {
            self.atypical() as f64 / self.flags.len() as f64
        }
    }

    /// The flags of the samples at `positions`, in that order.
    pub fn select(&self, positions: &[i64]) -> Result<Atypicality, TrainError> {
        let flags = positions
            .iter()
            .map(|&p| {
                self.flags
                    .get(p as usize)
                    .copied()
                    .ok_or(TrainError::Invalid {
                        key: "atypicality",
                        message: format!("position {p} outside {} flags", self.flags.len()),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Atypicality {
            flags,
            ..self.clone()
        })
    }
}

/// Scores by source index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreTable {
    scores: HashMap<i64, f64>,
    /// Where the scores came from (a file, or `memorization`).
    pub origin: String,
}

impl ScoreTable {
    /// `(source index, score)` pairs; the memorization module's way in. A later pair for the same index wins.
    pub fn from_pairs(
        origin: impl Into<String>,
        pairs: impl IntoIterator<Item = (i64, f64)>,
    ) -> Self {
        Self {
            scores: pairs.into_iter().collect(),
            origin: origin.into(),
        }
    }

    /// `scores[i]` is the score of source index `i`.
    pub fn from_dense(origin: impl Into<String>, scores: &[f64]) -> Self {
        Self::from_pairs(
            origin,
            scores.iter().enumerate().map(|(i, &s)| (i as i64, s)),
        )
    }

    /// Reads `.npy`, `.npz` (array `key`, or its only array) or `.csv` (`index,score`). Non-finite scores and
    /// negative indices are errors naming the entry; anything but a regular file is refused before it is opened
    /// (a FIFO would block, a device never end).
    pub fn load(path: &Path, key: Option<&str>) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Scores {
            path: path.to_path_buf(),
            message,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(bad("not a regular file".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let origin = match key {
            Some(k) => format!("{}#{k}", path.display()),
            None => path.display().to_string(),
        };
        let table = match extension.as_str() {
            "npy" => {
                let file = File::open(path).map_err(|e| bad(e.to_string()))?;
                Self::from_dense(origin, &read_scores(BufReader::new(file), path)?)
            }
            "npz" => {
                let file = File::open(path).map_err(|e| bad(e.to_string()))?;
                let mut archive = zip::ZipArchive::new(BufReader::new(file))
                    .map_err(|e| bad(format!("not an .npz archive: {e}")))?;
                let names: Vec<String> = archive
                    .file_names()
                    .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
                    .collect();
                let wanted = match key {
                    Some(k) => k.to_string(),
                    None if names.len() == 1 => names[0].clone(),
                    None => {
                        return Err(bad(format!(
                            "holds several arrays ({}); name one as `{}#KEY`",
                            names.join(", "),
                            path.display()
                        )))
                    }
                };
                let entry = [format!("{wanted}.npy"), wanted.clone()]
                    .into_iter()
                    .find(|n| archive.index_for_name(n).is_some())
                    .ok_or_else(|| {
                        bad(format!("no array `{wanted}` (holds: {})", names.join(", ")))
                    })?;
                let file = archive.by_name(&entry).map_err(|e| bad(e.to_string()))?;
                Self::from_dense(origin, &read_scores(file, path)?)
            }
            "csv" => {
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                Self::from_pairs(origin, parse_csv(&text, path)?)
            }
            _ => return Err(bad("expected a .npy, .npz or .csv file".into())),
        };
        if let Some((index, score)) = table.scores.iter().find(|(i, s)| **i < 0 || !s.is_finite()) {
            return Err(bad(format!("entry {index} holds score {score}")));
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The score of a source index.
    pub fn get(&self, index: i64) -> Option<f64> {
        self.scores.get(&index).copied()
    }

    /// Flags for `split`: atypical when the score is above `threshold`; unscored samples are typical.
    pub fn flags(&self, split: &Split, threshold: f64) -> Atypicality {
        let mut scored = 0;
        let flags = split
            .indices
            .iter()
            .map(|i| match self.get(*i) {
                Some(s) => {
                    scored += 1;
                    s > threshold
                }
                None => false,
            })
            .collect();
        if scored < split.len() {
            tracing::warn!(
                origin = %self.origin,
                scored,
                samples = split.len(),
                "some training samples have no atypicality score; they count as typical"
            );
        }
        Atypicality {
            flags,
            source: format!("{} (score > {threshold})", self.origin),
            threshold: Some(threshold),
            scored,
        }
    }
}

/// A 1-D float array (float64 or float32) from an `.npy` stream.
fn read_scores(reader: impl Read, path: &Path) -> Result<Vec<f64>, TrainError> {
    let mut bytes = Vec::new();
    let mut reader = reader;
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| TrainError::Scores {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let array: ArrayD<f64> = match ArrayD::<f64>::read_npy(bytes.as_slice()) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => ArrayD::<f32>::read_npy(bytes.as_slice())
            .map(|a| a.mapv(f64::from))
            .map_err(|e| TrainError::Scores {
                path: path.to_path_buf(),
                message: format!("scores must be float32 or float64: {e}"),
            })?,
        Err(e) => {
            return Err(TrainError::Scores {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    if array.ndim() != 1 {
        return Err(TrainError::Scores {
            path: path.to_path_buf(),
            message: format!(
                "expected a 1-D array of scores, got shape {:?}",
                array.shape()
            ),
        });
    }
    Ok(array.iter().copied().collect())
}

/// `index,score` rows; a first row that does not parse is taken as a header; blank lines are skipped.
fn parse_csv(text: &str, path: &Path) -> Result<Vec<(i64, f64)>, TrainError> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = line.split_once(',').and_then(|(i, s)| {
            Some((i.trim().parse::<i64>().ok()?, s.trim().parse::<f64>().ok()?))
        });
        match parsed {
            Some(pair) => pairs.push(pair),
            None if n == 0 => continue,
            None => {
                return Err(TrainError::Scores {
                    path: path.to_path_buf(),
                    message: format!("line {}: expected `index,score`, got `{line}`", n + 1),
                })
            }
        }
    }
    Ok(pairs)
}
