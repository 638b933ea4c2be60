//! The `robustd` binary: parses the command line and dispatches to `robustd::commands`.

use std::process::ExitCode;

use clap::Parser;
use robustd::commands::{self, Cli};

fn main() {
    let cli = Cli::parse();
    robustd::runtime::tune_allocator();
    robustd::runtime::disable_ort_telemetry();
    commands::init_logging(cli.verbose, cli.quiet);
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("robustd: error: {err:#}");
            ExitCode::from(commands::EXIT_FAILURE)
        }
    };
    robustd::runtime::exit_now(code)
}
