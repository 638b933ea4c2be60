//! One split of an image-file dataset as a source of preprocessed images: reads, decodes and preprocesses the
//! samples asked for on a pool of decode threads (in parallel, results in the order asked), through the decode
//! cache when there is one, and applies the corrupt-file policy. Everything random (the training crop and flip) is
//! drawn from a generator keyed by `(seed, epoch, sample index)`, so the output does not depend on the number of
//! threads or on which thread decodes what.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::confine::Root;
use super::decode::{decode, DecodeFailure};
use super::decode_cache::DecodeCache;
use super::image_files::ImageEntry;
use super::preprocess::Preprocess;
use super::{stream, DataError, Stream};
use crate::config::CorruptPolicy;

/// Words of the per-sample generator reserved for each sample (a random resized crop uses at most ~50).
const WORDS_PER_SAMPLE: u128 = 1024;

/// How samples are transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The deterministic evaluation preprocessing (cacheable).
    Eval,
    /// `RandomResizedCrop` + flip, drawn per sample from `(seed, epoch, index)`.
    RandomResizedCrop { seed: u64, epoch: u64 },
}

/// Decoded samples: `[C, H, W]` bytes of each kept sample, one after another, and which of the asked samples they
/// are (positions in the request; a skipped corrupt file leaves a gap).
#[derive(Debug)]
pub struct Decoded {
    pub data: Vec<u8>,
    pub kept: Vec<usize>,
}

#[derive(Debug)]
pub struct ImageSource {
    root: Root,
    /// This split's files; the sample's source index is the position here.
    pub files: Vec<ImageEntry>,
    pub preprocess: Preprocess,
    cache: Option<DecodeCache>,
    policy: CorruptPolicy,
    /// Most bytes one file may have, and one decode may allocate.
    max_bytes: u64,
    pool: rayon::ThreadPool,
    threads: usize,
    /// Batches decoded ahead of the consumer by `Split::batches`.
    pub prefetch: usize,
    /// Files skipped as corrupt (policy `skip`): source index → cause.
    skipped: Mutex<BTreeMap<usize, String>>,
}

/// How an `ImageSource` is set up.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub policy: CorruptPolicy,
    pub cache: Option<PathBuf>,
    pub threads: usize,
    pub prefetch: usize,
    pub max_bytes: u64,
}

impl ImageSource {
    pub fn new(
        root: Root,
        files: Vec<ImageEntry>,
        preprocess: Preprocess,
        options: &SourceOptions,
    ) -> Result<ImageSource, DataError> {
        let cache = match &options.cache {
            Some(dir) => Some(
                DecodeCache::new(dir, preprocess.signature()).map_err(|source| DataError::Io {
                    path: dir.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let threads = options.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("robustd-decode-{i}"))
            .build()
            .map_err(|e| DataError::Invalid {
                what: "decode threads",
                detail: e.to_string(),
            })?;
        Ok(ImageSource {
            root,
            files,
            preprocess,
            cache,
            policy: options.policy,
            max_bytes: options.max_bytes,
            pool,
            threads,
            prefetch: options.prefetch.max(1),
            skipped: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|c| c.dir())
    }

    /// The file of the sample with source index `index`, as a path under the dataset root.
    pub fn file(&self, index: i64) -> Option<PathBuf> {
        self.files
            .get(usize::try_from(index).ok()?)
            .map(|e| self.root.given.join(&e.path))
    }

    /// The file relative to the dataset root (what reports print).
    pub fn relative_file(&self, index: i64) -> Option<&Path> {
        self.files
            .get(usize::try_from(index).ok()?)
            .map(|e| e.path.as_path())
    }

    /// Files skipped so far as corrupt: `(source index, cause)`.
    pub fn skipped(&self) -> Vec<(usize, String)> {
        self.skipped
            .lock()
            .map(|s| s.iter().map(|(i, c)| (*i, c.clone())).collect())
            .unwrap_or_default()
    }

    /// Decodes the samples with source indices `indices`, in parallel, in that order.
    pub fn decode(&self, indices: &[i64], transform: Transform) -> Result<Decoded, DataError> {
        let results: Vec<Result<Option<Vec<u8>>, DataError>> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| self.sample(i, transform))
                .collect()
        });
        let mut data = Vec::with_capacity(indices.len() * self.preprocess.output_len());
        let mut kept = Vec::with_capacity(indices.len());
        for (position, result) in results.into_iter().enumerate() {
            if let Some(bytes) = result? {
                data.extend_from_slice(&bytes);
                kept.push(position);
            }
        }
        Ok(Decoded { data, kept })
    }

    /// One sample's output bytes; `None` when its file is corrupt and the policy is `skip`.
    fn sample(&self, index: i64, transform: Transform) -> Result<Option<Vec<u8>>, DataError> {
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.files.get(i))
            .ok_or_else(|| DataError::Invalid {
                what: "sample index",
                detail: format!("{index} is outside a split of {} files", self.files.len()),
            })?;
        let path = self.root.given.join(&entry.path);
        let bytes = match self.read(&entry.path, &path) {
            Ok(bytes) => bytes,
            Err(e @ (DataError::Escape { .. } | DataError::NotRegular { .. })) => return Err(e),
            Err(e) => return self.failed(index, path, e.to_string()),
        };
        let len = self.preprocess.output_len();
        if transform == Transform::Eval {
            if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&bytes, len)) {
                return Ok(Some(hit));
            }
        }
        let out = decode(&bytes, self.preprocess.output[0], self.max_bytes).and_then(|image| {
            match transform {
                Transform::Eval => self.preprocess.apply(&image),
                Transform::RandomResizedCrop { seed, epoch } => {
                    let mut rng = stream(seed, Stream::Decode, epoch);
                    rng.set_word_pos(index as u128 * WORDS_PER_SAMPLE);
                    self.preprocess.apply_random(&image, &mut rng)
                }
            }
            .map_err(DecodeFailure)
        });
        match out {
            Ok(data) => {
                if transform == Transform::Eval {
                    if let Some(cache) = &self.cache {
                        cache.put(&bytes, &data);
                    }
                }
                Ok(Some(data))
            }
            Err(DecodeFailure(detail)) => self.failed(index, path, detail),
        }
    }

    /// An unreadable or corrupt file: an error naming it (`fail`), or skipped and counted (`skip`).
    fn failed(
        &self,
        index: i64,
        path: PathBuf,
        detail: String,
    ) -> Result<Option<Vec<u8>>, DataError> {
        match self.policy {
            CorruptPolicy::Fail => Err(DataError::CorruptImage { path, detail }),
            CorruptPolicy::Skip => {
                tracing::warn!(file = %path.display(), cause = %detail, "skipping a corrupt image");
                if let Ok(mut skipped) = self.skipped.lock() {
                    skipped.insert(index as usize, detail);
                }
                Ok(None)
            }
        }
    }

    /// The file's bytes, re-checking that a symlink put there since listing still stays inside the root, and
    /// refusing files larger than the decode limit before reading them.
    fn read(&self, rel: &Path, path: &Path) -> Result<Vec<u8>, DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let real = if meta.file_type().is_symlink() {
            self.root.resolve(rel, false)?
        } else if meta.is_file() {
            path.to_path_buf()
        } else {
            return Err(DataError::NotRegular {
                path: path.to_path_buf(),
                wanted: "regular file",
            });
        };
        let file = std::fs::File::open(&real).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(DataError::Invalid {
                what: "image file size",
                detail: format!(
                    "the file is larger than the {} MiB one image may take (limits.job_memory_mb)",
                    self.max_bytes >> 20
                ),
            });
        }
        Ok(bytes)
    }
}
