//! `.npz` archives (NumPy `savez`, compressed or not) holding a user's own dataset.
//!
//! Arrays: images `x` (or Keras-style `x_train`) and labels `y` (or `y_train`), optionally `x_test`/`y_test`.
//! - Images: `uint8` (divided by 255) or `float32`/`float64` already in [0,1] (NaN, infinities and values outside
//!   [0,1] are errors). Shape `[N, H, W]` (one channel), `[N, H, W, C]` or `[N, C, H, W]` with C = 1 or 3; the
//!   layout is detected from which axis has 1 or 3 entries, and a shape where both or neither do is an error.
//! - Labels: any integer dtype, shape `[N]` or `[N, 1]`, non-negative; the class count is the largest label + 1.
//! - Without `x_test`/`y_test` the last 20 % of the samples (rounded up, at least one) are the test split and the
//!   rest the training split, in file order; `Split::indices` then index into `x` for both splits.
//!
//! Arrays are decoded by `ndarray-npy`; the archive is opened with the `zip` crate directly because
//! `ndarray-npy`'s own `NpzReader`, as the crate is configured here, cannot inflate `savez_compressed` archives.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement};
use tch::Tensor;
use zip::ZipArchive;

use super::source::{io_error, sha256_file};
use super::{DataError, Loaded, RawSplit};

/// Without `x_test`/`y_test`, the last `ceil(N / TEST_SPLIT_DIVISOR)` samples (20 %) form the test split.
pub const TEST_SPLIT_DIVISOR: usize = 5;

/// Labels at or above this are refused (a guard against storing pixel values or ids as labels).
pub const MAX_CLASSES: i64 = 1 << 16;

type Archive = ZipArchive<BufReader<File>>;

pub(crate) fn load(path: &Path) -> Result<Loaded, DataError> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(|e| DataError::Zip {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut npz = Npz {
        path,
        names: archive
            .file_names()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
            .collect(),
        archive: &mut archive,
    };
    npz.names.sort();

    let (x_key, y_key) = if npz.has("x") || !npz.has("x_train") {
        ("x", "y")
    } else {
        ("x_train", "y_train")
    };
    let (x, chw) = npz.images(x_key)?;
    let y = npz.labels(y_key)?;
    check_count(path, x_key, &x, y_key, &y)?;

    let (train, test) = if npz.has("x_test") || npz.has("y_test") {
        let (x_test, chw_test) = npz.images("x_test")?;
        let y_test = npz.labels("y_test")?;
        check_count(path, "x_test", &x_test, "y_test", &y_test)?;
        if chw_test != chw {
            return Err(DataError::Shape {
                path: path.to_path_buf(),
                detail: format!(
                    "`x_test` images are {chw_test:?} (C, H, W) but `{x_key}` images are {chw:?}"
                ),
            });
        }
        ((x, y, 0), (x_test, y_test, 0))
    } else {
        let n = y.len();
        if n < 2 {
            return Err(DataError::Shape {
                path: path.to_path_buf(),
                detail: format!(
                    "`{x_key}` holds {n} sample(s); splitting off a test split needs at least 2"
                ),
            });
        }
        let n_test = n.div_ceil(TEST_SPLIT_DIVISOR).clamp(1, n - 1);
        let n_train = n - n_test;
        let x_train = x.f_narrow(0, 0, n_train as i64)?;
        let x_test = x.f_narrow(0, n_train as i64, n_test as i64)?;
        (
            (x_train, y[..n_train].to_vec(), 0),
            (x_test, y[n_train..].to_vec(), n_train as i64),
        )
    };

    let num_classes = class_count(path, y_key, &train.1, &test.1)?;
    let split = |(x, y, first_index): (Tensor, Vec<i64>, i64)| -> Result<RawSplit, DataError> {
        Ok(RawSplit {
            x,
            y: Tensor::f_from_slice(&y)?,
            first_index,
        })
    };
    Ok(Loaded {
        train: Some(split(train)?),
        test: split(test)?,
        sources: vec![sha256_file(path)?],
        num_classes,
        chw,
    })
}

fn check_count(
    path: &Path,
    x_key: &str,
    x: &Tensor,
    y_key: &str,
    y: &[i64],
) -> Result<(), DataError> {
    let n_images = x.size()[0] as usize;
    if n_images != y.len() {
        return Err(DataError::CountMismatch {
            images: format!("{}:{x_key}", path.display()),
            n_images,
            labels: format!("{}:{y_key}", path.display()),
            n_labels: y.len(),
        });
    }
    Ok(())
}

/// The largest label + 1; a negative or huge label is an error naming its sample.
fn class_count(path: &Path, y_key: &str, train: &[i64], test: &[i64]) -> Result<i64, DataError> {
    let all = || train.iter().chain(test);
    let num_classes = all().copied().max().map_or(0, |m| m + 1).min(MAX_CLASSES);
    let bad = all()
        .enumerate()
        .find(|(_, &l)| !(0..MAX_CLASSES).contains(&l));
    if let Some((index, &label)) = bad {
        let (key, index) = if index < train.len() {
            (y_key, index)
        } else {
            ("y_test", index - train.len())
        };
        return Err(DataError::LabelOutOfRange {
            path: path.join(key),
            index,
            label,
            num_classes,
        });
    }
    Ok(num_classes)
}

/// One open archive and the array names it holds (without `.npy`).
struct Npz<'a> {
    path: &'a Path,
    names: Vec<String>,
    archive: &'a mut Archive,
}

/// The dtype a `read_as` attempt found when it was not the one asked for.
struct OtherDtype(String);

impl Npz<'_> {
    fn has(&self, key: &str) -> bool {
        self.names.iter().any(|n| n == key)
    }

    /// Reads `key` as element type `T`, or reports the dtype it has instead.
    fn read_as<T: ReadableElement>(
        &mut self,
        key: &str,
    ) -> Result<Result<ArrayD<T>, OtherDtype>, DataError> {
        if !self.has(key) {
            return Err(DataError::MissingArray {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                present: self.names.join(", "),
            });
        }
        let entry = [format!("{key}.npy"), key.to_string()]
            .into_iter()
            .find(|name| self.archive.index_for_name(name).is_some())
            .unwrap_or_else(|| key.to_string());
        let path = self.path;
        let file = self
            .archive
            .by_name(&entry)
            .map_err(|e| npy_error(path, key, e.to_string()))?;
        match ArrayD::<T>::read_npy(file) {
            Ok(array) => Ok(Ok(array)),
            Err(ReadNpyError::WrongDescriptor(found)) => Ok(Err(OtherDtype(found.to_string()))),
            Err(e) => Err(npy_error(path, key, e.to_string())),
        }
    }

    /// Images as an NCHW tensor (`uint8`, or `float32` checked to lie in [0,1]) and their `[C, H, W]`.
    fn images(&mut self, key: &str) -> Result<(Tensor, [i64; 3]), DataError> {
        let x = match self.read_as::<u8>(key)? {
            Ok(a) if a.is_standard_layout() => a,
            Ok(a) => a.as_standard_layout().into_owned(),
            Err(_) => match self.read_as::<f32>(key)? {
                Ok(a) => return self.float_images(key, a),
                Err(_) => match self.read_as::<f64>(key)? {
                    Ok(a) => return self.float_images(key, a.mapv(|v| v as f32)),
                    Err(OtherDtype(dtype)) => {
                        return Err(DataError::Dtype {
                            path: self.path.to_path_buf(),
                            key: key.to_string(),
                            dtype,
                            expected: "uint8, float32 or float64",
                        })
                    }
                },
            },
        };
        let (shape, nhwc) = self.layout(key, x.shape())?;
        let data = x.as_slice().unwrap_or_default();
        to_nchw(Tensor::f_from_slice(data)?, &shape, nhwc)
    }

    fn float_images(&self, key: &str, x: ArrayD<f32>) -> Result<(Tensor, [i64; 3]), DataError> {
        let (shape, nhwc) = self.layout(key, x.shape())?;
        let x = x.as_standard_layout();
        let per_sample = x.len() / shape[0].max(1);
        if let Some((i, v)) = x
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(DataError::BadPixels {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                detail: format!("sample {} holds {v}", i / per_sample.max(1)),
            });
        }
        to_nchw(
            Tensor::f_from_slice(x.as_slice().unwrap_or_default())?,
            &shape,
            nhwc,
        )
    }

    /// The 4-d shape `[N, a, b, c]` of the images and whether it is NHWC (else NCHW).
    fn layout(&self, key: &str, shape: &[usize]) -> Result<([usize; 4], bool), DataError> {
        let error = |detail: &str| DataError::Layout {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            shape: shape.to_vec(),
            detail: detail.to_string(),
        };
        let is_channels = |d: usize| d == 1 || d == 3;
        match *shape {
            [n, h, w] => Ok(([n, h, w, 1], true)),
            [n, a, b, c] => match (is_channels(a), is_channels(c)) {
                (false, true) => Ok(([n, a, b, c], true)),
                (true, false) => Ok(([n, a, b, c], false)),
                (true, true) => Err(error("both axis 1 and axis 3 could be the channels")),
                (false, false) => Err(error("neither axis 1 nor axis 3 has 1 or 3 entries")),
            },
            _ => Err(error("images need 3 or 4 dimensions")),
        }
    }

    /// Labels of any integer dtype, shape `[N]` or `[N, 1]`, as i64.
    fn labels(&mut self, key: &str) -> Result<Vec<i64>, DataError> {
        macro_rules! first_integer_dtype {
            ($($t:ty),*) => {{
                let mut found: Option<String> = None;
                $(
                    match self.read_as::<$t>(key)? {
                        Ok(a) => return self.integer_labels(key, a.shape().to_vec(), a.iter().map(|&v| i128::from(v))),
                        Err(OtherDtype(dtype)) => { found.get_or_insert(dtype); }
                    }
                )*
                found.unwrap_or_default()
            }};
        }
        let dtype = first_integer_dtype!(i64, i32, u8, i16, u16, u32, u64, i8);
        Err(DataError::Dtype {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            dtype,
            expected: "an integer dtype",
        })
    }

    fn integer_labels(
        &self,
        key: &str,
        shape: Vec<usize>,
        values: impl Iterator<Item = i128>,
    ) -> Result<Vec<i64>, DataError> {
        if !matches!(shape.as_slice(), [_] | [_, 1]) {
            return Err(DataError::Shape {
                path: self.path.join(key),
                detail: format!("labels are {shape:?}; expected [N] or [N, 1] class indices (store one-hot labels as their argmax)"),
            });
        }
        values
            .enumerate()
            .map(|(index, v)| {
                i64::try_from(v).map_err(|_| DataError::LabelOutOfRange {
                    path: self.path.join(key),
                    index,
                    label: i64::MAX,
                    num_classes: MAX_CLASSES,
                })
            })
            .collect()
    }
}

fn npy_error(path: &Path, key: &str, detail: String) -> DataError {
    DataError::Npy {
        path: path.to_path_buf(),
        key: key.to_string(),
        detail,
    }
}

fn to_nchw(flat: Tensor, shape: &[usize; 4], nhwc: bool) -> Result<(Tensor, [i64; 3]), DataError> {
    let dims = shape.map(|d| d as i64);
    let x = flat.f_view(dims)?;
    let x = if nhwc {
        x.f_permute([0, 3, 1, 2])?.f_contiguous()?
    } else {
        x
    };
    let size = x.size();
    Ok((x, [size[1], size[2], size[3]]))
}
