//! Leases: the claims this worker holds, renewed together every third of `queue.lease_s` by one task on the
//! queue's runtime — independent of the job's own progress reports, so a long stage that reports nothing keeps
//! its lease. A renewal that does not find a job under this worker's token means the lease was lost (the worker
//! stalled past it and another worker claimed the job, with a new token): the job is marked lost here, and the
//! job's next heartbeat reports it, which cancels the run. The same task heartbeats this worker's row in the
//! fleet and fails jobs whose worker vanished `queue.max_attempts` times.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connect::Db;
use super::{sql, PgError};

/// The claims held by this worker: job id → lease token, and whether the lease was found lost.
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    lost: bool,
}

impl Leases {
    pub fn hold(&self, id: &str, token: i64) {
        self.lock()
            .insert(id.to_owned(), Held { token, lost: false });
    }

    pub fn release(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether the lease on `id` under `token` is known to be lost.
    pub fn is_lost(&self, id: &str, token: i64) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|h| h.token == token && h.lost)
    }

    /// Whether this worker still holds `id` under `token` (it was not completed or released meanwhile).
    pub fn holds(&self, id: &str, token: i64) -> bool {
        self.lock().get(id).is_some_and(|h| h.token == token)
    }

    pub fn mark_lost(&self, id: &str, token: i64) {
        if let Some(h) = self.lock().get_mut(id) {
            if h.token == token {
                h.lost = true;
            }
        }
    }

    /// The jobs whose lease was found lost and that are still held (not yet released by their run).
    pub fn lost(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.lost)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The live leases: `(ids, tokens)`.
    fn live(&self) -> (Vec<String>, Vec<i64>) {
        self.lock()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (id.clone(), h.token))
            .unzip()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the renewer needs.
pub struct Renewer {
    pub db: Arc<Db>,
    pub leases: Arc<Leases>,
    pub worker: String,
    pub lease: Duration,
    pub max_attempts: u32,
    /// Jobs queued, as of the last renewal (for `Queue::queued`, read every tick).
    pub queued: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
}

impl Renewer {
    /// Renews until `stop` is set.
    pub async fn run(self) {
        let period = self.lease / 3;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            if let Err(e) = self.round().await {
                if !e.is_connection() && !matches!(e, PgError::Unavailable { .. }) {
                    tracing::warn!("lease renewal: {e}");
                }
            }
        }
    }

    async fn round(&self) -> Result<(), PgError> {
        let (ids, tokens) = self.leases.live();
        let asked: Vec<(String, i64)> = ids.iter().cloned().zip(tokens.iter().copied()).collect();
        let lease_s = self.lease.as_secs_f64();
        let worker = self.worker.clone();
        let max = self.max_attempts as i32;
        let (renewed, queued, gave_up) = self
            .db
            .with_client_async(|client| async move {
                let renewed: Vec<String> = if ids.is_empty() {
                    Vec::new()
                } else {
                    client
                        .query(sql::RENEW, &[&ids, &tokens, &lease_s])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect()
                };
                client.execute(sql::WORKER_HEARTBEAT, &[&worker]).await?;
                let gave_up = sql::fail_vanished(&**client, max).await?;
                let queued: i64 = client.query_one(sql::COUNT_QUEUED, &[]).await?.get(0);
                Ok((renewed, queued, gave_up))
            })
            .await?;
        // Only the leases asked about: one taken during the round is not lost.
        for (id, token) in asked {
            if !renewed.contains(&id) && self.leases.holds(&id, token) {
                tracing::warn!(job = %id, "lease lost: another worker took the job over; this run stops without publishing");
                self.leases.mark_lost(&id, token);
            }
        }
        for id in gave_up {
            tracing::warn!(job = %id, "failed: its worker vanished {max} times (queue.max_attempts)");
        }
        self.queued.store(queued.max(0) as usize, Ordering::Relaxed);
        Ok(())
    }
}
