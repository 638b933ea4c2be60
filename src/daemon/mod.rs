//! The daemon: a watched inbox (`paths.watch`), a crash-safe job spool (`paths.state`), a service loop that runs
//! jobs on dedicated threads through a pluggable [`crate::job::JobRunner`], results in `paths.models`, and systemd
//! integration (READY/STATUS/STOPPING/WATCHDOG, SIGTERM checkpoints, SIGHUP reload).
//!
//! Modules: [`names`] (which files, safe names), [`inbox`] (when a drop is complete), [`intake`] (what a complete drop becomes), [`watcher`] (notify → channel), [`spool`] (the job
//! directories), [`executor`] (one job from claim to done/failed), [`service`] (sd_notify), [`server`] (the loop).

// Code the daemon runs unattended must not panic on bad input: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod executor;
pub mod inbox;
pub mod intake;
pub mod names;
pub mod server;
pub mod service;
pub mod spool;
pub mod watcher;

pub use executor::{Executor, Finished};
pub use server::{run, DaemonError, DaemonOptions, SHUTDOWN_GRACE};
pub use spool::Spool;
