//! Datasets as tch tensors in [0,1] pixel space: IDX (Fashion-MNIST, MNIST), CIFAR-10/100 binary and npz held in
//! RAM, and the user's own image files (`folder`: torchvision's ImageFolder layout; `manifest`: CSV/JSON lines of
//! path,label) streamed from disk.
//!
//! Images are always float32 `[N, C, H, W]` in [0,1] and labels int64 `[N]`, on the CPU until a caller moves a
//! split with [`Split::to_device`]; the model's own layout and normalization are applied later, inside its forward
//! path, by `model::InputAdapter`. [`Dataset::load`] reads a `dataset:` config block: the named dataset from its
//! standard location (the built-in profiles in `configs/datasets/`), then the first N samples of each split or a
//! seeded random subset. [`Dataset::open`] also reads image files, which need the model's input size. An evaluation asks for
//! [`Splits::TestOnly`]: the training files are hashed, not decoded.
//! [`Split::batches`] is the one batching loop that evaluation, training and memorization share, for both kinds;
//! [`Split::images`] gives any samples by position.
//!
//! Module map: `profile` (what each named dataset is and where it lives), `source` (reading one file: gzip,
//! truncation, SHA-256), `idx`, `cifar` and `npz` (the formats), `batch` (the batch iterator), `augment`
//! (crop-flip, flip), `error`; image files: `folder` and `manifest` (listing), `image_files` (the file table and
//! fingerprint), `confine` (paths stay inside the root and the allow-list), `decode`, `preprocess`,
//! `decode_cache`, `image_source` (decoding on threads), `prefetch` (the bounded loader), `image_dataset` (opening
//! one), `presets` (normalization presets).

mod augment;
mod batch;
mod cifar;
mod confine;
mod decode;
mod decode_cache;
mod error;
mod folder;
mod idx;
mod image_dataset;
mod image_files;
mod image_source;
mod manifest;
mod npz;
mod prefetch;
mod preprocess;
mod presets;
mod profile;
mod source;

use std::path::PathBuf;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::config::DatasetSpec;

pub use augment::{crop_flip, flip, Augmentation, AUGMENTATIONS, CROP_PADDING};
pub use batch::{Batch, BatchOptions, Batches};
pub use confine::check_allowed;
pub use decode::DECODER;
pub use error::DataError;
pub use image_dataset::{ImageFiles, SkippedFiles};
pub use image_files::{FileTable, ImageEntry};
pub use image_source::ImageSource;
pub use npz::{MAX_CLASSES as NPZ_MAX_CLASSES, TEST_SPLIT_DIVISOR as NPZ_TEST_SPLIT_DIVISOR};
pub use preprocess::Preprocess;
pub use presets::{normalization_preset, normalization_presets};
pub use profile::{known_names, Format, Profile};
pub use source::{combined_sha256, sha256_file, SourceFile};

/// A loaded dataset: both splits (after subset selection), what the classes are, and where the data came from.
#[derive(Debug)]
pub struct Dataset {
    /// `dataset.name` from the config (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `npz`).
    pub name: String,
    pub train: Split,
    pub test: Split,
    pub num_classes: i64,
    /// `[C, H, W]` of one image.
    pub chw: [i64; 3],
    pub class_names: Vec<String>,
    /// Digest of all source files: see [`combined_sha256`].
    pub sha256: String,
    /// Each source file with its own SHA-256, in load order.
    pub sources: Vec<SourceFile>,
    /// The directory (IDX, CIFAR) or file (npz) the data was read from.
    pub root: PathBuf,
    /// The profile's per-channel normalization (what `model.mean`/`model.std` null resolve to); empty for npz.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// What `train.augmentation: auto` means for this dataset (npz: crop-flip for 3 channels, else none; image
    /// files: random-resized-crop).
    pub augmentation: Augmentation,
    /// For image-file datasets: the format, fingerprint, preprocessing and skipped files (the report's record).
    pub files: Option<ImageFiles>,
}

/// One split: images float32 `[N, C, H, W]` in [0,1], labels int64 `[N]`.
///
/// An in-RAM split holds its pixels in `x`. An image-file split (`source` set) keeps only an empty
/// `[0, C, H, W]` tensor there, which still tells the device and image shape; its pixels come from
/// [`Split::batches`] and [`Split::images`], decoded on demand.
#[derive(Debug)]
pub struct Split {
    pub x: Tensor,
    pub y: Tensor,
    /// For each sample, its index in the split as stored in the source files (kept for reports).
    pub indices: Vec<i64>,
    /// Samples in the source split before subset selection.
    pub source_len: usize,
    /// The split's image files, when they are decoded on demand (index = source index).
    pub source: Option<std::sync::Arc<ImageSource>>,
}

/// A split as decoded from disk, before subset selection: pixels `uint8` (or float32 in [0,1]) NCHW.
pub(crate) struct RawSplit {
    pub x: Tensor,
    pub y: Tensor,
    /// The source index of the first sample (non-zero only for a test split cut from an npz `x`).
    pub first_index: i64,
}

/// Which splits a command decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splits {
    /// Both (fine-tuning, memorization).
    All,
    /// The test split only (evaluation): the training files are hashed for `sha256`, not decoded, and the
    /// training split is empty.
    TestOnly,
}

/// What a format loader returns.
pub(crate) struct Loaded {
    /// `None` when only the test split was asked for (its files still counted in `sources`).
    pub train: Option<RawSplit>,
    pub test: RawSplit,
    pub sources: Vec<SourceFile>,
    pub num_classes: i64,
    pub chw: [i64; 3],
}

impl Dataset {
    /// Loads `spec.name` from `spec.path` (or the standard locations) and selects `train_samples`/`eval_samples`
    /// (first N, or a random subset seeded by `seed` when `random_subset`; 0 = all; more than the split holds =
    /// all, with a warning).
    pub fn load(spec: &DatasetSpec, seed: u64) -> Result<Dataset, DataError> {
        Self::load_splits(spec, seed, Splits::All)
    }

    /// [`Dataset::load`] decoding only the `splits` asked for; `sha256` covers every source file either way.
    pub fn load_splits(
        spec: &DatasetSpec,
        seed: u64,
        splits: Splits,
    ) -> Result<Dataset, DataError> {
        let started = Instant::now();
        let (loaded, root, profile) = read_source(spec, splits)?;
        for (name, split) in [
            ("training", loaded.train.as_ref()),
            ("test", Some(&loaded.test)),
        ] {
            if split.is_some_and(|s| s.y.size()[0] == 0) {
                return Err(DataError::Shape {
                    path: root,
                    detail: format!("the {name} split holds no samples"),
                });
            }
        }
        let train = match loaded.train {
            Some(raw) => Split::from_raw(
                raw,
                spec.train_samples,
                spec.random_subset
                    .then(|| stream(seed, Stream::TrainSubset, 0)),
            )?,
            None => Split::empty(loaded.chw)?,
        };
        let test = Split::from_raw(
            loaded.test,
            spec.eval_samples,
            spec.random_subset
                .then(|| stream(seed, Stream::TestSubset, 0)),
        )?;
        // Built-in datasets take classes, normalization and default augmentation from their profile; an npz has
        // numbered classes, no normalization, and crop-flip only for colour images.
        let (class_names, mean, std, augmentation) = match profile {
            Some(p) => (p.class_names, p.mean, p.std, p.augmentation),
            None => (
                (0..loaded.num_classes).map(|c| c.to_string()).collect(),
                Vec::new(),
                Vec::new(),
                if loaded.chw[0] == 3 {
                    Augmentation::CropFlip
                } else {
                    Augmentation::None
                },
            ),
        };
        let dataset = Dataset {
            name: spec.name.clone(),
            train,
            test,
            num_classes: loaded.num_classes,
            chw: loaded.chw,
            class_names,
            sha256: combined_sha256(&loaded.sources),
            sources: loaded.sources,
            root,
            mean,
            std,
            augmentation,
            files: None,
        };
        dataset.log_loaded(started);
        Ok(dataset)
    }

    /// The one log line saying what was loaded (for image files, `sha256` is the fingerprint).
    fn log_loaded(&self, started: Instant) {
        tracing::info!(
            dataset = %self.name,
            root = %self.root.display(),
            train = self.train.len(),
            train_source = self.train.source_len,
            test = self.test.len(),
            test_source = self.test.source_len,
            sha256 = %&self.sha256[..12],
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "dataset loaded"
        );
    }
}

/// Finds and decodes the files for `spec`; returns the profile for built-in names.
fn read_source(
    spec: &DatasetSpec,
    splits: Splits,
) -> Result<(Loaded, PathBuf, Option<Profile>), DataError> {
    if image_dataset::is_image_files(&spec.name) {
        return Err(DataError::Invalid {
            what: "dataset loader",
            detail: format!(
                "dataset `{}` is read with Dataset::open, which knows the model's input size",
                spec.name
            ),
        });
    }
    if spec.name == "npz" {
        let path = spec.path.as_deref().ok_or(DataError::NpzPathMissing)?;
        if !path.is_file() {
            return Err(DataError::NotFound {
                name: spec.name.clone(),
                missing: path.display().to_string(),
                looked: path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                how_to_get:
                    "set dataset.path to an existing .npz file (numpy.savez with arrays x and y)"
                        .into(),
            });
        }
        return Ok((npz::load(path)?, path.to_path_buf(), None));
    }
    let profile = Profile::built_in(&spec.name)?;
    let explicit = spec.path.as_deref();
    let (dir, loaded) = match profile.format {
        Format::Idx => {
            let dir = profile.resolve_dir(explicit, idx::holds_files, &idx::wanted_files())?;
            let loaded = idx::load(&dir, &profile, splits)?;
            (dir, loaded)
        }
        Format::Cifar10 | Format::Cifar100 => {
            let dir = profile.resolve_dir(
                explicit,
                |d| cifar::holds_files(d, profile.format),
                &cifar::wanted_files(profile.format),
            )?;
            let loaded = cifar::load(&dir, &profile, splits)?;
            (dir, loaded)
        }
    };
    Ok((loaded, dir, Some(profile)))
}

impl Split {
    /// A split of no samples of images `[C, H, W]` (the training split of an evaluation).
    pub fn empty(chw: [i64; 3]) -> Result<Split, DataError> {
        let [c, h, w] = chw;
        Ok(Split {
            x: Tensor::f_zeros([0, c, h, w], (Kind::Float, Device::Cpu))?,
            y: Tensor::f_zeros([0], (Kind::Int64, Device::Cpu))?,
            indices: Vec::new(),
            source_len: 0,
            source: None,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The same split with its tensors on `device` (indices stay on the host).
    pub fn to_device(&self, device: Device) -> Result<Split, DataError> {
        Ok(Split {
            x: self.x.f_to_device(device)?,
            y: self.y.f_to_device(device)?,
            indices: self.indices.clone(),
            source_len: self.source_len,
            source: self.source.clone(),
        })
    }

    /// `[C, H, W]` of one image.
    pub fn chw(&self) -> [i64; 3] {
        let size = self.x.size();
        [size[1], size[2], size[3]]
    }

    /// The images at `positions` as float32 `[N, C, H, W]` in [0,1] on the split's device (evaluation
    /// preprocessing for image files). A corrupt file is an error here whatever `dataset.corrupt` says: the
    /// evaluated samples were decoded once when the dataset was opened, and skipped ones left out then.
    pub fn images(&self, positions: &[i64]) -> Result<Tensor, DataError> {
        self.check_positions(positions)?;
        let Some(source) = &self.source else {
            let index = Tensor::f_from_slice(positions)?.f_to_device(self.x.device())?;
            return Ok(self.x.f_index_select(0, &index)?);
        };
        Ok(self
            .bytes(source, positions)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_to_device(self.x.device())?)
    }

    /// Every image of the split for evaluation on the CPU: the float pixels of an in-RAM split, or image files
    /// decoded once into `uint8` (a quarter of float's memory; the evaluation converts each batch).
    pub fn eval_pixels(&self) -> Result<Tensor, DataError> {
        match &self.source {
            None => Ok(self.x.shallow_clone()),
            Some(source) => {
                let all: Vec<i64> = (0..self.len() as i64).collect();
                self.bytes(source, &all)
            }
        }
    }

    /// The decoded `uint8 [N, C, H, W]` images of an image-file split at `positions`.
    fn bytes(&self, source: &ImageSource, positions: &[i64]) -> Result<Tensor, DataError> {
        let indices: Vec<i64> = positions
            .iter()
            .map(|&p| self.indices[p as usize])
            .collect();
        let decoded = source.decode(&indices, image_source::Transform::Eval)?;
        if decoded.kept.len() != indices.len() {
            let missing = (0..indices.len())
                .find(|p| !decoded.kept.contains(p))
                .and_then(|p| source.file(indices[p]))
                .unwrap_or_default();
            return Err(DataError::CorruptImage {
                path: missing,
                detail: "it failed to decode after the dataset was opened".into(),
            });
        }
        let [c, h, w] = self.chw();
        Ok(Tensor::f_from_slice(&decoded.data)?.f_view([positions.len() as i64, c, h, w])?)
    }

    /// The file of the sample at `position`, relative to the dataset root (image-file splits).
    pub fn file(&self, position: usize) -> Option<&std::path::Path> {
        let source = self.source.as_ref()?;
        source.relative_file(*self.indices.get(position)?)
    }

    fn check_positions(&self, positions: &[i64]) -> Result<(), DataError> {
        let len = self.len() as i64;
        if let Some(bad) = positions.iter().find(|&&p| p < 0 || p >= len) {
            return Err(DataError::Invalid {
                what: "split positions",
                detail: format!("position {bad} outside a split of {len} samples"),
            });
        }
        Ok(())
    }

    /// The samples at `positions` (positions in this split, not source indices), in that order.
    pub fn select(&self, positions: &[i64]) -> Result<Split, DataError> {
        self.check_positions(positions)?;
        let index = Tensor::f_from_slice(positions)?.f_to_device(self.x.device())?;
        Ok(Split {
            x: match self.source {
                None => self.x.f_index_select(0, &index)?,
                Some(_) => self.x.shallow_clone(),
            },
            y: self.y.f_index_select(0, &index)?,
            indices: positions
                .iter()
                .map(|&p| self.indices[p as usize])
                .collect(),
            source_len: self.source_len,
            source: self.source.clone(),
        })
    }

    /// Picks `wanted` samples (0 = all): the first ones, or a sorted random subset when `rng` is given; then
    /// converts the pixels to float32 in [0,1]. Selection happens before conversion to keep memory low.
    fn from_raw(raw: RawSplit, wanted: usize, rng: Option<ChaCha8Rng>) -> Result<Split, DataError> {
        let total = raw.y.size()[0] as usize;
        let positions = choose(total, wanted, rng);
        let take = positions.len();
        let (x, y) = if take == total {
            (raw.x, raw.y)
        } else if positions.last() == Some(&(take as i64 - 1)) {
            (
                raw.x.f_narrow(0, 0, take as i64)?,
                raw.y.f_narrow(0, 0, take as i64)?,
            )
        } else {
            let index = Tensor::f_from_slice(&positions)?;
            (
                raw.x.f_index_select(0, &index)?,
                raw.y.f_index_select(0, &index)?,
            )
        };
        Ok(Split {
            x: unit_float(&x)?,
            y: y.f_to_kind(Kind::Int64)?,
            indices: positions.iter().map(|p| p + raw.first_index).collect(),
            source_len: total,
            source: None,
        })
    }
}

/// Which of `total` samples a subset of `wanted` takes (0 = all): the first ones, or a sorted random subset when
/// `rng` is given. More than the split holds means all, with a warning.
pub(crate) fn choose(total: usize, wanted: usize, rng: Option<ChaCha8Rng>) -> Vec<i64> {
    let take = if wanted == 0 || wanted >= total {
        if wanted > total {
            tracing::warn!(
                wanted,
                available = total,
                "asked for more samples than the split holds; using all"
            );
        }
        total
    } else {
        wanted
    };
    match rng {
        Some(mut rng) if take < total => {
            let mut chosen = rand::seq::index::sample(&mut rng, total, take).into_vec();
            chosen.sort_unstable();
            chosen.into_iter().map(|p| p as i64).collect()
        }
        _ => (0..take as i64).collect(),
    }
}

/// Converts raw pixels (`uint8`, or float already in [0,1]) to a contiguous float32 tensor in [0,1].
fn unit_float(x: &Tensor) -> Result<Tensor, DataError> {
    Ok(match x.kind() {
        Kind::Uint8 => x.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?,
        _ => x.f_to_kind(Kind::Float)?.f_contiguous()?,
    })
}

/// The independent random streams derived from one master seed, so that e.g. changing the batch size does not
/// change which samples the subset holds.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    TrainSubset = 1,
    TestSubset = 2,
    Shuffle = 3,
    Augment = 4,
    /// Per-sample draws while decoding image files (random resized crop, flip).
    Decode = 5,
}

/// A ChaCha8 generator for `(seed, stream, epoch)`: portable and reproducible across platforms and devices.
pub(crate) fn stream(seed: u64, which: Stream, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((which as u64) << 48) ^ epoch);
    rng
}
