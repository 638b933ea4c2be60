//! `dataset.name: folder`: torchvision's `ImageFolder` layout, `ROOT/train/<class>/**/<image>` and
//! `ROOT/test/<class>/...` (or `val/` when there is no `test/`).
//!
//! Classes are the sorted names of the class folders of `train/` (exactly as torchvision: sorted by code point),
//! or `dataset.classes` in label order. Samples are listed as torchvision does: classes in sorted name order, each
//! class folder walked recursively with directories sorted by path and files sorted by name, keeping files with an
//! image extension; so sample `i` here is sample `i` of `ImageFolder`. Symlinks are followed only while they stay
//! inside the root. An empty class folder, a class missing from a split, a class folder not in
//! `dataset.classes`, and an image format robustd does not decode are errors naming the folder or file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::confine::Root;
use super::image_files::{image_kind, FileTable, ImageEntry};
use super::DataError;

/// Split folder names: training, then the evaluation split in preference order.
const TRAIN_DIR: &str = "train";
const TEST_DIRS: &[&str] = &["test", "val"];

pub(crate) fn list(root: &Path, classes: Option<&[String]>) -> Result<FileTable, DataError> {
    let root = Root::new(root)?;
    let train_dir = Path::new(TRAIN_DIR);
    if !root.given.join(train_dir).is_dir() {
        return Err(missing_split(&root.given, "a train/ folder"));
    }
    let test_name = TEST_DIRS
        .iter()
        .find(|d| root.given.join(d).is_dir())
        .ok_or_else(|| missing_split(&root.given, "a test/ or val/ folder"))?;
    let found = class_folders(&root, train_dir)?;
    let class_names: Vec<String> = match classes {
        Some(list) => {
            if let Some(extra) = found.iter().find(|c| !list.contains(c)) {
                return Err(DataError::UnknownClass {
                    path: root.given.join(train_dir).join(extra),
                    classes: list.join(", "),
                });
            }
            list.to_vec()
        }
        None => found,
    };
    let train = list_split(&root, train_dir, &class_names)?;
    let test = list_split(&root, Path::new(test_name), &class_names)?;
    let table = FileTable {
        format: "folder",
        root: root.given.clone(),
        train,
        test,
        train_source: TRAIN_DIR.into(),
        test_source: (*test_name).into(),
        class_names,
    };
    table.check_classes()?;
    Ok(table)
}

fn missing_split(root: &Path, what: &str) -> DataError {
    DataError::NotFound {
        name: "folder".into(),
        missing: what.into(),
        looked: root.display().to_string(),
        how_to_get:
            "lay the images out as ROOT/train/<class>/*.png and ROOT/test/<class>/* (torchvision \
                     ImageFolder), and set dataset.path to ROOT"
                .into(),
    }
}

/// The sorted names of the class folders in `split` (symlinked folders count when they stay inside the root).
fn class_folders(root: &Root, split: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in read_dir(&root.given.join(split))? {
        let (name, path) = entry;
        let rel = split.join(&name);
        if is_dir_inside(root, &rel, &path)? {
            let name = name.into_string().map_err(|_| DataError::Invalid {
                what: "class folder name",
                detail: format!("{} is not valid UTF-8", path.display()),
            })?;
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every image of `split`, classes in sorted name order (as torchvision iterates them), labelled by their position
/// in `class_names`.
fn list_split(
    root: &Root,
    split: &Path,
    class_names: &[String],
) -> Result<Vec<ImageEntry>, DataError> {
    let present: HashSet<String> = class_folders(root, split)?.into_iter().collect();
    if let Some(extra) = present.iter().find(|c| !class_names.contains(c)) {
        return Err(DataError::UnknownClass {
            path: root.given.join(split).join(extra),
            classes: class_names.join(", "),
        });
    }
    let mut by_name: Vec<(usize, &String)> = class_names.iter().enumerate().collect();
    by_name.sort_by(|a, b| a.1.cmp(b.1));
    let mut entries = Vec::new();
    for (label, class) in by_name {
        if !present.contains(class) {
            return Err(DataError::ClassMissing {
                split: root.given.join(split),
                classes: class.clone(),
            });
        }
        let before = entries.len();
        walk_class(root, &split.join(class), label as i64, &mut entries)?;
        if entries.len() == before {
            return Err(DataError::EmptyClass {
                path: root.given.join(split).join(class),
            });
        }
    }
    Ok(entries)
}

/// `os.walk(class_dir, followlinks=True)` sorted by directory path, files sorted by name within each.
fn walk_class(
    root: &Root,
    class_dir: &Path,
    label: i64,
    out: &mut Vec<ImageEntry>,
) -> Result<(), DataError> {
    // (the directory as torchvision's sort key sees it, relative path, file names)
    let mut dirs: Vec<(Vec<u8>, PathBuf, Vec<std::ffi::OsString>)> = Vec::new();
    let mut pending = vec![class_dir.to_path_buf()];
    let mut visited = HashSet::new();
    while let Some(rel_dir) = pending.pop() {
        let real = root.resolve(&rel_dir, true)?;
        if !visited.insert(real) {
            continue; // a symlink loop inside the root: each directory is listed once
        }
        let mut files = Vec::new();
        for (name, path) in read_dir(&root.given.join(&rel_dir))? {
            let rel = rel_dir.join(&name);
            if is_dir_inside(root, &rel, &path)? {
                pending.push(rel);
            } else if image_kind(Path::new(&name)).is_some() {
                files.push(name);
            }
        }
        files.sort();
        dirs.push((
            rel_dir.as_os_str().as_encoded_bytes().to_vec(),
            rel_dir,
            files,
        ));
    }
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, rel_dir, files) in dirs {
        for name in files {
            let rel = rel_dir.join(&name);
            if image_kind(Path::new(&name)) == Some(false) {
                return Err(DataError::UnsupportedImage {
                    path: root.given.join(&rel),
                    detail: "this format is not decoded; convert it to PNG, JPEG, WebP or BMP"
                        .into(),
                });
            }
            let real = root.resolve(&rel, false)?;
            let bytes = std::fs::metadata(&real)
                .map_err(|source| DataError::Io {
                    path: root.given.join(&rel),
                    source,
                })?
                .len();
            out.push(ImageEntry {
                path: rel,
                bytes,
                label,
            });
        }
    }
    Ok(())
}

/// Whether the entry `rel` (at `path`) is a directory; a symlink is followed only when it stays inside the root.
fn is_dir_inside(root: &Root, rel: &Path, path: &Path) -> Result<bool, DataError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Ok(true);
    }
    if meta.file_type().is_symlink() {
        let target = std::fs::metadata(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if target.is_dir() {
            root.resolve(rel, true)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The entries of a directory as (name, full path).
fn read_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        out.push((entry.file_name(), entry.path()));
    }
    Ok(out)
}
