//! The hard memory cap of a job's process (`limits.job_memory_mb`). Where systemd delegated the daemon's cgroup
//! (cgroup v2, `Delegate=yes`: the group carries the `trusted.delegate` or `user.delegate` attribute), the daemon
//! moves itself into a leaf `daemon/` of that group, enables the memory controller below it and puts each job
//! process into a group `job-<id>/` of its own with `memory.max` (and `memory.swap.max = 0`): the kernel then
//! counts everything the process maps and OOM-kills it alone at the cap. Anywhere else the process gets
//! `RLIMIT_DATA` (its private writable memory: heap and anonymous mappings), so an allocation past the cap is
//! refused instead. Either way the cap is the process's whole memory, the libraries' included. Also here: the
//! rest of what the child gets before `exec` (its own process group, death with the daemon, OOM score).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::report::MemoryCapKind as CapKind;

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The daemon's means of capping jobs, found once at start.
#[derive(Debug, Clone, Default)]
pub struct MemoryCaps {
    /// The delegated group job groups are created in, when there is one.
    cgroup: Option<PathBuf>,
}

impl MemoryCaps {
    /// Sets up cgroup delegation when the daemon runs in a delegated cgroup v2 group, else plans `RLIMIT_DATA`;
    /// logs which.
    pub fn detect() -> Self {
        match delegated_group().and_then(|group| enter_leaf(&group).map(|()| group)) {
            Ok(group) => {
                tracing::info!(
                    "job memory caps: cgroup v2 memory.max under {}",
                    group.display()
                );
                Self {
                    cgroup: Some(group),
                }
            }
            Err(why) => {
                tracing::info!("job memory caps: RLIMIT_DATA ({why})");
                Self { cgroup: None }
            }
        }
    }

    /// RLIMIT_DATA only (the CLI, and tests).
    pub fn rlimit_only() -> Self {
        Self { cgroup: None }
    }

    /// The cap for one process of job `id`: a fresh cgroup when delegation works for it, else `RLIMIT_DATA`.
    pub fn prepare(&self, id: &str, megabytes: u64) -> Cap {
        let bytes = megabytes.saturating_mul(1 << 20);
        if let Some(base) = &self.cgroup {
            match JobGroup::create(base, id, bytes) {
                Ok(group) => {
                    return Cap {
                        kind: CapKind::Cgroup,
                        megabytes,
                        bytes,
                        group: Some(group),
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %id, "cannot create the job's cgroup ({e}); RLIMIT_DATA instead")
                }
            }
        }
        Cap {
            kind: CapKind::RlimitData,
            megabytes,
            bytes,
            group: None,
        }
    }
}

/// One process's memory cap, applied in [`Cap::apply`] before `exec`.
#[derive(Debug)]
pub struct Cap {
    pub kind: CapKind,
    pub megabytes: u64,
    bytes: u64,
    group: Option<JobGroup>,
}

impl Cap {
    /// Configures `cmd` so that its process, before `exec`: leads a process group of its own (signals reach all of
    /// it), dies with the thread that spawns it (`PR_SET_PDEATHSIG`: the daemon's job thread, which lives until
    /// the process is reaped), is the kernel's first choice when the host runs out of memory (`oom_score_adj`
    /// 1000), and is under this cap.
    pub fn apply(&self, cmd: &mut Command) {
        let parent = std::process::id() as libc::pid_t;
        let rlimit = (self.kind == CapKind::RlimitData).then_some(self.bytes as libc::rlim_t);
        let procs: Option<RawFd> = self.group.as_ref().map(|g| g.procs.as_raw_fd());
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe system calls
        // (prctl, getppid, open, write, close, setrlimit, _exit) on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let (kill, zero) = (libc::SIGKILL as libc::c_ulong, 0 as libc::c_ulong);
                if libc::prctl(libc::PR_SET_PDEATHSIG, kill, zero, zero, zero) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon died between fork and prctl: nobody would ever kill this process.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let path = c"/proc/self/oom_score_adj";
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"1000".as_ptr().cast(), 4);
                    libc::close(fd);
                }
                if let Some(fd) = procs {
                    // "0" moves the writing process.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(limit) = rlimit {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Whether the kernel OOM-killed something in the job's cgroup (always false under `RLIMIT_DATA`).
    pub fn oom_killed(&self) -> bool {
        self.group.as_ref().is_some_and(|g| {
            read_key(&g.dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
        })
    }

    /// The cgroup's peak memory use (`memory.peak`, Linux 5.19+), when there is one.
    pub fn cgroup_peak_bytes(&self) -> Option<u64> {
        let g = self.group.as_ref()?;
        std::fs::read_to_string(g.dir.join("memory.peak"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How the cap reads in reports and logs: `768 MiB (RLIMIT_DATA)`.
    pub fn describe(&self) -> String {
        format!("{} MiB ({})", self.megabytes, self.kind)
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            // Empty once the process is reaped; a leftover is removed at the next job of the same id.
            let _ = std::fs::remove_dir(&group.dir);
        }
    }
}

#[derive(Debug)]
struct JobGroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork (the child only writes to it).
    procs: File,
}

impl JobGroup {
    fn create(base: &Path, id: &str, bytes: u64) -> std::io::Result<Self> {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = base.join(format!("job-{safe}"));
        if dir.exists() {
            std::fs::remove_dir(&dir)?;
        }
        std::fs::create_dir(&dir)?;
        let setup = || -> std::io::Result<File> {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
            // No swap: the cap is the memory the job uses, not the memory it may push out of the way.
            let _ = write_file(&dir.join("memory.swap.max"), "0");
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        };
        match setup() {
            Ok(procs) => Ok(Self { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

/// The daemon's own cgroup v2 group when systemd delegated it, or why not.
fn delegated_group() -> Result<PathBuf, String> {
    if !Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file() {
        return Err("no cgroup v2 hierarchy at /sys/fs/cgroup".into());
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = v2_path(&own).ok_or("not in a cgroup v2 group")?;
    let group = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
    // A daemon that moved itself into its leaf before (a restart in the same unit keeps the group): the
    // delegated group is the parent.
    let group = if group.file_name().is_some_and(|n| n == LEAF) {
        group.parent().map(Path::to_path_buf).unwrap_or(group)
    } else {
        group
    };
    if !is_delegated(&group) {
        return Err(format!(
            "{} is not delegated to the daemon (systemd: Delegate=yes)",
            group.display()
        ));
    }
    let controllers = std::fs::read_to_string(group.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the memory controller is not available in {}",
            group.display()
        ));
    }
    Ok(group)
}

/// The leaf the daemon moves itself into (cgroup v2 lets only leaves hold processes once controllers are enabled).
const LEAF: &str = "daemon";

/// Moves the daemon into `group/daemon/` and enables the memory controller for `group`'s children.
fn enter_leaf(group: &Path) -> Result<(), String> {
    let leaf = group.join(LEAF);
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| format!("cannot {what} in {}: {e}", group.display()))
    };
    if !leaf.is_dir() {
        step("create the daemon's leaf group", std::fs::create_dir(&leaf))?;
    }
    step(
        "move the daemon into its leaf group",
        write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string()),
    )?;
    step(
        "enable the memory controller",
        write_file(&group.join("cgroup.subtree_control"), "+memory"),
    )
}

/// systemd marks a delegated group with the extended attribute `trusted.delegate` (root's services) or
/// `user.delegate` (the user manager's), value `1`.
fn is_delegated(group: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(group.as_os_str().as_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: path and name are NUL-terminated; the buffer's length is passed.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    })
}

/// The path of the cgroup v2 line (`0::/system.slice/robustd.service`) of a `/proc/<pid>/cgroup` text.
fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The number after `key` in a flat-keyed cgroup file (`memory.events`).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_is_found_in_a_hybrid_and_a_unified_hierarchy() {
        let hybrid = "4:memory:/user.slice\n1:name=systemd:/x\n0::/system.slice/robustd.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/robustd.service"));
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("4:memory:/\n"), None);
    }

    #[test]
    fn memory_events_are_read_by_key() {
        let tmp = tempfile::tempdir().unwrap();
        let events = tmp.path().join("memory.events");
        std::fs::write(&events, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(read_key(&events, "oom_kill"), Some(1));
        assert_eq!(read_key(&events, "oom"), Some(1));
        assert_eq!(read_key(&events, "nothing"), None);
    }

    #[test]
    fn without_delegation_jobs_get_rlimit_data() {
        // This test host's group is not delegated by systemd (and a test must not move itself between groups).
        let cap = MemoryCaps::rlimit_only().prepare("j1", 768);
        assert_eq!(cap.kind, CapKind::RlimitData);
        assert_eq!(cap.describe(), "768 MiB (RLIMIT_DATA)");
        assert!(!cap.oom_killed());
    }
}
