//! One process per job: the daemon runs each job in a child process of its own — the same binary, as the hidden
//! subcommand `robustd job-process` — so a crash in native code (a segfault or abort inside libtorch or
//! onnxruntime), an OOM kill or a hard limit takes that job down and nothing else: the daemon records how the
//! process ended, fails or retries the job, and serves the next one. The CLI commands keep running in-process.
//!
//! - [`protocol`]: what the two sides say (JSON lines: the job spec and `stop` in, progress and the end out).
//! - [`supervisor`]: [`ProcessRunner`], the daemon's side: spawn, mirror progress, cancel, reap, retry once.
//! - [`child`]: the job process's side.
//! - [`caps`]: the memory cap (`limits.job_memory_mb`: cgroup v2 `memory.max` where systemd delegated a group,
//!   else `RLIMIT_DATA`) and the rest of the child's setup before `exec`.

// Code the daemon runs unattended must not panic on bad input: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod caps;
pub mod child;
pub mod protocol;
pub mod supervisor;

pub use caps::{CapKind, MemoryCaps};
pub use supervisor::{ProcessError, ProcessRunner};
