//! `robustd compare MODEL.onnx --methods pgd-at,trades,bat --seeds 3`: fine-tunes a fresh copy of the model with
//! each method under each seed, on the same budget (data, epochs, batch, training PGD, evaluation attacks and
//! samples), and writes `comparison.yaml`, `comparison.md` (mean ± std per method) and `plots/tradeoff.png`
//! (clean vs robust accuracy with error bars). The work itself is [`crate::pipeline::compare`].
//!
//! The evaluation is PGD alone (`eval.pgd`, PGD-20 by default) unless `--attacks` says otherwise, and without the
//! robust-accuracy-vs-eps curve. Ctrl-C/SIGTERM keeps the finished runs and the running one's checkpoint in
//! `<paths.state>/cli/compare-<key12>/`; the same command run again resumes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::experiment::{self, CommonArgs, EvalArgs, Target, TrainArgs};
use super::interrupt;
use crate::config::Method;
use crate::durable;
use crate::job::CancelToken;
use crate::pipeline::compare::{self, CompareSettings};
use crate::pipeline::stages::method_name;
use crate::report::plots;

/// The comparison's files, relative to its output directory.
pub const COMPARISON_YAML: &str = "comparison.yaml";
pub const COMPARISON_MD: &str = "comparison.md";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (its .onnx.data companion is read too).
    pub model: PathBuf,
    /// Methods to compare, comma-separated: bat, pgd-at, trades, bat-reweight-only, bat-reg-only, standard.
    #[arg(long, value_delimiter = ',', value_parser = experiment::parse_method,
          default_value = "pgd-at,trades,bat")]
    pub methods: Vec<Method>,
    /// Runs per method; run k uses seed runtime.seed + k.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub seeds: u64,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.methods.is_empty() || args.seeds == 0 {
        bail!("--methods and --seeds must name at least one method and one run");
    }
    let config = args.common.resolve(|cfg| {
        args.train.apply(cfg);
        // The comparison's evaluation: PGD unless asked otherwise, no eps curve (not part of the table).
        cfg.eval.attacks = vec!["pgd".into()];
        cfg.eval.eps_curve.clear();
        args.eval.apply(cfg);
        cfg.train.method = args.methods[0];
    })?;
    let settings = CompareSettings {
        methods: args.methods.clone(),
        seeds: (0..args.seeds)
            .map(|k| config.runtime.seed.wrapping_add(k))
            .collect(),
    };
    let target = match Target::identify(&args.model) {
        Ok(t) => t,
        Err(e) => return Ok(experiment::fail(&format!("{e:#}"), None)),
    };
    let names: Vec<&str> = settings.methods.iter().map(|m| method_name(*m)).collect();
    let key = target.run_key(
        &config,
        &format!("compare:{}:{:?}", names.join(","), settings.seeds),
    );
    let out = target.out_dir(args.common.out.as_deref(), &config, &key, "compare");
    let checkpoints = experiment::checkpoint_dir(&config, "compare", &key);
    durable::create_dir_all(&out)?;

    let cancel = CancelToken::new();
    let interrupts = interrupt::install(cancel.clone())?;
    let progress = experiment::terminal_progress();
    let mut comparison = match compare::run(
        &target.path,
        &config,
        &settings,
        &out,
        &checkpoints,
        &cancel,
        &progress,
    ) {
        Ok(c) => c,
        Err(e) => return Ok(experiment::job_failed(e, &interrupts, Some(&checkpoints))),
    };

    let plot = crate::pipeline::stages::files::PLOT_TRADEOFF;
    if let Err(e) = plots::tradeoff_scatter(&out.join(plot), &comparison.tradeoff_points()) {
        comparison
            .warnings
            .push(format!("plot {plot} not drawn: {e}"));
    }
    let markdown = comparison.to_markdown();
    durable::write_yaml_atomic(&out.join(COMPARISON_YAML), &comparison)?;
    durable::write_atomic(&out.join(COMPARISON_MD), markdown.as_bytes())?;
    if let Err(e) = std::fs::remove_dir_all(&checkpoints) {
        tracing::warn!("cannot remove {}: {e}", checkpoints.display());
    }
    print!("{markdown}");
    println!("\ncomparison: {}", out.join(COMPARISON_YAML).display());
    Ok(ExitCode::SUCCESS)
}
