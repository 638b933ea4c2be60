//! Several workers sharing a PostgreSQL job queue (`queue.backend: postgres`), against a real PostgreSQL server
//! each test starts for itself (tests/pg_support) and real `robustd run` processes: drops ingested by one node and
//! run by the fleet exactly once; a worker SIGKILLed mid-training whose job another worker resumes from the
//! checkpoint in the shared store; the database stopped for 10 s mid-run; a worker frozen past its lease whose
//! job moves on while its own publish is refused; and the clear errors a worker stops with before it starts.

mod daemon_support;
mod pg_support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_support::*;
use pg_support::Cluster;
use robustd::config::Config;
use robustd::job::{Job, JobState};
use robustd::queue::Queue;

/// A worker's config: its own state and inbox under `base/<name>`, the results and the shared store under `base`
/// (one machine's directories standing in for the mount every host sees).
fn worker_config(base: &Path, name: &str, url: &str, ingest: bool, extra: &str) -> String {
    let extra = if extra.contains("daemon: {") {
        extra.to_owned()
    } else {
        format!("{extra}\ntrain: {{method: none}}\ndaemon: {{runner: triage, stable_ms: 100, rescan_ms: 1000}}")
    };
    format!(
        "paths: {{watch: {b}/{name}/watch, models: {b}/models, state: {b}/{name}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         queue: {{backend: postgres, url: '{url}', shared: {b}/store, ingest: {ingest}, worker: {name}, \
                  poll_ms: 500, lease_s: 3}}\n\
         {extra}\n",
        b = base.display()
    )
}

/// The full pipeline, small: fine-tuning for `epochs` epochs with a checkpoint per epoch.
const PIPELINE: &str = "dataset: {train_samples: 1000, eval_samples: 64}\n\
     eval: {attacks: [fgsm, pgd], pgd: {steps: 5, restarts: 1, step_size_factor: 0.5, random_start: true}, \
            eps_curve: [0.0, 0.1]}\n\
     train: {method: bat, epochs: 3, batch_size: 64, val_fraction: 0.1, \
             pgd: {steps: 3, restarts: 1, step_size_factor: 0.5, random_start: true}, bat: {atypicality: holdout}}\n\
     memorization: {epochs: 1}\n\
     daemon: {runner: pipeline, stable_ms: 100, rescan_ms: 1000}";

struct Fleet {
    base: PathBuf,
    url: String,
    lease_s: u64,
    workers: HashMap<String, Daemon>,
}

impl Fleet {
    fn new(base: &Path, cluster: &Cluster) -> Self {
        Self {
            base: base.to_path_buf(),
            url: cluster.url(),
            lease_s: 3,
            workers: HashMap::new(),
        }
    }

    fn start(&mut self, name: &str, ingest: bool, extra: &str) {
        let root = self.base.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let yaml = worker_config(&self.base, name, &self.url, ingest, extra)
            .replace("lease_s: 3}", &format!("lease_s: {}}}", self.lease_s));
        self.workers
            .insert(name.to_owned(), Daemon::start(&root, &yaml));
    }

    fn worker(&mut self, name: &str) -> &mut Daemon {
        self.workers.get_mut(name).unwrap()
    }

    /// The queue, as `robustd status` opens it (a client of the database).
    fn queue(&self) -> Arc<dyn Queue> {
        let (_, d) = self.workers.iter().next().expect("a worker");
        let cfg = Config::load(&d.config).unwrap();
        robustd::queue::connect(&cfg).unwrap().unwrap()
    }

    fn logs(&self) -> String {
        let mut names: Vec<_> = self.workers.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| format!("=== {n}\n{}", self.workers[n].log_text()))
            .collect()
    }

    fn assert_alive(&mut self) {
        for d in self.workers.values_mut() {
            d.assert_alive();
            d.drain_notify();
        }
    }

    /// Waits until `n` jobs are done or failed and none is queued or running.
    fn wait_finished(&mut self, queue: &dyn Queue, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            if let Ok(c) = queue.counts() {
                if c.done + c.failed >= n && c.queued + c.running == 0 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "only {c:?} of {n} jobs finished within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `f` holds for the running jobs; returns them.
    fn wait_running(
        &mut self,
        queue: &dyn Queue,
        timeout: Duration,
        what: &str,
        f: impl Fn(&[Job]) -> bool,
    ) -> Vec<Job> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, d) in self.workers.iter_mut() {
                if name.starts_with("frozen") {
                    continue;
                }
                d.assert_alive();
                d.drain_notify();
            }
            let running = queue.list(JobState::Running).unwrap_or_default();
            if f(&running) {
                return running;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops a model for fine-tuning into `ingester`'s inbox and waits until its first epoch is checkpointed in the
    /// shared store; returns the running job.
    fn run_until_checkpointed(&mut self, queue: &dyn Queue, ingester: &str) -> Job {
        drop_fixture(
            &self.worker(ingester).watch(),
            "cnn_bn_legacy.onnx",
            "victim.onnx",
        );
        let store = self.base.join("store/checkpoints");
        let running = self.wait_running(
            queue,
            Duration::from_secs(400),
            "no fine-tuning checkpoint",
            |r| {
                r.first().is_some_and(|j| {
                    store
                        .join(&j.record.key)
                        .join("finetune/checkpoint.yaml")
                        .is_file()
                })
            },
        );
        running[0].clone()
    }

    fn terminate_all(&mut self) {
        for (name, d) in self.workers.iter_mut() {
            let (ok, _) = d.terminate();
            assert!(ok, "{name} did not exit cleanly\n{}", d.log_text());
        }
    }
}

/// Lines of a worker log that say a job started.
fn starts(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" started ")).count()
}

/// Visible results of a model: `models/<name>/<key12>` directories.
fn results_of(models: &Path, name: &str) -> Vec<String> {
    entries(&models.join(name))
        .into_iter()
        .filter(|n| !n.starts_with('.') && n != "latest")
        .collect()
}

#[test]
fn three_workers_and_an_ingesting_node_run_thirty_drops_each_exactly_once() {
    const N: usize = 30;
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut fleet = Fleet::new(base, &cluster);
    fleet.start("ingest", true, "");
    for w in ["w1", "w2", "w3"] {
        fleet.start(w, false, "");
    }
    let queue = fleet.queue();
    assert_eq!(queue.workers().unwrap().len(), 4);
    let watch = fleet.worker("ingest").watch();
    for i in 0..N {
        drop_bytes(
            &watch,
            &format!("m{i:02}.onnx"),
            &model_variant("resdw_legacy.onnx", &format!("fleet{i}")),
        );
    }
    fleet.wait_finished(&*queue, N as u64, Duration::from_secs(400));

    let done = queue.list(JobState::Done).unwrap();
    assert!(
        queue.list(JobState::Failed).unwrap().is_empty(),
        "{}",
        fleet.logs()
    );
    assert_eq!(done.len(), N);
    let ids: HashSet<_> = done.iter().map(|j| j.record.id.clone()).collect();
    let keys: HashSet<_> = done.iter().map(|j| j.record.key.clone()).collect();
    let names: HashSet<_> = done.iter().map(|j| j.record.dropped_as.clone()).collect();
    assert_eq!((ids.len(), keys.len(), names.len()), (N, N, N));
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for job in &done {
        assert_eq!(
            job.record.attempts, 1,
            "{} ran more than once",
            job.record.id
        );
        *by_worker
            .entry(job.record.worker.clone().unwrap())
            .or_default() += 1;
        let report = job_report(job);
        assert_eq!(report.job.unwrap().id, job.record.id);
        assert_eq!(results_of(&base.join("models"), &job.record.name).len(), 1);
        // The inputs in the shared store went with the job.
        assert!(
            !job.dir.exists(),
            "{} left {}",
            job.record.id,
            job.dir.display()
        );
    }
    let started: usize = fleet.workers.values().map(|d| starts(&d.log_text())).sum();
    assert_eq!(started, N, "a job started twice\n{}", fleet.logs());
    assert!(
        by_worker.len() >= 2,
        "one worker ran everything: {by_worker:?}"
    );
    assert!(entries(&watch).is_empty());

    // `robustd status` shows the fleet.
    let status = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&fleet.worker("w1").config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("workers  4"), "{text}");
    assert!(text.contains(&format!("done     {N}")), "{text}");
    eprintln!("by worker: {by_worker:?}\n{text}");

    fleet.terminate_all();
    // Clean exits leave the fleet.
    assert!(queue.workers().unwrap().is_empty());
}

#[test]
fn a_worker_killed_mid_training_is_replaced_and_its_job_resumes_from_the_shared_checkpoint() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut fleet = Fleet::new(base, &cluster);
    fleet.start("a", true, PIPELINE);
    fleet.start("b", false, PIPELINE);
    let queue = fleet.queue();
    // Kill the worker running the job once its first fine-tuning epoch is checkpointed in the shared store.
    let running = fleet.run_until_checkpointed(&*queue, "a");
    let store = base.join("store/checkpoints");
    let victim = running.record.worker.clone().unwrap();
    let survivor = if victim == "a" { "b" } else { "a" };
    fleet.worker(&victim).kill9();
    let dead = fleet.workers.remove(&victim).unwrap();

    fleet.wait_finished(&*queue, 1, Duration::from_secs(400));
    let done = queue.list(JobState::Done).unwrap();
    assert_eq!(done.len(), 1, "{}\n{}", dead.log_text(), fleet.logs());
    let job = &done[0];
    assert_eq!(job.record.attempts, 2);
    assert_eq!(job.record.worker.as_deref(), Some(survivor));
    let report = job_report(job);
    let training = report.training.as_ref().unwrap();
    assert!(
        training.resumed_from.is_some(),
        "training did not resume: {training:?}"
    );
    assert_eq!(training.epochs, 3);
    let log = fleet.worker(survivor).log_text();
    assert!(log.contains("reused from the job's checkpoint"), "{log}");
    assert_eq!(results_of(&base.join("models"), "victim").len(), 1);
    // The checkpoints went once the job was done.
    assert!(!store.join(&job.record.key).exists());
    fleet.terminate_all();
}

#[test]
fn the_database_stopped_for_ten_seconds_mid_run_loses_and_doubles_nothing() {
    const FIRST: usize = 12;
    const DURING: usize = 4;
    let mut cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut fleet = Fleet::new(base, &cluster);
    // Leases longer than the outage: the workers keep their jobs through it.
    fleet.lease_s = 30;
    fleet.start("a", true, "");
    fleet.start("b", false, "");
    let queue = fleet.queue();
    let watch = fleet.worker("a").watch();
    for i in 0..FIRST {
        drop_bytes(
            &watch,
            &format!("m{i:02}.onnx"),
            &model_variant("resdw_legacy.onnx", &format!("outage{i}")),
        );
    }
    // Stop the database once the fleet is busy.
    let deadline = Instant::now() + Duration::from_secs(120);
    while queue.counts().map(|c| c.done).unwrap_or(0) < 2 {
        fleet.assert_alive();
        assert!(
            Instant::now() < deadline,
            "no job finished\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.pause();
    let stopped = Instant::now();
    for i in 0..DURING {
        drop_bytes(
            &watch,
            &format!("late{i}.onnx"),
            &model_variant("resdw_legacy.onnx", &format!("late{i}")),
        );
    }
    while stopped.elapsed() < Duration::from_secs(10) {
        fleet.assert_alive();
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.resume();

    let n = FIRST + DURING;
    fleet.wait_finished(&*queue, n as u64, Duration::from_secs(300));
    let done = queue.list(JobState::Done).unwrap();
    assert!(
        queue.list(JobState::Failed).unwrap().is_empty(),
        "{}",
        fleet.logs()
    );
    assert_eq!(done.len(), n, "{}", fleet.logs());
    let keys: HashSet<_> = done.iter().map(|j| j.record.key.clone()).collect();
    assert_eq!(keys.len(), n);
    for job in &done {
        assert_eq!(
            results_of(&base.join("models"), &job.record.name).len(),
            1,
            "{}",
            job.record.name
        );
        job_report(job);
    }
    let logs = fleet.logs();
    assert!(logs.contains("is unreachable"), "{logs}");
    assert!(logs.contains("reachable again"), "{logs}");
    assert!(entries(&watch).is_empty());
    fleet.terminate_all();
}

#[test]
fn a_worker_frozen_past_its_lease_loses_the_job_and_cannot_publish() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut fleet = Fleet::new(base, &cluster);
    fleet.start("frozen-a", true, PIPELINE);
    let queue = fleet.queue();
    // The job runs on the only worker; freeze it in fine-tuning, then let a second worker join.
    fleet.run_until_checkpointed(&*queue, "frozen-a");
    fleet.worker("frozen-a").signal(libc::SIGSTOP);
    fleet.start("b", false, PIPELINE);
    let taken = fleet.wait_running(
        &*queue,
        Duration::from_secs(60),
        "the job did not move on",
        |r| {
            r.first()
                .is_some_and(|j| j.record.worker.as_deref() == Some("b"))
        },
    );
    assert_eq!(taken[0].record.attempts, 2);
    fleet.worker("frozen-a").signal(libc::SIGCONT);

    fleet.wait_finished(&*queue, 1, Duration::from_secs(400));
    let done = queue.list(JobState::Done).unwrap();
    assert_eq!(done.len(), 1, "{}", fleet.logs());
    assert_eq!(done[0].record.worker.as_deref(), Some("b"));
    job_report(&done[0]);
    assert_eq!(results_of(&base.join("models"), "victim").len(), 1);
    let thawed = fleet.worker("frozen-a").log_text();
    assert!(thawed.contains("lease lost"), "{thawed}");
    assert!(
        !thawed.contains("done: "),
        "the thawed worker published\n{thawed}"
    );
    // It keeps serving: a new drop is taken by the fleet.
    drop_bytes(
        &fleet.worker("frozen-a").watch(),
        "after.onnx",
        &model_variant("resdw_legacy.onnx", "after"),
    );
    fleet.wait_finished(&*queue, 2, Duration::from_secs(200));
    fleet.terminate_all();
}

/// Runs `robustd run` on a database that must stop it before it starts; returns its stderr.
fn refused_start(base: &Path, name: &str, url: &str) -> String {
    refused_start_with(base, name, &worker_config(base, name, url, true, ""))
}

fn refused_start_with(base: &Path, name: &str, yaml: &str) -> String {
    let root = base.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let config = root.join("robustd.yaml");
    std::fs::write(&config, http_off_unless_set(yaml)).unwrap();
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name}: started anyway\n{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "{name}: took {:?}",
        t.elapsed()
    );
    assert!(
        !stderr.contains("daemon ready"),
        "{name}: half-started\n{stderr}"
    );
    stderr
}

#[test]
fn a_bad_database_stops_the_worker_at_start_with_a_clear_error() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();

    let e = refused_start(
        base,
        "malformed",
        "postgresql://robustd:s3cret@127.0.0.1:notaport/postgres",
    );
    assert!(e.contains("malformed database URL"), "{e}");
    assert!(!e.contains("s3cret"), "the password was printed: {e}");

    let url = format!(
        "postgresql://robustd:s3cret@127.0.0.1:{}/postgres",
        pg_support::free_port()
    );
    let e = refused_start(base, "refused", &url);
    assert!(
        e.contains("cannot connect to") && e.contains("robustd:***@127.0.0.1"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");

    let e = refused_start(base, "password", &cluster.tcp_url("Wr0ngPassw0rd"));
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("Wr0ngPassw0rd"), "{e}");

    // `robustd queue migrate` creates the schema; a worker under queue.migrate: manual accepts it.
    let root = base.join("migrate");
    std::fs::create_dir_all(&root).unwrap();
    let config = root.join("robustd.yaml");
    let yaml = worker_config(base, "migrate", &cluster.url(), true, "")
        .replace("poll_ms: 500", "poll_ms: 500, migrate: manual");
    std::fs::write(&config, &yaml).unwrap();
    let migrate = |expect: &str| {
        let out = Command::new(BIN)
            .args(["queue", "migrate", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(expect),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Before the migration a worker under queue.migrate: manual refuses the empty database.
    let e = refused_start_with(base, "migrate", &yaml);
    assert!(e.contains("robustd queue migrate"), "{e}");
    migrate("from version 0 to 1");
    migrate("up to date");
    let mut ok = Daemon::start(&root, &yaml);
    let (clean, _) = ok.terminate();
    assert!(clean);

    // A schema from a newer robustd.
    cluster.psql(
        "INSERT INTO robustd.schema_version (version, robustd) VALUES (99, 'from the future')",
    );
    let e = refused_start(base, "newer", &cluster.url());
    assert!(e.contains("newer than this robustd knows"), "{e}");
    assert_eq!(cluster.psql("SELECT count(*) FROM robustd.workers"), "0");
}
