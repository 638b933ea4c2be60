//! The command-line interface: argument definitions (clap) and one module per subcommand.
//! `main.rs` only parses and calls [`run`]; `anyhow` lives here, at the binary's edge.

mod check_config;
mod compare;
mod eval;
mod experiment;
mod finetune;
mod infer;
mod info;
mod inspect;
mod interrupt;
mod job_process;
mod memorization;
mod queue;
mod run;
mod status;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for any error (the cause is printed on one line).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of `robustd eval` when robust accuracy is below `--min-robust-acc`.
pub const EXIT_BELOW_THRESHOLD: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "robustd",
    version,
    about = "Measure and improve the adversarial robustness of ONNX image classifiers"
)]
#[command(
    long_about = "robustd evaluates ONNX image classifiers under white-box and score-based attacks, scores \
how much they memorize atypical training samples, fine-tunes them with Benign Adversarial Training (BAT), and writes \
back a fine-tuned ONNX model plus a YAML robustness report. Run it once per model, or as a daemon on a watched folder."
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Versions of robustd, libtorch and onnxruntime; devices; where the libraries and config were found.
    Info(info::Args),
    /// Load a model through onnxruntime and describe it: opset, inputs/outputs, parameters, external data.
    Inspect(inspect::Args),
    /// Validate a config file and print it fully resolved (defaults filled in).
    CheckConfig(check_config::Args),
    /// Run the daemon: watch the inbox, run jobs, write reports (systemd: Type=notify; SIGHUP reloads).
    Run(run::Args),
    /// Show the fleet, the job queue, running jobs and latest results (read from the queue; no server needed).
    Status(status::Args),
    /// Manage the PostgreSQL job queue (`robustd queue migrate`).
    Queue(queue::Args),
    /// Copy a model (and its sidecar config) into the daemon's inbox atomically.
    Submit(submit::Args),
    /// Run one batch (.npy) through the tch interpreter or onnxruntime; optionally the input gradient.
    Infer(infer::Args),
    /// Measure a model's adversarial robustness: report.yaml, plots, per-sample results; exit code 3 below
    /// --min-robust-acc.
    Eval(eval::Args),
    /// Fine-tune a model adversarially (BAT, PGD-AT, TRADES, ablations), write it back as ONNX, report before and
    /// after; Ctrl-C checkpoints and the same command resumes.
    Finetune(finetune::Args),
    /// Compare fine-tuning methods on one model over several seeds under the same budget: comparison.yaml/.md and
    /// a trade-off plot.
    Compare(compare::Args),
    /// Score training samples by memorization (Feldman-Zhang, cached) and measure the model per typical/atypical group.
    Memorization(memorization::Args),
    /// One job of the daemon, in a process of its own (the daemon starts it; not for people).
    #[command(name = "job-process", hide = true)]
    JobProcess,
}

/// Runs one subcommand; the returned code is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Memorization(args) => memorization::run(args),
        Command::JobProcess => job_process::run(),
    }
}

/// Logs go to stderr: human-readable on a terminal; without ANSI colors or timestamps otherwise. Under systemd
/// (stderr is the journal stream `$JOURNAL_STREAM` names) they go to journald directly instead, with every field
/// as a journal field (a job's lines carry JOB_ID, MODEL, DEVICE, STAGE from its span), so
/// `journalctl -u robustd JOB_ID=...` selects one job.
pub fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd straight to journald; without its socket after all, plain lines (journald reads stderr too).
    if let Some(journal) = logs_to_journal()
        .then(tracing_journald::layer)
        .and_then(Result::ok)
    {
        use tracing_subscriber::prelude::*;
        let journal = journal
            .with_field_prefix(None)
            .with_syslog_identifier("robustd".into());
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journal)
            .try_init();
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    let _ = if tty {
        builder.try_init()
    } else {
        builder.without_time().with_target(false).try_init()
    };
}

/// Whether logs go to journald: stderr is the journal stream, or this is a job's process of a daemon whose logs
/// go there.
pub fn logs_to_journal() -> bool {
    stderr_is_journal() || std::env::var_os(crate::isolation::protocol::JOURNAL_ENV).is_some()
}

/// Whether stderr is the stream systemd connected to journald: `$JOURNAL_STREAM` is `<device>:<inode>` of it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        v.split_once(':')
            .map(|(d, i)| (d.parse::<u64>(), i.parse::<u64>()))
    }) else {
        return false;
    };
    match (dev, ino, std::fs::metadata("/proc/self/fd/2")) {
        (Ok(dev), Ok(ino), Ok(meta)) => meta.dev() == dev && meta.ino() == ino,
        _ => false,
    }
}

/// `--config FILE` shared by the subcommands that read one.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file (YAML); defaults are documented in configs/default.yaml.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<robustd_config::Config> {
        Ok(robustd_config::Config::load_or_default(
            self.config.as_deref(),
        )?)
    }
}

use crate::config as robustd_config;
