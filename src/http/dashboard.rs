//! The dashboard: server-rendered HTML (maud, compiled templates). `/` shows the models table (latest result of
//! each: verdict, clean/robust accuracy before and after, method, atypical share, date, device), the queue with
//! running jobs' stage and progress, and failed jobs with their cause and hint; `/models/{name}` shows one model's
//! summary, every plot, the memorization histogram and harmful atypical samples, the comparison when there is
//! one, and its files to download. No inline script or style (the CSP forbids both): `/static/refresh.js`
//! re-fetches the page every few seconds and swaps its live part, `/static/style.css` styles it.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::api::{blocking, not_found_response};
use super::views::{self, JobView, ModelDetail, ModelSummary};
use super::AppState;
use crate::job::JobState;
use crate::report::{AccuracySummary, Report, Verdict};

const REFRESH_JS: &str = include_str!("assets/refresh.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// `GET /static/{file}`: the two assets, nothing else.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "refresh.js" => ("text/javascript; charset=utf-8", REFRESH_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return not_found_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn index(State(state): State<AppState>) -> Response {
    let queue = state.queue.clone();
    let root = state.paths.models.clone();
    let read = blocking(move || {
        let models = views::models(&root);
        let active = views::jobs(&*queue, &[JobState::Running, JobState::Queued])?;
        let failed = views::jobs(&*queue, &[JobState::Failed])?;
        Ok((models, active, failed))
    })
    .await;
    match read {
        Ok((models, active, failed)) => page(
            "robustd",
            html! {
                h1 { "robustd" }
                (models_table(&models))
                (queue_table(&active))
                (failed_table(&failed))
            },
        ),
        Err(r) => r,
    }
}

/// `GET /models/{name}`.
pub async fn model(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let root = state.paths.models.clone();
    match blocking(move || Ok(views::model(&root, &name))).await {
        Ok(Some(detail)) => page(
            &format!("{} — robustd", detail.summary.name),
            model_page(&detail),
        ),
        Ok(None) => not_found_response(),
        Err(r) => r,
    }
}

fn page(title: &str, live: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/refresh.js" defer {}
            }
            body {
                nav { a href="/" { "models & jobs" } " · " a href="/metrics" { "metrics" } " · "
                      a href="/api/v1/models" { "API" }
                      span #updated {} }
                main #live { (live) }
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "–".into()
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map(pct).unwrap_or_else(|| "–".into())
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Improved => "improved",
        Verdict::Unchanged => "unchanged",
        Verdict::Degraded => "degraded",
        Verdict::EvaluationOnly => "evaluation-only",
        Verdict::Failed => "failed",
    }
}

fn accuracy_cells(acc: Option<&AccuracySummary>) -> Markup {
    html! {
        td.num { (opt_pct(acc.map(|a| a.clean_acc))) }
        td.num { (opt_pct(acc.map(|a| a.robust_acc_worst))) }
    }
}

fn models_table(models: &[ModelSummary]) -> Markup {
    html! {
        section #models-section {
            h2 { "Models" }
            @if models.is_empty() {
                p.empty { "No results yet: drop an ONNX model into the inbox." }
            } @else {
                table #models {
                    thead {
                        tr { th rowspan="2" { "model" } th rowspan="2" { "verdict" }
                             th colspan="2" { "before" } th colspan="2" { "after" }
                             th rowspan="2" { "method" } th rowspan="2" { "atypical" }
                             th rowspan="2" { "finished" } th rowspan="2" { "device" } }
                        tr { th { "clean" } th { "robust" } th { "clean" } th { "robust" } }
                    }
                    tbody {
                        @for m in models {
                            tr data-model=(m.name) {
                                td { a href={ "/models/" (m.name) } { (m.name) } }
                                td { span class={ "verdict " (verdict_name(m.verdict)) } { (verdict_name(m.verdict)) } }
                                (accuracy_cells(m.before.as_ref()))
                                (accuracy_cells(m.after.as_ref()))
                                td { (m.method) }
                                td.num { (opt_pct(m.atypical_share)) }
                                td { time { (m.finished_at) } }
                                td { (m.device) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn queue_table(jobs: &[JobView]) -> Markup {
    html! {
        section #queue-section {
            h2 { "Queue" }
            @if jobs.is_empty() {
                p.empty { "Nothing queued or running." }
            } @else {
                table #queue {
                    thead { tr { th { "job" } th { "model" } th { "state" } th { "stage" } th { "progress" }
                                 th { "attempts" } th { "queued" } } }
                    tbody {
                        @for j in jobs {
                            @let r = &j.record;
                            tr data-job=(r.id) data-state=(r.state.dir_name()) {
                                td { a href={ "/api/v1/jobs/" (r.id) } { (r.id) } }
                                td { (r.dropped_as) }
                                td { (r.state.dir_name()) }
                                td { (r.stage.as_deref().unwrap_or("–")) }
                                td { @if let Some(p) = r.progress {
                                        progress max="1" value=(format!("{p:.3}")) {} " " (pct(p))
                                     } @else { "–" } }
                                td.num { (r.attempts) }
                                td { time { (r.queued_at) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn failed_table(jobs: &[JobView]) -> Markup {
    html! {
        section #failed-section {
            h2 { "Failed jobs" }
            @if jobs.is_empty() {
                p.empty { "No failed jobs." }
            } @else {
                table #failed {
                    thead { tr { th { "job" } th { "dropped as" } th { "stage" } th { "cause" } th { "hint" }
                                 th { "when" } } }
                    tbody {
                        @for j in jobs.iter().rev() {
                            @let r = &j.record;
                            @let f = j.failure.as_ref();
                            tr data-job=(r.id) {
                                td { a href={ "/api/v1/jobs/" (r.id) } { (r.id) } }
                                td { (r.dropped_as) }
                                td.stage { (f.map(|f| f.stage.as_str()).or(r.stage.as_deref()).unwrap_or("–")) }
                                td.cause { (f.map(|f| f.cause.as_str()).or(r.error.as_deref()).unwrap_or("–")) }
                                td.hint { (f.and_then(|f| f.hint.as_deref()).unwrap_or("–")) }
                                td { time { (r.finished_at.as_deref().unwrap_or("–")) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn model_page(d: &ModelDetail) -> Markup {
    let s = &d.summary;
    let r = &d.report;
    let file = |path: &str| format!("/api/v1/models/{}/files/{path}", s.name);
    html! {
        h1 { (s.name) }
        section #summary-section {
            h2 { "Summary" }
            dl #summary {
                dt { "verdict" } dd { span class={ "verdict " (verdict_name(s.verdict)) } { (verdict_name(s.verdict)) } }
                dt { "dropped as" } dd { (r.summary.model) }
                dt { "threat model" } dd { (r.summary.threat_model.norm) " ε=" (r.summary.threat_model.eps) }
                dt { "before" } dd.before { (accuracy_line(s.before.as_ref())) }
                dt { "after" } dd.after { (accuracy_line(s.after.as_ref())) }
                dt { "method" } dd { (s.method) }
                dt { "atypical share" } dd { (opt_pct(s.atypical_share)) }
                dt { "finished" } dd { time { (s.finished_at) } }
                dt { "device" } dd { (s.device) }
                dt { "result" } dd { (s.result) }
            }
            @if !r.summary.warnings.is_empty() {
                ul.warnings { @for w in &r.summary.warnings { li { (w) } } }
            }
        }
        section #files-section {
            h2 { "Files" }
            ul #files {
                li { a href=(file("report.yaml")) { "report.yaml" } }
                li { a href=(file(&r.artifacts.original_model.path)) download { "original model: " (r.artifacts.original_model.path) } }
                @if let Some(tuned) = &r.artifacts.fine_tuned_model {
                    li { a #fine-tuned href=(file(&tuned.path)) download { "fine-tuned model: " (tuned.path) } }
                }
            }
        }
        @if !r.artifacts.plots.is_empty() {
            section #plots-section {
                h2 { "Plots" }
                @for plot in &r.artifacts.plots {
                    figure.plot { img src=(file(plot)) alt=(plot); figcaption { (plot) } }
                }
            }
        }
        (memorization(r))
        @if let Some(c) = &d.comparison {
            section #comparison-section { h2 { "Comparison" } pre #comparison { (c) } }
        }
        @if d.results.len() > 1 {
            section { h2 { "All results" } ul { @for k in &d.results { li { (k) } } } }
        }
    }
}

fn accuracy_line(acc: Option<&AccuracySummary>) -> String {
    match acc {
        Some(a) => format!(
            "clean {} · robust (worst case) {}",
            pct(a.clean_acc),
            pct(a.robust_acc_worst)
        ),
        None => "–".into(),
    }
}

/// The memorization histogram as bars (`<meter>`: no inline style needed) and the harmful atypical samples.
fn memorization(r: &Report) -> Markup {
    let Some(m) = &r.memorization else {
        return html! {};
    };
    let max = m.histogram.counts.iter().copied().max().unwrap_or(0).max(1);
    html! {
        section #memorization-section {
            h2 { "Memorization" }
            p { (m.estimator) ", threshold " (m.threshold) ", atypical share " (pct(m.atypical_share)) }
            table #memorization-histogram {
                thead { tr { th { "score" } th { "samples" } th {} } }
                tbody {
                    @for (i, count) in m.histogram.counts.iter().enumerate() {
                        tr {
                            td { (format!("{:.2}–{:.2}", m.histogram.bins.get(i).copied().unwrap_or(f64::NAN),
                                          m.histogram.bins.get(i + 1).copied().unwrap_or(f64::NAN))) }
                            td.num { (count) }
                            td { meter min="0" max=(max) value=(count) {} }
                        }
                    }
                }
            }
            @if !m.harmful_atypical.is_empty() {
                h3 { "Harmful atypical samples" }
                table #harmful {
                    thead { tr { th { "index" } th { "label" } th { "score" } th { "p(label | adversarial)" } } }
                    tbody {
                        @for h in &m.harmful_atypical {
                            tr { td.num { (h.index) } td.num { (h.label) } td.num { (format!("{:.3}", h.score)) }
                                 td.num { (format!("{:.3}", h.adv_confidence)) } }
                        }
                    }
                }
            }
        }
    }
}
