//! The job's side: `robustd job-process`, started by the daemon with the job's [`Spec`] on stdin. It runs the
//! daemon's runner on the job exactly as the daemon's job thread used to, and reports over its stdout (progress,
//! then the outcome, a failure or an interruption); anything else it or its libraries print goes to stderr. A
//! `stop` line on stdin, the end of stdin or SIGTERM cancels the run for a shutdown (it checkpoints and ends).
//! While the daemon is stopped (SIGSTOP: a frozen worker) the process pauses at its next event, and once the daemon
//! runs again it waits for the daemon's word that the job is still its own (the daemon checks its lease first, and
//! kills the process if another worker took the job over): a job whose worker lost it writes nothing more.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::protocol::{Command, CrashHook, Event, Spec, CRASH_ENV};
use crate::job::{CancelReason, CancelToken, Job, JobContext, JobError, Progress};
use crate::report::error_chain;

/// Progress fractions are sent at most this often (stage changes always).
const FRACTION_EVERY: Duration = Duration::from_millis(100);
/// How often, at most, the process looks whether the daemon is stopped.
const PARENT_CHECK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum ChildError {
    #[error("cannot set up the job process: {0}")]
    Setup(std::io::Error),
    #[error("cannot read the job spec from stdin: {0}")]
    Spec(String),
}

/// Runs the job given on stdin; returns once its end is reported.
pub fn run() -> Result<(), ChildError> {
    let events = Emitter::take_stdout().map_err(ChildError::Setup)?;
    let cancel = CancelToken::new();
    cancel_on_sigterm(&cancel).map_err(ChildError::Setup)?;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| ChildError::Spec(e.to_string()))?;
    let spec: Spec = serde_json::from_str(&line).map_err(|e| ChildError::Spec(e.to_string()))?;
    drop(stdin);
    listen(&cancel, events.answers.clone()).map_err(ChildError::Setup)?;
    // Before each checkpoint write the runner confirms the job's claim: the daemon holds the queue, so ask it.
    let asker = events.clone();
    cancel.set_claim_check(Arc::new(move || asker.ask_claim()));
    events.emit(&Event::Started {
        pid: std::process::id(),
    });

    let job = Job {
        record: spec.record,
        dir: spec.dir,
        lease: spec.lease,
    };
    let span = job.span();
    let _entered = span.enter();
    let config = match job.run_config() {
        Ok(c) => c,
        Err(e) => {
            events.emit(&Event::Failed {
                stage: "config".into(),
                chain: error_chain(&e),
                hint: Some("the job's config.yaml in the queue is unreadable".into()),
            });
            return Ok(());
        }
    };
    let hook = std::env::var(CRASH_ENV)
        .ok()
        .and_then(|v| CrashHook::parse(&v))
        .filter(|h| h.job_name.as_deref().is_none_or(|n| n == job.record.name));
    let progress = progress_events(&events, span.clone(), hook);
    let ctx = JobContext {
        config,
        output_dir: spec.output_dir,
        checkpoint_dir: spec.checkpoint_dir,
        cancel,
        progress: progress.clone(),
        attempt: spec.attempt,
    };
    let runner = crate::pipeline::runner_for(spec.runner);
    let result = catch_unwind(AssertUnwindSafe(|| runner.run(&job, &ctx)));
    let last_stage = || {
        progress
            .stage_times()
            .last()
            .map_or_else(|| "run".to_owned(), |s| s.name.clone())
    };
    let end = match result {
        Ok(Ok(mut outcome)) => {
            outcome.environment = Some(crate::job::outcome::environment(&ctx.config));
            match serde_norway::to_string(&outcome) {
                Ok(yaml) => Event::Outcome { yaml },
                Err(e) => Event::Failed {
                    stage: "report".into(),
                    chain: vec![format!("cannot encode the job's outcome: {e}")],
                    hint: Some("this is a robustd bug: please report it with the model".into()),
                },
            }
        }
        Ok(Err(JobError::Cancelled(_))) => Event::Interrupted,
        Ok(Err(JobError::Failed {
            stage,
            source,
            hint,
        })) => Event::Failed {
            stage,
            chain: error_chain(&*source),
            hint,
        },
        Err(panic) => {
            let message = crate::job::error::panic_message(&*panic);
            Event::Failed {
                stage: last_stage(),
                chain: vec![format!("internal error (panic): {message}")],
                hint: Some("this is a robustd bug: please report it with the model".into()),
            }
        }
    };
    events.emit(&end);
    Ok(())
}

/// The progress reporter of the run: stage changes at once, fractions at most every [`FRACTION_EVERY`]; the stage
/// also goes on the job's log span. The crash hook fires here.
fn progress_events(events: &Emitter, span: tracing::Span, hook: Option<CrashHook>) -> Progress {
    let events = events.clone();
    let last = Mutex::new(Instant::now() - FRACTION_EVERY);
    Progress::new(move |update| {
        if update.new_stage {
            span.record("stage", update.stage.as_str());
        } else {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < FRACTION_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let fraction = if update.fraction.is_finite() {
            update.fraction
        } else {
            0.0
        };
        events.emit(&Event::Progress {
            stage: update.stage.clone(),
            fraction,
            new_stage: update.new_stage,
        });
        // After the stage change went out, as a crash inside the stage's native code would come.
        if let Some(h) = hook
            .as_ref()
            .filter(|h| update.new_stage && h.stage == update.stage)
        {
            tracing::warn!("{CRASH_ENV}: dying of signal {} in {}", h.signal, h.stage);
            die_of(h.signal);
        }
    })
}

/// Dies of `signal` with its default action (a core dump where the system keeps them), as a crash in native code
/// would.
fn die_of(signal: i32) -> ! {
    // SAFETY: resetting a disposition and raising a signal have no preconditions; SIG_DFL terminates.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    std::process::abort()
}

/// Writes events to the daemon: the original stdout, which nothing else may use (fd 1 then points at stderr, so
/// a library printing to stdout cannot corrupt the stream).
#[derive(Clone)]
struct Emitter {
    state: Arc<Mutex<EmitterState>>,
    answers: Arc<Answers>,
}

struct EmitterState {
    out: File,
    parent_checked: Instant,
}

/// The daemon's answers: [`Command::Proceed`] and [`Command::Claim`] (counted, the last claim kept), and whether
/// its commands ended (stdin closed: no answer will come).
#[derive(Default)]
struct Answers {
    state: Mutex<AnswerState>,
    changed: Condvar,
}

#[derive(Default)]
struct AnswerState {
    proceeds: u64,
    claims: u64,
    holds: bool,
    closed: bool,
}

impl Answers {
    fn update(&self, f: impl FnOnce(&mut AnswerState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    fn counts(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.proceeds, st.claims)
    }

    /// Waits until `arrived` says the awaited answer came, or the commands end; returns the state then.
    fn wait(&self, arrived: impl Fn(&AnswerState) -> bool) -> (bool, bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !arrived(&st) && !st.closed {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        (st.holds, st.closed)
    }
}

impl Emitter {
    fn take_stdout() -> std::io::Result<Self> {
        // SAFETY: dup/dup2 on the standard descriptors; the duplicate is owned by the File from here on.
        let out = unsafe {
            let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
            if fd < 0 || libc::dup2(2, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            File::from_raw_fd(fd)
        };
        Ok(Self {
            state: Arc::new(Mutex::new(EmitterState {
                out,
                parent_checked: Instant::now(),
            })),
            answers: Arc::default(),
        })
    }

    /// Asks the daemon whether the job still owns its checkpoint directory; no answer (the daemon is gone) is no.
    fn ask_claim(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (_, seen) = self.answers.counts();
        st.write(&Event::ClaimCheck);
        let (holds, closed) = self.answers.wait(|a| a.claims > seen);
        holds && !closed
    }

    fn emit(&self, event: &Event) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.parent_checked.elapsed() >= PARENT_CHECK_EVERY {
            if wait_while_parent_stopped() {
                // The daemon ran again: nothing more happens here until it says the job is still its own.
                let (seen, _) = self.answers.counts();
                st.write(&Event::Resumed);
                self.answers.wait(|a| a.proceeds > seen);
                tracing::info!("the daemon runs again and still holds the job: going on");
            }
            st.parent_checked = Instant::now();
        }
        st.write(event);
    }
}

impl EmitterState {
    fn write(&mut self, event: &Event) {
        // A daemon that went away kills this process (PR_SET_PDEATHSIG); nothing to do about a failed write.
        let line = event.line();
        if let Err(e) = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
        {
            tracing::debug!("cannot report to the daemon: {e}");
        }
    }
}

/// Sleeps while the daemon (the parent) is stopped: a SIGSTOPped worker's job must not go on writing checkpoints
/// that another worker may own by the time this one wakes up. True if it was stopped.
fn wait_while_parent_stopped() -> bool {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let stat = format!("/proc/{parent}/stat");
    let mut logged = false;
    while let Ok(text) = std::fs::read_to_string(&stat) {
        // `pid (comm) state ...`: the state follows the last ')'.
        let state = text
            .rfind(')')
            .and_then(|at| text[at + 1..].trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            break;
        }
        if !logged {
            tracing::info!("the daemon (pid {parent}) is stopped: the job waits for it");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    logged
}

/// A thread that waits for SIGTERM and cancels the run for a shutdown. SIGTERM is blocked in every thread (this
/// one runs first, and threads inherit the mask), so only `sigwait` here receives it.
fn cancel_on_sigterm(cancel: &CancelToken) -> std::io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask on the calling thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    let cancel = cancel.clone();
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is an initialised signal set; `signal` is written by sigwait.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 && signal == libc::SIGTERM {
                tracing::info!("SIGTERM: the job checkpoints and stops");
                cancel.cancel(CancelReason::Shutdown);
            }
        })
        .map(drop)
}

/// A thread that reads the daemon's commands: `stop`, or the end of stdin (the daemon closed it), cancels the run
/// for a shutdown; `proceed` and `claim` answer a waiting question.
fn listen(cancel: &CancelToken, answers: Arc<Answers>) -> std::io::Result<()> {
    let cancel = cancel.clone();
    std::thread::Builder::new()
        .name("commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Command>(&line) {
                    Ok(Command::Stop) => cancel.cancel(CancelReason::Shutdown),
                    Ok(Command::Proceed) => answers.update(|a| a.proceeds += 1),
                    Ok(Command::Claim { holds }) => answers.update(|a| {
                        a.claims += 1;
                        a.holds = holds;
                    }),
                    Err(e) => tracing::warn!("unknown command from the daemon ({e}): {line}"),
                }
            }
            cancel.cancel(CancelReason::Shutdown);
            answers.update(|a| a.closed = true);
        })
        .map(drop)
}
