//! Ctrl-C and SIGTERM for the long-running commands: the first signal sets the pipeline's cancel token, so training
//! checkpoints at the next batch and the command exits with 128 + the signal number (130, 143); a second signal
//! exits at once. A small thread with its own single-threaded tokio runtime listens; the handlers are registered
//! before [`install`] returns, so no early signal is lost.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::job::{CancelReason, CancelToken};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Which signal (if any) asked the command to stop.
#[derive(Clone)]
pub struct Interrupts {
    received: Arc<AtomicI32>,
}

impl Interrupts {
    /// The signal number that cancelled the run, if one did.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// The exit code of a run a signal stopped: 128 + the signal (130 for Ctrl-C when none was recorded).
    pub fn exit_code(&self) -> u8 {
        (128 + self.received().unwrap_or(SIGINT)) as u8
    }
}

/// Starts listening for SIGINT and SIGTERM; the first one cancels `cancel`.
pub fn install(cancel: CancelToken) -> anyhow::Result<Interrupts> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal listener")?;
    let (mut term, mut int) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let received = Arc::new(AtomicI32::new(0));
    let interrupts = Interrupts {
        received: received.clone(),
    };
    std::thread::Builder::new()
        .name("robustd-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    let signo = tokio::select! {
                        _ = term.recv() => SIGTERM,
                        _ = int.recv() => SIGINT,
                    };
                    if received
                        .compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        eprintln!("robustd: second signal: exiting now");
                        std::process::exit(128 + signo);
                    }
                    eprintln!(
                        "robustd: stopping at the next batch (checkpoint kept); send the signal again to exit now"
                    );
                    cancel.cancel(CancelReason::Shutdown);
                }
            })
        })
        .context("cannot start the signal listener thread")?;
    Ok(interrupts)
}
