//! Progress of a running job: the current stage and how far it is, handed to a sink (the daemon's job record and
//! systemd STATUS line, or a terminal), and the seconds each stage took for the report's `timing.stages`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::record::now_rfc3339;
use crate::report::{StagePart, StageTime, Timing};

/// One progress update as the daemon sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    pub stage: String,
    /// Fraction of the stage done, in [0, 1].
    pub fraction: f64,
    /// True when the stage just changed.
    pub new_stage: bool,
    /// The process running the job, when it runs in one of its own (the daemon's jobs).
    pub pid: Option<u32>,
}

type ProgressSink = Arc<dyn Fn(&ProgressUpdate) + Send + Sync>;
type EvalDetailSink = Arc<dyn Fn(&crate::eval::Progress) + Send + Sync>;

/// Reports the current stage and how far it is; the daemon turns updates into the job record and the systemd
/// STATUS line, and the stage changes into the report's `timing.stages`.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Mutex<ProgressState>>,
    sink: ProgressSink,
    /// Per-batch evaluation progress (stage, samples done) for a terminal progress bar; the daemon has none.
    eval_detail: Option<EvalDetailSink>,
}

struct ProgressState {
    stage: Option<(String, Instant)>,
    /// The current stage's finished parts, and the part running now.
    parts: Vec<StagePart>,
    part: Option<(String, Instant)>,
    finished: Vec<StageTime>,
    fraction: f64,
    pid: Option<u32>,
}

impl ProgressState {
    /// Ends the running part (if any) at `now`.
    fn end_part(&mut self, now: Instant) {
        if let Some((name, since)) = self.part.take() {
            self.parts.push(StagePart {
                name,
                seconds: now.duration_since(since).as_secs_f64(),
            });
        }
    }
}

impl Progress {
    pub fn new(sink: impl Fn(&ProgressUpdate) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ProgressState {
                stage: None,
                parts: Vec::new(),
                part: None,
                finished: Vec::new(),
                fraction: 0.0,
                pid: None,
            })),
            sink: Arc::new(sink),
            eval_detail: None,
        }
    }

    /// Also hands every evaluation progress report, as the evaluation protocol gives it, to `sink` (the CLI
    /// draws its progress bar from these).
    pub fn with_eval_detail(
        mut self,
        sink: impl Fn(&crate::eval::Progress) + Send + Sync + 'static,
    ) -> Self {
        self.eval_detail = Some(Arc::new(sink));
        self
    }

    /// Forwards one evaluation progress report to the detail sink, if there is one.
    pub fn eval_detail(&self, p: &crate::eval::Progress) {
        if let Some(sink) = &self.eval_detail {
            sink(p);
        }
    }

    /// A reporter that goes nowhere (for runners used outside the daemon).
    pub fn silent() -> Self {
        Self::new(|_| {})
    }

    /// Starts a stage (ending the previous one's timer).
    pub fn stage(&self, name: &str) {
        let mut st = self.lock();
        let now = Instant::now();
        st.end_part(now);
        let parts = std::mem::take(&mut st.parts);
        if let Some((prev, since)) = st.stage.take() {
            st.finished.push(StageTime {
                name: prev,
                seconds: now.duration_since(since).as_secs_f64(),
                parts,
            });
        }
        st.stage = Some((name.to_owned(), now));
        st.fraction = 0.0;
        let pid = st.pid;
        drop(st);
        (self.sink)(&ProgressUpdate {
            stage: name.to_owned(),
            fraction: 0.0,
            new_stage: true,
            pid,
        });
    }

    /// Starts a named part of the current stage (ending the previous part); the stage's end ends the last one.
    /// The report's `timing.stages[].parts` lists them.
    pub fn part(&self, name: &str) {
        let mut st = self.lock();
        if st.stage.is_none() {
            return;
        }
        let now = Instant::now();
        st.end_part(now);
        st.part = Some((name.to_owned(), now));
    }

    /// How far the current stage is, in [0, 1].
    pub fn fraction(&self, fraction: f64) {
        let fraction = fraction.clamp(0.0, 1.0);
        let mut st = self.lock();
        let stage = match &st.stage {
            Some((s, _)) => s.clone(),
            None => return,
        };
        st.fraction = fraction;
        let pid = st.pid;
        drop(st);
        (self.sink)(&ProgressUpdate {
            stage,
            fraction,
            new_stage: false,
            pid,
        });
    }

    /// The process now running the job (`None` once it ended): the sink hears of it with the current stage
    /// (`starting` before the first).
    pub fn process(&self, pid: Option<u32>) {
        let mut st = self.lock();
        st.pid = pid;
        let stage = st
            .stage
            .as_ref()
            .map_or_else(|| "starting".to_owned(), |(s, _)| s.clone());
        let fraction = st.fraction;
        drop(st);
        (self.sink)(&ProgressUpdate {
            stage,
            fraction,
            new_stage: false,
            pid,
        });
    }

    /// Seconds per stage so far, in order (the current stage counted up to now).
    pub fn stage_times(&self) -> Vec<StageTime> {
        let st = self.lock();
        let mut out = st.finished.clone();
        if let Some((name, since)) = &st.stage {
            let now = Instant::now();
            let mut parts = st.parts.clone();
            if let Some((part, started)) = &st.part {
                parts.push(StagePart {
                    name: part.clone(),
                    seconds: now.duration_since(*started).as_secs_f64(),
                });
            }
            out.push(StageTime {
                name: name.clone(),
                seconds: now.duration_since(*since).as_secs_f64(),
                parts,
            });
        }
        out
    }

    /// The report's timing block: the job's times, and the seconds per stage so far (finished now).
    pub fn timing(&self, queued_at: String, started_at: String, seconds: f64) -> Timing {
        Timing {
            queued_at,
            started_at,
            finished_at: now_rfc3339(),
            seconds,
            startup_seconds: None,
            stages: self.stage_times(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
