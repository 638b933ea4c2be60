//! The artifact store: where jobs' published results and their checkpoints live, as directory trees (local
//! directories today; a store on a shared filesystem that every worker mounts is the same trees there).
//!
//! Results: `<results>/<name>/<key12>/` per model and config (`paths.models`), built in a hidden staging directory
//! (`<results>/<name>/.<key12>.partial`, or `.<key12>.<lease>.partial` per claim when several workers share the
//! store) and renamed into place only when complete, so no partial result is ever visible; `<results>/<name>/latest` points at the newest result. An identical drop under another name gets a
//! symlink to the existing result instead of a second run. Checkpoints: `<checkpoints>/<key>/` per job content key
//! (`<paths.state>/checkpoints`), so a job resumed after a restart finds them; removed when the job ends. A job's
//! inputs (the model, its external data, its config) stay with the job in its queue.

use std::path::{Path, PathBuf};

use crate::config::Paths;
use crate::durable::{
    create_dir_all, is_temp_name, read_yaml, rename_durable, symlink_atomic, WriteError,
};
use crate::job::{Job, JobRecord};
use crate::report::{Report, REPORT_FILE};

/// Name of the symlink to the newest result of a model.
pub const LATEST: &str = "latest";

#[derive(Debug, Clone)]
pub struct Store {
    /// Published results.
    root: PathBuf,
    /// Checkpoints, by content key.
    checkpoints: PathBuf,
}

impl Store {
    /// Opens (creating) a store with results under `results` and checkpoints under `checkpoints`.
    pub fn open(results: &Path, checkpoints: &Path) -> Result<Self, WriteError> {
        create_dir_all(results)?;
        create_dir_all(checkpoints)?;
        Ok(Self {
            root: results.to_path_buf(),
            checkpoints: checkpoints.to_path_buf(),
        })
    }

    /// The daemon's store: results in `paths.models`, checkpoints in `<paths.state>/checkpoints`.
    pub fn local(paths: &Paths) -> Result<Self, WriteError> {
        Self::open(&paths.models, &paths.state.join("checkpoints"))
    }

    /// Where a job with this content key keeps its checkpoints across restarts.
    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.checkpoints.join(key)
    }

    /// Removes a job's checkpoints (it succeeded, or failed for good).
    pub fn remove_checkpoints(&self, key: &str) {
        let dir = self.checkpoint_dir(key);
        if key.is_empty() || !dir.exists() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }

    /// The `job.id` of the report in `dir`, if a complete result is there.
    pub fn published_by(&self, dir: &Path) -> Option<String> {
        let report: Report = read_yaml(&dir.join(REPORT_FILE)).ok()?;
        report.job.map(|j| j.id)
    }

    /// Startup: removes what a killed daemon left half-made — staging directories
    /// (`models/<name>/.<key12>[.<lease>].partial`; a resumed job builds its own again from its checkpoints)
    /// and temporary files of interrupted atomic writes (`.<file>.tmp-<pid>-<n>`, e.g. a `latest` link being
    /// replaced). In a store shared by several workers (`live_leases` given) other workers are busy in it: only
    /// staging directories of leases no longer live and temporary files, both older than [`SHARED_TEMP_AGE`], go.
    /// Returns how many entries went.
    pub fn sweep_stale(&self, live_leases: Option<&[i64]>) -> usize {
        let mut removed = 0;
        let Ok(models) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let sweep = |path: &Path| remove_if_stale(path, live_leases);
        for model in models.flatten() {
            let dir = model.path();
            let is_dir = model.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                removed += usize::from(sweep(&dir));
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                removed += usize::from(sweep(&entry.path()));
            }
            // A model directory left empty (its only job failed or is re-running) goes too.
            if live_leases.is_none() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        if removed > 0 {
            tracing::info!(
                "removed {removed} half-written entr{} from {} (left by an interrupted run)",
                if removed == 1 { "y" } else { "ies" },
                self.root.display()
            );
        }
        removed
    }

    /// `models/<name>/<key12>`.
    pub fn result_dir(&self, record: &JobRecord) -> PathBuf {
        self.root.join(&record.name).join(record.key12())
    }

    /// `.<key12>.partial`, or `.<key12>.<lease>.partial` for a claim under a lease: two workers that both think
    /// they run a job (one stalled past its lease) never write into each other's staging directory.
    fn staging_dir(&self, job: &Job) -> PathBuf {
        let name = match job.lease {
            None => format!(".{}.partial", job.record.key12()),
            Some(lease) => format!(".{}.{:016x}.partial", job.record.key12(), lease as u64),
        };
        self.root.join(&job.record.name).join(name)
    }

    /// A fresh, empty staging directory (leftovers of an interrupted attempt are removed; checkpoints live apart,
    /// under the job's key).
    pub fn prepare_staging(&self, job: &Job) -> Result<PathBuf, WriteError> {
        let dir = self.staging_dir(job);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| WriteError::io(&dir, e))?;
        }
        create_dir_all(&dir)?;
        Ok(dir)
    }

    pub fn discard_staging(&self, job: &Job) {
        let record = &job.record;
        let dir = self.staging_dir(job);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
        // Leaves no empty models/<name>/ behind for a model that never produced a result (fails if not empty).
        let _ = std::fs::remove_dir(self.root.join(&record.name));
    }

    /// Renames the staging directory to the result directory and points `latest` at it.
    pub fn publish(&self, job: &Job) -> Result<PathBuf, WriteError> {
        let record = &job.record;
        let final_dir = self.result_dir(record);
        rename_durable(&self.staging_dir(job), &final_dir)?;
        crate::failpoint::point(crate::failpoint::STORE_PUBLISHED_RENAMED);
        self.point_latest(record)?;
        Ok(final_dir)
    }

    /// Makes `models/<name>/<key12>` refer to an existing result (an identical model dropped under another name)
    /// and points `latest` at it.
    pub fn link_existing(
        &self,
        record: &JobRecord,
        existing: &Path,
    ) -> Result<PathBuf, WriteError> {
        let link = self.result_dir(record);
        if link != existing && std::fs::symlink_metadata(&link).is_err() {
            create_dir_all(&self.root.join(&record.name))?;
            let target = relative_to_model_dir(&self.root, existing);
            symlink_atomic(&target, &link)?;
        }
        self.point_latest(record)?;
        Ok(link)
    }

    fn point_latest(&self, record: &JobRecord) -> Result<(), WriteError> {
        symlink_atomic(
            Path::new(record.key12()),
            &self.root.join(&record.name).join(LATEST),
        )
    }
}

/// In a shared store, temporary files and staging directories younger than this may be another worker's work in
/// progress.
pub const SHARED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `path` when it is a staging directory (not of a live lease) or an atomic writer's temporary file (in a
/// shared store: an old one); true if it did.
fn remove_if_stale(path: &Path, live_leases: Option<&[i64]>) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return false,
    };
    let staging = name.starts_with('.') && name.ends_with(".partial");
    // In a shared store a claim made after `live_leases` was read may have just created its staging directory:
    // only old entries go.
    let old = || {
        meta.modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > SHARED_TEMP_AGE)
    };
    let stale = match live_leases {
        None => staging || is_temp_name(&name),
        Some(live) if staging => staging_lease(&name).is_none_or(|l| !live.contains(&l)) && old(),
        Some(_) => is_temp_name(&name) && old(),
    };
    if !stale {
        return false;
    }
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot remove {}: {e}", path.display());
            false
        }
    }
}

/// The lease of a staging directory `.<key12>.<lease hex>.partial`.
fn staging_lease(name: &str) -> Option<i64> {
    let inner = name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (_, hex) = inner.split_once('.')?;
    u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
}

/// `existing` as seen from a sibling `models/<other>/` directory: `../<name>/<key12>` when it lies under `root`.
fn relative_to_model_dir(root: &Path, existing: &Path) -> PathBuf {
    match existing.strip_prefix(root) {
        Ok(rel) => Path::new("..").join(rel),
        Err(_) => existing.to_path_buf(),
    }
}
