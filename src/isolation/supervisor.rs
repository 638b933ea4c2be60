//! The daemon's side: [`ProcessRunner`], the [`JobRunner`] the daemon runs jobs through. On the job's thread it
//! starts `robustd job-process` (the same binary, through `/proc/self/exe`, so an upgrade on disk cannot mix
//! versions), hands it the job, mirrors its progress into the job's [`Progress`] (the queue's heartbeat, STATUS,
//! the log span and metrics all hang off that), relays its stderr into the daemon's log, and turns its end into the
//! runner's result. Cancellation: a shutdown sends `stop` and SIGTERM (the job checkpoints); a timeout or a lost
//! lease kills the process group at once (SIGKILL works inside a long onnxruntime call, and a job another worker
//! owns must not write another checkpoint). The process is reaped with `wait4`, for its exit status and peak RSS.
//! A process that dies without reporting an end (a signal: a segfault or abort in native code, an OOM kill) fails
//! the job with an error carrying a [`ProcessInfo`] block; a crash that may be transient is tried once more, a
//! memory-cap hit never.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::caps::{Cap, CapKind, MemoryCaps};
use super::protocol::{Command, Event, Spec, DAEMON_PID_ENV, JOURNAL_ENV, SUBCOMMAND};
use crate::config::JobRunnerKind;
use crate::job::{CancelReason, Job, JobContext, JobError, JobOutcome, JobRunner};
use crate::report::{JobLimits, ProcessInfo};

/// Tries of one job within one run of the daemon: the first, and one more after a crash that may be transient.
pub const MAX_TRIES: u32 = 2;
/// Lines of the process's stderr kept for `error.yaml`.
const STDERR_TAIL: usize = 12;
/// How often the job thread looks at the cancel token while the process runs.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Runs each job in a process of its own (see the module docs).
pub struct ProcessRunner {
    kind: JobRunnerKind,
    name: &'static str,
    caps: MemoryCaps,
    exe: PathBuf,
    journal: bool,
}

impl ProcessRunner {
    /// A runner whose processes run `kind`'s runner, capped by `caps`; `journal`: the daemon logs to journald
    /// (the processes then log there too).
    pub fn new(kind: JobRunnerKind, caps: MemoryCaps, journal: bool) -> Self {
        Self {
            kind,
            name: crate::pipeline::runner_for(kind).name(),
            caps,
            exe: PathBuf::from("/proc/self/exe"),
            journal,
        }
    }
}

impl JobRunner for ProcessRunner {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, JobError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let cap = self.caps.prepare(job.id(), ctx.config.limits.job_memory_mb);
            let ended = self.run_once(job, ctx, &cap)?;
            match ended.verdict(ctx, &cap, tries) {
                Verdict::Done(result) => return (*result).map(|o| with_limits(o, ctx, &cap)),
                Verdict::Retry(why) => {
                    tracing::warn!(job = %job.id(), "{why}; trying once more (the job resumes from its checkpoints)");
                }
            }
        }
    }
}

/// The outcome with the limits the process ran under, for the report's `job.limits`.
fn with_limits(mut outcome: JobOutcome, ctx: &JobContext, cap: &Cap) -> JobOutcome {
    outcome.limits = Some(JobLimits {
        memory_mb: cap.megabytes,
        memory_cap: cap.kind,
        timeout_s: ctx.config.limits.job_timeout_s,
    });
    outcome
}

impl ProcessRunner {
    /// One process from spawn to reaping.
    fn run_once(&self, job: &Job, ctx: &JobContext, cap: &Cap) -> Result<Ended, JobError> {
        let spec = Spec {
            record: job.record.clone(),
            dir: job.dir.clone(),
            lease: job.lease,
            runner: self.kind,
            output_dir: ctx.output_dir.clone(),
            checkpoint_dir: ctx.checkpoint_dir.clone(),
            attempt: ctx.attempt,
        };
        let spec_line = serde_json::to_string(&spec).map_err(|e| {
            JobError::failed("starting", format!("cannot encode the job spec: {e}"))
        })?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg(SUBCOMMAND)
            .env(DAEMON_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.journal {
            cmd.env(JOURNAL_ENV, "1");
        }
        cap.apply(&mut cmd);
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            JobError::failed("starting", format!("cannot start the job's process: {e}"))
                .with_hint("the daemon could not fork (memory or process limits of the host?)")
        })?;
        let pid = child.id();
        ctx.progress.process(Some(pid));
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_group(pid, libc::SIGKILL);
            reap(pid);
            return Err(JobError::failed(
                "starting",
                "the job's process has no pipes",
            ));
        };
        let stderr_tail = relay_stderr(stderr);
        let events = read_events(stdout, pid);
        if let Err(e) = writeln!(stdin, "{spec_line}") {
            tracing::warn!(job = %job.id(), "cannot hand the job to its process {pid}: {e}");
        }
        let mut watch = Watch {
            pid,
            stdin: Some(stdin),
            stop_sent: false,
            killed_for: None,
        };
        let mut end = None;
        loop {
            match events.recv_timeout(CANCEL_POLL) {
                Ok(Event::Started { .. }) => tracing::info!(
                    job = %job.id(),
                    "job process {pid} up {:.2} s after spawn (memory cap {})",
                    spawned_at.elapsed().as_secs_f64(),
                    cap.describe()
                ),
                Ok(Event::Progress {
                    stage,
                    fraction,
                    new_stage,
                }) => {
                    if new_stage {
                        ctx.progress.stage(&stage);
                    } else {
                        ctx.progress.fraction(fraction);
                    }
                }
                Ok(Event::Resumed) => {
                    // The daemon was stopped, maybe past its lease: the claim check (a fenced heartbeat) cancels
                    // the run if another worker took the job over, and the process is killed below.
                    if ctx.cancel.holds_claim() {
                        watch.send(Command::Proceed);
                    }
                }
                Ok(Event::ClaimCheck) => {
                    let holds = ctx.cancel.holds_claim();
                    watch.send(Command::Claim { holds });
                }
                Ok(event) => end = Some(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            watch.enforce(ctx.cancel.reason());
        }
        let status = reap(pid);
        drop(watch.stdin.take());
        let stderr_tail = stderr_tail.join().unwrap_or_default();
        let ended = Ended {
            pid,
            end,
            killed_for: watch.killed_for,
            status,
            last_stage: ctx
                .progress
                .stage_times()
                .last()
                .map_or_else(|| "starting".to_owned(), |s| s.name.clone()),
            oom_killed: cap.oom_killed(),
            stderr_tail,
        };
        tracing::info!(
            job = %job.id(),
            "job process {pid} {} after {:.1} s; peak RSS {:.0} MiB{}",
            ended.status.describe(),
            spawned_at.elapsed().as_secs_f64(),
            ended.status.peak_rss_mb(),
            cap.cgroup_peak_bytes()
                .map(|b| format!(" (cgroup peak {:.0} MiB)", b as f64 / 1048576.0))
                .unwrap_or_default()
        );
        ctx.progress.process(None);
        Ok(ended)
    }
}

/// The cancellation a running process is under.
struct Watch {
    pid: u32,
    stdin: Option<ChildStdin>,
    stop_sent: bool,
    killed_for: Option<CancelReason>,
}

impl Watch {
    fn send(&mut self, command: Command) {
        if let Some(stdin) = self.stdin.as_mut() {
            if let Err(e) = stdin.write_all(command.line().as_bytes()) {
                tracing::debug!("cannot write to the job's process {}: {e}", self.pid);
            }
        }
    }

    fn enforce(&mut self, reason: Option<CancelReason>) {
        match reason {
            Some(CancelReason::Shutdown) if !self.stop_sent => {
                self.stop_sent = true;
                self.send(Command::Stop);
                kill_group(self.pid, libc::SIGTERM);
            }
            Some(r @ (CancelReason::Timeout | CancelReason::LeaseLost))
                if self.killed_for.is_none() =>
            {
                tracing::info!("{r}: killing the job's process {}", self.pid);
                kill_group(self.pid, libc::SIGKILL);
                self.killed_for = Some(r);
            }
            _ => {}
        }
    }
}

/// Sends `signal` to the process group the job's process leads.
fn kill_group(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; a negative pid names the process group.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// How the process ended, from `wait4`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Status {
    code: Option<i32>,
    signal: Option<i32>,
    core_dumped: bool,
    /// `ru_maxrss`, KiB.
    max_rss_kib: i64,
}

impl Status {
    fn peak_rss_mb(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }

    fn describe(&self) -> String {
        match (self.signal, self.code) {
            (Some(s), _) => format!(
                "was killed by {}{}",
                signal_name(s),
                if self.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            (None, Some(c)) => format!("exited with code {c}"),
            (None, None) => "ended".to_owned(),
        }
    }
}

/// Waits for the process and reaps it.
fn reap(pid: u32) -> Status {
    let mut status = 0;
    // SAFETY: rusage is plain data the call fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid for writes.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc >= 0 {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Status {
                code: None,
                signal: None,
                core_dumped: false,
                max_rss_kib: 0,
            };
        }
    }
    let signaled = libc::WIFSIGNALED(status);
    Status {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: signaled.then(|| libc::WTERMSIG(status)),
        core_dumped: signaled && libc::WCOREDUMP(status),
        max_rss_kib: usage.ru_maxrss,
    }
}

/// A thread that copies the process's stderr into the daemon's (its log lines, and whatever native code prints)
/// and returns the last lines.
fn relay_stderr(stderr: impl Read + Send + 'static) -> JoinHandle<Vec<String>> {
    let relay = move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL);
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&line).and_then(|()| err.write_all(b"\n"));
            drop(err);
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(500).collect::<String>());
        }
        tail.into_iter().collect()
    };
    std::thread::Builder::new()
        .name("job-stderr".into())
        .spawn(relay)
        .unwrap_or_else(|_| std::thread::spawn(Vec::new))
}

/// A thread that parses the process's events; the channel closes when the process closes its stdout.
fn read_events(stdout: impl Read + Send + 'static, pid: u32) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let read = move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::warn!(
                    "job process {pid} wrote a line that is not an event ({e}): {line}"
                ),
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("job-events".into())
        .spawn(read)
    {
        tracing::error!("cannot start a thread to read job process {pid}: {e}");
    }
    rx
}

/// Everything known about a process once it was reaped.
struct Ended {
    pid: u32,
    /// Its last event, when it reported an end.
    end: Option<Event>,
    killed_for: Option<CancelReason>,
    status: Status,
    last_stage: String,
    oom_killed: bool,
    stderr_tail: Vec<String>,
}

enum Verdict {
    Done(Box<Result<JobOutcome, JobError>>),
    Retry(String),
}

impl Ended {
    fn verdict(self, ctx: &JobContext, cap: &Cap, tries: u32) -> Verdict {
        if let Some(reason) = self.killed_for {
            return Verdict::Done(Box::new(Err(JobError::Cancelled(reason))));
        }
        let cap_hit = self.cap_hit(cap);
        match self.end.clone() {
            Some(Event::Outcome { yaml }) => Verdict::Done(Box::new(
                serde_norway::from_str::<JobOutcome>(&yaml).map_err(|e| {
                    JobError::failed(
                        "report",
                        format!("the job's process sent an unreadable outcome: {e}"),
                    )
                    .with_hint("this is a robustd bug: please report it with the model")
                }),
            )),
            Some(Event::Interrupted) => {
                Verdict::Done(Box::new(Err(JobError::Cancelled(CancelReason::Shutdown))))
            }
            Some(Event::Failed { stage, chain, hint }) if cap_hit => {
                let error = self.error(cap, tries, true, chain);
                Verdict::Done(Box::new(Err(JobError::Failed {
                    stage,
                    source: Box::new(error),
                    hint: Some(cap_hint(cap, hint)),
                })))
            }
            Some(Event::Failed { stage, chain, hint }) => {
                Verdict::Done(Box::new(Err(JobError::Failed {
                    stage,
                    source: Box::new(ChainLink::from_chain(chain)),
                    hint,
                })))
            }
            Some(
                Event::Started { .. } | Event::Progress { .. } | Event::Resumed | Event::ClaimCheck,
            )
            | None => {
                if ctx.cancel.reason() == Some(CancelReason::Shutdown) {
                    return Verdict::Done(Box::new(Err(JobError::Cancelled(
                        CancelReason::Shutdown,
                    ))));
                }
                let transient = self.status.signal.is_some() && !cap_hit;
                if transient && tries < MAX_TRIES {
                    return Verdict::Retry(format!(
                        "the job's process {} {} in stage {}",
                        self.pid,
                        self.status.describe(),
                        self.last_stage
                    ));
                }
                let message = format!(
                    "the job's process (pid {}) {} in stage {}{}",
                    self.pid,
                    self.status.describe(),
                    self.last_stage,
                    if tries > 1 {
                        format!(", on each of {tries} tries")
                    } else {
                        String::new()
                    }
                );
                let hint = if cap_hit {
                    cap_hint(cap, None)
                } else if self.status.signal.is_some() {
                    "the process crashed inside native code (libtorch or onnxruntime) on this model; the daemon and \
                     other jobs were not affected. `robustd inspect MODEL` shows how robustd reads it; please report \
                     the crash with the model"
                        .to_owned()
                } else {
                    "the job's process ended without reporting; its last lines are in process.stderr".to_owned()
                };
                let stage = self.last_stage.clone();
                let error = self.error(cap, tries, cap_hit, vec![message]);
                Verdict::Done(Box::new(Err(JobError::Failed {
                    stage,
                    source: Box::new(error),
                    hint: Some(hint),
                })))
            }
        }
    }

    /// Whether the process ran into its memory cap: the cgroup OOM-killed it, or an allocation was refused (the
    /// messages libtorch, onnxruntime and Rust's allocator print or return then).
    fn cap_hit(&self, cap: &Cap) -> bool {
        if self.oom_killed {
            return true;
        }
        let failed_chain = match &self.end {
            Some(Event::Failed { chain, .. }) => chain.as_slice(),
            _ => &[],
        };
        cap.kind == CapKind::RlimitData
            && self
                .stderr_tail
                .iter()
                .chain(failed_chain)
                .any(|l| allocation_refused(l))
    }

    fn error(&self, cap: &Cap, tries: u32, cap_hit: bool, chain: Vec<String>) -> ProcessError {
        let mut chain = chain.into_iter();
        ProcessError {
            message: chain.next().unwrap_or_default(),
            info: ProcessInfo {
                pid: self.pid,
                signal: self.status.signal.map(|s| signal_name(s).to_owned()),
                exit_code: self.status.code,
                core_dumped: self.status.core_dumped,
                memory_cap_hit: cap_hit,
                memory_cap: cap.describe(),
                tries,
                peak_rss_mb: (self.status.peak_rss_mb() * 10.0).round() / 10.0,
                last_stage: self.last_stage.clone(),
                stderr: self.stderr_tail.clone(),
            },
            source: ChainLink::from_chain(chain.collect()).into_option(),
        }
    }
}

/// The hint for a job stopped by its memory cap.
fn cap_hint(cap: &Cap, runner_hint: Option<String>) -> String {
    let mut hint = format!(
        "the job needed more memory than limits.job_memory_mb ({}): raise it, or make the job smaller \
         (eval.batch_size, dataset.eval_samples)",
        cap.describe()
    );
    if let Some(h) = runner_hint {
        hint.push_str("; ");
        hint.push_str(&h);
    }
    hint
}

/// A message that says an allocation was refused.
fn allocation_refused(text: &str) -> bool {
    const MARKS: [&str; 7] = [
        "memory allocation of",
        "bad_alloc",
        "Failed to allocate memory",
        "can't allocate memory",
        "Cannot allocate memory",
        "out of memory",
        "failed to allocate",
    ];
    MARKS.iter().any(|m| text.contains(m))
}

/// The conventional name of a signal (`SIGSEGV`).
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGXCPU => "SIGXCPU",
        _ => "a signal",
    }
}

/// A failure of the job's process, with what the daemon saw of the process; the executor writes its
/// [`ProcessInfo`] into `error.yaml`.
#[derive(Debug)]
pub struct ProcessError {
    message: String,
    pub info: ProcessInfo,
    source: Option<ChainLink>,
}

impl std::fmt::Display for ProcessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An error chain that crossed the pipe as messages: each level's message, the next level as its source.
#[derive(Debug)]
struct ChainLink {
    message: String,
    next: Option<Box<ChainLink>>,
}

impl ChainLink {
    fn from_chain(chain: Vec<String>) -> Self {
        let mut link: Option<ChainLink> = None;
        for message in chain.into_iter().rev() {
            link = Some(ChainLink {
                message,
                next: link.map(Box::new),
            });
        }
        link.unwrap_or(ChainLink {
            message: "the job failed without a message".into(),
            next: None,
        })
    }

    fn into_option(self) -> Option<Self> {
        (self.message != "the job failed without a message" || self.next.is_some()).then_some(self)
    }
}

impl std::fmt::Display for ChainLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ChainLink {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::report::error_chain;

    #[test]
    fn a_chain_crosses_the_pipe_level_by_level() {
        let chain = vec![
            "m.onnx".to_owned(),
            "load".to_owned(),
            "bad node".to_owned(),
        ];
        assert_eq!(error_chain(&ChainLink::from_chain(chain.clone())), chain);
        let error = ProcessError {
            message: "the job's process was killed".into(),
            info: ProcessInfo {
                pid: 1,
                signal: Some("SIGSEGV".into()),
                exit_code: None,
                core_dumped: false,
                memory_cap_hit: false,
                memory_cap: "768 MiB (RLIMIT_DATA)".into(),
                tries: 2,
                peak_rss_mb: 1.0,
                last_stage: "forward".into(),
                stderr: vec![],
            },
            source: ChainLink::from_chain(vec![]).into_option(),
        };
        assert_eq!(error_chain(&error), vec!["the job's process was killed"]);
    }

    #[test]
    fn refused_allocations_are_recognised_by_their_messages() {
        assert!(allocation_refused(
            "memory allocation of 800000000 bytes failed"
        ));
        assert!(allocation_refused(
            "[E:onnxruntime:, sequential_executor.cc] Failed to allocate memory for requested buffer"
        ));
        assert!(allocation_refused(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"
        ));
        assert!(!allocation_refused("invalid node: Conv"));
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
    }
}
