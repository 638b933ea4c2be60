//! The watched inbox: which files are candidates, and when a dropped file is complete. A `*.onnx` file is ready
//! once its size and mtime (and its sidecar's) have not changed for `daemon.stable_ms`; a file that is not a
//! regular file is ready at once (intake refuses it unopened). Hidden, `*.part` and `*.tmp` files are never touched.
//! What happens to a ready drop is [`super::intake`]'s business.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::names::{classify, display_name, sidecar_path, DropKind};

/// Tracks candidate files until they are stable.
#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    candidates: HashMap<OsString, Candidate>,
}

#[derive(Debug)]
struct Candidate {
    /// When the inbox first saw the file (event or rescan): the start of the drop-to-job latency.
    seen_at: SystemTime,
    fingerprint: Option<Fingerprint>,
    since: Instant,
    /// Handed to intake; not offered again until it reports back.
    in_intake: bool,
    waiting_logged: bool,
}

type Fingerprint = (u64, i64, i64, Option<(u64, i64, i64)>);

impl Inbox {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            candidates: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A watcher event or rescan saw `name`; a sidecar's event refreshes its model.
    pub fn note(&mut self, name: &OsStr) {
        let model: OsString = match classify(name) {
            DropKind::Model => name.to_owned(),
            DropKind::Ignored => return,
            DropKind::Other => {
                let s = name.to_string_lossy();
                match s.strip_suffix(".yaml").or_else(|| s.strip_suffix(".yml")) {
                    Some(stem) if !stem.is_empty() => OsString::from(format!("{stem}.onnx")),
                    _ => return,
                }
            }
        };
        if classify(name) == DropKind::Other && !self.dir.join(&model).exists() {
            return;
        }
        self.candidates.entry(model).or_insert_with(|| Candidate {
            seen_at: SystemTime::now(),
            fingerprint: None,
            since: Instant::now(),
            in_intake: false,
            waiting_logged: false,
        });
    }

    /// Lists the inbox (the fallback for missed events) and notes every entry.
    pub fn rescan(&mut self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            self.note(&entry.file_name());
        }
        Ok(())
    }

    /// Candidates ready for intake now, with the time each was first seen: stable for `stable`, or not regular
    /// files at all (rejected at once).
    pub fn ready(&mut self, stable: Duration) -> Vec<(OsString, SystemTime)> {
        let now = Instant::now();
        let dir = self.dir.clone();
        let mut ready = Vec::new();
        self.candidates.retain(|name, c| {
            if c.in_intake {
                return true;
            }
            let Ok(meta) = std::fs::symlink_metadata(dir.join(name)) else {
                return false; // gone
            };
            if meta.is_dir() {
                return false;
            }
            if !meta.file_type().is_file() {
                c.in_intake = true;
                ready.push((name.clone(), c.seen_at));
                return true;
            }
            let fp = fingerprint(&dir, name, &meta);
            if c.fingerprint != Some(fp) {
                c.fingerprint = Some(fp);
                c.since = now;
            } else if now.duration_since(c.since) >= stable {
                c.in_intake = true;
                ready.push((name.clone(), c.seen_at));
            }
            true
        });
        ready.sort();
        ready
    }

    /// Intake finished with `name`: forget it, or, when it is `waiting` (for a companion), check it again later.
    pub fn settled(&mut self, name: &OsStr, waiting: Option<&str>) {
        match waiting {
            Some(why) => {
                if let Some(c) = self.candidates.get_mut(name) {
                    c.in_intake = false;
                    c.since = Instant::now();
                    if !c.waiting_logged {
                        tracing::info!("{}: waiting: {why}", display_name(name));
                        c.waiting_logged = true;
                    }
                }
            }
            None => {
                self.candidates.remove(name);
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.candidates.len()
    }
}

fn fingerprint(dir: &Path, name: &OsStr, meta: &Metadata) -> Fingerprint {
    let sidecar = sidecar_path(dir, name);
    let side = std::fs::symlink_metadata(sidecar)
        .ok()
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec()));
    (meta.len(), meta.mtime(), meta.mtime_nsec(), side)
}

/// Warns (once, at startup) when anyone may write into the inbox: every local user could then feed the daemon.
pub fn warn_if_world_writable(dir: &Path) {
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            tracing::warn!(
                "inbox {} is world-writable (mode {:o}): any local user can submit models; consider chmod o-w{}",
                dir.display(),
                mode & 0o7777,
                if mode & 0o1000 == 0 { " (and it lacks the sticky bit)" } else { "" }
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_only_after_it_stopped_changing_and_a_sidecar_change_restarts_the_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let stable = Duration::from_millis(150);
        let mut inbox = Inbox::new(dir);
        std::fs::write(dir.join("m.onnx"), b"part").unwrap();
        std::fs::write(dir.join(".x.onnx.part"), b"ignored").unwrap();
        inbox.rescan().unwrap();
        assert!(
            inbox.ready(stable).is_empty(),
            "first sight only records the fingerprint"
        );
        std::thread::sleep(Duration::from_millis(80));
        std::fs::write(dir.join("m.onnx"), b"part and more").unwrap();
        assert!(
            inbox.ready(stable).is_empty(),
            "changed: the clock restarts"
        );
        std::thread::sleep(Duration::from_millis(80));
        std::fs::write(dir.join("m.yaml"), b"threat: {eps: 0.2}").unwrap();
        inbox.note(OsStr::new("m.yaml"));
        assert!(
            inbox.ready(stable).is_empty(),
            "the sidecar changed the fingerprint"
        );
        std::thread::sleep(Duration::from_millis(200));
        let ready = inbox.ready(stable);
        assert_eq!(
            ready.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            vec![OsString::from("m.onnx")]
        );
        assert!(inbox.ready(stable).is_empty(), "handed to intake once");
        inbox.settled(OsStr::new("m.onnx"), None);
        assert_eq!(inbox.pending(), 0);
    }
}
