//! The PostgreSQL job queue, measured against one throwaway PostgreSQL server on this machine (started like the
//! tests do it, tests/pg_support, with the server's default durability: fsync on):
//! - claims per second with 1, 4 and 16 workers: each worker its own `PgQueue` (its own connection pool, as a
//!   separate process has), claiming and completing `FLEET_JOBS` pre-queued jobs as fast as it can (the queue's
//!   own cost: claim + fenced complete, no runner);
//! - drop-to-start latency with 1, 4 and 16 real `robustd run` workers (triage runner): a model dropped into the
//!   ingesting node's inbox, the job's `started_at` in the database minus the rename (`daemon.stable_ms`: 100);
//! - the lease heartbeat: the latency of one heartbeat (a fenced UPDATE renewing the lease), and what the renewer
//!   costs an idle fleet in statements per second.
//!
//! `cargo bench --bench fleet_queue` (needs the fixtures and Debian's postgresql). Environment: `FLEET_JOBS` [400],
//! `FLEET_DROPS` [7] drops per fleet size, `FLEET_SIZES` [1,4,16]. Prints markdown for benches/RESULTS.md.

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pg_support::Cluster;
use robustd::config::Config;
use robustd::job::{JobKind, JobRecord, JobState};
use robustd::queue::{Claimable, PgQueue, Queue};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config_yaml(base: &Path, url: &str, worker: &str, ingest: bool) -> String {
    format!(
        "paths: {{watch: {b}/{worker}/watch, models: {b}/models, state: {b}/{worker}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         train: {{method: none}}\n\
         daemon: {{runner: triage, stable_ms: 100, rescan_ms: 1000, http: {{listen: null}}}}\n\
         queue: {{backend: postgres, url: '{url}', shared: {b}/store, worker: {worker}, ingest: {ingest}, \
                  poll_ms: 2000}}\n",
        b = base.display()
    )
}

fn any() -> Claimable {
    Claimable {
        kinds: vec![JobKind::Eval, JobKind::Train],
        busy_keys: Vec::new(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Claims + completes of `jobs` queued jobs by `n` workers; returns (claims per second, seconds).
fn claims_per_second(cluster: &Cluster, n: usize, jobs: usize) -> (f64, f64) {
    cluster.psql("TRUNCATE robustd.jobs, robustd.published, robustd.workers");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let workers: Vec<Arc<PgQueue>> = (0..n)
        .map(|w| {
            let yaml = config_yaml(&base, &cluster.url(), &format!("w{w}"), false);
            let cfg = Config::from_yaml(&yaml, &base.join("robustd.yaml")).unwrap();
            Arc::new(PgQueue::open_worker(&cfg, &["cpu".to_owned()]).unwrap())
        })
        .collect();
    let drops = base.join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    for i in 0..jobs {
        let src = drops.join(format!("{i}.onnx"));
        std::fs::write(&src, b"x").unwrap();
        let mut record = JobRecord::new(format!("j{i:05}"), format!("m{i}"), format!("m{i}.onnx"));
        record.key = format!("{i:064x}");
        workers[0]
            .enqueue(record, "{}\n", vec![(src, format!("m{i}.onnx"))])
            .unwrap();
    }
    let t = Instant::now();
    let threads: Vec<_> = workers
        .iter()
        .map(|q| {
            let (q, base) = (q.clone(), base.clone());
            std::thread::spawn(move || loop {
                match q.claim(&any()).unwrap() {
                    Some(job) => {
                        let dir = base.join("models").join(job.id());
                        q.complete(&job, &mut || Ok(dir.clone()), None).unwrap();
                    }
                    None if q.counts().unwrap().queued == 0 => break,
                    None => {}
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    for w in &workers {
        w.close();
    }
    (jobs as f64 / secs, secs)
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Drop-to-start latencies (ms) of `drops` models, one at a time, with `n` worker processes.
fn drop_to_start(cluster: &Cluster, n: usize, drops: usize) -> Vec<f64> {
    cluster.psql("TRUNCATE robustd.jobs, robustd.published, robustd.workers");
    let bin = env!("CARGO_BIN_EXE_robustd");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let mut workers = Vec::new();
    let mut configs = Vec::new();
    for w in 0..n {
        let name = format!("w{w}");
        std::fs::create_dir_all(base.join(&name).join("watch")).unwrap();
        let path = base.join(&name).join("robustd.yaml");
        std::fs::write(&path, config_yaml(&base, &cluster.url(), &name, w == 0)).unwrap();
        let log = std::fs::File::create(base.join(&name).join("log")).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        workers.push(Worker(child));
        configs.push(path);
    }
    let cfg = Config::load(&configs[0]).unwrap();
    let queue = robustd::queue::connect(&cfg).unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while queue.workers().unwrap().len() < n {
        assert!(Instant::now() < deadline, "the fleet did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let every worker settle into its idle wait.
    std::thread::sleep(Duration::from_secs(3));
    let model = std::fs::read(fixture("resdw_legacy.onnx")).unwrap();
    let watch = base.join("w0/watch");
    let mut latencies = Vec::new();
    for i in 0..drops {
        let mut bytes = model.clone();
        let doc = format!("bench {i}");
        bytes.push(0x32);
        bytes.push(doc.len() as u8);
        bytes.extend_from_slice(doc.as_bytes());
        let tmp = watch.join(format!(".d{i}.part"));
        std::fs::write(&tmp, &bytes).unwrap();
        let at = SystemTime::now();
        std::fs::rename(&tmp, watch.join(format!("d{i}.onnx"))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let started = loop {
            let jobs = queue
                .list(JobState::Done)
                .unwrap()
                .into_iter()
                .chain(queue.list(JobState::Running).unwrap())
                .find(|j| j.record.dropped_as == format!("d{i}.onnx"));
            if let Some(s) = jobs.and_then(|j| j.record.started_at) {
                break humantime::parse_rfc3339(&s).unwrap();
            }
            assert!(Instant::now() < deadline, "drop {i} never started");
            std::thread::sleep(Duration::from_millis(5));
        };
        latencies.push(started.duration_since(at).unwrap_or_default().as_secs_f64() * 1000.0);
        // Wait for the fleet to be idle again before the next drop.
        while queue.counts().unwrap().running > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(workers);
    latencies
}

/// Heartbeat latency (ms, median and p99 of `n`) on one claimed job.
fn heartbeat_latency(cluster: &Cluster, n: usize) -> (f64, f64) {
    cluster.psql("TRUNCATE robustd.jobs, robustd.published, robustd.workers");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let yaml = config_yaml(base, &cluster.url(), "hb", false);
    let cfg = Config::from_yaml(&yaml, &base.join("robustd.yaml")).unwrap();
    let q = PgQueue::open_worker(&cfg, &["cpu".to_owned()]).unwrap();
    let src = base.join("m.onnx");
    std::fs::write(&src, b"x").unwrap();
    let mut record = JobRecord::new("hb".into(), "m".into(), "m.onnx".into());
    record.key = "0".repeat(64);
    q.enqueue(record, "{}\n", vec![(src, "m.onnx".into())])
        .unwrap();
    let mut job = loop {
        if let Some(job) = q.claim(&any()).unwrap() {
            break job;
        }
    };
    let mut times: Vec<f64> = (0..n)
        .map(|i| {
            job.record.progress = Some(i as f64 / n as f64);
            let t = Instant::now();
            q.heartbeat(&job).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    q.close();
    (median(&mut times), p99)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/generated")
        .join(name)
}

fn main() {
    let jobs: usize = env("FLEET_JOBS", 400);
    let drops: usize = env("FLEET_DROPS", 7);
    let sizes: Vec<usize> = env("FLEET_SIZES", "1,4,16".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let cluster = Cluster::start_with(&[]);
    // The schema, once.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::from_yaml(
        &config_yaml(tmp.path(), &cluster.url(), "m", false),
        &tmp.path().join("r.yaml"),
    )
    .unwrap();
    PgQueue::migrate(&cfg).unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## Fleet: the PostgreSQL job queue\n");
    println!(
        "`cargo bench --bench fleet_queue`: one PostgreSQL {} on this machine (Unix socket, fsync on), load average \
         before: {}.\n",
        cluster.psql("SHOW server_version"),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| workers | claims/s (claim + fenced complete, {jobs} jobs) | drop-to-start ms, median (all) |");
    println!("| --- | --- | --- |");
    for &n in &sizes {
        let (rate, _) = claims_per_second(&cluster, n, jobs);
        let mut lat = drop_to_start(&cluster, n, drops);
        let all: Vec<String> = lat.iter().map(|l| format!("{l:.0}")).collect();
        println!(
            "| {n} | {rate:.0} | {:.0} ({}) |",
            median(&mut lat),
            all.join(", ")
        );
    }
    let (med, p99) = heartbeat_latency(&cluster, 500);
    println!(
        "\nLease heartbeat: {med:.2} ms median, {p99:.2} ms p99 per call (500 calls; a fenced UPDATE renewing the \
         lease with the job's stage and progress, at most twice a second per running job). The renewer adds, per \
         worker, one round of 4 statements every lease_s/3 (renew held leases, the worker's heartbeat, fail jobs \
         whose workers vanished, count queued): 0.4 statements/s at the default lease_s 30, 6.4/s for 16 workers."
    );
    let end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nLoad average after: {}.",
        end.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
