//! `robustd run [--config F]`: the daemon in the foreground (systemd runs it this way, `Type=notify`). SIGTERM
//! or SIGINT stops it — running jobs checkpoint and resume at the next start; SIGHUP reloads the config. Each job
//! runs in a process of its own (`robustd job-process`, see [`crate::isolation`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use super::ConfigArg;
use crate::daemon::{self, DaemonOptions};
use crate::isolation::{MemoryCaps, ProcessRunner};
use crate::job::JobRunner;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("robustd-loop")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Each job runs in a process of its own under its memory cap (crate::isolation).
    let runner: Arc<dyn JobRunner> = Arc::new(ProcessRunner::new(
        config.daemon.runner,
        MemoryCaps::detect(),
        super::logs_to_journal(),
    ));
    let options = DaemonOptions {
        config,
        config_path: args.config.config.clone(),
    };
    let result = runtime.block_on(async move {
        // Registered before the daemon reports READY, so an early SIGTERM is never lost.
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        daemon::run(options, runner, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    // Job threads that did not finish within the grace period are abandoned; their jobs resume at the next start.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result?;
    Ok(ExitCode::SUCCESS)
}
