//! `/metrics`: the daemon's Prometheus registry (the `prometheus-client` crate, OpenMetrics text). The service loop
//! and the job threads record events as they happen (starts, ends, stage times, busy time per device); what is
//! cheaper to read than to track — jobs by state, queue depth, each model's latest accuracies — is read from the
//! queue and the reports at scrape time, on the blocking pool.
//!
//! Every series, all prefixed `robustd_`: `jobs{state}`, `queue_depth`, `job_duration_seconds{outcome}`,
//! `stage_duration_seconds{stage}`, `drop_to_start_seconds`, `job_attempts_total`, `jobs_finished_total{outcome}`,
//! `job_failures_total{stage}`, `device_busy_seconds_total{device}`, `model_clean_accuracy{model,method,phase}`,
//! `model_robust_accuracy{model,method,phase}`, `http_refused_total{reason}`. GPU memory is not exported (see
//! README "Watching robustd").

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::views::{self, ModelSummary};
use super::AppState;
use crate::job::JobState;
use crate::report::StageTime;

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
    /// The fine-tuning method (`none` for an evaluation-only result).
    method: String,
    /// `before` or `after` fine-tuning.
    phase: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a job ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Deduplicated,
    /// Failed in the named stage.
    Failed,
    /// Stopped by a shutdown; it resumes at the next start.
    Interrupted,
    /// Left to the queue (another worker took it over, or the queue could not record the end).
    Abandoned,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Deduplicated => "deduplicated",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Abandoned => "abandoned",
        }
    }
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    job_duration: Histograms<OutcomeLabel>,
    stage_duration: Histograms<StageLabel>,
    drop_to_start: Histogram,
    attempts: Counter,
    finished: Family<OutcomeLabel, Counter>,
    failures: Family<StageLabel, Counter>,
    busy: Family<DeviceLabel, Counter<f64, AtomicU64>>,
    clean: Family<ModelLabel, FloatGauge>,
    robust: Family<ModelLabel, FloatGauge>,
    refused: Family<ReasonLabel, Counter>,
}

/// Buckets for job and stage times: a tenth of a second to a day.
const SECONDS_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];
/// Buckets for the drop-to-start latency: 10 ms to an hour (a job waits for the one before it).
const LATENCY_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("robustd"),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            job_duration: Family::new_with_constructor(seconds_histogram),
            stage_duration: Family::new_with_constructor(seconds_histogram),
            drop_to_start: Histogram::new(LATENCY_BUCKETS),
            attempts: Counter::default(),
            finished: Family::default(),
            failures: Family::default(),
            busy: Family::default(),
            clean: Family::default(),
            robust: Family::default(),
            refused: Family::default(),
        };
        let r = &mut m.registry;
        r.register("jobs", "Jobs in the queue by state", m.jobs.clone());
        r.register(
            "queue_depth",
            "Jobs waiting to start",
            m.queue_depth.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Wall-clock time of a job attempt, by how it ended",
            m.job_duration.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Wall-clock time of a pipeline stage",
            m.stage_duration.clone(),
        );
        r.register(
            "drop_to_start_seconds",
            "Time from a model appearing in the inbox to its job starting (first attempts)",
            m.drop_to_start.clone(),
        );
        r.register(
            "job_attempts",
            "Job attempts started (a resume counts again)",
            m.attempts.clone(),
        );
        r.register(
            "jobs_finished",
            "Job attempts ended, and drops refused at intake, by outcome",
            m.finished.clone(),
        );
        r.register(
            "job_failures",
            "Failed jobs (refused drops included), by the stage that failed",
            m.failures.clone(),
        );
        r.register(
            "device_busy_seconds",
            "Seconds a device spent running jobs",
            m.busy.clone(),
        );
        r.register(
            "model_clean_accuracy",
            "Clean accuracy in the latest result of each model, before and after fine-tuning",
            m.clean.clone(),
        );
        r.register(
            "model_robust_accuracy",
            "Worst-case robust accuracy in the latest result of each model, before and after fine-tuning",
            m.robust.clone(),
        );
        r.register(
            "http_refused",
            "HTTP requests refused before any handler, by reason",
            m.refused.clone(),
        );
        m
    }

    /// A job attempt started; `since_drop` on its first attempt.
    pub fn job_started(&self, since_drop: Option<Duration>) {
        self.attempts.inc();
        if let Some(d) = since_drop {
            self.drop_to_start.observe(d.as_secs_f64());
        }
    }

    /// A job attempt ended after `elapsed` on `device`, with the stages it went through; `failed_stage` when it
    /// failed.
    pub fn job_finished(
        &self,
        outcome: Outcome,
        failed_stage: Option<&str>,
        elapsed: Duration,
        stages: &[StageTime],
        device: &str,
    ) {
        let outcome_label = OutcomeLabel {
            outcome: outcome.as_str().into(),
        };
        self.finished.get_or_create(&outcome_label).inc();
        self.job_duration
            .get_or_create(&outcome_label)
            .observe(elapsed.as_secs_f64());
        for stage in stages {
            self.stage_duration
                .get_or_create(&StageLabel {
                    stage: stage.name.clone(),
                })
                .observe(stage.seconds);
        }
        if let Some(stage) = failed_stage {
            self.failures
                .get_or_create(&StageLabel {
                    stage: stage.into(),
                })
                .inc();
        }
        self.busy
            .get_or_create(&DeviceLabel {
                device: device.into(),
            })
            .inc_by(elapsed.as_secs_f64());
    }

    /// A drop refused at intake (filed as failed without running), failing in `stage`.
    pub fn job_rejected(&self, stage: &str) {
        self.finished
            .get_or_create(&OutcomeLabel {
                outcome: "rejected".into(),
            })
            .inc();
        self.failures
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .inc();
    }

    /// A request refused by the guard.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Sets the scrape-time gauges and renders the registry.
    pub fn render(&self, counts: &[(JobState, usize)], models: &[ModelSummary]) -> String {
        for (state, n) in counts {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.dir_name().into(),
                })
                .set(*n as i64);
        }
        let queued = counts
            .iter()
            .find(|(s, _)| *s == JobState::Queued)
            .map_or(0, |(_, n)| *n);
        self.queue_depth.set(queued as i64);
        self.clean.clear();
        self.robust.clear();
        for model in models {
            for (phase, acc) in [("before", &model.before), ("after", &model.after)] {
                let Some(acc) = acc else { continue };
                let label = ModelLabel {
                    model: model.name.clone(),
                    method: model.method.clone(),
                    phase: phase.into(),
                };
                self.clean.get_or_create(&label).set(acc.clean_acc);
                self.robust.get_or_create(&label).set(acc.robust_acc_worst);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let st = state.clone();
    let read = tokio::task::spawn_blocking(move || {
        let counts = views::job_counts(&*st.queue)?;
        let models = views::models(&st.paths.models);
        Ok::<_, crate::queue::QueueError>(st.metrics.render(&counts, &models))
    })
    .await;
    match read {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            tracing::warn!("/metrics: cannot read the queue: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the queue: {e}\n"),
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
