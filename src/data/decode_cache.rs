//! The optional on-disk cache of decoded, preprocessed images (`dataset.cache`): one file of `[C, H, W]` bytes per
//! image, named by the SHA-256 of the preprocessing signature and the file's content, so a renamed or copied file
//! hits, an edited file or a changed preprocessing misses, and two datasets can share one cache directory. Entries
//! are written atomically (temporary file, then rename); a damaged entry (wrong length) is a miss and is rewritten.
//! Nothing evicts entries: the directory holds one output image per distinct file (150 KB at 3x224x224).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct DecodeCache {
    dir: PathBuf,
    signature: String,
}

impl DecodeCache {
    pub fn new(dir: &Path, signature: String) -> std::io::Result<DecodeCache> {
        std::fs::create_dir_all(dir)?;
        Ok(DecodeCache {
            dir: dir.to_path_buf(),
            signature,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry a file with these bytes has.
    fn path(&self, file_bytes: &[u8]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.signature.as_bytes());
        h.update([0u8]);
        h.update(file_bytes);
        let key = hex::encode(h.finalize());
        self.dir.join(&key[..2]).join(format!("{key}.chw"))
    }

    /// The cached output for a file with these bytes, if present and `len` bytes long.
    pub fn get(&self, file_bytes: &[u8], len: usize) -> Option<Vec<u8>> {
        let data = std::fs::read(self.path(file_bytes)).ok()?;
        (data.len() == len).then_some(data)
    }

    /// Stores the output for a file with these bytes; a failure (disk full, permissions) is logged, not fatal.
    pub fn put(&self, file_bytes: &[u8], output: &[u8]) {
        let path = self.path(file_bytes);
        let write = || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(output)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot write to the decode cache");
        }
    }
}
