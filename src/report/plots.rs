//! The report's PNG plots, drawn with `plotters` into a memory buffer, encoded with `png` and written atomically:
//! robust accuracy vs eps, training curves, the memorization-score histogram, and the clean-vs-robust trade-off.
//!
//! Text is rendered in pure Rust (plotters' `ab_glyph` feature) — no fontconfig/freetype. The font file is read
//! once at run time: `$ROBUSTD_FONT` if set, else DejaVu Sans from Debian's `fonts-dejavu-core` (installed by
//! `scripts/setup.sh`), else a few other common sans fonts. Without any, plotting fails with a message saying
//! which package to install; a job treats a failed plot as a warning, not a failure.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use thiserror::Error;

use crate::durable::{write_atomic_with, WriteError};

/// Environment variable naming a TrueType/OpenType font file for plot text.
pub const FONT_ENV: &str = "ROBUSTD_FONT";

/// Fonts tried in order when `$ROBUSTD_FONT` is unset.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];

const WIDTH: u32 = 900;
const HEIGHT: u32 = 600;

#[derive(Debug, Error)]
pub enum PlotError {
    #[error(
        "no font for plot text (tried {}); install Debian's fonts-dejavu-core (scripts/setup.sh does) or set {FONT_ENV}=/path/to/font.ttf",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoFont { tried: Vec<PathBuf> },
    #[error("font {path} is not a usable TrueType/OpenType font")]
    BadFont { path: PathBuf },
    #[error("cannot draw {plot}: {message}")]
    Draw { plot: &'static str, message: String },
    #[error("nothing to plot in {plot}: {why}")]
    NoData { plot: &'static str, why: String },
    #[error("cannot encode {plot} as PNG: {message}")]
    Encode { plot: &'static str, message: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot read {path}: {message}")]
    ReadCsv { path: PathBuf, message: String },
}

/// A named line: `(x, y)` points in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One model/method in the trade-off plot: mean accuracies with their standard deviations (0 if one run).
#[derive(Debug, Clone, PartialEq)]
pub struct TradeoffPoint {
    pub label: String,
    pub clean: f64,
    pub clean_err: f64,
    pub robust: f64,
    pub robust_err: f64,
}

/// Robust accuracy against attack radius, one line per model (e.g. before and after fine-tuning).
pub fn robust_acc_vs_eps(out: &Path, series: &[Series]) -> Result<(), PlotError> {
    const PLOT: &str = "robust accuracy vs eps";
    let points = non_empty(PLOT, series)?;
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-6) * 1.05;
    render(out, PLOT, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Robust accuracy vs attack radius", ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("eps (pixel scale [0,1])")
            .y_desc("robust accuracy")
            .label_style(("sans-serif", 16))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = color(i);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(3),
                ))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
        legend(&mut chart)
    })
}

/// Training curves: losses on the left panel, accuracies on the right, against epoch.
pub fn training_curves(
    out: &Path,
    losses: &[Series],
    accuracies: &[Series],
) -> Result<(), PlotError> {
    const PLOT: &str = "training curves";
    let loss_points = non_empty(PLOT, losses)?;
    let epochs = loss_points
        .iter()
        .map(|p| p.0)
        .chain(accuracies.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
        .fold(1.0, f64::max);
    let loss_max = loss_points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.1;
    render(out, PLOT, |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let mut chart = ChartBuilder::on(&left)
            .caption("Training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..epochs, 0.0..loss_max)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("loss")
            .label_style(("sans-serif", 14))
            .draw()?;
        draw_lines(&mut chart, losses)?;
        legend(&mut chart)?;
        let mut chart = ChartBuilder::on(&right)
            .caption("Accuracy", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..epochs, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .draw()?;
        draw_lines(&mut chart, accuracies)?;
        legend(&mut chart)
    })
}

/// Histogram of memorization scores: `counts[i]` samples in `[bins[i], bins[i+1])`; the atypicality threshold as
/// a vertical line.
pub fn memorization_histogram(
    out: &Path,
    bins: &[f64],
    counts: &[u64],
    threshold: Option<f64>,
) -> Result<(), PlotError> {
    const PLOT: &str = "memorization histogram";
    if bins.len() != counts.len() + 1 || counts.is_empty() {
        return Err(PlotError::NoData {
            plot: PLOT,
            why: format!("{} bin edges for {} counts", bins.len(), counts.len()),
        });
    }
    let (lo, hi) = (bins[0], bins[bins.len() - 1]);
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    render(out, PLOT, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Memorization scores of training samples",
                ("sans-serif", 26),
            )
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(72)
            .build_cartesian_2d(lo..hi, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("mem(i) = P[correct | seen] - P[correct | unseen]")
            .y_desc("training samples")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 16))
            .draw()?;
        chart.draw_series(bins.windows(2).zip(counts).map(|(edge, &c)| {
            let atypical = threshold.is_some_and(|t| edge[0] >= t);
            let fill = if atypical {
                color(1).mix(0.75)
            } else {
                color(0).mix(0.7)
            };
            Rectangle::new([(edge[0], 0.0), (edge[1], c as f64)], fill.filled())
        }))?;
        if let Some(t) = threshold {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(t, 0.0), (t, top)],
                    BLACK.stroke_width(2),
                )))?
                .label(format!("atypical threshold {t}"))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
            legend(&mut chart)?;
        }
        Ok(())
    })
}

/// Clean accuracy (x) against robust accuracy (y), one point per model/method with error bars.
pub fn tradeoff_scatter(out: &Path, points: &[TradeoffPoint]) -> Result<(), PlotError> {
    const PLOT: &str = "trade-off";
    if points.is_empty() {
        return Err(PlotError::NoData {
            plot: PLOT,
            why: "no points".into(),
        });
    }
    // Zoom to the points (with their error bars) plus a margin, inside [0, 1]: the differences between methods
    // are a few points of accuracy and would vanish on a full [0, 1] square.
    let span = |vals: Vec<(f64, f64)>| {
        let lo = vals
            .iter()
            .map(|(v, e)| v - e)
            .fold(f64::INFINITY, f64::min);
        let hi = vals
            .iter()
            .map(|(v, e)| v + e)
            .fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.25).max(0.02);
        ((lo - pad).max(0.0), (hi + pad).min(1.0))
    };
    let (x_lo, x_hi) = span(points.iter().map(|p| (p.clean, p.clean_err)).collect());
    let (y_lo, y_hi) = span(points.iter().map(|p| (p.robust, p.robust_err)).collect());
    render(out, PLOT, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Clean vs robust accuracy", ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_desc("clean accuracy")
            .y_desc("robust accuracy (worst case)")
            .label_style(("sans-serif", 16))
            .draw()?;
        for (i, p) in points.iter().enumerate() {
            let color = color(i);
            let style = color.stroke_width(2);
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                p.clean,
                p.robust - p.robust_err,
                p.robust,
                p.robust + p.robust_err,
                style,
                10,
            )))?;
            chart.draw_series(std::iter::once(ErrorBar::new_horizontal(
                p.robust,
                p.clean - p.clean_err,
                p.clean,
                p.clean + p.clean_err,
                style,
                10,
            )))?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.clean, p.robust),
                    6,
                    color.filled(),
                )))?
                .label(&p.label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        legend(&mut chart)
    })
}

/// One group of bars in [`grouped_bars`]: a label under the group, one value per series (`None` leaves a gap), and
/// an optional target drawn as a black tick across the group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    pub label: String,
    pub values: Vec<Option<f64>>,
    pub target: Option<f64>,
}

/// Grouped vertical bars (e.g. a benchmark's speed-ups per workload, one series per model size) with a dashed line
/// at `baseline` (e.g. 1.0 = parity).
pub fn grouped_bars(
    out: &Path,
    title: &str,
    y_desc: &str,
    series: &[String],
    groups: &[BarGroup],
    baseline: f64,
) -> Result<(), PlotError> {
    const PLOT: &str = "bar chart";
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied().chain(g.target))
        .collect();
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return Err(PlotError::NoData {
            plot: PLOT,
            why: "no finite values".into(),
        });
    }
    let y_max = values.iter().copied().fold(baseline, f64::max) * 1.15;
    let n = groups.len();
    let width = 0.8 / series.len().max(1) as f64;
    render_sized(out, PLOT, (1200, 600), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..y_max)?;
        let label_at = |x: &f64| {
            let i = x.round();
            match groups.get(i as usize) {
                Some(g) if (x - i).abs() < 1e-6 && i >= 0.0 => g.label.clone(),
                _ => String::new(),
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&label_at)
            .y_desc(y_desc)
            .label_style(("sans-serif", 15))
            .draw()?;
        for (s, name) in series.iter().enumerate() {
            let color = color(s);
            let offset = -0.4 + width * s as f64;
            chart
                .draw_series(groups.iter().enumerate().filter_map(|(i, g)| {
                    let v = (*g.values.get(s)?)?;
                    let x0 = i as f64 + offset;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, v)],
                        color.filled(),
                    ))
                }))?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        chart.draw_series(groups.iter().enumerate().filter_map(|(i, g)| {
            let t = g.target?;
            Some(PathElement::new(
                vec![(i as f64 - 0.45, t), (i as f64 + 0.45, t)],
                BLACK.stroke_width(3),
            ))
        }))?;
        chart.draw_series(DashedLineSeries::new(
            vec![(-0.5, baseline), (n as f64 - 0.5, baseline)],
            8,
            6,
            RGBColor(90, 90, 90).stroke_width(2),
        ))?;
        legend(&mut chart)
    })
}

/// Tableau-10 colors: distinct on white and for most colour-blind readers.
pub(crate) fn color(i: usize) -> RGBAColor {
    const PALETTE: [(u8, u8, u8); 8] = [
        (31, 119, 180),
        (214, 39, 40),
        (44, 160, 44),
        (255, 127, 14),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (23, 190, 207),
    ];
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b).to_rgba()
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

fn draw_lines<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, series: &[Series]) -> DrawResult {
    for (i, s) in series.iter().enumerate() {
        let color = color(i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(3),
            ))?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

fn non_empty<'a>(
    plot: &'static str,
    series: &'a [Series],
) -> Result<Vec<&'a (f64, f64)>, PlotError> {
    let points: Vec<_> = series.iter().flat_map(|s| s.points.iter()).collect();
    if points.is_empty() {
        return Err(PlotError::NoData {
            plot,
            why: "no points".into(),
        });
    }
    if let Some(bad) = points
        .iter()
        .find(|p| !(p.0.is_finite() && p.1.is_finite()))
    {
        return Err(PlotError::NoData {
            plot,
            why: format!("non-finite point {bad:?}"),
        });
    }
    Ok(points)
}

/// Draws into an RGB buffer of the standard size and writes it as a PNG, atomically.
fn render(
    out: &Path,
    plot: &'static str,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<(), PlotError> {
    render_sized(out, plot, (WIDTH, HEIGHT), draw)
}

/// Draws into an RGB buffer of `(width, height)` pixels and writes it as a PNG, atomically (for figures whose
/// size follows their content, such as the memorization module's image grid).
pub(crate) fn render_sized(
    out: &Path,
    plot: &'static str,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<(), PlotError> {
    ensure_font()?;
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()));
        drawn.map_err(|message| PlotError::Draw { plot, message })?;
    }
    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut w| w.write_image_data(&pixels))
            .map_err(|e| PlotError::Encode {
                plot,
                message: e.to_string(),
            })?;
    }
    write_atomic_with(out, |w| w.write_all(&encoded))?;
    Ok(())
}

/// Registers the plot font with plotters once per process.
fn ensure_font() -> Result<(), PlotError> {
    /// What the one attempt to load the font found (kept for every later plot of the process).
    #[derive(Clone)]
    enum Font {
        Loaded,
        Missing(Vec<PathBuf>),
        Unusable(PathBuf),
    }
    static FONT: OnceLock<Font> = OnceLock::new();
    let font = FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Font::Missing(candidates);
        };
        let bytes: &'static [u8] = match std::fs::read(path) {
            Ok(b) => Box::leak(b.into_boxed_slice()),
            Err(_) => return Font::Unusable(path.clone()),
        };
        match plotters::style::register_font("sans-serif", FontStyle::Normal, bytes) {
            Ok(()) => Font::Loaded,
            Err(_) => Font::Unusable(path.clone()),
        }
    });
    match font.clone() {
        Font::Loaded => Ok(()),
        Font::Missing(tried) => Err(PlotError::NoFont { tried }),
        Font::Unusable(path) => Err(PlotError::BadFont { path }),
    }
}

/// The font file plot text is drawn with, if one was found.
pub fn font_path() -> Option<PathBuf> {
    ensure_font().ok()?;
    std::env::var_os(FONT_ENV).map(PathBuf::from).or_else(|| {
        FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}
