//! `robustd finetune MODEL.onnx`: the whole pipeline on one model, as the daemon runs it — evaluate, find atypical
//! samples (BAT), fine-tune, write back `<stem>.<method>.onnx` with an onnxruntime parity check, evaluate again —
//! then `report.yaml` (validated), plots, the training log; prints the summary block.
//!
//! Ctrl-C or SIGTERM stops training at the next batch with a checkpoint in `<paths.state>/cli/finetune-<key12>/`
//! (exit code 130/143); the same command run again resumes there (the first evaluation and the atypicality flags
//! are reused too). The checkpoint is removed once the report is written.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::experiment::{self, Clock, CommonArgs, EvalArgs, Target, TrainArgs};
use super::interrupt;
use crate::config::Method;
use crate::job::CancelToken;
use crate::pipeline;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (its .onnx.data companion is read too).
    pub model: PathBuf,
    /// bat, pgd-at, trades, bat-reweight-only, bat-reg-only or standard [train.method].
    #[arg(long, value_parser = experiment::parse_method)]
    pub method: Option<Method>,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.common.resolve(|cfg| {
        args.train.apply(cfg);
        args.eval.apply(cfg);
        if let Some(method) = args.method {
            cfg.train.method = method;
        }
    })?;
    if config.train.method == Method::None {
        bail!("train.method is `none` (evaluation only): pass --method, or use `robustd eval`");
    }
    let target = match Target::identify(&args.model) {
        Ok(t) => t,
        Err(e) => return Ok(experiment::fail(&format!("{e:#}"), None)),
    };
    let key = target.run_key(&config, "finetune");
    let out = target.out_dir(args.common.out.as_deref(), &config, &key, "finetune");
    let checkpoints = experiment::checkpoint_dir(&config, "finetune", &key);
    if checkpoints.is_dir() {
        tracing::info!(dir = %checkpoints.display(), "resuming from the checkpoint of an interrupted run");
    }

    let cancel = CancelToken::new();
    let interrupts = interrupt::install(cancel.clone())?;
    let progress = experiment::terminal_progress();
    let clock = Clock::start();
    let outcome = match pipeline::runner::run(
        &target.path,
        None,
        &config,
        &out,
        &checkpoints,
        &cancel,
        &progress,
    ) {
        Ok(outcome) => outcome,
        Err(e) => return Ok(experiment::job_failed(e, &interrupts, Some(&checkpoints))),
    };
    let original = target.copy_into(&out)?;
    let (report, path) =
        experiment::write_report(outcome, &config, &out, original, &clock, &progress)?;
    if let Err(e) = std::fs::remove_dir_all(&checkpoints) {
        tracing::warn!("cannot remove {}: {e}", checkpoints.display());
    }
    experiment::print_summary(&report.summary, &path);
    Ok(ExitCode::SUCCESS)
}
