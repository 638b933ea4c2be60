//! The PostgreSQL queue through the `Queue` trait, against a real server started for each test (tests/pg_support):
//! 200 queued jobs and 8 workers racing for them — each job claimed exactly once; fencing — a worker whose lease
//! expired and was taken over cannot heartbeat, fail or publish (its publish closure never runs), while the new
//! holder completes; and a job whose workers keep vanishing fails after `queue.max_attempts` with an error report.

mod pg_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_support::Cluster;
use robustd::config::Config;
use robustd::job::{JobKind, JobRecord, JobState};
use robustd::queue::{Claimable, PgQueue, Queue, QueueError};

fn config(base: &Path, cluster: &Cluster, worker: &str, extra: &str) -> Config {
    let yaml = format!(
        "paths: {{watch: {b}/watch, models: {b}/models, state: {b}/state-{worker}}}\n\
         queue: {{backend: postgres, url: '{url}', shared: {b}/store, worker: {worker}, poll_ms: 50{extra}}}\n",
        b = base.display(),
        url = cluster.url()
    );
    Config::from_yaml(&yaml, &base.join("robustd.yaml")).unwrap()
}

fn worker(base: &Path, cluster: &Cluster, name: &str, extra: &str) -> PgQueue {
    PgQueue::open_worker(&config(base, cluster, name, extra), &["cpu".to_owned()]).unwrap()
}

/// Enqueues `n` distinct jobs (a small file each) through `queue`.
fn enqueue(queue: &dyn Queue, base: &Path, n: usize) -> Vec<String> {
    let drops = base.join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("job{i:04}");
            let src = drops.join(format!("{id}.onnx"));
            std::fs::write(&src, format!("model {i}")).unwrap();
            let mut record = JobRecord::new(id.clone(), format!("m{i}"), format!("m{i}.onnx"));
            record.key = format!("{i:064x}");
            record.kind = JobKind::Eval;
            queue
                .enqueue(record, "{}\n", vec![(src, format!("m{i}.onnx"))])
                .unwrap();
            id
        })
        .collect()
}

fn any() -> Claimable {
    Claimable {
        kinds: vec![JobKind::Eval, JobKind::Train],
        busy_keys: Vec::new(),
    }
}

#[test]
fn two_hundred_jobs_and_eight_racing_workers_claim_each_job_once() {
    const JOBS: usize = 200;
    const WORKERS: usize = 8;
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let workers: Vec<Arc<PgQueue>> = (0..WORKERS)
        .map(|w| Arc::new(worker(&base, &cluster, &format!("w{w}"), "")))
        .collect();
    let ids = enqueue(&*workers[0], &base, JOBS);
    let claims = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let t = Instant::now();
    let threads: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(w, q)| {
            let (q, claims, base) = (q.clone(), claims.clone(), base.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while q.counts().unwrap().done < JOBS as u64 {
                    assert!(
                        Instant::now() < deadline,
                        "worker {w}: the queue did not drain"
                    );
                    let Some(job) = q.claim(&any()).unwrap() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    claims
                        .lock()
                        .unwrap()
                        .push((job.id().to_owned(), format!("w{w}")));
                    let dir = base.join("models").join(job.id());
                    let done = q.complete(&job, &mut || Ok(dir.clone()), None).unwrap();
                    assert_eq!(done.record.state, JobState::Done);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t.elapsed();
    let claims = claims.lock().unwrap();
    let claimed: HashSet<&String> = claims.iter().map(|(id, _)| id).collect();
    assert_eq!(claims.len(), JOBS, "a job was claimed twice");
    assert_eq!(claimed.len(), JOBS);
    assert_eq!(claimed, ids.iter().collect());
    let by: HashSet<&String> = claims.iter().map(|(_, w)| w).collect();
    assert!(by.len() > 1, "one worker took everything");
    let done = workers[0].list(JobState::Done).unwrap();
    assert_eq!(done.len(), JOBS);
    assert!(done.iter().all(|j| j.record.attempts == 1));
    // Each key's result is the published one.
    for job in &done {
        let p = workers[0].published(&job.record.key).unwrap();
        assert_eq!(p.job, job.record.id);
    }
    eprintln!(
        "{JOBS} claims + completes by {WORKERS} workers in {elapsed:?} ({:.0}/s), spread over {} workers",
        JOBS as f64 / elapsed.as_secs_f64(),
        by.len()
    );
    for w in &workers {
        w.close();
    }
}

#[test]
fn a_worker_whose_lease_was_taken_over_cannot_publish() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let a = worker(base, &cluster, "a", ", lease_s: 3");
    let b = worker(base, &cluster, "b", ", lease_s: 3");
    enqueue(&a, base, 1);
    let held_by_a = a.claim(&any()).unwrap().unwrap();
    assert!(
        b.claim(&any()).unwrap().is_none(),
        "a running job was claimed twice"
    );
    a.heartbeat(&held_by_a).unwrap();

    // Worker a stalls (its renewals stop, as under SIGSTOP): its lease expires and b takes the job.
    cluster.psql("UPDATE robustd.jobs SET lease_expires_at = now() - interval '1 second'");
    let deadline = Instant::now() + Duration::from_secs(10);
    let held_by_b = loop {
        if let Some(job) = b.claim(&any()).unwrap() {
            break job;
        }
        assert!(Instant::now() < deadline, "b never took the expired job");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(held_by_b.id(), held_by_a.id());
    assert_eq!(held_by_b.record.attempts, 2);
    assert_ne!(held_by_b.lease, held_by_a.lease);

    // a wakes up: every change it tries is refused, and its publish never runs.
    let mut published_by_a = false;
    let refused = a.complete(
        &held_by_a,
        &mut || {
            published_by_a = true;
            Ok(PathBuf::from("/nonexistent"))
        },
        None,
    );
    assert!(
        matches!(refused, Err(QueueError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert!(!published_by_a, "a worker without the lease published");
    assert!(matches!(
        a.heartbeat(&held_by_a),
        Err(QueueError::LeaseLost { .. })
    ));
    let report = robustd::report::ErrorReport::from_chain(
        "m0.onnx",
        Some(held_by_a.id()),
        "run",
        vec!["x".into()],
        None,
    );
    assert!(matches!(
        a.fail(&held_by_a, &report, &mut || panic!(
            "a worker that lost the job cleaned up"
        )),
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        a.requeue(&held_by_a),
        Err(QueueError::LeaseLost { .. })
    ));

    // b, the holder, completes.
    let result = base.join("models/m0/result");
    let done = b
        .complete(&held_by_b, &mut || Ok(result.clone()), None)
        .unwrap();
    assert_eq!(done.record.state, JobState::Done);
    assert_eq!(done.record.worker.as_deref(), Some("b"));
    assert_eq!(b.published(&done.record.key).unwrap().result_dir, result);
    a.close();
    b.close();
}

#[test]
fn a_job_whose_workers_keep_vanishing_fails_after_max_attempts() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let a = worker(base, &cluster, "a", ", lease_s: 3, max_attempts: 2");
    enqueue(&a, base, 1);
    // Two claims whose worker vanishes (the lease simply expires).
    for attempt in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let job = loop {
            if let Some(job) = a.claim(&any()).unwrap() {
                break job;
            }
            assert!(
                Instant::now() < deadline,
                "attempt {attempt}: not claimable"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(job.record.attempts, attempt);
        cluster.psql("UPDATE robustd.jobs SET lease_token = 1, lease_expires_at = now() - interval '1 second'");
    }
    // The renewer (every lease/3) gives up on it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let failed = a.list(JobState::Failed).unwrap();
        if !failed.is_empty() {
            break failed;
        }
        assert!(a.claim(&any()).unwrap().is_none(), "claimed a third time");
        assert!(Instant::now() < deadline, "never failed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = failed[0].record.error.as_deref().unwrap();
    assert!(error.contains("vanished 2 times"), "{error}");
    let report = cluster.psql("SELECT error_report FROM robustd.jobs");
    assert!(report.contains("queue.max_attempts"), "{report}");
    a.close();
}
