//! Durable file writing, the file-system layer under everything robustd writes (reports, checkpoints, written-back
//! models, the job spool, published results): every file goes through here. A file is written to a temporary name
//! in the same directory, flushed to disk (fsync), renamed over the target, and the directory is fsynced, so a
//! reader (or a restart after power loss) sees either the old file or the complete new one, never a torn one. Files
//! get mode 0644 and directories 0755 whatever the umask, so results are readable by other users of the machine.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Mode of every file robustd writes.
pub const FILE_MODE: u32 = 0o644;
/// Mode of every directory robustd creates.
pub const DIR_MODE: u32 = 0o755;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot serialize {path}: {message}")]
    Serialize { path: PathBuf, message: String },
}

impl WriteError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically (temp file + fsync + rename + directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Serializes `value` as YAML and writes it atomically.
pub fn write_yaml_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), WriteError> {
    let text = serde_norway::to_string(value).map_err(|e| WriteError::Serialize {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// A YAML file that cannot be read back.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_norway::Error,
    },
}

/// Reads back a YAML file written by [`write_yaml_atomic`] (records, indexes, error and report files).
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_norway::from_str(&text).map_err(|source| ReadError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}

/// Atomically writes whatever `fill` produces (buffered); on any error the temporary file is removed and the
/// target is untouched (the disk-full case included).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), WriteError> {
    write_atomic_file(path, |file| {
        let mut buffered = io::BufWriter::new(file);
        fill(&mut buffered)?;
        buffered.flush()
    })
}

/// Missing parent directories are created (mode 0755).
///
/// Atomically writes through the temporary [`File`] itself, for writers that need `Write + Seek` (npz/zip):
/// `fill` writes, then this fsyncs, renames over `path` and fsyncs the directory.
pub fn write_atomic_file(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), WriteError> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        create_dir_all(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have narrowed the mode given to open(2); set it explicitly.
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError::io(path, source));
    }
    sync_dir(dir).map_err(|e| WriteError::io(dir, e))
}

/// Copies `src` to `dst` atomically; returns the bytes copied.
pub fn copy_atomic(src: &Path, dst: &Path) -> Result<u64, WriteError> {
    let mut input = File::open(src).map_err(|e| WriteError::io(src, e))?;
    let mut copied = 0;
    write_atomic_with(dst, |w| {
        copied = io::copy(&mut input, w)?;
        Ok(())
    })?;
    Ok(copied)
}

/// Moves a file, across filesystems too (copy + fsync + remove when rename says EXDEV). The caller fsyncs the
/// destination directory once its moves are done.
pub fn move_file(src: &Path, dst: &Path) -> Result<(), WriteError> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(18) => {
            copy_atomic(src, dst)?;
            std::fs::remove_file(src).map_err(|e| WriteError::io(src, e))
        }
        Err(e) => Err(WriteError::io(dst, e)),
    }
}

/// Creates `path` and its missing parents with mode 0755 (set explicitly: mkdir(2) applies the umask, and a
/// daemon started with umask 077 would otherwise make results only root can read).
pub fn create_dir_all(path: &Path) -> Result<(), WriteError> {
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .collect();
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|e| WriteError::io(path, e))?;
    for dir in missing {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| WriteError::io(dir, e))?;
    }
    Ok(())
}

/// Renames `from` to `to` (same filesystem) and fsyncs both parent directories, so the move survives a crash.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), WriteError> {
    std::fs::rename(from, to).map_err(|e| WriteError::io(to, e))?;
    let (a, b) = (parent_dir(from), parent_dir(to));
    sync_dir(b).map_err(|e| WriteError::io(b, e))?;
    if a != b {
        sync_dir(a).map_err(|e| WriteError::io(a, e))?;
    }
    Ok(())
}

/// Points the symlink `link` at `target` atomically (a temporary link renamed over the old one).
pub fn symlink_atomic(target: &Path, link: &Path) -> Result<(), WriteError> {
    let tmp = temp_path(link);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| WriteError::io(link, e))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError::io(link, e));
    }
    let dir = parent_dir(link);
    sync_dir(dir).map_err(|e| WriteError::io(dir, e))
}

/// fsyncs a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `name` is one of this module's temporary names (`.NAME.tmp-PID-N`); scanners skip them.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A fresh temporary name next to `path`, unique to this process and call (hidden: a dot file), for writers that
/// must produce the file themselves before renaming it into place.
pub fn temp_sibling(path: &Path) -> PathBuf {
    temp_path(path)
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_dir(path).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_with_fixed_modes_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_dir_all(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        let file = sub.join("x.yaml");
        write_atomic(&file, b"first").unwrap();
        write_atomic(&file, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second, longer");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        let names: Vec<_> = std::fs::read_dir(&sub).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        write_atomic(&file, b"old").unwrap();
        let err = write_atomic_with(&file, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("latest");
        symlink_atomic(Path::new("one"), &link).unwrap();
        symlink_atomic(Path::new("two"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("two"));
    }
}
