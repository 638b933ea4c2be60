//! Training-time augmentation in [0,1] pixel space: `crop-flip` (random crop after 4-pixel zero padding, then a
//! horizontal flip with probability 1/2, one draw per sample from a seeded generator), `flip` (the flip alone), or
//! none; on batches of any dataset. `random-resized-crop` (torchvision's `RandomResizedCrop` + flip) needs the
//! original image, so image-file datasets apply it while decoding (`preprocess`), and batches pass it through.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::DataError;

/// Zero padding on each side before the random crop (the standard CIFAR recipe).
pub const CROP_PADDING: i64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augmentation {
    None,
    CropFlip,
    Flip,
    RandomResizedCrop,
}

/// Every `train.augmentation` setting.
pub const AUGMENTATIONS: &[&str] = &["auto", "none", "crop-flip", "flip", "random-resized-crop"];

impl Augmentation {
    /// Parses the `train.augmentation` setting; `auto` is the dataset's default (`Dataset::augmentation`:
    /// crop-flip for CIFAR, none for digit-like data).
    pub fn resolve(setting: &str, dataset_default: Augmentation) -> Result<Self, DataError> {
        match setting {
            "auto" => Ok(dataset_default),
            "none" => Ok(Augmentation::None),
            "crop-flip" => Ok(Augmentation::CropFlip),
            "flip" => Ok(Augmentation::Flip),
            "random-resized-crop" => Ok(Augmentation::RandomResizedCrop),
            other => Err(DataError::UnknownAugmentation(other.to_string())),
        }
    }

    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Augmentation::None => "none",
            Augmentation::CropFlip => "crop-flip",
            Augmentation::Flip => "flip",
            Augmentation::RandomResizedCrop => "random-resized-crop",
        }
    }

    /// Augments a batch `[N, C, H, W]`; the result is a new tensor on the same device. `random-resized-crop` was
    /// applied while decoding and passes through.
    pub fn apply(self, x: &Tensor, rng: &mut impl Rng) -> Result<Tensor, DataError> {
        match self {
            Augmentation::None | Augmentation::RandomResizedCrop => Ok(x.shallow_clone()),
            Augmentation::CropFlip => crop_flip(x, rng),
            Augmentation::Flip => flip(x, rng),
        }
    }
}

/// A horizontal flip of each sample with probability 1/2 (one draw per sample, in order).
pub fn flip(x: &Tensor, rng: &mut impl Rng) -> Result<Tensor, DataError> {
    let n = x.size().first().copied().unwrap_or(0);
    let flips: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
    if !flips.iter().any(|&f| f) {
        return Ok(x.shallow_clone());
    }
    let mask = Tensor::f_from_slice(&flips)?
        .f_view([n, 1, 1, 1])?
        .f_to_device(x.device())?;
    Ok(x.f_flip([3])?.f_where_self(&mask, x)?)
}

/// Random `H x W` crop of the zero-padded image and a random horizontal flip, per sample, as one gather.
///
/// Per sample the generator draws, in order, the row offset and the column offset (each uniform in
/// `0..=2*CROP_PADDING`) and the flip (probability 1/2), so a seed fixes the whole batch.
pub fn crop_flip(x: &Tensor, rng: &mut impl Rng) -> Result<Tensor, DataError> {
    let (n, c, h, w) = x.size4()?;
    let pad = CROP_PADDING;
    let padded = x.f_constant_pad_nd([pad, pad, pad, pad])?;
    let mut rows = Vec::with_capacity((n * h) as usize);
    let mut cols = Vec::with_capacity((n * w) as usize);
    for _ in 0..n {
        let dy: i64 = rng.random_range(0..=2 * pad);
        let dx: i64 = rng.random_range(0..=2 * pad);
        let flip = rng.random_bool(0.5);
        rows.extend((0..h).map(|i| dy + i));
        cols.extend((0..w).map(|j| if flip { dx + w - 1 - j } else { dx + j }));
    }
    let device = x.device();
    let index = |values: &[i64], shape: [i64; 4]| -> Result<Tensor, DataError> {
        Ok(Tensor::f_from_slice(values)?
            .f_view(shape)?
            .f_to_device(device)?)
    };
    let sample = Tensor::f_arange(n, (Kind::Int64, device))?.f_view([n, 1, 1, 1])?;
    let channel = Tensor::f_arange(c, (Kind::Int64, device))?.f_view([1, c, 1, 1])?;
    let rows = index(&rows, [n, 1, h, 1])?;
    let cols = index(&cols, [n, 1, 1, w])?;
    Ok(padded.f_index(&[Some(sample), Some(channel), Some(rows), Some(cols)])?)
}
