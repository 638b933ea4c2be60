//! Named failpoints: the places where a crash test stops robustd on purpose — every stage boundary of a job and
//! every step inside a multi-step write ([`POINTS`], in the order one job passes them), and before and after every
//! file written through [`crate::durable`] (`file.before:<name>`, `file.after:<name>`, `<name>` the file's name).
//!
//! They are compiled in only with the cargo feature `failpoints` (`make test` builds with it); without it
//! [`point`] is an empty inline function and the release binary holds none. With it, the maintained `fail` crate
//! (TiKV's) keeps the configuration, read once from the environment at the first point a process passes:
//! - `ROBUSTD_FAILPOINT_KILL=POINT[#N][,POINT[#N]...]`: SIGKILL at the N-th pass (default: the first) of POINT in
//!   this process, or at whichever listed point comes first. The kill goes to the daemon — the process named by
//!   `ROBUSTD_DAEMON_PID` when set (a job running in a process of its own), else this one — and then to this
//!   process, so nothing after the point runs anywhere.
//! - `FAILPOINTS=POINT=ACTIONS;...`: `fail`'s own syntax (`panic`, `sleep(ms)`, `pause`, ...); `return(ARG)` does
//!   what ARG names: `sigkill` (as above), `abort` (SIGABRT on this process) or `segv` (SIGSEGV on this process).
//! - `ROBUSTD_FAILPOINT_TRACE=FILE`: every point a process passes is appended to FILE as `<pid> <point>` (one line
//!   per pass, written before the point acts), which is how a test learns the points and their passes.

/// The named points, in the order one job of the full pipeline passes them (a point inside a loop passes once per
/// round). `file.before:<name>`/`file.after:<name>` come on top, around every durable file write.
pub const POINTS: &[&str] = &[
    // Intake: each file of a drop moved into the job being assembled (the sidecar first, the model last), then
    // the assembled job before the rename that queues it.
    INTAKE_FILE_MOVED,
    INTAKE_ASSEMBLED,
    // The job claimed (in `running/`), its staging directory prepared with the original model.
    JOB_CLAIMED,
    JOB_STAGED,
    // The pipeline's stages.
    EVAL_BEFORE_EVALUATED,
    EVAL_BEFORE_CHECKPOINTED,
    MEMO_MODEL_SAVED,
    ATYPICALITY_CHECKPOINTED,
    TRAIN_MID_EPOCH,
    TRAIN_EPOCH_SAVED,
    FINETUNE_DONE,
    WRITE_BACK_DONE,
    EVAL_AFTER_DONE,
    PLOTS_DONE,
    // Ending the job: report written, the staging directory renamed into place, `latest` pointed and the
    // checkpoints gone, the spool's index entry written, the job moved to `done/`.
    JOB_REPORT_WRITTEN,
    STORE_PUBLISHED_RENAMED,
    JOB_PUBLISHED,
    SPOOL_COMPLETE_INDEXED,
    JOB_DONE,
];

pub const INTAKE_FILE_MOVED: &str = "intake.file_moved";
pub const INTAKE_ASSEMBLED: &str = "intake.assembled";
pub const JOB_CLAIMED: &str = "job.claimed";
pub const JOB_STAGED: &str = "job.staged";
pub const EVAL_BEFORE_EVALUATED: &str = "eval_before.evaluated";
pub const EVAL_BEFORE_CHECKPOINTED: &str = "eval_before.checkpointed";
/// After each memorization model's answers are in the cache.
pub const MEMO_MODEL_SAVED: &str = "memo.model_saved";
pub const ATYPICALITY_CHECKPOINTED: &str = "atypicality.checkpointed";
/// Halfway through every epoch of a checkpointed training run (memorization models and the fine-tuning).
pub const TRAIN_MID_EPOCH: &str = "train.mid_epoch";
/// After every epoch's checkpoint (and training log) of a checkpointed run.
pub const TRAIN_EPOCH_SAVED: &str = "train.epoch_saved";
/// After the last epoch: the fine-tuning returned and its log is in the result.
pub const FINETUNE_DONE: &str = "finetune.done";
pub const WRITE_BACK_DONE: &str = "write_back.done";
pub const EVAL_AFTER_DONE: &str = "eval_after.done";
pub const PLOTS_DONE: &str = "plots.done";
pub const JOB_REPORT_WRITTEN: &str = "job.report_written";
pub const STORE_PUBLISHED_RENAMED: &str = "store.published_renamed";
pub const JOB_PUBLISHED: &str = "job.published";
pub const SPOOL_COMPLETE_INDEXED: &str = "spool.complete_indexed";
pub const JOB_DONE: &str = "job.done";

/// Before a durable write of the file `name`.
pub const FILE_BEFORE: &str = "file.before:";
/// After a durable write of the file `name` (renamed into place, directory synced).
pub const FILE_AFTER: &str = "file.after:";

/// Passes the point `name`: traces it and does what it is configured to do (nothing, unless a test set it up).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Passes the point `name`: traces it and does what it is configured to do (nothing, unless a test set it up).
#[cfg(feature = "failpoints")]
pub fn point(name: &str) {
    enabled::pass(name);
}

/// The file points around a durable write of `path`: `before` selects `file.before:` or `file.after:`.
#[inline]
pub fn file(path: &std::path::Path, before: bool) {
    #[cfg(feature = "failpoints")]
    {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let prefix = if before { FILE_BEFORE } else { FILE_AFTER };
        point(&format!("{prefix}{name}"));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (path, before);
}

/// A kill target: `POINT` or `POINT#N` (the N-th pass, 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub point: String,
    pub pass: usize,
}

impl Target {
    /// Parses one `POINT[#N]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (point, pass) = match text.rsplit_once('#') {
            Some((p, n)) => (
                p,
                n.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("`{text}`: the pass after `#` must be 1 or more"))?,
            ),
            None => (text, 1),
        };
        if point.is_empty() {
            return Err(format!("`{text}`: no point named"));
        }
        Ok(Self {
            point: point.to_owned(),
            pass,
        })
    }

    /// Parses a comma-separated list of targets.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        text.split(',')
            .filter(|t| !t.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// `fail`'s actions for this target: N-1 passes off, then the kill.
    pub fn actions(&self) -> String {
        format!("{}*off->return({KILL})", self.pass - 1)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pass == 1 {
            f.write_str(&self.point)
        } else {
            write!(f, "{}#{}", self.point, self.pass)
        }
    }
}

/// Environment variables.
pub const ENV_KILL: &str = "ROBUSTD_FAILPOINT_KILL";
pub const ENV_TRACE: &str = "ROBUSTD_FAILPOINT_TRACE";
/// The daemon's pid, for a job that runs in a process of its own: a kill takes the daemon down too.
pub const ENV_DAEMON_PID: &str = "ROBUSTD_DAEMON_PID";

/// The `return(ARG)` arguments a point acts on.
pub const KILL: &str = "sigkill";
pub const ABORT: &str = "abort";
pub const SEGV: &str = "segv";

#[cfg(feature = "failpoints")]
mod enabled {
    use std::io::Write;
    use std::sync::OnceLock;

    use super::*;

    struct State {
        trace: Option<std::fs::File>,
    }

    static STATE: OnceLock<State> = OnceLock::new();

    fn state() -> &'static State {
        STATE.get_or_init(|| {
            // `fail`'s FAILPOINTS first (setup clears the registry), then the kill targets. The scenario guard
            // only serializes scenarios; this process has one for its whole life.
            std::mem::forget(fail::FailScenario::setup());
            if let Ok(text) = std::env::var(ENV_KILL) {
                match Target::parse_list(&text) {
                    Ok(targets) => {
                        for t in targets {
                            if let Err(e) = fail::cfg(t.point.clone(), &t.actions()) {
                                tracing::error!("{ENV_KILL}: {t}: {e}");
                            }
                        }
                    }
                    Err(e) => tracing::error!("{ENV_KILL}: {e}"),
                }
            }
            let trace = std::env::var_os(ENV_TRACE).and_then(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| tracing::error!("{ENV_TRACE}: {}: {e}", path.to_string_lossy()))
                    .ok()
            });
            State { trace }
        })
    }

    pub(super) fn pass(name: &str) {
        let state = state();
        if let Some(mut file) = state.trace.as_ref() {
            // One write(2) per line on an O_APPEND file: lines of concurrent threads and processes never mix.
            let line = format!("{} {name}\n", std::process::id());
            let _ = file.write_all(line.as_bytes());
        }
        if let Some(Some(arg)) = configured(name) {
            act(name, &arg);
        }
    }

    /// What `fail` says the point does: `Some(return's argument)` when an action returns, else `None`.
    fn configured(name: &str) -> Option<Option<String>> {
        fail::fail_point!(name, Some);
        None
    }

    fn act(name: &str, arg: &str) {
        let own = std::process::id() as libc::pid_t;
        // SAFETY: kill(2) and raise(3) with valid signal numbers have no memory-safety preconditions.
        unsafe {
            match arg {
                KILL => {
                    let daemon = std::env::var(ENV_DAEMON_PID)
                        .ok()
                        .and_then(|p| p.parse::<libc::pid_t>().ok())
                        .filter(|&p| p > 0);
                    if let Some(pid) = daemon.filter(|&p| p != own) {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    libc::kill(own, libc::SIGKILL);
                }
                ABORT => libc::abort(),
                SEGV => {
                    libc::raise(libc::SIGSEGV);
                }
                other => tracing::warn!("failpoint {name}: unknown return({other}), ignored"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_a_pass() {
        assert_eq!(
            Target::parse("job.staged").unwrap(),
            Target {
                point: "job.staged".into(),
                pass: 1
            }
        );
        let t = Target::parse("file.after:report.yaml#3").unwrap();
        assert_eq!((t.point.as_str(), t.pass), ("file.after:report.yaml", 3));
        assert_eq!(t.actions(), "2*off->return(sigkill)");
        assert_eq!(t.to_string(), "file.after:report.yaml#3");
        assert!(Target::parse("x#0").is_err());
        assert!(Target::parse("#2").is_err());
        assert_eq!(Target::parse_list("a, b#2,").unwrap().len(), 2);
    }

    #[test]
    fn the_named_points_are_unique() {
        let mut names = POINTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
    }
}
