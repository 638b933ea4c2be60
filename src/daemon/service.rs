//! The daemon's face to systemd (`Type=notify`): READY once the inbox is watched, STATUS lines with the running
//! jobs and their progress, STOPPING on shutdown, and watchdog pings at half the `WatchdogSec` interval. Without
//! `$NOTIFY_SOCKET` (not under systemd, or in tests that don't set it) every call does nothing.
//!
//! Messages go out from a thread of their own through a bounded queue: a datagram send blocks when the reader's
//! queue is full, and the event loop must never block on it (a STATUS line is dropped instead; READY and
//! STOPPING wait for room).

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sd_notify::NotifyState;

/// What STATUS shows about one running job.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveJob {
    pub name: String,
    /// The device the job holds (`cpu`, `cuda:1`).
    pub device: String,
    pub stage: String,
    pub fraction: f64,
    /// The job's process, while one runs.
    pub pid: Option<u32>,
    /// Starts of the job (a resume after a restart counts again).
    pub attempt: u32,
}

/// Running jobs by id, updated by the jobs' progress reporters, read by the loop for STATUS.
pub type ActiveJobs = Arc<Mutex<BTreeMap<String, ActiveJob>>>;

pub fn ready(status: &str) {
    send(Message::Ready(status.to_owned()), true);
}

pub fn status(status: &str) {
    send(Message::Status(status.to_owned()), false);
}

pub fn stopping() {
    send(Message::Stopping, true);
}

pub fn reloading() {
    send(Message::Reloading, true);
}

pub fn watchdog() {
    send(Message::Watchdog, false);
}

/// Half the watchdog interval systemd asked for (`WatchdogSec` → `$WATCHDOG_USEC`), if it asked. Like
/// libsystemd's `sd_watchdog_enabled`, a `$WATCHDOG_PID` naming another process means the request is not ours,
/// and a missing one means it is (the `sd-notify` crate requires it).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&u| u > 0)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

/// The STATUS line: `idle; 3 queued` or `mlp@cuda:0: train 50% (pid 4242, attempt 1); 2 queued`.
pub fn status_line(active: &ActiveJobs, queued: usize) -> String {
    let jobs = active.lock().unwrap_or_else(|p| p.into_inner());
    let mut parts: Vec<String> = jobs
        .values()
        .map(|j| {
            let pid = j.pid.map(|p| format!("pid {p}, ")).unwrap_or_default();
            format!(
                "{}@{}: {} {:.0}% ({pid}attempt {})",
                j.name,
                j.device,
                j.stage,
                j.fraction * 100.0,
                j.attempt
            )
        })
        .collect();
    if parts.is_empty() {
        parts.push("idle".into());
    }
    parts.push(format!("{queued} queued"));
    parts.join("; ")
}

enum Message {
    Ready(String),
    Status(String),
    Stopping,
    Reloading,
    Watchdog,
}

/// Queues a message for the notifier thread; `must` waits for room, otherwise a full queue drops it.
fn send(message: Message, must: bool) {
    static QUEUE: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")?;
        let (tx, rx) = sync_channel::<Message>(64);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for message in rx {
                    let status;
                    let states: Vec<NotifyState> = match &message {
                        Message::Ready(s) => {
                            status = s.clone();
                            vec![NotifyState::Ready, NotifyState::Status(&status)]
                        }
                        Message::Status(s) => vec![NotifyState::Status(s)],
                        Message::Stopping => {
                            vec![NotifyState::Stopping, NotifyState::Status("stopping")]
                        }
                        Message::Reloading => vec![NotifyState::Reloading],
                        Message::Watchdog => vec![NotifyState::Watchdog],
                    };
                    if let Err(e) = sd_notify::notify(false, &states) {
                        tracing::debug!("sd_notify: {e}");
                    }
                }
            });
        spawned.ok().map(|_| tx)
    });
    let Some(tx) = queue else { return };
    if must {
        let _ = tx.send(message);
    } else if let Err(TrySendError::Full(_)) = tx.try_send(message) {
        tracing::debug!("sd_notify queue full; a STATUS/WATCHDOG message was dropped");
    }
}
