//! IDX files (MNIST, Fashion-MNIST): a big-endian header `00 00 08 <ndim>` and `ndim` u32 sizes, then unsigned
//! bytes. Accepted names per file: `train-images-idx3-ubyte` and `train-images.idx3-ubyte` (likewise for labels;
//! `t10k-` or `test-` for the test split), each gzipped (`.gz`) or not; gzip is detected by content. The Debian
//! package `dataset-fashion-mnist` ships the upstream names, gzipped.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::profile::Profile;
use super::source::{sha256_file, SourceFile, SourceReader};
use super::{DataError, Loaded, RawSplit, Splits};

const TRAIN_PREFIXES: &[&str] = &["train"];
const TEST_PREFIXES: &[&str] = &["t10k", "test"];

/// What one IDX file holds.
#[derive(Clone, Copy)]
enum Content {
    Images,
    Labels,
}

impl Content {
    fn word(self) -> &'static str {
        match self {
            Content::Images => "images",
            Content::Labels => "labels",
        }
    }

    fn ndim(self) -> u8 {
        match self {
            Content::Images => 3,
            Content::Labels => 1,
        }
    }

    /// The accepted file names, in preference order.
    fn file_names(self, prefixes: &[&str]) -> Vec<String> {
        let mut names = Vec::new();
        for prefix in prefixes {
            for sep in ['-', '.'] {
                let base = format!("{prefix}-{}{sep}idx{}-ubyte", self.word(), self.ndim());
                names.push(format!("{base}.gz"));
                names.push(base);
            }
        }
        names
    }
}

/// Whether `dir` holds the training images under any accepted name (used to pick a standard location).
pub(crate) fn holds_files(dir: &Path) -> bool {
    Content::Images
        .file_names(TRAIN_PREFIXES)
        .iter()
        .any(|name| dir.join(name).is_file())
}

/// What a user should find in a dataset directory (for the not-found error).
pub(crate) fn wanted_files() -> String {
    "train-images-idx3-ubyte[.gz]".to_string()
}

pub(crate) fn load(dir: &Path, profile: &Profile, splits: Splits) -> Result<Loaded, DataError> {
    let mut sources = Vec::new();
    let train = match splits {
        Splits::All => Some(load_split(dir, TRAIN_PREFIXES, profile, &mut sources)?),
        Splits::TestOnly => {
            for content in [Content::Images, Content::Labels] {
                sources.push(sha256_file(&find_file(
                    dir,
                    content,
                    TRAIN_PREFIXES,
                    profile,
                )?)?);
            }
            None
        }
    };
    let test = load_split(dir, TEST_PREFIXES, profile, &mut sources)?;
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
    prefixes: &[&str],
    profile: &Profile,
    sources: &mut Vec<SourceFile>,
) -> Result<RawSplit, DataError> {
    let images_path = find_file(dir, Content::Images, prefixes, profile)?;
    let labels_path = find_file(dir, Content::Labels, prefixes, profile)?;
    let (image_dims, pixels, images_source) = read_idx(&images_path, Content::Images)?;
    let (label_dims, labels, labels_source) = read_idx(&labels_path, Content::Labels)?;
    sources.push(images_source);
    sources.push(labels_source);

    let [channels, height, width] = profile.shape;
    let (n, h, w) = (image_dims[0], image_dims[1] as i64, image_dims[2] as i64);
    if channels != 1 || (h, w) != (height, width) {
        return Err(DataError::Shape {
            path: images_path,
            detail: format!(
                "images are {h}x{w} with 1 channel; {} images are {height}x{width} with {channels}",
                profile.name
            ),
        });
    }
    if label_dims[0] != n {
        return Err(DataError::CountMismatch {
            images: images_path.display().to_string(),
            n_images: n,
            labels: labels_path.display().to_string(),
            n_labels: label_dims[0],
        });
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| i64::from(l) >= profile.classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path,
            index,
            label: i64::from(label),
            num_classes: profile.classes,
        });
    }
    Ok(RawSplit {
        x: Tensor::f_from_slice(&pixels)?.f_view([n as i64, 1, h, w])?,
        y: Tensor::f_from_slice(&labels)?.f_to_kind(Kind::Int64)?,
        first_index: 0,
    })
}

fn find_file(
    dir: &Path,
    content: Content,
    prefixes: &[&str],
    profile: &Profile,
) -> Result<PathBuf, DataError> {
    let names = content.file_names(prefixes);
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| DataError::NotFound {
            name: profile.name.clone(),
            missing: format!("one of {}", names.join(", ")),
            looked: dir.display().to_string(),
            how_to_get: profile.how_to_get.clone(),
        })
}

/// Reads one IDX file of unsigned bytes with the dimensionality `content` expects: `(sizes, data, digest)`.
fn read_idx(path: &Path, content: Content) -> Result<(Vec<usize>, Vec<u8>, SourceFile), DataError> {
    let mut reader = SourceReader::open(path)?;
    let ndim = content.ndim();
    let header_len = 4 + 4 * u64::from(ndim);
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic, "IDX header", header_len)?;
    let found = u32::from_be_bytes(magic);
    let expected = 0x0800 | u32::from(ndim);
    if found != expected {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: format!(
                "{expected:#010x} (IDX of unsigned bytes with {ndim} dimension{}: {})",
                if ndim == 1 { "" } else { "s" },
                content.word()
            ),
        });
    }
    let mut sizes = vec![0u8; 4 * usize::from(ndim)];
    reader.read_exact(&mut sizes, "IDX header", header_len)?;
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::Shape {
            path: path.to_path_buf(),
            detail: format!("IDX sizes {dims:?} overflow"),
        })?;
    let data = reader.read_exact_vec(len, content.word(), header_len + len)?;
    let source = reader.finish(content.word())?;
    Ok((dims, data, source))
}
