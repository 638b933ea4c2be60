//! The JSON API (`/api/v1/...`, the version in the path), the probes, and a result's files by name. Documents carry
//! a `schema` key (`robustd.api.<what>/v1`); jobs are the spool's records (plus `error.yaml` for failed ones), a
//! model is its latest `report.yaml` as JSON. A name or path that is not a safe one is answered 404, like a
//! missing one, before anything is looked up.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;

use super::names::{is_safe_relative, is_safe_segment, resolve_inside};
use super::views::{self, JOBS_SCHEMA, JOB_SCHEMA, MODELS_SCHEMA, MODEL_SCHEMA};
use super::AppState;
use crate::job::JobState;
use crate::store::LATEST;

/// Runs blocking reads on tokio's blocking pool; a failure becomes a 503 (the queue) or 500.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::queue::QueueError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the queue: {e}\n"),
        )
            .into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}

/// The answer to an unknown route, a missing thing, or a name refused as unsafe.
pub fn not_found_response() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
        .into_response()
}

pub async fn not_found() -> Response {
    not_found_response()
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the spool was recovered, the inbox is watched, and the queue answers.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let recovered = state.readiness.recovered.load(Ordering::Acquire);
    let watching = state.readiness.watching.load(Ordering::Acquire);
    let queue = state.queue.clone();
    let reachable = tokio::task::spawn_blocking(move || queue.list(JobState::Queued).is_ok())
        .await
        .unwrap_or(false);
    let ready = recovered && watching && reachable;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "checks": {"spool_recovered": recovered, "inbox_watched": watching, "queue_reachable": reachable},
    });
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
}

/// `GET /api/v1/jobs[?state=queued|running|done|failed]`.
pub async fn jobs(State(state): State<AppState>, Query(q): Query<JobsQuery>) -> Response {
    let states: Vec<JobState> = match q.state {
        Some(s) => vec![s],
        None => JobState::ALL.to_vec(),
    };
    let queue = state.queue.clone();
    match blocking(move || views::jobs(&*queue, &states)).await {
        Ok(jobs) => Json(json!({"schema": JOBS_SCHEMA, "jobs": jobs})).into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/jobs/{id}`.
pub async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if !is_safe_segment(&id) {
        return not_found_response();
    }
    let queue = state.queue.clone();
    match blocking(move || views::job(&*queue, &id)).await {
        Ok(Some(job)) => Json(json!({"schema": JOB_SCHEMA, "job": job})).into_response(),
        Ok(None) => not_found_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/models`: the latest result of each model.
pub async fn models(State(state): State<AppState>) -> Response {
    let root = state.paths.models.clone();
    match blocking(move || Ok(views::models(&root))).await {
        Ok(models) => Json(json!({"schema": MODELS_SCHEMA, "models": models})).into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/models/{name}`: the latest report whole, and the model's results.
pub async fn model(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let root = state.paths.models.clone();
    match blocking(move || Ok(views::model(&root, &name))).await {
        Ok(Some(m)) => Json(json!({"schema": MODEL_SCHEMA, "model": m})).into_response(),
        Ok(None) => not_found_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/models/{name}/files/{path}`: a file of the model's latest result (`report.yaml`,
/// `plots/training.png`, the fine-tuned model...). Images are shown, text is shown as plain text, anything else
/// is a download.
pub async fn file(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
) -> Response {
    if !is_safe_segment(&name) || !is_safe_relative(&path) {
        return not_found_response();
    }
    let mut parts = vec![name.as_str(), LATEST];
    parts.extend(path.split('/'));
    let Some(real) = resolve_inside(&state.paths.models, &parts) else {
        return not_found_response();
    };
    let Ok(file) = tokio::fs::File::open(&real).await else {
        return not_found_response();
    };
    match file.metadata().await {
        Ok(meta) if meta.is_file() => {
            let (content_type, download) = content_type(&path);
            let file_name = path.rsplit('/').next().unwrap_or("file");
            let disposition = if download {
                format!("attachment; filename=\"{file_name}\"")
            } else {
                "inline".into()
            };
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            (
                [
                    (header::CONTENT_TYPE, content_type.to_owned()),
                    (header::CONTENT_LENGTH, meta.len().to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
        _ => not_found_response(),
    }
}

/// The content type of a result file by its extension, and whether it is a download.
fn content_type(path: &str) -> (&'static str, bool) {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => ("image/png", false),
        Some("yaml" | "yml" | "md" | "txt" | "csv" | "log") => ("text/plain; charset=utf-8", false),
        Some("json") => ("application/json", false),
        _ => ("application/octet-stream", true),
    }
}
