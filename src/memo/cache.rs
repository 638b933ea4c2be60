//! The estimators' cache in the state directory: `<paths.state>/memo/<key>/`, one directory per
//! (data, architecture, estimator and its settings), so a second model with the same architecture on the same data
//! reuses the trained models' predictions instead of training them again.
//!
//! The key ([`CacheKey`]) digests everything that determines the predictions: the dataset's SHA-256, the source
//! indices and labels of the scored and test samples (labels too, so relabelled data in memory never hits a stale
//! entry), the ONNX graph-structure hash (weights excluded: every subset model starts from fresh weights anyway),
//! the estimator, K, the subset ratio, the fit target, the seed, and the models' training settings (epochs
//! included). The threshold τ is not part of it: it only applies to the scores afterwards.
//!
//! Directory layout:
//! - `key.yaml` — the key in readable form;
//! - `model-NN.npz` — model NN's predictions after training (`train_correct` bool `[N]`, `train_p` float32 `[N]`
//!   = `p(y|x)`, the same for the `M` test samples, `seconds` float64 `[1]`, `epochs` uint32 `[1]`; for the
//!   learning-speed model also its training passes per sample and epoch parity: `passes_even`/`passes_odd`,
//!   `correct_even`/`correct_odd` uint32 `[N]`, `p_even`/`p_odd` float64 `[N]`), written atomically as soon as the
//!   model is trained, so a killed run continues with the next model;
//! - `model-NN.ckpt/` — the training loop's checkpoint while subset model NN trains (removed once its predictions
//!   are saved), so a killed run also continues inside a model. The learning-speed model keeps none: its counts
//!   live only in the observing process, so a killed run trains it again (one model, the cheapest estimator).

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array1;
use ndarray_npy::NpzReader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind};

use super::MemoError;
use crate::data::Split;

/// Version of the cache layout; part of the key.
pub const CACHE_FORMAT: &str = "robustd.memo-cache/v2";
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
    /// `learning-speed`, `feldman-zhang` or `holdout`.
    pub estimator: String,
    /// Models trained (K; 2 for holdout; 1 for learning-speed).
    pub k: usize,
    pub subset_ratio: f64,
    /// Feldman–Zhang: the training accuracy a subset model stops at.
    pub fit_target: Option<f64>,
    pub seed: u64,
    /// The models' training settings (train spec with its epochs, threat model, augmentation) as YAML.
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

/// What one trained model predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPredictions {
    /// Per scored training sample: classified correctly.
    pub train_correct: Vec<bool>,
    /// Per scored training sample: `p(y|x)`.
    pub train_p: Vec<f32>,
    /// Per test sample: classified correctly.
    pub test_correct: Vec<bool>,
    pub test_p: Vec<f32>,
    /// Training time of the model.
    pub seconds: f64,
    /// Epochs it trained.
    pub epochs: u32,
    /// The learning-speed model's training passes.
    pub passes: Option<PassCounts>,
}

/// Per scored training sample: what its training passes in even and odd epochs (0-based) saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PassCounts {
    pub passes_even: Vec<u32>,
    pub passes_odd: Vec<u32>,
    pub correct_even: Vec<u32>,
    pub correct_odd: Vec<u32>,
    /// Sums of `p(y|x)`.
    pub p_even: Vec<f64>,
    pub p_odd: Vec<f64>,
}

impl PassCounts {
    pub fn len(&self) -> usize {
        self.passes_even.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passes_even.is_empty()
    }
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
            Ok(p)
                if p.train_correct.len() == train
                    && p.train_p.len() == train
                    && p.test_correct.len() == test
                    && p.test_p.len() == test
                    && p.passes.as_ref().is_none_or(|c| c.len() == train) =>
            {
                Ok(Some(p))
            }
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
        let p = predictions;
        crate::durable::write_npz(&path, |writer| {
            writer.add_array("train_correct", &Array1::from_vec(p.train_correct.clone()))?;
            writer.add_array("train_p", &Array1::from_vec(p.train_p.clone()))?;
            writer.add_array("test_correct", &Array1::from_vec(p.test_correct.clone()))?;
            writer.add_array("test_p", &Array1::from_vec(p.test_p.clone()))?;
            writer.add_array("seconds", &Array1::from_vec(vec![p.seconds]))?;
            writer.add_array("epochs", &Array1::from_vec(vec![p.epochs]))?;
            if let Some(c) = &p.passes {
                for (name, counts) in [
                    ("passes_even", &c.passes_even),
                    ("passes_odd", &c.passes_odd),
                    ("correct_even", &c.correct_even),
                    ("correct_odd", &c.correct_odd),
                ] {
                    writer.add_array(name, &Array1::from_vec(counts.clone()))?;
                }
                writer.add_array("p_even", &Array1::from_vec(c.p_even.clone()))?;
                writer.add_array("p_odd", &Array1::from_vec(c.p_odd.clone()))?;
            }
            Ok(())
        })?;
        let checkpoint = self.checkpoint_dir(model);
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint).map_err(|source| MemoError::Io {
                path: checkpoint,
                source,
            })?;
        }
        crate::failpoint::point(crate::failpoint::MEMO_MODEL_SAVED);
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
    let names = reader.names().map_err(|e| bad(e.to_string()))?;
    let has = |name: &str| {
        names
            .iter()
            .any(|n| n == name || n == &format!("{name}.npy"))
    };
    macro_rules! array {
        ($name:literal, $t:ty) => {{
            let a: Array1<$t> = reader
                .by_name($name)
                .map_err(|e| bad(format!("{}: {e}", $name)))?;
            a.to_vec()
        }};
    }
    let passes = if has("passes_even") {
        Some(PassCounts {
            passes_even: array!("passes_even", u32),
            passes_odd: array!("passes_odd", u32),
            correct_even: array!("correct_even", u32),
            correct_odd: array!("correct_odd", u32),
            p_even: array!("p_even", f64),
            p_odd: array!("p_odd", f64),
        })
    } else {
        None
    };
    let seconds = array!("seconds", f64);
    let epochs = array!("epochs", u32);
    Ok(ModelPredictions {
        train_correct: array!("train_correct", bool),
        train_p: array!("train_p", f32),
        test_correct: array!("test_correct", bool),
        test_p: array!("test_p", f32),
        seconds: seconds.first().copied().unwrap_or(0.0),
        epochs: epochs.first().copied().unwrap_or(0),
        passes,
    })
}
