//! Image-file preprocessing as torchvision does it on PIL images, resolved against the model's input size:
//! `Resize(resize_size)` (shorter side, aspect kept) + `CenterCrop(H, W)`, or `Resize((H, W))`, or nothing; and for
//! training, `RandomResizedCrop((H, W), scale, ratio)` + `RandomHorizontalFlip()`.
//!
//! Resampling is fast_image_resize's convolution with Pillow's filters (bilinear = triangle, bicubic = Catmull-Rom
//! a = -0.5), which widens the filter by the scale when shrinking: the antialiasing of PIL's `resize` (and of
//! torchvision's `Resize(antialias=True)`). It works in 8-bit fixed point as Pillow does, with a coefficient
//! precision that can differ from Pillow's by one step, so a resized pixel may differ by 1/255 (the parity test
//! measures it). Sizes and crop offsets follow torchvision's integer arithmetic exactly: the long side is
//! `int(size * long / short)`, the crop offset `round((h - H) / 2)` with Python's half-to-even rounding.
//! The result is 8-bit `[C, H, W]` (`ToTensor` divides by 255 later), so a decoded, preprocessed image is exactly
//! representable and cacheable as bytes.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::decode::Pixels;
use super::DataError;
use crate::config::{Interpolation, PreprocessSpec, ResizeMode};

/// The preprocessing of one dataset for one model, every size resolved (what the report records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// `shorter-side`, `exact` or `none`.
    pub resize: ResizeMode,
    /// The shorter side after resizing (`shorter-side` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_size: Option<u32>,
    /// The center crop `[H, W]` after a shorter-side resize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<[u32; 2]>,
    pub interpolation: Interpolation,
    pub antialias: bool,
    /// Output `[C, H, W]`.
    pub output: [u32; 3],
    /// Training-time `RandomResizedCrop` ranges (used when `train.augmentation` is `random-resized-crop`).
    pub random_crop_scale: [f64; 2],
    pub random_crop_ratio: [f64; 2],
}

impl Preprocess {
    /// Resolves `spec` against the model input `[C, H, W]` (`spec.size` overrides H and W).
    pub fn resolve(spec: &PreprocessSpec, input_chw: [i64; 3]) -> Result<Preprocess, DataError> {
        let bad = |detail: String| DataError::Invalid {
            what: "model.preprocess",
            detail,
        };
        let [c, h, w] = input_chw;
        let (h, w) = match spec.size {
            Some([sh, sw]) => (sh, sw),
            None => {
                if h <= 0 || w <= 0 {
                    return Err(bad(format!(
                        "the model's input size is not fixed ([C, H, W] = {input_chw:?}); set model.preprocess.size"
                    )));
                }
                (h as u32, w as u32)
            }
        };
        if c != 1 && c != 3 {
            return Err(DataError::Invalid {
                what: "model input",
                detail: format!(
                    "it takes {c} channels; image files give 1 (gray) or 3 (RGB) channels"
                ),
            });
        }
        let (resize_size, center_crop) = match spec.resize {
            ResizeMode::ShorterSide => {
                let size = spec.resize_size.unwrap_or(h.max(w));
                if size < h.max(w) {
                    return Err(bad(format!(
                        "resize_size {size} is smaller than the crop {h}x{w} (torchvision would pad with zeros)"
                    )));
                }
                (Some(size), Some([h, w]))
            }
            ResizeMode::Exact | ResizeMode::None => (None, None),
        };
        Ok(Preprocess {
            resize: spec.resize,
            resize_size,
            center_crop,
            interpolation: spec.interpolation,
            antialias: spec.resize != ResizeMode::None,
            output: [c as u32, h, w],
            random_crop_scale: spec.random_crop_scale,
            random_crop_ratio: spec.random_crop_ratio,
        })
    }

    /// A stable text naming everything that shapes the output (a cache key part).
    pub fn signature(&self) -> String {
        format!(
            "robustd.preprocess/v1 {:?} {:?} {:?} {:?} {:?}",
            self.resize, self.resize_size, self.center_crop, self.interpolation, self.output
        )
    }

    /// Bytes of one output image.
    pub fn output_len(&self) -> usize {
        self.output.iter().map(|&d| d as usize).product()
    }

    /// The evaluation transform: `[C, H, W]` bytes.
    pub fn apply(&self, image: &Pixels) -> Result<Vec<u8>, String> {
        let [_, h, w] = self.output;
        let resized = match self.resize {
            ResizeMode::None => {
                if (image.height, image.width) != (h, w) {
                    return Err(format!(
                        "the image is {}x{} but model.preprocess.resize is none and the model takes {h}x{w}",
                        image.height, image.width
                    ));
                }
                return Ok(to_chw(image));
            }
            ResizeMode::Exact => resize(image, w, h, self.interpolation)?,
            ResizeMode::ShorterSide => {
                let size = self.resize_size.unwrap_or(h.max(w));
                let (rw, rh) = shorter_side(image.width, image.height, size);
                let resized = resize(image, rw, rh, self.interpolation)?;
                let top = ((rh - h) as f64 / 2.0).round_ties_even() as u32;
                let left = ((rw - w) as f64 / 2.0).round_ties_even() as u32;
                crop(&resized, left, top, w, h)
            }
        };
        Ok(to_chw(&resized))
    }

    /// The training transform for `random-resized-crop`: torchvision's `RandomResizedCrop` parameters drawn from
    /// `rng`, the crop resized to the output size, then a horizontal flip with probability 1/2.
    pub fn apply_random(&self, image: &Pixels, rng: &mut impl Rng) -> Result<Vec<u8>, String> {
        let [_, h, w] = self.output;
        let (top, left, ch, cw) = random_crop_box(
            image.width,
            image.height,
            self.random_crop_scale,
            self.random_crop_ratio,
            rng,
        );
        let cropped = crop(image, left, top, cw, ch);
        let mut out = resize(&cropped, w, h, self.interpolation)?;
        if rng.random_bool(0.5) {
            flip_horizontally(&mut out);
        }
        Ok(to_chw(&out))
    }
}

/// torchvision's `_compute_resized_output_size` for an int size: the shorter side becomes `size`, the longer
/// `int(size * long / short)`. Returns `(width, height)`.
pub fn shorter_side(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform aspect ratio, then a central crop.
/// Returns `(top, left, height, width)`.
fn random_crop_box(
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> (u32, u32, u32, u32) {
    let area = (width as f64) * (height as f64);
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round_ties_even() as u32;
        let h = (target / aspect).sqrt().round_ties_even() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (width, (width as f64 / ratio[0]).round_ties_even() as u32)
    } else if in_ratio > ratio[1] {
        ((height as f64 * ratio[1]).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    ((height - h) / 2, (width - w) / 2, h, w)
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

thread_local! {
    /// One resizer per decode thread: it keeps its scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Pillow-style convolution resize to `width x height` (a copy when the size already matches, as Pillow does).
fn resize(image: &Pixels, width: u32, height: u32, how: Interpolation) -> Result<Pixels, String> {
    if (image.width, image.height) == (width, height) {
        return Ok(image.clone());
    }
    let pixel = if image.channels == 3 {
        PixelType::U8x3
    } else {
        PixelType::U8
    };
    let src =
        ImageRef::new(image.width, image.height, &image.data, pixel).map_err(|e| e.to_string())?;
    let mut dst = Image::new(width, height, pixel);
    let filter = match how {
        Interpolation::Bilinear => FilterType::Bilinear,
        Interpolation::Bicubic => FilterType::CatmullRom,
    };
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| e.to_string())?;
    Ok(Pixels {
        width,
        height,
        channels: image.channels,
        data: dst.into_vec(),
    })
}

/// The `width x height` window at `(left, top)` (inside the image).
fn crop(image: &Pixels, left: u32, top: u32, width: u32, height: u32) -> Pixels {
    let c = image.channels as usize;
    let row = image.width as usize * c;
    let mut data = Vec::with_capacity(width as usize * height as usize * c);
    for y in top as usize..(top + height) as usize {
        let start = y * row + left as usize * c;
        data.extend_from_slice(&image.data[start..start + width as usize * c]);
    }
    Pixels {
        width,
        height,
        channels: image.channels,
        data,
    }
}

fn flip_horizontally(image: &mut Pixels) {
    let c = image.channels as usize;
    for row in image.data.chunks_mut(image.width as usize * c) {
        let w = row.len() / c;
        for x in 0..w / 2 {
            for k in 0..c {
                row.swap(x * c + k, (w - 1 - x) * c + k);
            }
        }
    }
}

/// Interleaved `[H, W, C]` to planar `[C, H, W]`.
fn to_chw(image: &Pixels) -> Vec<u8> {
    let c = image.channels as usize;
    if c == 1 {
        return image.data.clone();
    }
    let plane = image.width as usize * image.height as usize;
    let mut out = vec![0u8; plane * c];
    for (p, px) in image.data.chunks_exact(c).enumerate() {
        for (k, v) in px.iter().enumerate() {
            out[k * plane + p] = *v;
        }
    }
    out
}
