//! `robustd submit FILE [--config SIDECAR]`: hands a model to the daemon by copying it into the inbox atomically.
//! Every file is written under a hidden temporary name and renamed into place — the external-data companion
//! first, then the sidecar, the model last — so the daemon never sees a partial drop. The sidecar is validated
//! against the daemon's config before anything is copied. With a shared queue (`queue.backend: postgres`) it
//! enqueues directly instead: the files are gathered in a private directory of the shared store and go through
//! the same intake rules as an inbox drop (copied into the store, then enqueued).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::{Config, QueueBackend};
use crate::daemon::intake::{intake, Intake};
use crate::daemon::names::{classify, is_safe_companion, DropKind};
use crate::durable::copy_atomic;
use crate::onnx::scan_model;
use crate::queue;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (its `.onnx.data` companion, if it has one, is copied too).
    pub model: PathBuf,
    /// Per-model config overrides (a sidecar YAML: any subset of configs/default.yaml), copied as NAME.yaml.
    #[arg(short, long, value_name = "SIDECAR")]
    pub config: Option<PathBuf>,
    /// The daemon's config, to find its inbox (`paths.watch`).
    #[arg(long, value_name = "FILE")]
    pub daemon_config: Option<PathBuf>,
    /// The inbox directly (overrides the daemon config's `paths.watch`).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let daemon_cfg = Config::load_or_default(args.daemon_config.as_deref())?;
    let direct = daemon_cfg.queue.backend == QueueBackend::Postgres && args.watch.is_none();
    let watch = match (&daemon_cfg.queue.shared, direct) {
        // A private inbox in the shared store, handed to intake below.
        (Some(shared), true) => {
            let dir = shared.join(queue::postgres::INPUTS_DIR);
            crate::durable::create_dir_all(&dir)?;
            tempfile::Builder::new()
                .prefix(".submit-")
                .tempdir_in(&dir)
                .with_context(|| format!("cannot create a directory in {}", dir.display()))?
        }
        _ => tempfile::TempDir::new()?,
    };
    let (_private, watch) = if direct {
        let path = watch.path().to_path_buf();
        (Some(watch), path)
    } else {
        (
            None,
            args.watch
                .clone()
                .unwrap_or_else(|| daemon_cfg.paths.watch.clone()),
        )
    };
    if !watch.is_dir() {
        bail!(
            "inbox {} does not exist (is the daemon configured with this paths.watch?)",
            watch.display()
        );
    }
    let name = args
        .model
        .file_name()
        .context("the model path has no file name")?
        .to_owned();
    if classify(&name) != DropKind::Model {
        bail!(
            "{}: the daemon takes files named *.onnx (not hidden, not .part/.tmp)",
            args.model.display()
        );
    }
    let bytes = std::fs::read(&args.model)
        .map(bytes::Bytes::from)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let target = watch.join(&name);
    if target.exists() {
        bail!("{} is already waiting in the inbox", target.display());
    }

    // Everything is checked before the first byte lands in the inbox.
    if let Some(sidecar) = &args.config {
        let text = std::fs::read_to_string(sidecar)
            .with_context(|| format!("cannot read {}", sidecar.display()))?;
        daemon_cfg.with_overrides(&text, sidecar)?;
    }
    let source_dir = args.model.parent().unwrap_or(Path::new("."));
    let locations = scan_model(bytes)
        .map(|s| s.external_locations)
        .unwrap_or_default();
    for location in &locations {
        if !is_safe_companion(location) {
            bail!("the model references external data `{location}` outside its directory; the daemon refuses it");
        }
        if !source_dir.join(location).is_file() {
            bail!(
                "the model's external data {} is missing",
                source_dir.join(location).display()
            );
        }
    }

    // Companions first, then the sidecar, the model last: the daemon starts on the model's arrival.
    for location in &locations {
        let src = source_dir.join(location);
        copy_atomic(&src, &watch.join(location))
            .with_context(|| format!("copying external data {}", src.display()))?;
        println!("copied   {}", src.display());
    }
    if let Some(sidecar) = &args.config {
        let stem = name.to_string_lossy();
        let stem = stem.strip_suffix(".onnx").unwrap_or(&stem);
        copy_atomic(sidecar, &watch.join(format!("{stem}.yaml")))?;
        println!("sidecar  {} (valid)", sidecar.display());
    }
    copy_atomic(&args.model, &target)?;
    if direct {
        return enqueue(&daemon_cfg, &watch, &name, &args.model);
    }
    println!("submitted {} -> {}", args.model.display(), target.display());
    Ok(ExitCode::SUCCESS)
}

/// Takes the gathered drop into the shared queue through the daemon's intake.
fn enqueue(
    cfg: &Config,
    inbox: &Path,
    name: &std::ffi::OsStr,
    model: &Path,
) -> anyhow::Result<ExitCode> {
    let queue = queue::connect(cfg)?.context("no job queue")?;
    let outcome = intake(
        inbox,
        name,
        std::time::SystemTime::now(),
        &*queue,
        cfg,
        std::time::Duration::ZERO,
    )?;
    match outcome {
        Intake::Queued(job) => {
            println!(
                "queued   {} as job {} ({:?})",
                model.display(),
                job.id(),
                job.record.kind
            );
            Ok(ExitCode::SUCCESS)
        }
        Intake::Rejected(job) => bail!(
            "{} refused: {}",
            model.display(),
            job.record.error.as_deref().unwrap_or("see its error.yaml")
        ),
        Intake::Waiting(why) => bail!("{} is not complete: {why}", model.display()),
        Intake::Gone => bail!("{} disappeared during intake", model.display()),
    }
}
