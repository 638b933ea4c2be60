//! What `robustd eval`, `finetune` and `compare` share: the flags that override the config, the model file and its
//! digests, where a run's results and checkpoints go, copying the model next to its report, writing and validating
//! `report.yaml`, the summary block, progress on a terminal, and turning a pipeline failure into one line.
//!
//! Where results go (unless `--out DIR`): `<paths.models>/<stem>/<key12>-<command>/`, where `key12` is the first 12
//! hex digits of sha256 over the model's digest, its external data's digests, the resolved config's digest and the
//! command's own settings. The same command on the same file with the same settings therefore lands in the same
//! directory (and `finetune`/`compare` resume from `<paths.state>/cli/<command>-<key12>/`); any changed flag gives
//! a new one. The `-<command>` suffix keeps them apart from the daemon's `<paths.models>/<name>/<key12>/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};

use super::interrupt::Interrupts;
use super::{ConfigArg, EXIT_FAILURE};
use crate::config::{Config, EvalMode, EvalPreset, Method, Norm};
use crate::durable;
use crate::eval::progress::TerminalProgress;
use crate::job::{content_key, key12, CancelReason, JobError, JobOutcome, Progress};
use crate::onnx::scan_model;
use crate::pipeline::stages::method_name;
use crate::pipeline::PipelineError;
use crate::report::{self, sha256_hex, FileRef, Report, Summary, REPORT_FILE};
use crate::train::TrainError;

/// Flags every experiment command takes; each overrides the config key named in its help.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Dataset: fashion-mnist, mnist, cifar10, cifar100 or npz [dataset.name].
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<String>,
    /// Where the dataset is read from: a directory (IDX, CIFAR) or an .npz file [dataset.path].
    #[arg(long, value_name = "PATH")]
    pub dataset_path: Option<PathBuf>,
    /// Perturbation radius in [0, 1] pixel space [threat.eps].
    #[arg(long)]
    pub eps: Option<f64>,
    /// Threat model [threat.norm].
    #[arg(long, value_parser = ["linf", "l2"])]
    pub norm: Option<String>,
    /// Evaluate the first N test samples; 0 = all [dataset.eval_samples].
    #[arg(long, value_name = "N")]
    pub n: Option<usize>,
    /// A seeded random subset instead of the first N samples [dataset.random_subset].
    #[arg(long)]
    pub random_subset: bool,
    /// Master seed: sample selection, attack starts, training order [runtime.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` [runtime.device].
    #[arg(long)]
    pub device: Option<String>,
    /// Output directory [default: <paths.models>/<stem>/<key12>-<command>/, key12 from the digests of the model,
    /// the resolved config and these flags: the same command lands in the same directory].
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Flags of the commands that fine-tune.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Fine-tuning epochs [train.epochs].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Training samples: the first N of the training split; 0 = all [dataset.train_samples].
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
}

/// Flags that choose the evaluation.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Attack suite: `fast` (--attacks with the config's budgets), or AutoAttack's `autoattack-standard`
    /// (RobustBench's protocol), `autoattack-plus`, `autoattack-rand` with their published budgets [eval.preset].
    #[arg(long, value_parser = ["fast", "autoattack-standard", "autoattack-plus", "autoattack-rand"])]
    pub preset: Option<String>,
    /// Attacks, comma-separated, run in this order: fgsm, pgd, cw, apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square
    /// (preset `fast` only) [eval.attacks].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub attacks: Option<Vec<String>>,
    /// `ensemble` (AutoAttack order, later attacks only on points still robust) or `standalone` (every attack on
    /// every clean-correct point) [eval.mode].
    #[arg(long, value_parser = ["ensemble", "standalone"])]
    pub mode: Option<String>,
}

impl CommonArgs {
    /// The config file (or the defaults) with these flags applied, validated.
    pub fn resolve(&self, edit: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let mut cfg = self.config.load()?;
        if let Some(name) = &self.dataset {
            cfg.dataset.name = name.clone();
        }
        if let Some(path) = &self.dataset_path {
            cfg.dataset.path = Some(path.clone());
        }
        if let Some(eps) = self.eps {
            cfg.threat.eps = eps;
        }
        if let Some(norm) = &self.norm {
            cfg.threat.norm = if norm == "l2" { Norm::L2 } else { Norm::Linf };
        }
        if let Some(n) = self.n {
            cfg.dataset.eval_samples = n;
        }
        if self.random_subset {
            cfg.dataset.random_subset = true;
        }
        if let Some(seed) = self.seed {
            cfg.runtime.seed = seed;
        }
        if let Some(device) = &self.device {
            cfg.runtime.device = device.clone();
        }
        edit(&mut cfg);
        let origin = match &self.config.config {
            Some(path) => format!("{} with command-line flags", path.display()),
            None => "command-line flags".to_owned(),
        };
        cfg.validate(Path::new(&origin))?;
        Ok(cfg)
    }
}

impl TrainArgs {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(epochs) = self.epochs {
            cfg.train.epochs = epochs;
        }
        if let Some(n) = self.train_samples {
            cfg.dataset.train_samples = n;
        }
    }
}

impl EvalArgs {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(preset) = &self.preset {
            cfg.eval.preset = match preset.as_str() {
                "autoattack-standard" => EvalPreset::AutoattackStandard,
                "autoattack-plus" => EvalPreset::AutoattackPlus,
                "autoattack-rand" => EvalPreset::AutoattackRand,
                _ => EvalPreset::Fast,
            };
        }
        if let Some(attacks) = &self.attacks {
            cfg.eval.attacks = attacks.iter().map(|a| a.trim().to_owned()).collect();
        }
        if let Some(mode) = &self.mode {
            cfg.eval.mode = if mode == "standalone" {
                EvalMode::Standalone
            } else {
                EvalMode::Ensemble
            };
        }
    }
}

/// The fine-tuning methods a user may ask for by name.
pub const FINE_TUNING_METHODS: &[Method] = &[
    Method::Bat,
    Method::PgdAt,
    Method::Trades,
    Method::BatReweightOnly,
    Method::BatRegOnly,
    Method::Standard,
];

/// A method name no fine-tuning method has.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown method `{name}` (known: {})", known_methods())]
pub struct UnknownMethod {
    pub name: String,
}

fn known_methods() -> String {
    let names: Vec<&str> = FINE_TUNING_METHODS
        .iter()
        .map(|m| method_name(*m))
        .collect();
    names.join(", ")
}

/// `bat` → `Method::Bat`, for the names [`method_name`] gives.
pub fn parse_method(name: &str) -> Result<Method, UnknownMethod> {
    FINE_TUNING_METHODS
        .iter()
        .copied()
        .find(|m| method_name(*m) == name.trim())
        .ok_or_else(|| UnknownMethod {
            name: name.to_owned(),
        })
}

/// The model file a command works on, with the digests that key its results.
pub struct Target {
    pub path: PathBuf,
    pub sha256: String,
    /// External-data files (relative to the model's directory) and their digests.
    pub companions: Vec<(String, String)>,
}

impl Target {
    /// Reads the model (and its external data) once; every error names the file.
    pub fn identify(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!("{}: no such model file", path.display());
        }
        let bytes = std::fs::read(path)
            .map(bytes::Bytes::from)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let locations = scan_model(bytes.clone())
            .map(|s| s.external_locations)
            .map_err(|e| anyhow::anyhow!("{}: not an ONNX model ({e})", path.display()))?;
        let mut companions = Vec::new();
        for location in locations {
            let file = dir.join(&location);
            let data = std::fs::read(&file).with_context(|| {
                format!(
                    "{}: cannot read its external data {}",
                    path.display(),
                    file.display()
                )
            })?;
            companions.push((location, sha256_hex(&data)));
        }
        Ok(Self {
            path: path.to_path_buf(),
            sha256: sha256_hex(&bytes),
            companions,
        })
    }

    /// `fmnist_cnn` for `fmnist_cnn.onnx`.
    pub fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }

    /// The content key ([`crate::job::key`]) of the model, its external data, the resolved config and `settings`
    /// (what else the command varies, e.g. compare's methods and seeds).
    pub fn run_key(&self, config: &Config, settings: &str) -> String {
        let companions: Vec<&str> = self.companions.iter().map(|(_, d)| d.as_str()).collect();
        content_key(
            &self.sha256,
            &companions,
            &config.hash_hex(),
            Some(settings),
        )
    }

    /// `--out`, or `<paths.models>/<stem>/<key12>-<command>`.
    pub fn out_dir(
        &self,
        out: Option<&Path>,
        config: &Config,
        key: &str,
        command: &str,
    ) -> PathBuf {
        match out {
            Some(dir) => dir.to_path_buf(),
            None => config
                .paths
                .models
                .join(self.stem())
                .join(format!("{}-{command}", key12(key))),
        }
    }

    /// Copies the model and its external data into `dir` (the report refers to them there) and returns the
    /// report's reference to the copy.
    pub fn copy_into(&self, dir: &Path) -> anyhow::Result<FileRef> {
        let name = self
            .path
            .file_name()
            .context("the model path has no file name")?;
        let source_dir = self.path.parent().unwrap_or(Path::new("."));
        for (location, _) in &self.companions {
            copy_unless_same(&source_dir.join(location), &dir.join(location))?;
        }
        let bytes = copy_unless_same(&self.path, &dir.join(name))?;
        Ok(FileRef {
            path: name.to_string_lossy().into_owned(),
            sha256: self.sha256.clone(),
            bytes: Some(bytes),
        })
    }
}

fn copy_unless_same(src: &Path, dst: &Path) -> anyhow::Result<u64> {
    let same = match (src.canonicalize(), dst.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Ok(std::fs::metadata(src)?.len());
    }
    Ok(durable::copy_atomic(src, dst)?)
}

/// `<paths.state>/cli/<command>-<key12>`: checkpoints that let the same command resume.
pub fn checkpoint_dir(config: &Config, command: &str, key: &str) -> PathBuf {
    config
        .paths
        .state
        .join("cli")
        .join(format!("{command}-{}", key12(key)))
}

/// A progress reporter for the pipeline that draws the evaluation's progress bar on a terminal (nothing when
/// stderr is not one) and logs each stage.
pub fn terminal_progress() -> Progress {
    let bar: Mutex<Option<TerminalProgress>> = Mutex::new(None);
    Progress::new(|update| {
        if update.new_stage {
            tracing::info!(stage = %update.stage, "stage");
        }
    })
    .with_eval_detail(move |p| {
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        // A new evaluation starts at its first stage with nothing done: a fresh bar for it.
        if p.stage_index == 1 && p.done == 0 {
            *bar = Some(TerminalProgress::new());
        }
        if let Some(bar) = bar.as_mut() {
            bar.update(p);
        }
    })
}

/// When a command started, for its report's timing block, and how long the process took to get there.
pub struct Clock {
    started_at: String,
    started: Instant,
    startup: Option<f64>,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            started_at: crate::job::now_rfc3339(),
            started: Instant::now(),
            startup: crate::runtime::process_age_seconds(),
        }
    }

    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Assembles the report of `outcome` (whose files lie in `dir`), writes `dir/report.yaml` atomically and validates
/// it (artifacts and digests included). Returns the report and its path.
pub fn write_report(
    outcome: JobOutcome,
    config: &Config,
    dir: &Path,
    original: FileRef,
    clock: &Clock,
    progress: &Progress,
) -> anyhow::Result<(Report, PathBuf)> {
    let mut timing = progress.timing(
        clock.started_at.clone(),
        clock.started_at.clone(),
        clock.seconds(),
    );
    timing.startup_seconds = clock.startup;
    let report = outcome
        .into_report(config, dir, original, None, timing)
        .with_context(|| format!("assembling the report in {}", dir.display()))?;
    let path = dir.join(REPORT_FILE);
    durable::write_yaml_atomic(&path, &report)?;
    report::validate_report_file(&path)
        .with_context(|| format!("{} is not a valid report (a robustd bug)", path.display()))?;
    Ok((report, path))
}

/// Prints the report's `summary:` block and where the report is, on stdout.
pub fn print_summary(summary: &Summary, report_path: &Path) {
    #[derive(serde::Serialize)]
    struct Block<'a> {
        summary: &'a Summary,
    }
    match serde_norway::to_string(&Block { summary }) {
        Ok(text) => print!("{text}"),
        Err(e) => tracing::warn!("cannot print the summary: {e}"),
    }
    println!("report: {}", report_path.display());
}

/// How a pipeline run that did not finish ends the command: a one-line cause (and a hint) with exit code 1, or,
/// when a signal stopped it, a note on the kept checkpoint with exit code 128 + signal. Only a signal keeps the
/// checkpoint directory: a failure is not resumable (a changed setting gives a new key anyway), so it is removed.
pub fn job_failed(error: JobError, interrupts: &Interrupts, checkpoint: Option<&Path>) -> ExitCode {
    if let (JobError::Failed { .. }, Some(dir)) = (&error, checkpoint) {
        let _ = std::fs::remove_dir_all(dir);
    }
    match error {
        JobError::Cancelled(reason) => {
            match (reason, checkpoint) {
                (CancelReason::Shutdown, Some(dir)) => eprintln!(
                    "robustd: interrupted; the checkpoint is kept in {} — run the same command again to resume",
                    dir.display()
                ),
                _ => eprintln!("robustd: interrupted ({reason})"),
            }
            ExitCode::from(interrupts.exit_code())
        }
        JobError::Failed {
            stage,
            source,
            hint,
        } => {
            let cause = report::error_chain(&*source).join(": ");
            let hint = source
                .downcast_ref::<PipelineError>()
                .and_then(cli_hint)
                .or(hint);
            fail(&format!("{stage} failed: {cause}"), hint.as_deref())
        }
    }
}

/// The daemon's hints speak of sidecar files; on the command line the same fixes are flags or `--config`.
fn cli_hint(error: &PipelineError) -> Option<String> {
    match error {
        PipelineError::Mismatch { .. } => Some(
            "pass --dataset NAME (and --dataset-path), or set model.input_layout / model.mean / model.std in a \
             --config file"
                .into(),
        ),
        PipelineError::Data(_) => Some("check --dataset / --dataset-path (or dataset.* in --config)".into()),
        PipelineError::Train(TrainError::NonFiniteLoss { .. }) => {
            Some("lower train.optimizer.lr in a --config file".into())
        }
        _ => None,
    }
}

/// Prints `robustd: error: CAUSE` (one line) and an optional hint; returns exit code 1.
pub fn fail(cause: &str, hint: Option<&str>) -> ExitCode {
    eprintln!("robustd: error: {}", cause.replace('\n', " "));
    if let Some(hint) = hint {
        eprintln!("robustd: hint: {hint}");
    }
    ExitCode::from(EXIT_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &[&str]) -> CommonArgs {
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            common: CommonArgs,
        }
        let argv = std::iter::once("probe").chain(args.iter().copied());
        <Probe as clap::Parser>::try_parse_from(argv)
            .map(|p| p.common)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_method_name_parses_back_and_unknown_names_list_the_known_ones() {
        for &m in FINE_TUNING_METHODS {
            assert_eq!(parse_method(method_name(m)), Ok(m));
        }
        let err = parse_method("madry").unwrap_err().to_string();
        assert!(err.contains("madry") && err.contains("pgd-at"), "{err}");
    }

    #[test]
    fn flags_override_the_config_and_are_validated() {
        let cfg = common(&["--eps", "0.05", "--norm", "l2", "--n", "7", "--seed", "9"])
            .resolve(|_| {})
            .unwrap();
        assert_eq!(cfg.threat.eps, 0.05);
        assert_eq!(cfg.threat.norm, Norm::L2);
        assert_eq!(cfg.dataset.eval_samples, 7);
        assert_eq!(cfg.runtime.seed, 9);
        let err = common(&["--eps", "2"]).resolve(|_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("threat.eps"), "{err:#}");
    }

    #[test]
    fn the_run_key_follows_the_model_the_config_and_the_command_settings() {
        let target = Target {
            path: PathBuf::from("m.onnx"),
            sha256: "a".repeat(64),
            companions: vec![("m.onnx.data".into(), "b".repeat(64))],
        };
        let cfg = Config::default();
        let key = target.run_key(&cfg, "eval");
        assert_eq!(key, target.run_key(&cfg.clone(), "eval"));
        assert_ne!(key, target.run_key(&cfg, "finetune"));
        let mut other = cfg.clone();
        other.threat.eps = 0.2;
        assert_ne!(key, target.run_key(&other, "eval"));
        let data_changed = Target {
            companions: vec![("m.onnx.data".into(), "c".repeat(64))],
            ..target
        };
        assert_ne!(key, data_changed.run_key(&cfg, "eval"));
        assert_eq!(
            data_changed.out_dir(None, &cfg, &key, "eval"),
            PathBuf::from(format!("models/m/{}-eval", &key[..12]))
        );
    }
}
