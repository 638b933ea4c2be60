//! Intake: the rules that turn a complete drop into a queued job, or refuse it into `failed/` with an error.yaml
//! naming the file, the stage and a hint. Only regular files within `limits.max_model_bytes` are taken (a symlink
//! is never followed — it could point out of the inbox; a FIFO, socket or device file is refused unopened); a
//! sidecar is validated and applied now, and may not set daemon-wide keys or point at special files; external data
//! must be plain file names next to the model, present and quiet (a model waits for them up to
//! `daemon.companion_wait_s`). The job's content key is computed here.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use thiserror::Error;

use super::names::{display_name, is_safe_companion, sanitize_model_name, sidecar_path};
use crate::config::{Config, ConfigError};
use crate::job::{content_key, Job, JobKind, JobRecord, SIDECAR_FILE};
use crate::onnx::scan_model;
use crate::queue::{DropFiles, Queue, QueueError};
use crate::report::{sha256_hex, ErrorReport};

/// Largest sidecar read (bytes); bigger ones are rejected before parsing.
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// Why intake could not settle a drop either way.
#[derive(Debug, Error)]
pub enum IntakeError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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

impl Intake {
    /// Why the drop is not complete yet, when it is waiting.
    pub fn waiting(&self) -> Option<&str> {
        match self {
            Self::Waiting(why) => Some(why),
            _ => None,
        }
    }
}

/// Takes one stable drop from the inbox into the queue.
pub fn intake(
    inbox: &Path,
    name: &OsStr,
    seen_at: SystemTime,
    queue: &dyn Queue,
    base: &Config,
    stable: Duration,
) -> Result<Intake, IntakeError> {
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
        Err(Stop::Error(e)) => return Err(e),
        Err(Stop::Refused { stage, cause, hint }) => {
            // The model goes to failed/ with whatever else was taken so far (sidecar, companions).
            drop.files.push((path, drop.record.model_file.clone()));
            return reject(queue, drop, stage, cause, hint);
        }
    };
    let Accepted {
        config,
        model_sha256,
        companion_digests,
    } = accepted;
    let config = config.for_job();
    let config_yaml = config.to_yaml();
    let r = &mut drop.record;
    r.config_sha256 = config.hash_hex();
    r.key = content_key(&model_sha256, &companion_digests, &r.config_sha256, None);
    r.model_sha256 = model_sha256;
    r.kind = JobKind::of(&config);
    drop.files.push((path, drop.record.model_file.clone()));
    let job = queue.enqueue(drop.record, &config_yaml, drop.files)?;
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
    /// Intake itself failed (the queue, reading a file): the drop stays in the inbox and is tried again.
    Error(IntakeError),
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
            Ok(b) => Bytes::from(b),
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
            .map_err(SidecarError::from)
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
        bytes: &Bytes,
        config: &Config,
        drop: &mut Drop,
    ) -> Result<Vec<String>, Stop> {
        let locations = scan_model(bytes.clone())
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
                Stop::Error(IntakeError::Read {
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
            record: JobRecord::new(new_job_id(&model_name), model_name, shown.to_owned()),
            files: Vec::new(),
        }
    }
}

fn reject(
    queue: &dyn Queue,
    drop: Drop,
    stage: &str,
    cause: String,
    hint: &str,
) -> Result<Intake, IntakeError> {
    tracing::warn!("rejected {}: {cause}", drop.record.dropped_as);
    let error = ErrorReport::from_chain(
        &drop.record.dropped_as,
        Some(&drop.record.id),
        stage,
        vec![cause],
        Some(hint.into()),
    );
    Ok(Intake::Rejected(queue.reject(
        drop.record,
        drop.files,
        &error,
    )?))
}

/// Keys a sidecar may not set: they belong to the daemon, not to one job (where results and the queue live,
/// how the inbox is watched, the resource limits, and which shared library is loaded into the process).
pub const DAEMON_WIDE_KEYS: &[&str] =
    &["paths", "daemon", "limits", "queue", "runtime.ort_library"];

/// Why a sidecar is refused.
#[derive(Debug, Error)]
pub enum SidecarError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Yaml(#[from] serde_norway::Error),
    #[error("{sidecar}: a sidecar may not set {} (daemon-wide settings; only the daemon's config sets them)", keys.join(", "))]
    DaemonWide {
        sidecar: String,
        keys: Vec<&'static str>,
    },
    #[error("{sidecar}: `{key}`: {} is not a regular file or directory", path.display())]
    NotAFile {
        sidecar: String,
        key: &'static str,
        path: PathBuf,
    },
    #[error("{sidecar}: `{key}`: {}: {source}", path.display())]
    Missing {
        sidecar: String,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{sidecar}: `dataset.path`: {source}")]
    DatasetNotAllowed {
        sidecar: String,
        // Boxed: a DataError is large, and every intake result carries this enum.
        source: Box<crate::data::DataError>,
    },
}

fn daemon_wide_keys(text: &str, sidecar: &str) -> Result<(), SidecarError> {
    let doc: serde_norway::Value = serde_norway::from_str(text)?;
    let found: Vec<&'static str> = DAEMON_WIDE_KEYS
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
        Err(SidecarError::DaemonWide {
            sidecar: sidecar.to_owned(),
            keys: found,
        })
    }
}

/// Files a sidecar may point the job at (`dataset.path`, a scores file in `train.bat.atypicality`) must exist and
/// be regular files or directories, checked at intake: the drop fails at once with the sidecar's name and key,
/// and no loader ever opens a FIFO (which blocks) or a device such as /dev/zero (which never ends). A dataset path
/// must also lie inside `paths.datasets` (symlinks resolved); the loader then keeps every image file inside it.
fn sidecar_paths(config: &Config, base: &Config, sidecar: &str) -> Result<(), SidecarError> {
    use crate::train::AtypicalitySetting;
    let mut paths: Vec<(&'static str, PathBuf)> = Vec::new();
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
                return Err(SidecarError::NotAFile {
                    sidecar: sidecar.to_owned(),
                    key,
                    path,
                })
            }
            Err(source) => {
                return Err(SidecarError::Missing {
                    sidecar: sidecar.to_owned(),
                    key,
                    path,
                    source,
                })
            }
        }
        // A job's data must come from where the daemon's owner allows (`paths.datasets`).
        if key == "dataset.path" {
            crate::data::check_allowed(&path, &base.paths.datasets).map_err(|source| {
                SidecarError::DatasetNotAllowed {
                    sidecar: sidecar.to_owned(),
                    source: Box::new(source),
                }
            })?;
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
