//! Reading one dataset source file: transparent gzip (detected by its magic bytes, not the name), exact-length
//! reads that turn a short file into a `Truncated` error, and the SHA-256 of the file's bytes as stored on disk.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::DataError;

/// A source file of a dataset and the SHA-256 of its bytes on disk (what `sha256sum` prints for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// The combined digest of a dataset's sources: the SHA-256 of their `sha256sum` listing, one line per file
/// (`<hex>  <file name>\n`) in load order. Moving the directory keeps it; changing any file changes it.
pub fn combined_sha256(sources: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        let name = source
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update(format!("{}  {}\n", source.sha256, name).as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// SHA-256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> Result<SourceFile, DataError> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| io_error(path, source))?;
    Ok(SourceFile {
        path: path.to_path_buf(),
        sha256: reader.hex_digest(),
    })
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Hashes every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn hex_digest(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type RawReader = HashingReader<BufReader<File>>;

enum Decoded {
    Plain(RawReader),
    Gzip(Box<MultiGzDecoder<RawReader>>),
}

/// The decoded content of one source file, read front to back.
pub(crate) struct SourceReader {
    path: PathBuf,
    decoded: Decoded,
    /// Decoded bytes consumed so far.
    position: u64,
    /// The gzip stream ended early (read as end of data; `finish` reports it if nothing else did).
    gzip_cut: Option<std::io::Error>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl SourceReader {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let mut peek = [0u8; 2];
        let is_gzip = {
            let mut file = File::open(path).map_err(|source| io_error(path, source))?;
            let n = read_up_to(&mut file, &mut peek).map_err(|source| io_error(path, source))?;
            n == 2 && peek == GZIP_MAGIC
        };
        let file = File::open(path).map_err(|source| io_error(path, source))?;
        let raw = HashingReader::new(BufReader::with_capacity(1 << 20, file));
        let decoded = if is_gzip {
            Decoded::Gzip(Box::new(MultiGzDecoder::new(raw)))
        } else {
            Decoded::Plain(raw)
        };
        Ok(Self {
            path: path.to_path_buf(),
            decoded,
            position: 0,
            gzip_cut: None,
        })
    }

    /// Fills `buf` completely; a file that ends first is `Truncated` (the `what` it was reading, and how far
    /// `expected_end` bytes from the start it should have reached).
    pub fn read_exact(
        &mut self,
        buf: &mut [u8],
        what: &str,
        expected_end: u64,
    ) -> Result<(), DataError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_some(&mut buf[filled..])?;
            if n == 0 {
                return Err(DataError::Truncated {
                    path: self.path.clone(),
                    what: what.to_string(),
                    expected: expected_end,
                    actual: self.position,
                });
            }
            filled += n;
        }
        Ok(())
    }

    /// Reads exactly `len` bytes into a new vector, growing it as data arrives so that a corrupt length field
    /// cannot allocate more than the file holds.
    pub fn read_exact_vec(
        &mut self,
        len: u64,
        what: &str,
        expected_end: u64,
    ) -> Result<Vec<u8>, DataError> {
        const CHUNK: u64 = 1 << 24;
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let start = out.len();
            let step = (len - start as u64).min(CHUNK) as usize;
            out.resize(start + step, 0);
            self.read_exact(&mut out[start..], what, expected_end)?;
        }
        Ok(out)
    }

    /// Reads everything that is left.
    pub fn read_to_end(&mut self) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = self.read_some(&mut chunk)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Checks that nothing follows what was read (`what` names it in the error) and returns the file's digest.
    pub fn finish(mut self, what: &str) -> Result<SourceFile, DataError> {
        let mut chunk = vec![0u8; 1 << 16];
        let mut extra = 0u64;
        loop {
            let n = self.read_some(&mut chunk)?;
            if n == 0 {
                break;
            }
            extra += n as u64;
        }
        if extra > 0 {
            return Err(DataError::TrailingBytes {
                path: self.path,
                what: what.to_string(),
                extra,
            });
        }
        if let Some(source) = self.gzip_cut {
            return Err(DataError::Gzip {
                path: self.path,
                decoded: self.position,
                source,
            });
        }
        let raw = match self.decoded {
            Decoded::Plain(raw) => raw,
            // The gzip stream is exhausted; whatever raw bytes follow it still belong to the file's digest.
            Decoded::Gzip(decoder) => {
                let mut raw = decoder.into_inner();
                std::io::copy(&mut raw, &mut std::io::sink())
                    .map_err(|source| io_error(&self.path, source))?;
                raw
            }
        };
        Ok(SourceFile {
            path: self.path,
            sha256: raw.hex_digest(),
        })
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, DataError> {
        loop {
            let result = match &mut self.decoded {
                Decoded::Plain(raw) => raw.read(buf),
                Decoded::Gzip(decoder) => decoder.read(buf),
            };
            match result {
                Ok(n) => {
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A gzip stream cut short reads as end of data, so the caller can say what was missing; if all
                // the data was there and only the trailer (checksum) is cut, `finish` reports it.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    self.gzip_cut = Some(e);
                    return Ok(0);
                }
                Err(source) => {
                    return Err(match self.decoded {
                        Decoded::Plain(_) => io_error(&self.path, source),
                        Decoded::Gzip(_) => DataError::Gzip {
                            path: self.path.clone(),
                            decoded: self.position,
                            source,
                        },
                    })
                }
            }
        }
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
