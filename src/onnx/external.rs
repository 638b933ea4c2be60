//! External data (`data_location = EXTERNAL`): the one place that turns a tensor's `location`/`offset`/`length`
//! into bytes. Locations are confined to the model's own directory: absolute paths, `..` components, and symlinks
//! resolving outside are refused; offsets and lengths are checked against the file size. Each file is memory-mapped
//! once.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use super::proto::TensorProto;

/// Where one tensor's external bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

impl ExternalRef {
    /// Reads the `external_data` key/value entries of a tensor.
    pub fn from_proto(t: &TensorProto) -> Result<Self, String> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            let number = || {
                kv.value.parse::<u64>().map_err(|_| {
                    format!("`{}` is not a non-negative integer: {:?}", kv.key, kv.value)
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
        let location = location.ok_or("external data without a `location` entry")?;
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
    pub fn read(&mut self, r: &ExternalRef) -> Result<Bytes, String> {
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
            .ok_or("offset + length overflows")?;
        if end > size {
            return Err(format!(
                "offset {} + length {length} runs past the end of the file ({size} bytes)",
                r.offset
            ));
        }
        Ok(file.slice(r.offset as usize..end as usize))
    }

    /// `location` joined to the model directory, refusing anything that leaves it.
    pub fn confined_path(&self, location: &str) -> Result<PathBuf, String> {
        match &self.model_dir {
            Some(dir) => confined_path(dir, &self.canonical_dir, location),
            None => Err("external data cannot be read for a model parsed from memory".into()),
        }
    }
}

/// Checks that `location` is a plain relative path inside `dir` (after resolving symlinks).
pub fn confined_path(dir: &Path, canonical_dir: &Path, location: &str) -> Result<PathBuf, String> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("empty location".into());
    }
    const STAY: &str = "external data must stay in the model's directory";
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("`..` in the location is refused ({STAY})"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("absolute locations are refused ({STAY})"))
            }
        }
    }
    let joined = dir.join(rel);
    let canonical = std::fs::canonicalize(&joined)
        .map_err(|e| format!("cannot open {}: {e}", joined.display()))?;
    if !canonical.starts_with(canonical_dir) {
        return Err(format!(
            "resolves to {}, outside the model's directory (symlinks out are refused)",
            canonical.display()
        ));
    }
    if !canonical.is_file() {
        return Err(format!("{} is not a regular file", joined.display()));
    }
    Ok(canonical)
}

fn map_file(path: &Path) -> Result<Bytes, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; robustd never writes these files while a model is loaded. A concurrent
    // external writer could change the bytes under us, which would give wrong weights, not memory unsafety in
    // Rust code that only copies from the slice.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
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
        assert!(r.read(&at("../secret")).unwrap_err().contains(".."));
        let abs = dir.path().join("secret").display().to_string();
        assert!(r.read(&at(&abs)).unwrap_err().contains("absolute"));
        assert!(r.read(&at("link")).unwrap_err().contains("outside"));
        assert_eq!(&r.read(&at("w.bin")).unwrap()[..], b"0123");
        let past_end = ExternalRef {
            location: "w.bin".into(),
            offset: 2,
            length: Some(8),
        };
        assert!(r.read(&past_end).unwrap_err().contains("past the end"));
    }
}
