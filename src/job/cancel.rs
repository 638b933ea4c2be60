//! Cancelling a running job: a cheap, cloneable token the scheduler sets (shutdown, timeout, lost lease) and
//! runners poll between batches and epochs; and the job's claim on its checkpoint directory, which runners confirm
//! right before every checkpoint write.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::{CancelReason, JobError};

/// A cheap, cloneable cancellation flag checked by runners between batches and epochs. [`CancelToken::flag`]
/// exposes it as the plain `AtomicBool` the training loop polls.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

/// Answers whether the job still owns its checkpoint directory (a leased queue: a fenced heartbeat).
pub type ClaimCheck = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    reason: AtomicU8,
    claim: OnceLock<ClaimCheck>,
}

impl std::fmt::Debug for CancelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelState")
            .field("cancelled", &self.cancelled)
            .field("reason", &self.reason)
            .field("claim_checked", &self.claim.get().is_some())
            .finish()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::Shutdown => 1,
            CancelReason::Timeout => 2,
            CancelReason::LeaseLost => 3,
        };
        let _ = self
            .0
            .reason
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.0.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<CancelReason> {
        match self.0.reason.load(Ordering::SeqCst) {
            1 => Some(CancelReason::Shutdown),
            2 => Some(CancelReason::Timeout),
            3 => Some(CancelReason::LeaseLost),
            _ => None,
        }
    }

    /// The flag long-running loops poll (set together with the reason).
    pub fn flag(&self) -> &AtomicBool {
        &self.0.cancelled
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Installs the check of the job's claim on its checkpoint directory (the daemon: the queue's fenced
    /// heartbeat). Without one the claim always holds (the folder spool, the CLI). Only the first call counts.
    pub fn set_claim_check(&self, check: ClaimCheck) {
        let _ = self.0.claim.set(check);
    }

    /// Whether the job may still write its checkpoint directory: false once it was cancelled for a lost lease,
    /// or when the claim check says another worker took the job over (which cancels it with that reason). A
    /// shared checkpoint directory then belongs to the worker that resumed the job, and this run writes nothing.
    pub fn holds_claim(&self) -> bool {
        if self.reason() == Some(CancelReason::LeaseLost) {
            return false;
        }
        match self.0.claim.get() {
            Some(check) if !check() => {
                self.cancel(CancelReason::LeaseLost);
                false
            }
            _ => true,
        }
    }

    /// `Err(JobError::Cancelled)` once cancelled: `ctx.cancel.check()?` between batches.
    pub fn check(&self) -> Result<(), JobError> {
        match self.reason() {
            Some(reason) => Err(JobError::Cancelled(reason)),
            None => Ok(()),
        }
    }
}
