//! File-system events for the inbox: `notify`'s callback runs on its own thread, so it only forwards file names
//! into a channel the async loop reads. inotify by default, a polling watcher with `daemon.poll` (network
//! filesystems) or when inotify cannot start — its limit errors name the sysctl to raise. The periodic rescan in
//! the loop covers anything both miss.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;

/// Neither inotify nor the polling watcher could watch the inbox.
#[derive(Debug, Error)]
#[error("{}", explain(.0))]
pub struct WatchError(#[source] notify::Error);

/// Keeps the watcher alive; dropping it stops the events.
pub struct InboxWatcher {
    _inner: Box<dyn Watcher + Send>,
    pub kind: &'static str,
}

/// Starts watching `dir` (non-recursively) and sends the file names of relevant events.
pub fn watch(
    dir: &Path,
    poll: bool,
    poll_interval: Duration,
    tx: UnboundedSender<OsString>,
) -> Result<InboxWatcher, WatchError> {
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) if relevant(&event.kind) => {
            for path in event.paths {
                if let Some(name) = path.file_name() {
                    let _ = tx.send(name.to_owned());
                }
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("inbox watcher: {}", explain(&e)),
    };
    if !poll {
        match notify::recommended_watcher(handler.clone()) {
            Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    return Ok(InboxWatcher {
                        _inner: Box::new(w),
                        kind: "inotify",
                    })
                }
                Err(e) => tracing::warn!(
                    "cannot watch {} with inotify ({}); polling instead",
                    dir.display(),
                    explain(&e)
                ),
            },
            Err(e) => tracing::warn!("cannot start inotify ({}); polling instead", explain(&e)),
        }
    }
    let config = notify::Config::default().with_poll_interval(poll_interval);
    let mut w = notify::PollWatcher::new(handler, config).map_err(WatchError)?;
    w.watch(dir, RecursiveMode::NonRecursive)
        .map_err(WatchError)?;
    Ok(InboxWatcher {
        _inner: Box::new(w),
        kind: "poll",
    })
}

/// Creations, writes, close-after-write and renames into the inbox; not reads, opens or removals.
fn relevant(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Any
            | EventKind::Other
            | EventKind::Modify(
                ModifyKind::Data(_)
                    | ModifyKind::Name(_)
                    | ModifyKind::Any
                    | ModifyKind::Metadata(_)
                    | ModifyKind::Other
            )
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Turns inotify's resource errors into a message that says what to raise.
fn explain(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached: raise it with `sysctl fs.inotify.max_user_watches=524288`".into()
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28) => {
            "inotify watch limit reached (ENOSPC): raise it with `sysctl fs.inotify.max_user_watches=524288`".into()
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(24) => {
            "too many inotify instances (EMFILE): raise `sysctl fs.inotify.max_user_instances`".into()
        }
        _ => e.to_string(),
    }
}
