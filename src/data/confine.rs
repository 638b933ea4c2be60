//! Keeping an image-file dataset inside its root, and a daemon sidecar's dataset inside `paths.datasets`.
//!
//! Every image file must lie inside the dataset root (the folder, or the manifest's directory) after resolving
//! symlinks: a class folder or file that is a symlink to elsewhere, a manifest path with `..` that climbs out, or
//! an absolute manifest path is refused, naming the entry. Special files (FIFOs, devices, sockets) are refused too,
//! since opening one blocks or never ends.

use std::path::{Component, Path, PathBuf};

use super::DataError;

/// A dataset root, resolved once; checks that entries stay inside it.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root as given (used in messages and to join relative paths).
    pub given: PathBuf,
    /// The root with every symlink resolved.
    pub real: PathBuf,
}

impl Root {
    pub fn new(given: &Path) -> Result<Root, DataError> {
        let real = std::fs::canonicalize(given).map_err(|source| DataError::Io {
            path: given.to_path_buf(),
            source,
        })?;
        Ok(Root {
            given: given.to_path_buf(),
            real,
        })
    }

    /// Where `relative` really is: refused when it is absolute, climbs out with `..`, or resolves (through
    /// symlinks) to a place outside the root. `is_dir` says which kind of entry is wanted; anything else (a FIFO,
    /// a device, a directory where a file is wanted) is refused.
    pub fn resolve(&self, relative: &Path, is_dir: bool) -> Result<PathBuf, DataError> {
        let escape = |detail: String| DataError::Escape {
            path: self.given.join(relative),
            root: self.given.clone(),
            detail,
        };
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
        {
            return Err(escape("absolute paths are not accepted".into()));
        }
        // `..` that climbs above the root is refused before touching the filesystem (the target may not exist).
        let mut depth = 0i64;
        for component in relative.components() {
            match component {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(escape("`..` climbs above the root".into()));
            }
        }
        let joined = self.given.join(relative);
        let real = std::fs::canonicalize(&joined).map_err(|source| DataError::Io {
            path: joined.clone(),
            source,
        })?;
        if !real.starts_with(&self.real) {
            return Err(escape(format!("it resolves to {}", real.display())));
        }
        let meta = std::fs::metadata(&real).map_err(|source| DataError::Io {
            path: joined.clone(),
            source,
        })?;
        let kind_ok = if is_dir {
            meta.is_dir()
        } else {
            meta.is_file()
        };
        if !kind_ok {
            return Err(DataError::NotRegular {
                path: joined,
                wanted: if is_dir { "directory" } else { "regular file" },
            });
        }
        Ok(real)
    }
}

/// Checks a daemon job's `dataset.path` against the allow-list `paths.datasets`: after resolving symlinks it must
/// lie inside one of the listed directories. An empty list allows nothing.
pub fn check_allowed(path: &Path, allowed: &[PathBuf]) -> Result<(), DataError> {
    let real = std::fs::canonicalize(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let inside = allowed
        .iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .any(|dir| real.starts_with(dir));
    if inside {
        return Ok(());
    }
    Err(DataError::NotAllowed {
        path: path.to_path_buf(),
        real,
        allowed: if allowed.is_empty() {
            "none: paths.datasets is empty".into()
        } else {
            allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}
