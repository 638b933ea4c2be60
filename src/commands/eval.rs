//! `robustd eval MODEL.onnx`: the pipeline's evaluation alone (method `none`): clean accuracy through
//! onnxruntime, the configured attacks, the onnxruntime re-check, the robust-accuracy-vs-eps curve and the trust
//! checks. Writes `report.yaml` (validated), the plots and the per-sample npz into the output directory, prints the
//! summary block, and exits with code 3 when worst-case robust accuracy (or, with `--gate lower-bound`, the lower end
//! of its 95 % interval) is below `--min-robust-acc`, so it can gate a CI pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use super::experiment::{self, Clock, CommonArgs, EvalArgs, Target};
use super::{interrupt, EXIT_BELOW_THRESHOLD};
use crate::config::{Gate, Method};
use crate::job::CancelToken;
use crate::pipeline;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (its .onnx.data companion is read too).
    pub model: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Exit with code 3 when worst-case robust accuracy is below this [eval.min_robust_acc].
    #[arg(long, value_name = "ACC")]
    pub min_robust_acc: Option<f64>,
    /// What --min-robust-acc compares: the measured accuracy (`point`) or the lower end of its 95 % confidence
    /// interval (`lower-bound`: fails unless the model is robust enough with 97.5 % confidence) [eval.gate].
    #[arg(long, value_parser = ["point", "lower-bound"])]
    pub gate: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.common.resolve(|cfg| {
        args.eval.apply(cfg);
        cfg.train.method = Method::None;
        if let Some(min) = args.min_robust_acc {
            cfg.eval.min_robust_acc = Some(min);
        }
        if let Some(gate) = &args.gate {
            cfg.eval.gate = if gate == "lower-bound" {
                Gate::LowerBound
            } else {
                Gate::Point
            };
        }
    })?;
    let target = match Target::identify(&args.model) {
        Ok(t) => t,
        Err(e) => return Ok(experiment::fail(&format!("{e:#}"), None)),
    };
    if let Some(min) = config.eval.min_robust_acc {
        if !(0.0..=1.0).contains(&min) {
            anyhow::bail!("--min-robust-acc {min} is not an accuracy in [0, 1]");
        }
    }
    // The gate does not change the results: it is left out of the key of the output directory.
    let mut keyed = config.clone();
    keyed.eval.min_robust_acc = None;
    keyed.eval.gate = Gate::Point;
    let key = target.run_key(&keyed, "eval");
    let out = target.out_dir(args.common.out.as_deref(), &config, &key, "eval");
    // An evaluation is not resumed: the pipeline's stage results go to a scratch directory removed at the end.
    let scratch = tempfile::Builder::new().prefix("robustd-eval-").tempdir()?;

    let cancel = CancelToken::new();
    let interrupts = interrupt::install(cancel.clone())?;
    let progress = experiment::terminal_progress();
    let clock = Clock::start();
    let outcome = match pipeline::runner::run(
        &target.path,
        None,
        &config,
        &out,
        scratch.path(),
        &cancel,
        &progress,
    ) {
        Ok(outcome) => outcome,
        Err(e) => return Ok(experiment::job_failed(e, &interrupts, None)),
    };
    progress.stage("report");
    drop(scratch);
    let original = target.copy_into(&out)?;
    let (report, path) =
        experiment::write_report(outcome, &config, &out, original, &clock, &progress)?;
    experiment::print_summary(&report.summary, &path);

    let gated = report
        .summary
        .before
        .as_ref()
        .map(|b| match config.eval.gate {
            Gate::Point => ("worst-case robust accuracy", b.robust_acc_worst),
            Gate::LowerBound => (
                "the 95 % lower bound of worst-case robust accuracy",
                b.robust_acc_worst_ci95
                    .map_or(b.robust_acc_worst, |ci| ci.lower),
            ),
        });
    if let (Some(min), Some((what, value))) = (config.eval.min_robust_acc, gated) {
        if value < min {
            eprintln!(
                "robustd: {what} {value:.4} is below --min-robust-acc {min} (exit code {EXIT_BELOW_THRESHOLD})"
            );
            return Ok(ExitCode::from(EXIT_BELOW_THRESHOLD));
        }
    }
    Ok(ExitCode::SUCCESS)
}
