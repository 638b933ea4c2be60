//! Harmful atypical samples: atypical training samples (score above τ) whose adversarial examples the model
//! still does not fit — ranked by the lowest `p(y | x')` under the given model (ties: higher score first). These
//! are the samples BAT down-weights most (`w_i = p(y_i | x'_i)^β`). The top N go into the report with their
//! source index (and file, for image-file datasets), label, score and adversarial confidence, and into a PNG grid of
//! their images.

use std::collections::HashMap;
use std::path::Path;

use plotters::prelude::*;
use tch::{Device, Kind};

use super::groups::SampleOutcome;
use super::scores::TrainScores;
use super::MemoError;
use crate::data::Split;
use crate::report::plots::{render_sized, DrawResult, PlotError};
use crate::report::HarmfulSample;

/// Images per row of the grid.
const GRID_COLUMNS: usize = 8;
/// Displayed edge of one image (pixels), before the caption.
const TILE: u32 = 112;
const CAPTION: u32 = 40;
const TITLE: u32 = 64;
const PAD: u32 = 8;

/// The `top` atypical samples of the scored split with the lowest `p(y | x')` in `outcome`.
pub fn harmful_atypical(
    scored: &Split,
    scores: &TrainScores,
    outcome: &SampleOutcome,
    threshold: f64,
    top: usize,
) -> Result<Vec<HarmfulSample>, MemoError> {
    if outcome.len() != scored.len() || scores.len() != scored.len() {
        return Err(MemoError::Invalid {
            key: "harmful",
            message: format!(
                "{} outcomes and {} scores for {} training samples",
                outcome.len(),
                scores.len(),
                scored.len()
            ),
        });
    }
    let labels = Vec::<i64>::try_from(&scored.y.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?)?;
    let atypical = scores.atypical(threshold);
    let mut picked: Vec<HarmfulSample> = (0..scored.len())
        .filter(|&i| atypical[i])
        .map(|i| HarmfulSample {
            index: scored.indices[i] as u64,
            file: scored.file(i).map(|p| p.display().to_string()),
            label: labels[i],
            score: scores.scores[i].unwrap_or(0.0),
            adv_confidence: outcome.adv_confidence[i],
        })
        .collect();
    picked.sort_by(|a, b| {
        a.adv_confidence
            .total_cmp(&b.adv_confidence)
            .then(b.score.total_cmp(&a.score))
            .then(a.index.cmp(&b.index))
    });
    picked.truncate(top);
    Ok(picked)
}

/// A PNG grid of the samples' images (from `split`, matched by source index), each captioned with its index,
/// class, score and `p(y | x')`; `about` (the estimator, its budget and self-check, [`super::output::run_line`])
/// goes under the title, so the grid is never read without knowing where its scores came from.
pub fn harmful_grid(
    out: &Path,
    split: &Split,
    samples: &[HarmfulSample],
    class_names: &[String],
    about: &str,
) -> Result<(), MemoError> {
    if samples.is_empty() {
        return Err(PlotError::NoData {
            plot: "harmful atypical samples",
            why: "no atypical training samples".into(),
        }
        .into());
    }
    let position: HashMap<i64, usize> = split
        .indices
        .iter()
        .enumerate()
        .map(|(p, &i)| (i, p))
        .collect();
    let mut tiles = Vec::with_capacity(samples.len());
    for s in samples {
        let &p = position
            .get(&(s.index as i64))
            .ok_or_else(|| MemoError::Invalid {
                key: "harmful",
                message: format!("sample {} is not in the split", s.index),
            })?;
        tiles.push(tile_pixels(split, p)?);
    }
    let columns = GRID_COLUMNS.min(samples.len());
    let rows = samples.len().div_ceil(columns);
    let cell_w = TILE + 2 * PAD;
    let cell_h = TILE + CAPTION + PAD;
    let size = (
        (columns as u32 * cell_w).max(520),
        TITLE + rows as u32 * cell_h + PAD,
    );
    let class = |label: i64| {
        class_names
            .get(label as usize)
            .cloned()
            .unwrap_or_else(|| label.to_string())
    };
    render_sized(
        out,
        "harmful atypical samples",
        size,
        |root| -> DrawResult {
            root.draw(&Text::new(
                "Harmful atypical training samples (lowest p(y|x') under the model)",
                (PAD as i32, 10),
                ("sans-serif", 20).into_font(),
            ))?;
            root.draw(&Text::new(
                about.to_owned(),
                (PAD as i32, 36),
                ("sans-serif", 13).into_font(),
            ))?;
            for (k, (s, pixels)) in samples.iter().zip(tiles).enumerate() {
                let x0 = (k % columns) as u32 * cell_w + PAD;
                let y0 = TITLE + (k / columns) as u32 * cell_h;
                let image: BitMapElement<(i32, i32)> =
                    BitMapElement::with_owned_buffer((x0 as i32, y0 as i32), (TILE, TILE), pixels)
                        .ok_or("image buffer does not match the tile size")?;
                root.draw(&image)?;
                let caption = ("sans-serif", 13).into_font();
                root.draw(&Text::new(
                    format!("#{} {}", s.index, class(s.label)),
                    (x0 as i32, (y0 + TILE + 4) as i32),
                    caption.clone(),
                ))?;
                root.draw(&Text::new(
                    format!("score {:.2}  p {}", s.score, probability(s.adv_confidence)),
                    (x0 as i32, (y0 + TILE + 20) as i32),
                    caption,
                ))?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// A probability in a few characters that still tells tiny ones apart (non-robust models give most PGD examples
/// `p(y|x') < 0.001`).
fn probability(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// One image of the split as `TILE × TILE` RGB bytes (nearest-neighbour scaling; one channel shown as gray).
fn tile_pixels(split: &Split, position: usize) -> Result<Vec<u8>, MemoError> {
    let image = split
        .images(&[position as i64])?
        .f_get(0)?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let size = image.size();
    let (c, h, w) = match size.as_slice() {
        [c, h, w] => (*c as usize, *h as usize, *w as usize),
        other => {
            return Err(MemoError::Invalid {
                key: "harmful",
                message: format!("image of shape {other:?}, expected [C, H, W]"),
            })
        }
    };
    let values = Vec::<f32>::try_from(&image.f_flatten(0, -1)?)?;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut out = Vec::with_capacity((TILE * TILE * 3) as usize);
    for ty in 0..TILE as usize {
        let y = ty * h / TILE as usize;
        for tx in 0..TILE as usize {
            let x = tx * w / TILE as usize;
            for ch in 0..3 {
                let src = if c == 3 { ch } else { 0 };
                out.push(byte(values[src * h * w + y * w + x]));
            }
        }
    }
    Ok(out)
}
