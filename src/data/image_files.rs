//! The file table of an image-file dataset (`folder` or `manifest`): for each split, every sample's file
//! (relative to the dataset root), size and label, in the order that defines its index; the class names; and the
//! dataset fingerprint over all of it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::DataError;

/// File name extensions robustd decodes (case-insensitive).
pub const DECODED_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];
/// Image extensions torchvision's `ImageFolder` also takes that robustd does not decode: refused by name rather
/// than silently left out (which would shift nothing but make the two disagree on the sample list).
pub const REFUSED_EXTENSIONS: &[&str] = &["ppm", "pgm", "tif", "tiff"];

/// One sample: its file relative to the dataset root, the file's size, and its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub bytes: u64,
    pub label: i64,
}

/// Both splits of an image-file dataset.
#[derive(Debug, Clone)]
pub struct FileTable {
    /// `folder` or `manifest`.
    pub format: &'static str,
    /// The directory every entry's path is relative to.
    pub root: PathBuf,
    pub train: Vec<ImageEntry>,
    pub test: Vec<ImageEntry>,
    /// Which directory or file each split came from (`train`, `test` or `val`, or the manifest names).
    pub train_source: String,
    pub test_source: String,
    pub class_names: Vec<String>,
}

/// Whether `name` has an extension robustd decodes (`Some(true)`), one it refuses (`Some(false)`), or none of
/// either (`None`: not an image, ignored like torchvision does).
pub fn image_kind(name: &Path) -> Option<bool> {
    let ext = name.extension()?.to_str()?.to_ascii_lowercase();
    if DECODED_EXTENSIONS.contains(&ext.as_str()) {
        Some(true)
    } else if REFUSED_EXTENSIONS.contains(&ext.as_str()) {
        Some(false)
    } else {
        None
    }
}

impl FileTable {
    /// The dataset fingerprint: SHA-256 over the class names and, per split, every file's relative path, size and
    /// label in index order. Moving the root keeps it; adding, removing, relabelling, reordering or resizing a file
    /// changes it. (File contents are not read: the decode cache keys on them instead.)
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("robustd.dataset/v1 {}\n", self.format));
        for (i, name) in self.class_names.iter().enumerate() {
            h.update(format!("class\t{i}\t{name}\n"));
        }
        for (split, entries) in [("train", &self.train), ("test", &self.test)] {
            for e in entries {
                h.update(format!(
                    "{split}\t{}\t{}\t{}\n",
                    e.path.to_string_lossy(),
                    e.bytes,
                    e.label
                ));
            }
        }
        hex::encode(h.finalize())
    }

    /// Checks every label against the class count and that each class has samples in both splits.
    pub fn check_classes(&self) -> Result<(), DataError> {
        let n = self.class_names.len() as i64;
        for (source, entries) in [
            (&self.train_source, &self.train),
            (&self.test_source, &self.test),
        ] {
            if entries.is_empty() {
                return Err(DataError::Shape {
                    path: self.root.join(source),
                    detail: "the split holds no image files".into(),
                });
            }
            if let Some(e) = entries.iter().find(|e| !(0..n).contains(&e.label)) {
                return Err(DataError::LabelOutOfRange {
                    path: self.root.join(&e.path),
                    index: entries.iter().position(|x| x == e).unwrap_or(0),
                    label: e.label,
                    num_classes: n,
                });
            }
            let mut present = vec![false; n as usize];
            for e in entries {
                present[e.label as usize] = true;
            }
            let missing: Vec<&str> = present
                .iter()
                .enumerate()
                .filter(|(_, p)| !**p)
                .map(|(c, _)| self.class_names[c].as_str())
                .collect();
            if !missing.is_empty() {
                return Err(DataError::ClassMissing {
                    split: self.root.join(source),
                    classes: missing.join(", "),
                });
            }
        }
        Ok(())
    }
}
