//! The watched inbox: which files are candidates, when a dropped file is complete, and turning a complete drop
//! into a queued job (or a rejected one in `failed/`).
//!
//! A `*.onnx` file is taken once its size and mtime (and its sidecar's) have not changed for `daemon.stable_ms`,
//! and the external-data files it references are present and just as quiet. Hidden, `*.part` and `*.tmp` files are
//! never touched. Only regular files are taken: a symlink (never followed — it could point out of the inbox), a
//! FIFO, a socket or a device file is moved, unopened, into `failed/` with an error.yaml.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::job::{now_rfc3339, Job, JobKind, JobRecord, JobState, JOB_SCHEMA, SIDECAR_FILE};
use super::names::{classify, display_name, is_safe_companion, sanitize_model_name, DropKind};
use super::onnx_scan::scan_model;
use super::spool::{DropFiles, Spool, SpoolError};
use crate::config::Config;
use crate::report::{sha256_hex, ErrorReport};

/// Largest sidecar read (bytes); bigger ones are rejected before parsing.
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

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

    /// Intake finished with `name`: forget it, or (waiting for a companion) check it again later.
    pub fn settled(&mut self, name: &OsStr, outcome: &Intake) {
        match outcome {
            Intake::Waiting(why) => {
                if let Some(c) = self.candidates.get_mut(name) {
                    c.in_intake = false;
                    c.since = Instant::now();
                    if !c.waiting_logged {
                        tracing::info!("{}: waiting: {why}", display_name(name));
                        c.waiting_logged = true;
                    }
                }
            }
            _ => {
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

fn sidecar_path(dir: &Path, model: &OsStr) -> PathBuf {
    let s = model.to_string_lossy();
    let stem = s.strip_suffix(".onnx").unwrap_or(&s);
    dir.join(format!("{stem}.yaml"))
}

/// What intake did with a drop.
#[derive(Debug)]
pub enum Intake {
    Queued(Job),
    Rejected(Job),
    /// Not complete yet (a companion missing or still changing); looked at again later.
    Waiting(String),
    /// The file disappeared before intake.
    Gone,
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

/// Takes one stable drop from the inbox into the spool.
pub fn intake(
    inbox: &Path,
    name: &OsStr,
    seen_at: SystemTime,
    spool: &Spool,
    base: &Config,
    stable: Duration,
) -> Result<Intake, SpoolError> {
    let path = inbox.join(name);
    let shown = display_name(name);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(Intake::Gone);
    };
    let mut drop = Drop::new(name, &shown);
    drop.record.detected_at = Some(humantime::format_rfc3339_millis(seen_at).to_string());
    let examination = Examination {
        inbox,
        name,
        path: &path,
        shown: &shown,
        seen_at,
        base,
        stable,
    };
    let accepted = match examination.examine(&meta, &mut drop) {
        Ok(accepted) => accepted,
        Err(Stop::Gone) => return Ok(Intake::Gone),
        Err(Stop::Waiting(why)) => return Ok(Intake::Waiting(why)),
        Err(Stop::Spool(e)) => return Err(e),
        Err(Stop::Refused { stage, cause, hint }) => {
            // The model goes to failed/ with whatever else was taken so far (sidecar, companions).
            drop.files.push((path, drop.record.model_file.clone()));
            return reject(spool, drop, stage, cause, hint);
        }
    };
    let Accepted {
        config,
        model_sha256,
        companion_digests,
    } = accepted;
    let config_yaml = config.to_yaml();
    let r = &mut drop.record;
    r.config_sha256 = config.hash_hex();
    r.key = sha256_hex(
        format!(
            "{model_sha256}:{}:{}",
            companion_digests.join(","),
            r.config_sha256
        )
        .as_bytes(),
    );
    r.model_sha256 = model_sha256;
    r.kind = JobKind::of(&config);
    drop.files.push((path, drop.record.model_file.clone()));
    let job = spool.enqueue(drop.record, &config_yaml, drop.files)?;
    tracing::info!(job = %job.id(), "queued {shown} ({:?})", job.record.kind);
    Ok(Intake::Queued(job))
}

/// Why intake stops short of queueing a drop.
enum Stop {
    /// The file disappeared.
    Gone,
    /// Not complete yet; looked at again later.
    Waiting(String),
    /// Refused: the drop goes to `failed/` with this stage, cause and hint in its error.yaml.
    Refused {
        stage: &'static str,
        cause: String,
        hint: &'static str,
    },
    Spool(SpoolError),
}

fn refuse(stage: &'static str, cause: String, hint: &'static str) -> Stop {
    Stop::Refused { stage, cause, hint }
}

/// What a drop that passed every intake check brings to its job.
struct Accepted {
    /// The daemon's config with the sidecar applied.
    config: Config,
    model_sha256: String,
    companion_digests: Vec<String>,
}

/// One drop under examination: the file, its name as shown to users, and the settings the checks use.
struct Examination<'a> {
    inbox: &'a Path,
    name: &'a OsStr,
    path: &'a Path,
    shown: &'a str,
    seen_at: SystemTime,
    base: &'a Config,
    stable: Duration,
}

impl Examination<'_> {
    /// Every intake check in order: the file itself, the sidecar, the model bytes, the external data. Files
    /// that belong to the drop (sidecar, companions) are added to `drop` as they are found, so a refusal moves
    /// them to `failed/` with the model.
    fn examine(&self, meta: &Metadata, drop: &mut Drop) -> Result<Accepted, Stop> {
        self.check_file(meta)?;
        let config = self.sidecar_config(drop)?;
        let bytes = match read_limited(self.path, self.base.limits.max_model_bytes) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Stop::Gone),
            Err(e) => {
                return Err(refuse(
                    "intake",
                    format!("cannot read {}: {e}", self.shown),
                    "check the file's permissions",
                ))
            }
        };
        let companion_digests = self.companions(&bytes, &config, drop)?;
        Ok(Accepted {
            config,
            model_sha256: sha256_hex(&bytes),
            companion_digests,
        })
    }

    /// Only regular files within the size limit are taken; links, FIFOs, sockets and devices are never opened.
    fn check_file(&self, meta: &Metadata) -> Result<(), Stop> {
        let file_type = meta.file_type();
        let kind = if file_type.is_symlink() {
            Some("a symbolic link")
        } else if file_type.is_fifo() {
            Some("a FIFO")
        } else if file_type.is_socket() {
            Some("a socket")
        } else if file_type.is_block_device() || file_type.is_char_device() {
            Some("a device file")
        } else {
            None
        };
        if let Some(kind) = kind {
            return Err(refuse("intake", format!("{} is {kind}, not a regular file", self.shown),
                "drop the model file itself: robustd takes only regular files and never follows links out of the inbox"));
        }
        let limit = self.base.limits.max_model_bytes;
        if meta.len() > limit {
            return Err(refuse(
                "intake",
                format!(
                    "{} is {} bytes, more than limits.max_model_bytes ({limit})",
                    self.shown,
                    meta.len()
                ),
                "raise limits.max_model_bytes in the daemon config",
            ));
        }
        Ok(())
    }

    /// The job's config: the daemon's, with the sidecar (if any) validated and applied now, so a bad one fails the
    /// drop before any work.
    fn sidecar_config(&self, drop: &mut Drop) -> Result<Config, Stop> {
        let sidecar = sidecar_path(self.inbox, self.name);
        let Ok(side_meta) = std::fs::symlink_metadata(&sidecar) else {
            return Ok(self.base.clone());
        };
        drop.files.push((sidecar.clone(), SIDECAR_FILE.into()));
        drop.record.sidecar = true;
        let sidecar_name = display_name(sidecar.file_name().unwrap_or_default());
        if !side_meta.file_type().is_file() {
            return Err(refuse(
                "sidecar",
                format!("sidecar {sidecar_name} is not a regular file"),
                "the sidecar must be a plain YAML file next to the model",
            ));
        }
        if side_meta.len() > MAX_SIDECAR_BYTES {
            return Err(refuse(
                "sidecar",
                format!(
                    "sidecar {sidecar_name} is {} bytes (limit {MAX_SIDECAR_BYTES})",
                    side_meta.len()
                ),
                "a sidecar holds a few config overrides; see configs/default.yaml",
            ));
        }
        let text = std::fs::read_to_string(&sidecar).map_err(|e| {
            refuse(
                "sidecar",
                format!("cannot read sidecar {sidecar_name}: {e}"),
                "the sidecar must be UTF-8 YAML",
            )
        })?;
        self.base
            .with_overrides(&text, Path::new(&sidecar_name))
            .map_err(|e| e.to_string())
            .and_then(|c| daemon_wide_keys(&text, &sidecar_name).map(|()| c))
            .and_then(|c| sidecar_paths(&c, self.base, &sidecar_name).map(|()| c))
            .map_err(|e| refuse("sidecar", format!("invalid sidecar: {e}"),
                "fix the sidecar (keys and ranges as in configs/default.yaml; `robustd check-config` validates a file) and drop the model again"))
    }

    /// The external-data files the model references (a cheap protobuf scan for `location`s; a file the scan cannot
    /// read goes on to onnxruntime, whose load error is the authoritative message): each must be a plain file
    /// name in the inbox, a regular file, quiet for `stable`, and within the size limit together with the model.
    /// Returns their SHA-256 digests in reference order.
    fn companions(
        &self,
        bytes: &[u8],
        config: &Config,
        drop: &mut Drop,
    ) -> Result<Vec<String>, Stop> {
        let locations = scan_model(bytes)
            .map(|s| s.external_locations)
            .unwrap_or_default();
        let shown = self.shown;
        let limit = self.base.limits.max_model_bytes;
        let waited = SystemTime::now()
            .duration_since(self.seen_at)
            .unwrap_or_default();
        let companion_wait = Duration::from_secs(config.daemon.companion_wait_s);
        let mut total_bytes = bytes.len() as u64;
        let mut digests = Vec::new();
        for location in &locations {
            if OsStr::new(location) == self.name {
                return Err(refuse(
                    "intake",
                    format!("{shown} names itself as its own external data file"),
                    "external data lives in a separate file (torch.onnx.export writes MODEL.onnx.data)",
                ));
            }
            if !is_safe_companion(location) {
                return Err(refuse("intake",
                    format!("{shown} references external data at `{}`, outside the inbox", display_name(OsStr::new(location))),
                    "external data must be a plain file name next to the model (torch.onnx.export writes MODEL.onnx.data)"));
            }
            let companion = self.inbox.join(location);
            let meta = match std::fs::symlink_metadata(&companion) {
                Err(_) if waited >= companion_wait => {
                    return Err(refuse(
                        "intake",
                        format!(
                            "{shown} references external data {} that never arrived in the inbox (waited {} s)",
                            display_name(OsStr::new(location)),
                            waited.as_secs()
                        ),
                        "drop the .onnx.data file next to the model (before it, ideally); daemon.companion_wait_s \
                         sets how long a model waits for it",
                    ))
                }
                Err(_) => {
                    return Err(Stop::Waiting(format!(
                        "its external data file {location} is not in the inbox yet"
                    )))
                }
                Ok(m) => m,
            };
            if !meta.file_type().is_file() {
                return Err(refuse(
                    "intake",
                    format!("external data {location} is not a regular file"),
                    "drop the .onnx.data file itself, not a link to it",
                ));
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            if age.is_none_or(|a| a < self.stable) {
                return Err(Stop::Waiting(format!(
                    "its external data file {location} is still being written"
                )));
            }
            total_bytes = total_bytes.saturating_add(meta.len());
            if total_bytes > limit {
                return Err(refuse(
                    "intake",
                    format!(
                        "{shown} with its external data is {total_bytes} bytes or more, over \
                         limits.max_model_bytes ({limit})"
                    ),
                    "raise limits.max_model_bytes in the daemon config",
                ));
            }
            let digest = sha256_file(&companion).map_err(|e| {
                Stop::Spool(SpoolError::Io {
                    path: companion.clone(),
                    source: e,
                })
            })?;
            digests.push(digest);
            drop.files.push((companion, location.clone()));
            drop.record.companions.push(location.clone());
        }
        Ok(digests)
    }
}

/// A drop being assembled into a job.
struct Drop {
    record: JobRecord,
    files: DropFiles,
}

impl Drop {
    fn new(name: &OsStr, shown: &str) -> Self {
        let model_name = sanitize_model_name(name);
        Self {
            record: JobRecord {
                schema: JOB_SCHEMA.into(),
                id: new_job_id(&model_name),
                model_file: format!("{model_name}.onnx"),
                name: model_name,
                dropped_as: shown.to_owned(),
                companions: Vec::new(),
                sidecar: false,
                model_sha256: String::new(),
                config_sha256: String::new(),
                key: String::new(),
                kind: JobKind::Eval,
                state: JobState::Queued,
                attempts: 0,
                detected_at: None,
                queued_at: now_rfc3339(),
                started_at: None,
                finished_at: None,
                stage: None,
                progress: None,
                result_dir: None,
                dedup_of: None,
                error: None,
            },
            files: Vec::new(),
        }
    }
}

fn reject(
    spool: &Spool,
    drop: Drop,
    stage: &str,
    cause: String,
    hint: &str,
) -> Result<Intake, SpoolError> {
    tracing::warn!("rejected {}: {cause}", drop.record.dropped_as);
    let error = ErrorReport::from_chain(
        &drop.record.dropped_as,
        Some(&drop.record.id),
        stage,
        vec![cause],
        Some(hint.into()),
    );
    Ok(Intake::Rejected(spool.reject(
        drop.record,
        drop.files,
        &error,
    )?))
}

/// Keys a sidecar may not set: they belong to the daemon, not to one job (where results and the spool live,
/// how the inbox is watched, the resource limits, and which shared library is loaded into the process).
pub const DAEMON_WIDE_KEYS: &[&str] = &["paths", "daemon", "limits", "runtime.ort_library"];

fn daemon_wide_keys(text: &str, sidecar: &str) -> Result<(), String> {
    let doc: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let found: Vec<&str> = DAEMON_WIDE_KEYS
        .iter()
        .copied()
        .filter(|key| {
            let mut node = Some(&doc);
            for part in key.split('.') {
                node = node.and_then(|n| n.get(part));
            }
            node.is_some()
        })
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{sidecar}: a sidecar may not set {} (daemon-wide settings; only the daemon's config sets them)",
            found.join(", ")
        ))
    }
}

/// Files a sidecar may point the job at (`dataset.path`, a scores file in `train.bat.atypicality`) must exist and
/// be regular files or directories, checked at intake: the drop fails at once with the sidecar's name and key,
/// and no loader ever opens a FIFO (which blocks) or a device such as /dev/zero (which never ends). A dataset path
/// must also lie inside `paths.datasets` (symlinks resolved); the loader then keeps every image file inside it.
fn sidecar_paths(config: &Config, base: &Config, sidecar: &str) -> Result<(), String> {
    use crate::train::AtypicalitySetting;
    let mut paths: Vec<(&str, PathBuf)> = Vec::new();
    if config.dataset.path != base.dataset.path {
        if let Some(p) = &config.dataset.path {
            paths.push(("dataset.path", p.clone()));
        }
    }
    if config.train.bat.atypicality != base.train.bat.atypicality {
        if let AtypicalitySetting::File { path, .. } =
            AtypicalitySetting::parse(&config.train.bat.atypicality)
        {
            paths.push(("train.bat.atypicality", path));
        }
    }
    for (key, path) in paths {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() || m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{sidecar}: `{key}`: {} is not a regular file or directory",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("{sidecar}: `{key}`: {}: {e}", path.display())),
        }
        // A job's data must come from where the daemon's owner allows (`paths.datasets`).
        if key == "dataset.path" {
            crate::data::check_allowed(&path, &base.paths.datasets)
                .map_err(|e| format!("{sidecar}: `{key}`: {e}"))?;
        }
    }
    Ok(())
}

/// SHA-256 (hex) of a file, streamed (an external-data file may be far larger than memory should hold at once).
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than limits.max_model_bytes ({limit})"
        )));
    }
    Ok(bytes)
}

/// `<UTC time>-<sequence>-<name>`: sorts by intake time, unique within and across runs.
fn new_job_id(name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    format!("{compact}-{:04}-{}", seq % 10_000, name)
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
        inbox.settled(OsStr::new("m.onnx"), &Intake::Gone);
        assert_eq!(inbox.pending(), 0);
    }
}
