//! Cancelling a running job: a cheap, cloneable token the scheduler sets (shutdown, timeout) and runners poll
//! between batches and epochs.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use super::error::{CancelReason, JobError};

/// A cheap, cloneable cancellation flag checked by runners between batches and epochs. [`CancelToken::flag`]
/// exposes it as the plain `AtomicBool` the training loop polls.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    reason: AtomicU8,
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

    /// `Err(JobError::Cancelled)` once cancelled: `ctx.cancel.check()?` between batches.
    pub fn check(&self) -> Result<(), JobError> {
        match self.reason() {
            Some(reason) => Err(JobError::Cancelled(reason)),
            None => Ok(()),
        }
    }
}
