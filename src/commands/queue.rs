//! `robustd queue migrate`: creates or upgrades the PostgreSQL job queue's schema to this robustd's version
//! (what `queue.migrate: auto` does at every worker's start; with `manual`, run this first).

use std::process::ExitCode;

use anyhow::bail;

use super::ConfigArg;
use crate::config::QueueBackend;
use crate::queue::PgQueue;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Create or upgrade the schema (versioned migrations shipped in the binary; a newer schema is refused).
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Migrate { config } => {
            let cfg = config.load()?;
            if cfg.queue.backend != QueueBackend::Postgres {
                bail!("queue.backend is not postgres in this config: the folder spool needs no migration");
            }
            let (from, to) = PgQueue::migrate(&cfg)?;
            if from == to {
                println!("schema version {to}: up to date");
            } else {
                println!("schema migrated from version {from} to {to}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
