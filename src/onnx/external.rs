//! External data (`data_location = EXTERNAL`): the one place that turns a tensor's `location`/`offset`/`length`
//! into bytes. Locations are confined to the model's own directory: absolute paths, `..` components, and symlinks
//! resolving outside are refused; offsets and lengths are checked against the file size. Each file is memory-mapped
//! once.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

use super::proto::TensorProto;

/// Why a tensor's external data cannot be read (the caller adds the model file and the tensor).
#[derive(Debug, Error)]
pub enum ExternalError {
    #[error("`{key}` is not a non-negative integer: {value:?}")]
    NotANumber { key: String, value: String },
    #[error("external data without a `location` entry")]
    NoLocation,
    #[error("empty location")]
    EmptyLocation,
    #[error("`..` in the location is refused ({STAY})")]
    ParentDir,
    #[error("absolute locations are refused ({STAY})")]
    Absolute,
    #[error("resolves to {}, outside the model's directory (symlinks out are refused)", .0.display())]
    Outside(PathBuf),
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("external data cannot be read for a model parsed from memory")]
    FromMemory,
    #[error("offset + length overflows")]
    Overflow,
    #[error("offset {offset} + length {length} runs past the end of the file ({size} bytes)")]
    PastEnd { offset: u64, length: u64, size: u64 },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

const STAY: &str = "external data must stay in the model's directory";

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ExternalError + 'a {
    move |source| ExternalError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where one tensor's external bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

impl ExternalRef {
    /// Reads the `external_data` key/value entries of a tensor.
    pub fn from_proto(t: &TensorProto) -> Result<Self, ExternalError> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            let number = || {
                kv.value
                    .parse::<u64>()
                    .map_err(|_| ExternalError::NotANumber {
                        key: kv.key.clone(),
                        value: kv.value.clone(),
                    })
            };
            match kv.key.as_str() {
                "location" => location = Some(kv.value.clone()),
                "offset" => offset = number()?,
                "length" => length = Some(number()?),
                // "checksum" and unknown keys carry no layout information.
                _ => {}
            }
        }
        let location = location.ok_or(ExternalError::NoLocation)?;
        Ok(Self {
            location,
            offset,
            length,
        })
    }
}

/// Resolves external-data references relative to one model directory, mapping each file once.
pub struct ExternalResolver {
    /// `None`: a model loaded from memory, whose external data is refused.
    model_dir: Option<PathBuf>,
    /// The canonical model directory, for the containment check.
    canonical_dir: PathBuf,
    files: BTreeMap<String, Bytes>,
}

impl ExternalResolver {
    pub fn new(model_path: &Path) -> std::io::Result<Self> {
        let model_dir = model_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let canonical_dir = std::fs::canonicalize(&model_dir)?;
        Ok(Self {
            model_dir: Some(model_dir),
            canonical_dir,
            files: BTreeMap::new(),
        })
    }

    /// A resolver with no directory behind it: every external reference is refused (models parsed from memory).
    pub fn refusing() -> Self {
        Self {
            model_dir: None,
            canonical_dir: PathBuf::new(),
            files: BTreeMap::new(),
        }
    }

    /// The relative locations read so far (the model's external-data files).
    pub fn files(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// Total bytes of the external files mapped so far.
    pub fn mapped_bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }

    /// The bytes `r` points at.
    pub fn read(&mut self, r: &ExternalRef) -> Result<Bytes, ExternalError> {
        let file = match self.files.get(&r.location) {
            Some(f) => f.clone(),
            None => {
                let path = self.confined_path(&r.location)?;
                let bytes = map_file(&path)?;
                self.files.insert(r.location.clone(), bytes.clone());
                bytes
            }
        };
        let size = file.len() as u64;
        let length = r.length.unwrap_or(size.saturating_sub(r.offset));
        let end = r
            .offset
            .checked_add(length)
            .ok_or(ExternalError::Overflow)?;
        if end > size {
            return Err(ExternalError::PastEnd {
                offset: r.offset,
                length,
                size,
            });
        }
        Ok(file.slice(r.offset as usize..end as usize))
    }

    /// `location` joined to the model directory, refusing anything that leaves it.
    pub fn confined_path(&self, location: &str) -> Result<PathBuf, ExternalError> {
        match &self.model_dir {
            Some(dir) => confined_path(dir, &self.canonical_dir, location),
            None => Err(ExternalError::FromMemory),
        }
    }
}

/// Checks that `location` is a plain relative path inside `dir` (after resolving symlinks).
pub fn confined_path(
    dir: &Path,
    canonical_dir: &Path,
    location: &str,
) -> Result<PathBuf, ExternalError> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err(ExternalError::EmptyLocation);
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(ExternalError::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(ExternalError::Absolute),
        }
    }
    let joined = dir.join(rel);
    let canonical = std::fs::canonicalize(&joined).map_err(io_err("open", &joined))?;
    if !canonical.starts_with(canonical_dir) {
        return Err(ExternalError::Outside(canonical));
    }
    if !canonical.is_file() {
        return Err(ExternalError::NotAFile(joined));
    }
    Ok(canonical)
}

fn map_file(path: &Path) -> Result<Bytes, ExternalError> {
    let file = std::fs::File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; robustd never writes these files while a model is loaded. A concurrent
    // external writer could change the bytes under us, which would give wrong weights, not memory unsafety in
    // Rust code that only copies from the slice.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("map", path))?;
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_outside_the_model_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("m");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("secret"), b"0123").unwrap();
        std::fs::write(inner.join("w.bin"), b"0123").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), inner.join("link")).unwrap();
        let mut r = ExternalResolver::new(&inner.join("model.onnx")).unwrap();
        let at = |loc: &str| ExternalRef {
            location: loc.into(),
            offset: 0,
            length: None,
        };
        let err = |r: &mut ExternalResolver, loc: &str| r.read(&at(loc)).unwrap_err().to_string();
        assert!(err(&mut r, "../secret").contains(".."));
        let abs = dir.path().join("secret").display().to_string();
        assert!(err(&mut r, &abs).contains("absolute"));
        assert!(err(&mut r, "link").contains("outside"));
        assert_eq!(&r.read(&at("w.bin")).unwrap()[..], b"0123");
        let past_end = ExternalRef {
            location: "w.bin".into(),
            offset: 2,
            length: Some(8),
        };
        assert!(r
            .read(&past_end)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
    }
}
