//! The daemon, one machine's worker: it watches an inbox (`paths.watch`), takes complete drops into the job queue
//! ([`crate::queue`]), runs queued jobs on dedicated threads through a pluggable [`crate::job::JobRunner`] (`robustd
//! run`'s runs each job in a process of its own, [`crate::isolation`]), publishes
//! results in the artifact store ([`crate::store`]), and talks to systemd (READY/STATUS/STOPPING/WATCHDOG, SIGTERM
//! checkpoints, SIGHUP reload).
//!
//! Modules: [`watcher`] (notify → channel), [`inbox`] (when a drop is complete), [`names`] (which files, safe
//! names), [`intake`] (what a complete drop becomes), [`executor`] (one job from claim to done/failed), [`service`]
//! (sd_notify), [`server`] (the loop), [`observe`] (a job's log span and metrics).

// Code the daemon runs unattended must not panic on bad input: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod executor;
pub mod inbox;
pub mod intake;
pub mod names;
pub mod observe;
pub mod server;
pub mod service;
pub mod watcher;

pub use executor::{Executor, Finished};
pub use server::{run, DaemonError, DaemonOptions, SHUTDOWN_GRACE};
