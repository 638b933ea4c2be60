//! Decoding one image file into 8-bit pixels with the model's channel count.
//!
//! The `image` crate reads PNG, JPEG (through zune-jpeg), WebP and BMP, chosen by content, not by name; the EXIF
//! orientation is applied (torchvision's default loader ignores it: a parity reference must use
//! `ImageOps.exif_transpose`). Conversion to the model's channels:
//! - 3 channels: gray is repeated, alpha is dropped (as PIL's `convert("RGB")`), 16-bit samples are scaled to 8 bits
//!   (`round(v / 257)`; PIL instead clips 16-bit images when converting).
//! - 1 channel: gray stays; colour becomes PIL's `convert("L")` luma, `(19595 R + 38470 G + 7471 B + 2^15) >> 16`
//!   (ITU-R 601-2, what torchvision's `Grayscale` computes). The `image` crate's own `to_luma8` uses Rec. 709
//!   weights, so this one line is written here.
//!
//! Decoding allocates at most the limit given (a decompression bomb is an error naming the file, not an OOM).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// The crates that decode and resize image files (recorded in reports).
pub const DECODER: &str =
    "image 0.25 (png, zune-jpeg, image-webp, bmp), fast_image_resize 6 (Pillow-style convolution)";

/// An image as interleaved 8-bit samples, `channels` per pixel (1 or 3), row by row.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub data: Vec<u8>,
}

/// Why a file could not be decoded (the caller adds its path).
#[derive(Debug)]
pub struct DecodeFailure(pub String);

/// Decodes `bytes` (a whole file) to `channels` (1 or 3) 8-bit channels, oriented as its EXIF tag says.
pub fn decode(bytes: &[u8], channels: u32, max_alloc: u64) -> Result<Pixels, DecodeFailure> {
    let fail = |e: &dyn std::fmt::Display| DecodeFailure(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(&e))?;
    if reader.format().is_none() {
        return Err(DecodeFailure(
            "not a PNG, JPEG, WebP or BMP image (unrecognized content)".into(),
        ));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| fail(&e))?;
    let orientation = decoder.orientation().map_err(|e| fail(&e))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| fail(&e))?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(DecodeFailure(format!("the image is {width}x{height}")));
    }
    let data = match channels {
        3 => image.into_rgb8().into_raw(),
        1 => to_gray(image),
        other => {
            return Err(DecodeFailure(format!(
                "the model takes {other} channels; image files give 1 (gray) or 3 (RGB)"
            )))
        }
    };
    Ok(Pixels {
        width,
        height,
        channels,
        data,
    })
}

/// One channel: gray images as they are (16-bit scaled to 8), colour through PIL's ITU-R 601-2 luma.
fn to_gray(image: DynamicImage) -> Vec<u8> {
    if !image.color().has_color() {
        return image.into_luma8().into_raw();
    }
    image
        .into_rgb8()
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}
