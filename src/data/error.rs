//! Every way loading or batching a dataset can fail, each naming the file (and array or sample) and the cause.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("unknown dataset `{name}`; known: {known}")]
    UnknownDataset { name: String, known: String },

    #[error("dataset `{name}`: {missing} not found; looked in {looked}. To get it: {how_to_get}")]
    NotFound {
        name: String,
        /// What was looked for (file names or a description).
        missing: String,
        /// The directories searched, comma-separated.
        looked: String,
        how_to_get: String,
    },

    #[error("dataset `npz` needs `dataset.path` set to the .npz file")]
    NpzPathMissing,

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: corrupt or truncated gzip stream after {decoded} decoded bytes: {source}")]
    Gzip {
        path: PathBuf,
        decoded: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: truncated: expected {expected} bytes ({what}), found {actual}")]
    Truncated {
        path: PathBuf,
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("{path}: {extra} unexpected bytes after the {what}")]
    TrailingBytes {
        path: PathBuf,
        what: String,
        extra: u64,
    },

    #[error("{path}: wrong magic number {found:#010x}; expected {expected}")]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: String,
    },

    #[error("{path}: wrong shape: {detail}")]
    Shape { path: PathBuf, detail: String },

    #[error("{path}: label {label} of sample {index} is outside 0..{num_classes}")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: i64,
        num_classes: i64,
    },

    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: String,
        n_images: usize,
        labels: String,
        n_labels: usize,
    },

    #[error("{path}: array `{key}`: {detail}; float pixels must be finite and in [0,1]")]
    BadPixels {
        path: PathBuf,
        key: String,
        detail: String,
    },

    #[error(
        "{path}: cannot tell the layout of `{key}` with shape {shape:?}: {detail}; \
         store images as [N, H, W, C] or [N, C, H, W] with C = 1 or 3"
    )]
    Layout {
        path: PathBuf,
        key: String,
        shape: Vec<usize>,
        detail: String,
    },

    #[error("{path}: array `{key}` has dtype {dtype}; expected {expected}")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
        expected: &'static str,
    },

    #[error("{path}: no array `{key}` (the archive holds: {present})")]
    MissingArray {
        path: PathBuf,
        key: String,
        present: String,
    },

    #[error("{path}: array `{key}`: {detail}")]
    Npy {
        path: PathBuf,
        key: String,
        detail: String,
    },

    #[error("{path}: not a readable .npz (zip) archive: {detail}")]
    Zip { path: PathBuf, detail: String },

    #[error(
        "unknown augmentation `{0}`; expected auto, none, crop-flip, flip or random-resized-crop"
    )]
    UnknownAugmentation(String),

    #[error("{path} is outside the dataset root {root}: {detail}")]
    Escape {
        path: PathBuf,
        root: PathBuf,
        detail: String,
    },

    #[error("{path} is not a {wanted}")]
    NotRegular { path: PathBuf, wanted: &'static str },

    #[error(
        "dataset.path {path} (really {real}) is not inside an allowed dataset directory (paths.datasets: {allowed})"
    )]
    NotAllowed {
        path: PathBuf,
        real: PathBuf,
        allowed: String,
    },

    #[error("{path}: class folder not in dataset.classes ({classes})")]
    UnknownClass { path: PathBuf, classes: String },

    #[error("{split}: no images of class {classes} (every class needs samples in every split)")]
    ClassMissing { split: PathBuf, classes: String },

    #[error("{path}: empty class folder (no PNG, JPEG, WebP or BMP files)")]
    EmptyClass { path: PathBuf },

    #[error("{path}: {detail}")]
    UnsupportedImage { path: PathBuf, detail: String },

    #[error("{path}:{line}: {detail}")]
    Manifest {
        path: PathBuf,
        line: u64,
        detail: String,
    },

    #[error("{path}: unreadable or corrupt image: {detail} (dataset.corrupt: skip leaves such files out)")]
    CorruptImage { path: PathBuf, detail: String },

    #[error("{what} needs an image-file dataset (dataset.name folder or manifest)")]
    NeedsImageFiles { what: String },

    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },

    #[error("built-in dataset profile `{name}` is malformed: {message}")]
    Profile { name: String, message: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
