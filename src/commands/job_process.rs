//! `robustd job-process` (hidden): one job of the daemon in a process of its own. The daemon starts it and talks
//! to it over stdin/stdout ([`crate::isolation`]); a person has no reason to run it.

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    crate::isolation::child::run()?;
    Ok(ExitCode::SUCCESS)
}
