//! `robustd memorization MODEL.onnx`: scores how atypical each training sample is — with the configured estimator
//! (learning-speed, Feldman–Zhang or holdout) on re-initialized copies of the model's own graph (cached in
//! `paths.state/memo`), or imported scores — then measures the given model per typical/atypical group and lists its
//! harmful atypical samples. Writes `scores.npy`, `memorization.npz`, `memorization.yaml` (the report's
//! `memorization:` section with the estimator's budget and self-checks, plus the model's groups),
//! `memorization_hist.png`, `harmful_atypical.png` and, for image files, `files.csv` (index → file) into `--out`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::ConfigArg;
use crate::config::{Config, Estimator};
use crate::data::{Dataset, Split};
use crate::memo::output::{self, SubsetModel, Summary};
use crate::memo::{
    effective_spec, estimate_from_config, harmful_atypical, harmful_grid, model_groups,
    onnx_factory, Estimate, GroupOptions,
};
use crate::model::{InputAdapter, Layout};
use crate::onnx::{OnnxModel, TchModel, TchOptions};
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX classifier: its graph (re-initialized) trains the subset models; its own weights are measured
    /// per group.
    pub model: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
    /// learning-speed, feldman-zhang or holdout (memorization.estimator).
    #[arg(long, value_parser = parse_estimator)]
    pub estimator: Option<Estimator>,
    /// Feldman-Zhang: subset models K (memorization.k).
    #[arg(long)]
    pub k: Option<usize>,
    /// Feldman-Zhang: share of the scored samples each subset model sees (memorization.subset_ratio).
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Feldman-Zhang: a subset model stops at this training accuracy (memorization.fit_target).
    #[arg(long)]
    pub fit_target: Option<f64>,
    /// Feldman-Zhang: the most epochs per subset model (memorization.max_epochs).
    #[arg(long)]
    pub max_epochs: Option<usize>,
    /// Learning-speed and holdout: epochs per model (memorization.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training samples scored, first N (memorization.train_samples; 0 = all loaded).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Master seed (runtime.seed): subset draws, weights, training order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train the estimator's models with PGD-AT (memorization.adversarial).
    #[arg(long)]
    pub adversarial: bool,
    /// Use these scores instead of estimating (memorization.estimator: import, memorization.scores): `.npy` (by
    /// source index), `.npz#KEY`, or `.csv` (index,score).
    #[arg(long, value_name = "FILE")]
    pub import: Option<String>,
    /// Output directory [default: memorization-<model name>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Only the scores: skip the model's per-group accuracy and harmful samples (no attacks).
    #[arg(long)]
    pub scores_only: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = configure(&args)?;
    runtime::set_torch_threads(config.runtime.threads);
    let device = runtime::parse_device(&config.runtime.device)?;
    let onnx = OnnxModel::load(&args.model, &config.limits)?;
    let model_chw = onnx
        .inputs()
        .first()
        .and_then(|input| crate::onnx::infer_input_chw(input, Layout::Nchw));
    let dataset = Dataset::open(&config, model_chw)?;
    let adapter = input_adapter(&config, &dataset);
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => PathBuf::from(format!("memorization-{}", stem(&args.model))),
    };
    crate::durable::create_dir_all(&out)?;
    let mut factory = onnx_factory(&onnx, adapter.clone(), config.model.input_layout, device);
    let (scored, estimate) =
        estimate_from_config(&config, &dataset, onnx.structure_hash(), &mut factory, None)?;
    let threshold = estimate.threshold(effective_spec(&config).threshold);
    let scores = &estimate.scores;

    let mut files = vec![
        output::SCORES_NPY.to_string(),
        output::DETAILS_NPZ.to_string(),
    ];
    output::write_scores_npy(&out.join(output::SCORES_NPY), scores)?;
    output::write_details_npz(&out.join(output::DETAILS_NPZ), scores, Some(&estimate))?;
    if output::write_files_csv(&out.join(output::FILES_CSV), &scored)? {
        files.push(output::FILES_CSV.into());
    }
    match output::write_histogram(&out.join(output::HISTOGRAM_PNG), scores, threshold) {
        Ok(()) => files.push(output::HISTOGRAM_PNG.into()),
        Err(e) => tracing::warn!(error = %e, "no histogram plot"),
    }

    let mut memorization = estimate.report_section(threshold, Vec::new());
    let groups = if args.scores_only {
        None
    } else {
        let about = output::run_line(&memorization);
        let (groups, harmful, grid) = measure_model(
            &config, &onnx, adapter, &dataset, &scored, &estimate, threshold, &about, &out,
        )?;
        if grid {
            files.push(output::HARMFUL_PNG.into());
        }
        memorization.harmful_atypical = harmful;
        groups
    };
    let summary = Summary {
        schema: output::SUMMARY_SCHEMA.into(),
        model: args.model.display().to_string(),
        dataset: dataset.name.clone(),
        memorization,
        groups,
        subset_models: estimate.models.iter().map(SubsetModel::from).collect(),
        files: files.clone(),
    };
    output::write_summary(&out.join(output::SUMMARY_YAML), &summary)?;
    print_summary(&summary, &out);
    Ok(ExitCode::SUCCESS)
}

/// The config file with the command-line overrides applied, validated.
fn configure(args: &Args) -> anyhow::Result<Config> {
    let mut config = args.config.load()?;
    let m = &mut config.memorization;
    if let Some(e) = args.estimator {
        m.estimator = e;
    }
    if let Some(k) = args.k {
        m.k = k;
    }
    if let Some(r) = args.ratio {
        m.subset_ratio = r;
    }
    if let Some(t) = args.fit_target {
        m.fit_target = t;
    }
    if let Some(e) = args.max_epochs {
        m.max_epochs = e;
    }
    if let Some(e) = args.epochs {
        m.epochs = e;
    }
    if let Some(file) = &args.import {
        m.estimator = Estimator::Import;
        m.scores = Some(file.clone());
    }
    if let Some(n) = args.samples {
        m.train_samples = n;
        // The scored samples are the first N of the loaded training split: load at least that many.
        let loaded = &mut config.dataset.train_samples;
        if *loaded != 0 && (n == 0 || n > *loaded) {
            tracing::info!(
                from = *loaded,
                to = n,
                "loading more training samples to score --samples"
            );
            *loaded = n;
        }
    }
    if args.adversarial {
        m.adversarial = true;
    }
    if let Some(s) = args.seed {
        config.runtime.seed = s;
    }
    config.validate(Path::new("command line"))?;
    Ok(config)
}

/// The model's groups (train by score, test by consistency when estimated) and harmful samples; writes the grid
/// (`about` under its title). Returns whether the grid was written.
#[allow(clippy::too_many_arguments)]
fn measure_model(
    config: &Config,
    onnx: &OnnxModel,
    adapter: InputAdapter,
    dataset: &Dataset,
    scored: &Split,
    estimate: &Estimate,
    threshold: f64,
    about: &str,
    out: &Path,
) -> anyhow::Result<(
    Option<crate::report::Groups>,
    Vec<crate::report::HarmfulSample>,
    bool,
)> {
    let device = runtime::parse_device(&config.runtime.device)?;
    let mut model = TchModel::with_layout(
        onnx,
        adapter,
        config.model.input_layout,
        device,
        TchOptions::default(),
    )?;
    let options = GroupOptions::from_config(config, threshold);
    let scores = &estimate.scores;
    let test = estimate
        .consistency
        .as_ref()
        .map(|c| (&dataset.test, c.scores.as_slice()));
    let measured = model_groups(&mut model, scored, scores, test, &options, None)?
        .context("measuring the model's groups was cancelled")?;
    let harmful = harmful_atypical(
        scored,
        scores,
        &measured.train,
        options.threshold,
        config.memorization.harmful_top,
    )?;
    let grid = match harmful_grid(
        &out.join(output::HARMFUL_PNG),
        scored,
        &harmful,
        &dataset.class_names,
        about,
    ) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "no harmful-sample grid");
            false
        }
    };
    Ok((Some(measured.groups), harmful, grid))
}

/// Normalization from `model.mean`/`model.std`, else the dataset profile's; the layout is resolved from the ONNX
/// input when the model is built.
fn input_adapter(config: &Config, dataset: &Dataset) -> InputAdapter {
    InputAdapter {
        mean: config
            .model
            .mean
            .clone()
            .unwrap_or_else(|| dataset.mean.clone()),
        std: config
            .model
            .std
            .clone()
            .unwrap_or_else(|| dataset.std.clone()),
        layout: Layout::Nchw,
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

fn parse_estimator(s: &str) -> Result<Estimator, String> {
    serde_norway::from_str::<Estimator>(s)
        .map_err(|_| format!("`{s}`: expected learning-speed, feldman-zhang, holdout or import"))
}

fn print_summary(summary: &Summary, out: &Path) {
    let m = &summary.memorization;
    println!(
        "scores     {} ({}), {} samples, {} undefined",
        m.estimator,
        m.source.as_deref().unwrap_or(""),
        m.scored_samples.unwrap_or(0),
        m.undefined_scores.unwrap_or(0)
    );
    println!("estimator  {}", output::run_line(m));
    if let Some(c) = &m.self_check {
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1} %", 100.0 * v));
        println!(
            "fit        trained-on {} (least {}), held-out {}, test {}",
            pct(c.in_subset_acc),
            pct(c.in_subset_acc_min),
            pct(c.held_out_acc),
            pct(c.test_acc)
        );
        for w in &c.warnings {
            println!("warning    {w}");
        }
    }
    println!(
        "atypical   {:.1} % of the scored samples (score > {})",
        100.0 * m.atypical_share,
        m.threshold
    );
    if let Some(g) = &summary.groups {
        for (name, pair, what) in [
            ("train", &g.train, "clean / PGD"),
            ("test", &g.test, "clean / PGD"),
        ] {
            if let Some(p) = pair {
                println!(
                    "{name:<10} typical {:.3} / {:.3} ({} samples), atypical {:.3} / {:.3} ({} samples) [{what}]",
                    p.typical.clean,
                    p.typical.robust,
                    p.typical.samples,
                    p.atypical.clean,
                    p.atypical.robust,
                    p.atypical.samples
                );
            }
        }
    }
    println!("harmful    {} listed", m.harmful_atypical.len());
    println!("written    {}/ {}", out.display(), summary.files.join(", "));
}
