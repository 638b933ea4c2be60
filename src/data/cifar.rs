//! CIFAR-10 and CIFAR-100 "binary version" files: fixed-size records of label byte(s) followed by 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each row-major 32x32 — already CHW). CIFAR-10 records carry one label;
//! CIFAR-100 records carry the coarse then the fine label, and robustd uses the fine one.

use std::path::Path;

use tch::{Kind, Tensor};

use super::profile::{Format, Profile};
use super::source::{sha256_file, SourceFile, SourceReader};
use super::{DataError, Loaded, RawSplit, Splits};

/// The record layout and file names of one CIFAR variant.
struct Layout {
    train_files: &'static [&'static str],
    test_files: &'static [&'static str],
    /// Label bytes before the pixels.
    label_bytes: usize,
    /// Which of them is the class label.
    label_offset: usize,
}

const CIFAR10: Layout = Layout {
    train_files: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test_files: &["test_batch.bin"],
    label_bytes: 1,
    label_offset: 0,
};

const CIFAR100: Layout = Layout {
    train_files: &["train.bin"],
    test_files: &["test.bin"],
    label_bytes: 2,
    label_offset: 1,
};

fn layout(format: Format) -> &'static Layout {
    match format {
        Format::Cifar100 => &CIFAR100,
        _ => &CIFAR10,
    }
}

/// Whether `dir` holds the first training file of the profile's variant.
pub(crate) fn holds_files(dir: &Path, format: Format) -> bool {
    dir.join(layout(format).train_files[0]).is_file()
}

/// The files a user should find in a dataset directory (for the not-found error).
pub(crate) fn wanted_files(format: Format) -> String {
    let layout = layout(format);
    layout
        .train_files
        .iter()
        .chain(layout.test_files)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn load(dir: &Path, profile: &Profile, splits: Splits) -> Result<Loaded, DataError> {
    let layout = layout(profile.format);
    let mut sources = Vec::new();
    let train = match splits {
        Splits::All => Some(load_split(
            dir,
            layout.train_files,
            layout,
            profile,
            &mut sources,
        )?),
        Splits::TestOnly => {
            for name in layout.train_files {
                let path = dir.join(name);
                if !path.is_file() {
                    return Err(not_found(dir, name, profile));
                }
                sources.push(sha256_file(&path)?);
            }
            None
        }
    };
    let test = load_split(dir, layout.test_files, layout, profile, &mut sources)?;
    Ok(Loaded {
        train,
        test,
        sources,
        num_classes: profile.classes,
        chw: profile.shape,
    })
}

fn load_split(
    dir: &Path,
    files: &[&str],
    layout: &Layout,
    profile: &Profile,
    sources: &mut Vec<SourceFile>,
) -> Result<RawSplit, DataError> {
    let [c, h, w] = profile.shape;
    let pixels_per_image = (c * h * w) as usize;
    let record = layout.label_bytes + pixels_per_image;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in files {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(not_found(dir, name, profile));
        }
        let mut reader = SourceReader::open(&path)?;
        let bytes = reader.read_to_end()?;
        sources.push(reader.finish("records")?);
        let whole = bytes.len() / record;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::Truncated {
                path,
                what: format!("whole records of {record} bytes"),
                expected: ((whole + 1) * record) as u64,
                actual: bytes.len() as u64,
            });
        }
        pixels.reserve(whole * pixels_per_image);
        for (index, rec) in bytes.chunks_exact(record).enumerate() {
            let label = i64::from(rec[layout.label_offset]);
            if label >= profile.classes {
                return Err(DataError::LabelOutOfRange {
                    path,
                    index,
                    label,
                    num_classes: profile.classes,
                });
            }
            labels.push(label);
            pixels.extend_from_slice(&rec[layout.label_bytes..]);
        }
    }
    let n = labels.len() as i64;
    Ok(RawSplit {
        x: Tensor::f_from_slice(&pixels)?.f_view([n, c, h, w])?,
        y: Tensor::f_from_slice(&labels)?.f_to_kind(Kind::Int64)?,
        first_index: 0,
    })
}

fn not_found(dir: &Path, name: &str, profile: &Profile) -> DataError {
    DataError::NotFound {
        name: profile.name.clone(),
        missing: name.to_string(),
        looked: dir.display().to_string(),
        how_to_get: profile.how_to_get.clone(),
    }
}
