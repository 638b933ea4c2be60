//! 50 distinct models dropped at once: 50 results, none lost, none duplicated, every report valid.

mod daemon_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use daemon_support::*;
use robustd::job::JobState;

#[test]
fn fifty_models_dropped_at_once_give_fifty_results() {
    const N: usize = 50;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100, rescan_ms: 1000, eval_concurrency: 2}\ndataset: {eval_samples: 64}"),
    );
    let variants: Vec<Vec<u8>> = (0..N)
        .map(|i| model_variant("resdw_legacy.onnx", &i.to_string()))
        .collect();
    let t0 = Instant::now();
    for (i, bytes) in variants.iter().enumerate() {
        drop_bytes(&d.watch(), &format!("m{i:02}.onnx"), bytes);
    }
    d.wait_finished(N, Duration::from_secs(180));
    let elapsed = t0.elapsed();

    let done = d.jobs(JobState::Done);
    assert_eq!(
        done.len(),
        N,
        "failed: {:?}",
        d.jobs(JobState::Failed)
            .iter()
            .map(|j| &j.record.error)
            .collect::<Vec<_>>()
    );
    let names: HashSet<_> = done.iter().map(|j| j.record.dropped_as.clone()).collect();
    let keys: HashSet<_> = done.iter().map(|j| j.record.key.clone()).collect();
    let ids: HashSet<_> = done.iter().map(|j| j.record.id.clone()).collect();
    assert_eq!((names.len(), keys.len(), ids.len()), (N, N, N));
    for job in &done {
        assert_eq!(job.record.attempts, 1, "{}", job.record.id);
        assert!(job.record.dedup_of.is_none());
        let report = job_report(job);
        assert_eq!(report.summary.model, job.record.dropped_as);
        assert_eq!(report.job.unwrap().id, job.record.id);
        // Exactly one result directory (+ latest) per model name.
        assert_eq!(
            entries(&d.models().join(&job.record.name)),
            vec![job.record.key[..12].to_string(), "latest".into()]
        );
    }
    assert_eq!(entries(&d.models()).len(), N);
    assert!(entries(&d.watch()).is_empty());
    eprintln!("{N} models: all finished {elapsed:?} after the first drop (2-core machine, eval_concurrency 2)");
    let (ok, _) = d.terminate();
    assert!(ok);
}
