//! The daemon's face to systemd (`Type=notify`): READY once the inbox is watched, STATUS lines with the running
//! jobs and their progress, STOPPING on shutdown, and watchdog pings at half the `WatchdogSec` interval. Without
//! `$NOTIFY_SOCKET` (not under systemd, or in tests that don't set it) every call does nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;

/// What STATUS shows about one running job.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveJob {
    pub name: String,
    pub stage: String,
    pub fraction: f64,
}

/// Running jobs by id, updated by the jobs' progress reporters, read by the loop for STATUS.
pub type ActiveJobs = Arc<Mutex<BTreeMap<String, ActiveJob>>>;

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half the watchdog interval systemd asked for (`WatchdogSec`), if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

/// The STATUS line: `idle; 3 queued` or `mlp: forward 50%; 2 queued`.
pub fn status_line(active: &ActiveJobs, queued: usize) -> String {
    let jobs = active.lock().unwrap_or_else(|p| p.into_inner());
    let mut parts: Vec<String> = jobs
        .values()
        .map(|j| format!("{}: {} {:.0}%", j.name, j.stage, j.fraction * 100.0))
        .collect();
    if parts.is_empty() {
        parts.push("idle".into());
    }
    parts.push(format!("{queued} queued"));
    parts.join("; ")
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}
