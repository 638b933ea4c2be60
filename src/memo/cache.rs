//! The estimator's cache in the state directory: `<paths.state>/memo/<key>/`, one directory per
//! (data, architecture, estimator settings), so a second model with the same architecture on the same data
//! reuses the K subset models' predictions instead of training them again.
//!
//! The key ([`CacheKey`]) digests everything that determines the predictions: the dataset's SHA-256, the source
//! indices and labels of the scored and test samples (labels too, so relabelled data in memory never hits a stale
//! entry), the ONNX graph-structure hash (weights excluded: every subset model starts from fresh weights anyway),
//! K, the subset ratio, the seed, and the subset models' training settings. The threshold τ is not part of it: it
//! only applies to the scores afterwards.
//!
//! Directory layout:
//! - `key.yaml` — the key in readable form;
//! - `model-NN.npz` — model NN's predictions (`train_correct` bool `[N]`, `test_correct` bool `[M]`, `seconds`
//!   float64 `[1]`), written atomically as soon as the model is trained, so a killed run continues with the next
//!   model;
//! - `model-NN.ckpt/` — the training loop's checkpoint while model NN trains (removed once its predictions are
//!   saved), so a killed run also continues inside a model.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array1;
use ndarray_npy::{NpzReader, NpzWriter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind};

use super::MemoError;
use crate::data::Split;

/// Version of the cache layout; part of the key.
pub const CACHE_FORMAT: &str = "robustd.memo-cache/v1";
/// The readable key file in each entry.
pub const KEY_FILE: &str = "key.yaml";

/// Everything the subset models' predictions depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub format: String,
    pub dataset_sha256: String,
    /// `OnnxModel::structure_hash()` (or any stable name of the architecture for other classifiers).
    pub architecture: String,
    pub train_samples: usize,
    pub train_indices_sha256: String,
    pub train_labels_sha256: String,
    pub test_samples: usize,
    pub test_indices_sha256: String,
    pub test_labels_sha256: String,
    pub k: usize,
    pub subset_ratio: f64,
    pub seed: u64,
    /// The subset models' training settings (train spec, threat model, augmentation) as YAML.
    pub training: String,
}

impl CacheKey {
    /// The digest naming the cache directory (first 24 hex digits of the key's SHA-256).
    pub fn digest(&self) -> String {
        let text = serde_norway::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))[..24].to_string()
    }
}

/// SHA-256 of a split's source indices and of its labels.
pub fn split_digests(split: &Split) -> Result<(String, String), MemoError> {
    let indices: Vec<u8> = split.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
    let labels = Vec::<i64>::try_from(&split.y.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?)?;
    let labels: Vec<u8> = labels.iter().flat_map(|i| i.to_le_bytes()).collect();
    Ok((
        hex::encode(Sha256::digest(&indices)),
        hex::encode(Sha256::digest(&labels)),
    ))
}

/// What one subset model predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPredictions {
    /// Per scored training sample: classified correctly.
    pub train_correct: Vec<bool>,
    /// Per test sample: classified correctly.
    pub test_correct: Vec<bool>,
    /// Training time of the model.
    pub seconds: f64,
}

/// One cache entry.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the entry for `key` under `root` (`<paths.state>/memo`).
    pub fn open(root: &Path, key: &CacheKey) -> Result<Self, MemoError> {
        let dir = root.join(key.digest());
        crate::durable::create_dir_all(&dir)?;
        let key_file = dir.join(KEY_FILE);
        match std::fs::read_to_string(&key_file) {
            Ok(text) => {
                let stored: CacheKey =
                    serde_norway::from_str(&text).map_err(|e| MemoError::Cache {
                        path: key_file.clone(),
                        message: format!("unreadable key: {e}"),
                    })?;
                if &stored != key {
                    return Err(MemoError::Cache {
                        path: key_file,
                        message: "the entry's key differs from this run's (digest collision or edited file); \
                                  delete the directory"
                            .into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::durable::write_yaml_atomic(&key_file, key)?;
            }
            Err(e) => {
                return Err(MemoError::Io {
                    path: key_file,
                    source: e,
                })
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn model_file(&self, model: usize) -> PathBuf {
        self.dir.join(format!("model-{model:02}.npz"))
    }

    /// Where model `model`'s training checkpoints go while it trains.
    pub fn checkpoint_dir(&self, model: usize) -> PathBuf {
        self.dir.join(format!("model-{model:02}.ckpt"))
    }

    /// Model `model`'s saved predictions, if present and of the expected sizes. A file that cannot be read is
    /// reported, removed and treated as absent (the model is trained again).
    pub fn load(
        &self,
        model: usize,
        train: usize,
        test: usize,
    ) -> Result<Option<ModelPredictions>, MemoError> {
        let path = self.model_file(model);
        if !path.is_file() {
            return Ok(None);
        }
        match read_predictions(&path) {
            Ok(p) if p.train_correct.len() == train && p.test_correct.len() == test => Ok(Some(p)),
            outcome => {
                let why = match outcome {
                    Ok(p) => format!(
                        "holds {} training and {} test predictions, expected {train} and {test}",
                        p.train_correct.len(),
                        p.test_correct.len()
                    ),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(file = %path.display(), reason = %why, "discarding a cached subset model");
                std::fs::remove_file(&path).map_err(|source| MemoError::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok(None)
            }
        }
    }

    /// Saves model `model`'s predictions atomically, then removes its training checkpoint.
    pub fn save(&self, model: usize, predictions: &ModelPredictions) -> Result<(), MemoError> {
        let path = self.model_file(model);
        let npz = |message: String| MemoError::Cache {
            path: path.clone(),
            message,
        };
        let io = |source: std::io::Error| MemoError::Io {
            path: path.clone(),
            source,
        };
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        let mut writer = NpzWriter::new(tmp.reopen().map_err(io)?);
        writer
            .add_array(
                "train_correct",
                &Array1::from_vec(predictions.train_correct.clone()),
            )
            .and_then(|_| {
                writer.add_array(
                    "test_correct",
                    &Array1::from_vec(predictions.test_correct.clone()),
                )
            })
            .and_then(|_| writer.add_array("seconds", &Array1::from_vec(vec![predictions.seconds])))
            .map_err(|e| npz(e.to_string()))?;
        let file = writer.finish().map_err(|e| npz(e.to_string()))?;
        file.sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        crate::durable::sync_dir(&self.dir).map_err(io)?;
        let checkpoint = self.checkpoint_dir(model);
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint).map_err(|source| MemoError::Io {
                path: checkpoint,
                source,
            })?;
        }
        Ok(())
    }
}

fn read_predictions(path: &Path) -> Result<ModelPredictions, MemoError> {
    let bad = |message: String| MemoError::Cache {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|source| MemoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = NpzReader::new(file).map_err(|e| bad(e.to_string()))?;
    let train: Array1<bool> = reader
        .by_name("train_correct")
        .map_err(|e| bad(format!("train_correct: {e}")))?;
    let test: Array1<bool> = reader
        .by_name("test_correct")
        .map_err(|e| bad(format!("test_correct: {e}")))?;
    let seconds: Array1<f64> = reader
        .by_name("seconds")
        .map_err(|e| bad(format!("seconds: {e}")))?;
    Ok(ModelPredictions {
        train_correct: train.to_vec(),
        test_correct: test.to_vec(),
        seconds: seconds.first().copied().unwrap_or(0.0),
    })
}
