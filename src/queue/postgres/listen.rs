//! Waking idle workers: a dedicated connection LISTENs on [`CHANNEL`], which every enqueue, release and finish
//! NOTIFYs (inside its transaction, so the wake-up comes once the change is visible). A notification opens the
//! [`ClaimGate`] and wakes the daemon's loop. Between notifications an idle worker does not query at all, except
//! every `queue.poll_ms` — the fallback that also covers a lost listening connection (reconnected with backoff)
//! and leases that expire without anyone saying so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::connect::MAX_BACKOFF;
use crate::job::JobKind;
use crate::queue::Claimable;

/// The NOTIFY channel.
pub const CHANNEL: &str = "robustd_jobs";

/// Decides whether a claim is worth a query: after a notification, after `poll` without one, or when what this
/// worker can take changed since its last empty claim.
pub struct ClaimGate {
    notified: AtomicBool,
    poll: Duration,
    last: Mutex<GateState>,
    /// Woken with the gate, so the daemon claims at once.
    pub wake: Arc<Notify>,
}

struct GateState {
    queried_at: Option<Instant>,
    /// What the last claim that found nothing could take.
    empty_for: Option<(Vec<JobKind>, Vec<String>)>,
}

impl ClaimGate {
    pub fn new(poll: Duration) -> Self {
        Self {
            notified: AtomicBool::new(false),
            poll,
            last: Mutex::new(GateState {
                queried_at: None,
                empty_for: None,
            }),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn open(&self) {
        self.notified.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether to query for `can` now (and, if so, note that a query happens now).
    pub fn should_query(&self, can: &Claimable) -> bool {
        let notified = self.notified.swap(false, Ordering::SeqCst);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.queried_at.is_none_or(|t| t.elapsed() >= self.poll);
        let changed = last
            .empty_for
            .as_ref()
            .is_none_or(|(kinds, keys)| *kinds != can.kinds || *keys != can.busy_keys);
        let go = notified || due || changed;
        if go {
            last.queried_at = Some(Instant::now());
        }
        go
    }

    /// Records what a claim found: nothing for `can` (`None`), or a job.
    pub fn claimed(&self, empty_for: Option<&Claimable>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.empty_for = empty_for.map(|c| (c.kinds.clone(), c.busy_keys.clone()));
    }
}

/// LISTENs until `stop` is set, reconnecting with backoff; every notification opens `gate`.
pub async fn listen(settings: tokio_postgres::Config, gate: Arc<ClaimGate>, stop: Arc<AtomicBool>) {
    let mut delay = Duration::from_millis(250);
    while !stop.load(Ordering::SeqCst) {
        match settings.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => {
                                let _ = tx.send(());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!("queue notifications: {e}");
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    tracing::debug!("cannot LISTEN: {e}");
                } else {
                    delay = Duration::from_millis(250);
                    // Anything enqueued while not listening is found by this first look.
                    gate.open();
                    while rx.recv().await.is_some() {
                        gate.open();
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                }
                drop(client);
                driver.abort();
            }
            Err(e) => tracing::debug!("queue notifications: cannot connect: {e}"),
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
