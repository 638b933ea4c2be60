//! A complete `report.yaml` from a job's outcome: the one assembly used both by the daemon (which adds its job
//! record) and by the CLI commands that run the pipeline directly.

use std::path::Path;

use crate::config::Config;
use crate::job::{JobOutcome, Progress};
use crate::report::{
    sha256_hex, Artifacts, EnvironmentInfo, FileRef, JobInfo, Report, Timing, REPORT_SCHEMA,
};
use crate::runtime;

/// Builds the report for `outcome`, whose files lie in `dir`. Plots the runner listed but did not write become
/// summary warnings rather than dangling references.
pub fn assemble(
    outcome: JobOutcome,
    config: &Config,
    dir: &Path,
    original_model: FileRef,
    job: Option<JobInfo>,
    timing: Timing,
) -> Result<Report, String> {
    let mut summary = outcome.summary;
    let fine_tuned_model = match &outcome.fine_tuned_model {
        Some(rel) => Some(file_ref(dir, rel)?),
        None => None,
    };
    let mut plots = Vec::new();
    for plot in outcome.plots {
        if dir.join(&plot).is_file() {
            plots.push(plot);
        } else {
            summary
                .warnings
                .push(format!("plot {plot} was not written"));
        }
    }
    summary.artifacts.fine_tuned_model = fine_tuned_model.as_ref().map(|f| f.path.clone());
    summary.artifacts.plots = plots.clone();
    Ok(Report {
        schema: REPORT_SCHEMA.to_owned(),
        summary,
        model: outcome.model,
        dataset: outcome.dataset,
        environment: environment(config),
        evaluation: outcome.evaluation,
        memorization: outcome.memorization,
        training: outcome.training,
        artifacts: Artifacts {
            original_model,
            fine_tuned_model,
            plots,
            per_sample: outcome.per_sample,
            training_log: outcome.training_log,
        },
        job,
        timing,
    })
}

/// The timing block from a progress tracker's stage times.
pub fn timing(queued_at: String, started_at: String, seconds: f64, progress: &Progress) -> Timing {
    Timing {
        queued_at,
        started_at,
        finished_at: crate::job::now_rfc3339(),
        seconds,
        stages: progress.stage_times(),
    }
}

/// The environment block of a report.
pub fn environment(config: &Config) -> EnvironmentInfo {
    let device = runtime::parse_device(&config.runtime.device)
        .map(runtime::device_name)
        .unwrap_or_else(|_| config.runtime.device.clone());
    EnvironmentInfo {
        robustd: env!("CARGO_PKG_VERSION").to_owned(),
        libtorch: runtime::libtorch_version(),
        onnxruntime: runtime::ort_version(),
        device,
        threads: if config.runtime.threads > 0 {
            config.runtime.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        },
        seed: config.runtime.seed,
    }
}

/// A file in `dir` with its digest.
pub fn file_ref(dir: &Path, rel: &str) -> Result<FileRef, String> {
    let bytes = std::fs::read(dir.join(rel)).map_err(|e| format!("artifact {rel}: {e}"))?;
    Ok(FileRef {
        path: rel.to_owned(),
        sha256: sha256_hex(&bytes),
        bytes: Some(bytes.len() as u64),
    })
}
