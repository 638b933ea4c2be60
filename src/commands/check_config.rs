//! `robustd check-config FILE`: validates a config and prints it resolved, or the error with line and column.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The YAML file to check.
    pub file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.file)?;
    print!(
        "# {} is valid; resolved with defaults:\n{}",
        args.file.display(),
        cfg.to_display_yaml()
    );
    Ok(ExitCode::SUCCESS)
}
