//! What the API and the dashboard show, read from where the daemon keeps it: jobs from the queue (their records,
//! and `error.yaml` for failed ones), models from `paths.models/<name>/latest/report.yaml`. Blocking file I/O:
//! callers run these on tokio's blocking pool.

use std::path::Path;

use serde::Serialize;

use super::names::{is_safe_segment, resolve_inside};
use crate::durable::read_yaml;
use crate::job::{Job, JobRecord, JobState, ERROR_FILE};
use crate::queue::{Queue, QueueError};
use crate::report::{AccuracySummary, ErrorReport, Report, Verdict, REPORT_FILE};
use crate::store::LATEST;

/// The versioned schema names of the API's documents.
pub const JOBS_SCHEMA: &str = "robustd.api.jobs/v1";
pub const JOB_SCHEMA: &str = "robustd.api.job/v1";
pub const MODELS_SCHEMA: &str = "robustd.api.models/v1";
pub const MODEL_SCHEMA: &str = "robustd.api.model/v1";

/// A job as the API shows it: its record and, for a failed one, its error report.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<ErrorReport>,
}

/// One row of the models table: the latest result of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    /// The `<key12>` directory `latest` points at.
    pub result: String,
    pub verdict: Verdict,
    pub before: Option<AccuracySummary>,
    pub after: Option<AccuracySummary>,
    /// Fine-tuning method, `none` when the result is evaluation-only.
    pub method: String,
    pub atypical_share: Option<f64>,
    pub finished_at: String,
    pub device: String,
    pub runner: Option<String>,
}

/// A model's page: its latest report whole, every result it has, and the comparison if one was made there.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetail {
    #[serde(flatten)]
    pub summary: ModelSummary,
    pub results: Vec<String>,
    pub report: Report,
    /// `comparison.md` of the latest result, when there is one.
    pub comparison: Option<String>,
}

impl ModelSummary {
    fn of(name: &str, result: String, report: &Report) -> Self {
        let method = report
            .summary
            .after
            .as_ref()
            .and_then(|a| a.method.clone())
            .unwrap_or_else(|| "none".into());
        Self {
            name: name.to_owned(),
            result,
            verdict: report.summary.verdict,
            before: report.summary.before.clone(),
            after: report.summary.after.clone(),
            method,
            atypical_share: report.summary.atypical_share,
            finished_at: report.timing.finished_at.clone(),
            device: report.environment.device.clone(),
            runner: report.job.as_ref().map(|j| j.runner.clone()),
        }
    }
}

/// How many jobs are in each state.
pub fn job_counts(queue: &dyn Queue) -> Result<Vec<(JobState, usize)>, QueueError> {
    JobState::ALL
        .into_iter()
        .map(|s| Ok((s, queue.list(s)?.len())))
        .collect()
}

/// Jobs in `states`, each state oldest first, failed ones with their error report.
pub fn jobs(queue: &dyn Queue, states: &[JobState]) -> Result<Vec<JobView>, QueueError> {
    let mut out = Vec::new();
    for &state in states {
        out.extend(queue.list(state)?.into_iter().map(view));
    }
    Ok(out)
}

/// One job by id, if the queue has it.
pub fn job(queue: &dyn Queue, id: &str) -> Result<Option<JobView>, QueueError> {
    for state in JobState::ALL {
        if let Some(j) = queue.list(state)?.into_iter().find(|j| j.id() == id) {
            return Ok(Some(view(j)));
        }
    }
    Ok(None)
}

fn view(job: Job) -> JobView {
    let failure = (job.record.state == JobState::Failed)
        .then(|| read_yaml::<ErrorReport>(&job.dir.join(ERROR_FILE)).ok())
        .flatten();
    JobView {
        record: job.record,
        failure,
    }
}

/// The latest result of every model with one, by name.
pub fn models(root: &Path) -> Vec<ModelSummary> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_safe_segment(n))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| {
            latest(root, n).map(|(result, report)| ModelSummary::of(n, result, &report))
        })
        .collect()
}

/// One model's page data; `None` when the name is unsafe or has no complete result.
pub fn model(root: &Path, name: &str) -> Option<ModelDetail> {
    if !is_safe_segment(name) {
        return None;
    }
    let (result, report) = latest(root, name)?;
    let dir = resolve_inside(root, &[name])?;
    let mut results: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_safe_segment(n) && n != LATEST)
        .filter(|n| resolve_inside(root, &[name, n, REPORT_FILE]).is_some())
        .collect();
    results.sort();
    let comparison = resolve_inside(root, &[name, LATEST, "comparison.md"])
        .and_then(|p| std::fs::read_to_string(p).ok());
    Some(ModelDetail {
        summary: ModelSummary::of(name, result, &report),
        results,
        report,
        comparison,
    })
}

/// `(key12, report)` of the result `models/<name>/latest` points at.
fn latest(root: &Path, name: &str) -> Option<(String, Report)> {
    let path = resolve_inside(root, &[name, LATEST, REPORT_FILE])?;
    let report: Report = read_yaml(&path).ok()?;
    let result = std::fs::read_link(root.join(name).join(LATEST))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| LATEST.into());
    Some((result, report))
}
