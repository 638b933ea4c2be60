//! Opening an image-file dataset (`folder` or `manifest`) for a model: list the files, resolve the preprocessing
//! against the model's input size, pick the subsets, and set up each split's decoder. Nothing is decoded for
//! training here; the evaluated samples are decoded once when `dataset.corrupt` is `skip`, so that the skipped
//! ones are left out of the evaluation from the start.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::confine::Root;
use super::image_source::{ImageSource, SourceOptions, Transform};
use super::preprocess::Preprocess;
use super::{
    choose, folder, manifest, stream, Augmentation, DataError, Dataset, Split, Splits, Stream,
};
use crate::config::{Config, CorruptPolicy};

/// The largest file (and decode allocation) one image may take, whatever the memory budget.
const MAX_IMAGE_BYTES: u64 = 512 << 20;
/// Batches decoded ahead at most.
const MAX_PREFETCH: usize = 4;
/// Samples decoded per step when the evaluated samples are checked.
const CHECK_CHUNK: usize = 256;
/// Skipped files named in the report (the count covers all).
const SKIPPED_LISTED: usize = 20;

/// Whether `dataset.name` is an image-file dataset.
pub fn is_image_files(name: &str) -> bool {
    name == "folder" || name == "manifest"
}

/// What an image-file dataset is, for the report.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    /// `folder` or `manifest`.
    pub format: &'static str,
    pub root: PathBuf,
    /// [`super::FileTable::fingerprint`].
    pub fingerprint: String,
    pub preprocess: Preprocess,
    /// The folders or manifests of the splits (`train`, `test`; `train.csv`, `val.csv`, ...).
    pub train_source: String,
    pub test_source: String,
    pub decode_threads: usize,
    pub prefetch_batches: usize,
    pub cache: Option<PathBuf>,
    pub train: Arc<ImageSource>,
    pub test: Arc<ImageSource>,
}

/// Files left out as corrupt (`dataset.corrupt: skip`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedFiles {
    pub count: usize,
    /// The first few, relative to the dataset root, each with its cause.
    pub files: Vec<String>,
}

impl ImageFiles {
    /// Every file skipped so far, in both splits.
    pub fn skipped(&self) -> SkippedFiles {
        let mut files = Vec::new();
        let mut count = 0;
        for source in [&self.train, &self.test] {
            let skipped = source.skipped();
            count += skipped.len();
            files.extend(skipped.into_iter().map(|(i, cause)| {
                let path = source
                    .relative_file(i as i64)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                format!("{path}: {cause}")
            }));
        }
        files.truncate(SKIPPED_LISTED);
        SkippedFiles { count, files }
    }
}

impl Dataset {
    /// Opens the dataset `config.dataset` names for a model taking `input_chw` (`[C, H, W]`; `None` when the ONNX
    /// input does not fix it): image files through `model.preprocess`, anything else as [`Dataset::load`].
    pub fn open(config: &Config, input_chw: Option<[i64; 3]>) -> Result<Dataset, DataError> {
        Self::open_splits(config, input_chw, Splits::All)
    }

    /// [`Dataset::open`] decoding only `splits` of an in-RAM dataset (image files are decoded on demand anyway).
    pub fn open_splits(
        config: &Config,
        input_chw: Option<[i64; 3]>,
        splits: Splits,
    ) -> Result<Dataset, DataError> {
        let spec = &config.dataset;
        if !is_image_files(&spec.name) {
            return Dataset::load_splits(spec, config.runtime.seed, splits);
        }
        let started = std::time::Instant::now();
        let path = spec.path.as_deref().ok_or_else(|| DataError::NotFound {
            name: spec.name.clone(),
            missing: "dataset.path".into(),
            looked: "the config".into(),
            how_to_get: "set dataset.path to the dataset's directory".into(),
        })?;
        let classes = spec.classes.as_deref();
        let table = if spec.name == "folder" {
            folder::list(path, classes)?
        } else {
            manifest::list(path, classes)?
        };
        let preprocess =
            Preprocess::resolve(&config.model.preprocess, input_chw.unwrap_or([3, 0, 0]))?;
        let budget = config.limits.job_memory_mb.max(1) << 20;
        let threads = match (spec.loader_threads, config.runtime.threads) {
            (0, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (0, n) | (n, _) => n,
        };
        let batch_bytes = (config.train.batch_size.max(1) * preprocess.output_len()) as u64;
        let options = SourceOptions {
            policy: spec.corrupt,
            cache: spec.cache.clone(),
            threads,
            // A quarter of the budget for the queue; at least one batch ahead.
            prefetch: ((budget / 4 / batch_bytes.max(1)) as usize).clamp(1, MAX_PREFETCH),
            // A quarter of the budget shared by the decode threads' images.
            max_bytes: (budget / 4 / threads as u64).clamp(16 << 20, MAX_IMAGE_BYTES),
        };
        let root = Root::new(&table.root)?;
        let [c, h, w] = preprocess.output.map(i64::from);
        let seed = config.runtime.seed;
        let subset = |n: usize, wanted: usize, which: Stream| {
            choose(
                n,
                wanted,
                spec.random_subset.then(|| stream(seed, which, 0)),
            )
        };
        let train_positions = subset(table.train.len(), spec.train_samples, Stream::TrainSubset);
        let test_positions = subset(table.test.len(), spec.eval_samples, Stream::TestSubset);
        let labels = |entries: &[super::ImageEntry], positions: &[i64]| -> Vec<i64> {
            positions
                .iter()
                .map(|&p| entries[p as usize].label)
                .collect()
        };
        let train_labels = labels(&table.train, &train_positions);
        let test_labels = labels(&table.test, &test_positions);
        let (train_len, test_len) = (table.train.len(), table.test.len());
        let train_source = Arc::new(ImageSource::new(
            root.clone(),
            table.train.clone(),
            preprocess.clone(),
            &options,
        )?);
        let test_source = Arc::new(ImageSource::new(
            root,
            table.test.clone(),
            preprocess.clone(),
            &options,
        )?);
        let split = |source: &Arc<ImageSource>, labels: &[i64], indices: Vec<i64>, source_len| {
            Ok::<_, DataError>(Split {
                x: Tensor::f_zeros([0, c, h, w], (Kind::Float, tch::Device::Cpu))?,
                y: Tensor::f_from_slice(labels)?,
                indices,
                source_len,
                source: Some(source.clone()),
            })
        };
        let train = split(&train_source, &train_labels, train_positions, train_len)?;
        let mut test = split(&test_source, &test_labels, test_positions, test_len)?;
        let eval_bytes = test.len() as u64 * preprocess.output_len() as u64;
        if eval_bytes > budget / 4 {
            return Err(DataError::Invalid {
                what: "dataset.eval_samples",
                detail: format!(
                    "{} evaluated images of {c}x{h}x{w} take {} MiB, more than a quarter of limits.job_memory_mb \
                     ({} MiB); evaluate fewer (dataset.eval_samples) or raise the limit",
                    test.len(),
                    eval_bytes >> 20,
                    budget >> 20
                ),
            });
        }
        if spec.corrupt == CorruptPolicy::Skip {
            test = without_corrupt(test, &test_source)?;
        }
        let files = ImageFiles {
            format: table.format,
            root: table.root.clone(),
            fingerprint: table.fingerprint(),
            preprocess,
            train_source: table.train_source.clone(),
            test_source: table.test_source.clone(),
            decode_threads: threads,
            prefetch_batches: options.prefetch,
            cache: spec.cache.clone(),
            train: train_source,
            test: test_source,
        };
        let dataset = Dataset {
            name: spec.name.clone(),
            train,
            test,
            num_classes: table.class_names.len() as i64,
            chw: [c, h, w],
            class_names: table.class_names,
            sha256: files.fingerprint.clone(),
            sources: Vec::new(),
            root: table.root,
            mean: Vec::new(),
            std: Vec::new(),
            augmentation: Augmentation::RandomResizedCrop,
            files: Some(files),
        };
        dataset.log_loaded(started);
        Ok(dataset)
    }
}

/// The split without the samples whose files do not decode (each counted as skipped by the source).
fn without_corrupt(split: Split, source: &ImageSource) -> Result<Split, DataError> {
    let mut good = Vec::with_capacity(split.len());
    for (chunk_start, chunk) in (0..split.len() as i64)
        .collect::<Vec<_>>()
        .chunks(CHECK_CHUNK)
        .enumerate()
    {
        let indices: Vec<i64> = chunk.iter().map(|&p| split.indices[p as usize]).collect();
        let decoded = source.decode(&indices, Transform::Eval)?;
        good.extend(
            decoded
                .kept
                .iter()
                .map(|&k| (chunk_start * CHECK_CHUNK + k) as i64),
        );
    }
    if good.len() == split.len() {
        return Ok(split);
    }
    split.select(&good)
}
