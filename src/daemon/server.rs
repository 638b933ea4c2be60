//! The service loop: one `select!` over inbox events, a tick (stability checks, dispatch, timeouts, STATUS), the
//! rescan timer, finished jobs, SIGHUP (reload) and the injected shutdown future (SIGTERM/SIGINT in the binary,
//! anything in tests). Intake runs on one dedicated thread, each job on a thread of its own (which, in `robustd
//! run`, supervises the job's process: [`crate::isolation`]); the loop itself never blocks on model work.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::sync::mpsc;

use super::executor::{Executor, Finished};
use super::inbox::{warn_if_world_writable, Inbox};
use super::intake::{intake, Intake};
use super::service::{self, ActiveJob, ActiveJobs};
use super::watcher::{self, WatchError};
use crate::config::{Config, ConfigError, QueueBackend};
use crate::device::{DevicePool, DeviceSpecError};
use crate::durable::WriteError;
use crate::http::{HttpError, Metrics, Readiness};
use crate::job::cancel::ClaimCheck;
use crate::job::{CancelReason, CancelToken, Job, JobRunner, Progress, ProgressUpdate};
use crate::queue::{self, Claimable, Queue, QueueError};

/// How long running jobs get to checkpoint and return after a shutdown request (systemd's default stop timeout
/// is 90 s; we promise 10 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot set up the job queue: {0}")]
    Queue(#[from] QueueError),
    #[error("cannot create the inbox: {0}")]
    Inbox(WriteError),
    #[error("cannot set up the artifact store: {0}")]
    Store(#[from] WriteError),
    #[error("cannot watch the inbox {path}: {source}")]
    Watch { path: PathBuf, source: WatchError },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the HTTP server: {0}")]
    Http(#[from] HttpError),
    #[error("runtime.devices: {0}")]
    Devices(#[from] DeviceSpecError),
}

/// The daemon's inputs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: Config,
    /// Re-read on SIGHUP; `None` = built-in defaults, nothing to reload.
    pub config_path: Option<PathBuf>,
}

/// Runs the daemon until `shutdown` completes; then asks running jobs to checkpoint and waits up to
/// [`SHUTDOWN_GRACE`] for them.
pub async fn run(
    options: DaemonOptions,
    runner: Arc<dyn JobRunner>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut config = options.config;
    let paths = config.paths.clone();
    crate::durable::create_dir_all(&paths.watch).map_err(DaemonError::Inbox)?;
    warn_if_world_writable(&paths.watch);
    let pool = device_pool(&config)?;
    let queue = queue::open(&config, &worker_devices(&pool))?;
    let (metrics, readiness) = (Arc::new(Metrics::new()), Arc::new(Readiness::default()));
    let http = crate::http::start(
        &config.daemon.http,
        &paths,
        queue.clone(),
        metrics.clone(),
        readiness.clone(),
    )
    .await?;
    let recovery = queue.recover(&paths.watch)?;
    readiness.set_recovered();
    if !recovery.resumed.is_empty() {
        tracing::info!(
            "resuming {} job(s) left running: {}",
            recovery.resumed.len(),
            recovery.resumed.join(", ")
        );
    }
    let store = queue::store(&config)?;
    let shared = config.queue.backend != QueueBackend::Spool;
    let live = if shared {
        Some(queue.live_leases()?)
    } else {
        None
    };
    store.sweep_stale(live.as_deref());
    let exec = Executor {
        queue: queue.clone(),
        store,
        runner,
    };

    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<OsString>();
    let poll_interval = Duration::from_millis(config.daemon.stable_ms.clamp(50, 1000));
    // A worker of a shared queue that does not ingest watches nothing.
    let ingest = !shared || config.queue.ingest;
    let watcher = if ingest {
        Some(
            watcher::watch(&paths.watch, config.daemon.poll, poll_interval, event_tx).map_err(
                |source| DaemonError::Watch {
                    path: paths.watch.clone(),
                    source,
                },
            )?,
        )
    } else {
        None
    };
    // (A worker that does not ingest has no inbox to watch: ready once the others are.)
    readiness.set_watching();
    let wakeup = queue.wakeup();
    let (intake_tx, intake_rx) = std::sync::mpsc::channel::<(OsString, SystemTime, Arc<Config>)>();
    let (intake_done_tx, mut intake_done_rx) = mpsc::unbounded_channel::<(OsString, Intake)>();
    let intake_thread = {
        let queue = queue.clone();
        let metrics = metrics.clone();
        let inbox = paths.watch.clone();
        std::thread::Builder::new()
            .name("intake".into())
            .spawn(move || {
                for (name, seen_at, cfg) in intake_rx {
                    let stable = Duration::from_millis(cfg.daemon.stable_ms);
                    let outcome = intake(&inbox, &name, seen_at, &*queue, &cfg, stable)
                        .unwrap_or_else(|e| {
                            tracing::error!("intake of {}: {e}", name.to_string_lossy());
                            Intake::Waiting(format!("intake error: {e}"))
                        });
                    super::observe::intake_done(&outcome, &metrics);
                    if intake_done_tx.send((name, outcome)).is_err() {
                        break;
                    }
                }
            })
            .map_err(DaemonError::Thread)?
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();

    let mut state = Loop {
        exec,
        inbox: Inbox::new(&paths.watch),
        running: HashMap::new(),
        pool,
        active: Arc::new(Mutex::new(Default::default())),
        done_tx,
        last_status: String::new(),
        metrics,
    };
    if ingest {
        if let Err(e) = state.inbox.rescan() {
            tracing::warn!("cannot list {}: {e}", paths.watch.display());
        }
    }
    tracing::info!(
        watch = %paths.watch.display(), models = %paths.models.display(), state = %paths.state.display(),
        watcher = watcher.as_ref().map_or("none (does not ingest)", |w| w.kind), queued = queue.queued(),
        "robustd daemon ready"
    );
    state.dispatch();
    state.last_status = service::status_line(&state.active, queue.queued());
    service::ready(&state.last_status);

    let mut tick = tokio::time::interval(tick_period(&config));
    let mut rescan = tokio::time::interval(Duration::from_millis(config.daemon.rescan_ms.max(100)));
    let mut watchdog =
        tokio::time::interval(service::watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    for t in [&mut tick, &mut rescan, &mut watchdog] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut config_arc = Arc::new(config.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(name) = event_rx.recv() => state.inbox.note(&name),
            _ = tick.tick() => {
                for (name, seen_at) in state.inbox.ready(Duration::from_millis(config.daemon.stable_ms)) {
                    let _ = intake_tx.send((name, seen_at, config_arc.clone()));
                }
                state.enforce_limits();
                state.dispatch();
                state.publish_status();
            }
            _ = wakeup.notified() => state.dispatch(),
            _ = rescan.tick(), if ingest => {
                if let Err(e) = state.inbox.rescan() {
                    tracing::warn!("cannot list {}: {e}", paths.watch.display());
                }
            }
            Some((name, outcome)) = intake_done_rx.recv() => {
                state.inbox.settled(&name, outcome.waiting());
                if let Intake::Queued(_) = outcome {
                    state.dispatch();
                }
            }
            Some(finished) = done_rx.recv() => {
                state.finished(&finished);
                state.dispatch();
                state.publish_status();
            }
            _ = watchdog.tick() => service::watchdog(),
            Some(()) = recv_signal(&mut hangup) => {
                service::reloading();
                if let Some(new) = reload(&config, options.config_path.as_deref()) {
                    state.pool.set_eval_per_device(new.daemon.eval_concurrency);
                    config = new;
                    config_arc = Arc::new(config.clone());
                    tick = tokio::time::interval(tick_period(&config));
                    rescan = tokio::time::interval(Duration::from_millis(config.daemon.rescan_ms.max(100)));
                }
                state.last_status.clear();
                state.publish_status();
                service::ready(&state.last_status);
            }
        }
    }

    service::stopping();
    tracing::info!(running = state.running.len(), "shutting down");
    drop(intake_tx);
    for job in state.running.values() {
        job.cancel.cancel(CancelReason::Shutdown);
    }
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !state.running.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(finished)) => state.finished(&finished),
            Ok(None) => break,
            Err(_) => {
                let ids: Vec<&String> = state.running.keys().collect();
                tracing::warn!("jobs still running after {SHUTDOWN_GRACE:?}: {ids:?}; they resume at the next start");
                break;
            }
        }
    }
    drop(watcher);
    if let Some(http) = http {
        http.stop().await;
    }
    let _ = intake_thread.join();
    state.exec.queue.close();
    Ok(())
}

/// The pool of `runtime.devices` on this host, each device with its model name (logged once).
fn device_pool(config: &Config) -> Result<DevicePool, DeviceSpecError> {
    let ids = config.runtime.devices.resolve(
        &config.runtime.device,
        tch::Cuda::device_count().max(0) as usize,
    )?;
    let slots = crate::device::host_slots(&ids);
    for s in &slots {
        tracing::info!(device = %s.id, model = %s.model, "device in the pool");
    }
    Ok(DevicePool::new(slots, config.daemon.eval_concurrency))
}

/// The devices this worker advertises to a shared queue: its pool's, named as reports name them, with the GPU
/// model, and with the GPU indices the host sees when `CUDA_VISIBLE_DEVICES` narrows them.
fn worker_devices(pool: &DevicePool) -> Vec<String> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    pool.slots()
        .iter()
        .map(|s| match (s.id.is_cuda(), visible.is_empty()) {
            (true, false) => format!("{} {} (CUDA_VISIBLE_DEVICES={visible})", s.id, s.model),
            (true, true) => format!("{} {}", s.id, s.model),
            (false, _) => s.id.to_string(),
        })
        .collect()
}

struct RunningJob {
    key: String,
    cancel: CancelToken,
    deadline: Option<Instant>,
}

struct Loop {
    exec: Executor,
    inbox: Inbox,
    running: HashMap<String, RunningJob>,
    /// Which running job holds which device.
    pool: DevicePool,
    active: ActiveJobs,
    done_tx: mpsc::UnboundedSender<Finished>,
    last_status: String,
    metrics: Arc<Metrics>,
}

impl Loop {
    /// Claims and starts queued jobs, oldest first, while a device has room for their kind: one training job per
    /// device, up to `daemon.eval_concurrency` evaluation-only jobs per device. A job whose key is running waits
    /// (it then dedupes).
    fn dispatch(&mut self) {
        loop {
            let can = self.claimable();
            if can.kinds.is_empty() {
                break;
            }
            match self.exec.queue.claim(&can) {
                Ok(Some(job)) => self.start(job),
                Ok(None) => break,
                Err(e) => {
                    // The next tick tries again.
                    tracing::error!("cannot claim a job: {e}");
                    break;
                }
            }
        }
    }

    /// The kinds a device has room for, and the keys running here.
    fn claimable(&self) -> Claimable {
        Claimable {
            kinds: self.pool.free_kinds(),
            busy_keys: self.running.values().map(|r| r.key.clone()).collect(),
        }
    }

    fn start(&mut self, mut job: Job) {
        let id = job.id().to_owned();
        // The job's device lease, given back in `finished`; the job runs on it through its record (the executor
        // makes it the job's `runtime.device`). `claimable` offered only kinds a device has room for.
        let device = self
            .pool
            .acquire(&id, job.record.kind)
            .map_or_else(|| "cpu".to_owned(), |s| s.id.to_string());
        job.record.device = Some(device.clone());
        let cancel = CancelToken::new();
        let timeout = job
            .load_config()
            .map(|c| c.limits.job_timeout_s)
            .unwrap_or(0);
        self.running.insert(
            id.clone(),
            RunningJob {
                key: job.record.key.clone(),
                cancel: cancel.clone(),
                deadline: (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout)),
            },
        );
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                ActiveJob {
                    name: job.record.name.clone(),
                    device: device.clone(),
                    stage: "starting".into(),
                    fraction: 0.0,
                    pid: None,
                    attempt: job.record.attempts,
                },
            );
        let since_drop = job
            .record
            .detected_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .filter(|_| job.record.attempts == 1);
        self.metrics.job_started(since_drop);
        let since_drop = since_drop
            .map(|d| format!(", {} ms after it appeared in the inbox", d.as_millis()))
            .unwrap_or_default();
        tracing::info!(job = %id, attempt = job.record.attempts, device = %device, "started {}{since_drop}", job.record.dropped_as);
        let record = Arc::new(Mutex::new((
            job.clone(),
            Instant::now() - Duration::from_secs(1),
        )));
        cancel.set_claim_check(claim_check(&record, &self.exec.queue));
        let progress = progress_sink(record, &self.exec.queue, &self.active, &cancel);
        let exec = self.exec.clone();
        let done = self.done_tx.clone();
        let metrics = self.metrics.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{}", job.record.name))
            .spawn(move || {
                let finished = super::observe::execute(&exec, job, cancel, progress, &metrics);
                let _ = done.send(finished);
            });
        if let Err(e) = spawned {
            tracing::error!(job = %id, "cannot start a thread for the job: {e}; it stays in running/ until restart");
            self.running.remove(&id);
            self.pool.release(&id);
        }
    }

    fn finished(&mut self, finished: &Finished) {
        let id = match finished {
            Finished::Done { id, result_dir } => {
                tracing::info!(job = %id, "done: {}", result_dir.display());
                id
            }
            Finished::Deduplicated { id, of, result_dir } => {
                tracing::info!(job = %id, "done (identical to {of}): {}", result_dir.display());
                id
            }
            Finished::Failed { id, stage, cause } => {
                tracing::warn!(job = %id, "failed in {stage}: {cause}");
                id
            }
            Finished::Interrupted { id } => id,
            Finished::Abandoned { id, .. } => id,
        };
        self.running.remove(id);
        self.pool.release(id);
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Cancels the jobs past `limits.job_timeout_s`, and those whose lease the queue's renewer found lost (they
    /// would otherwise learn it only at their next heartbeat or checkpoint).
    fn enforce_limits(&self) {
        let now = Instant::now();
        let lost = self.exec.queue.lost_leases();
        for (id, job) in &self.running {
            if job.deadline.is_some_and(|d| now >= d) {
                job.cancel.cancel(CancelReason::Timeout);
            }
            if lost.iter().any(|l| l == id) {
                job.cancel.cancel(CancelReason::LeaseLost);
            }
        }
    }

    fn publish_status(&mut self) {
        let line = service::status_line(
            &self.active,
            self.exec.queue.queued() + self.inbox.pending(),
        );
        if line != self.last_status {
            service::status(&line);
            self.last_status = line;
        }
    }
}

/// A running job's record as the daemon last sent it to the queue, and when.
type SharedRecord = Arc<Mutex<(Job, Instant)>>;

/// The job's claim check: a heartbeat the queue answers synchronously, so a worker that stalled past its lease
/// (stopped, swapped out) learns it lost the job before it writes a checkpoint the new owner resumes from — not a
/// renewal round later. A database outage does not count as lost (the renewer keeps the lease meanwhile).
fn claim_check(record: &SharedRecord, queue: &Arc<dyn Queue>) -> ClaimCheck {
    let record = record.clone();
    let queue = queue.clone();
    Arc::new(move || {
        let mut guard = record.lock().unwrap_or_else(|p| p.into_inner());
        let (job, last_write) = &mut *guard;
        match queue.heartbeat(job) {
            Err(QueueError::LeaseLost { .. }) => false,
            Ok(()) => {
                *last_write = Instant::now();
                true
            }
            Err(e) => {
                tracing::warn!(job = %job.id(), "cannot confirm the job's lease: {e}");
                true
            }
        }
    })
}

/// A progress reporter that keeps the job record in the queue (its heartbeat: at most twice a second, and at every
/// stage change) and the STATUS line current. A heartbeat the queue refuses because the lease was lost cancels
/// the run.
fn progress_sink(
    job: SharedRecord,
    queue: &Arc<dyn Queue>,
    active: &ActiveJobs,
    cancel: &CancelToken,
) -> Progress {
    let queue = queue.clone();
    let active = active.clone();
    let cancel = cancel.clone();
    Progress::new(move |update: &ProgressUpdate| {
        let mut guard = job.lock().unwrap_or_else(|p| p.into_inner());
        let (job, last_write) = &mut *guard;
        if let Some(a) = active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(job.id())
        {
            a.stage = update.stage.clone();
            a.fraction = update.fraction;
            a.pid = update.pid;
        }
        if update.new_stage {
            super::observe::stage_changed(&update.stage);
        }
        job.record.stage = Some(update.stage.clone());
        job.record.progress = Some(update.fraction);
        if update.new_stage || last_write.elapsed() >= Duration::from_millis(500) {
            match queue.heartbeat(job) {
                Ok(()) => {}
                Err(QueueError::LeaseLost { .. }) => cancel.cancel(CancelReason::LeaseLost),
                Err(e) => tracing::warn!(job = %job.id(), "cannot update the job record: {e}"),
            }
            *last_write = Instant::now();
        }
    })
}

fn tick_period(config: &Config) -> Duration {
    Duration::from_millis((config.daemon.stable_ms / 4).clamp(20, 250))
}

/// Reads the config file again; an invalid one is logged and the current config kept. Path changes need a restart.
fn reload(current: &Config, path: Option<&std::path::Path>) -> Option<Config> {
    let Some(path) = path else {
        tracing::info!("SIGHUP: no config file (built-in defaults); nothing to reload");
        return None;
    };
    match Config::load(path) {
        Ok(mut new) => {
            if new.paths != current.paths {
                tracing::warn!(
                    "SIGHUP: `paths` changed in {}; keeping the current paths until a restart",
                    path.display()
                );
                new.paths = current.paths.clone();
            }
            if new.daemon.poll != current.daemon.poll {
                tracing::warn!("SIGHUP: `daemon.poll` takes effect at the next restart");
            }
            if new.runtime.devices != current.runtime.devices {
                tracing::warn!("SIGHUP: `runtime.devices` takes effect at the next restart");
            }
            if new.daemon.http != current.daemon.http {
                tracing::warn!("SIGHUP: `daemon.http` takes effect at the next restart");
            }
            tracing::info!("SIGHUP: reloaded {}; new drops use it", path.display());
            Some(new)
        }
        Err(e) => {
            log_reload_error(&e);
            None
        }
    }
}

fn log_reload_error(e: &ConfigError) {
    tracing::error!("SIGHUP: the new config is invalid, keeping the current one: {e}");
}

async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
