//! The daemon under signals, as systemd drives it: SIGTERM makes the running job checkpoint and the process exit
//! within 10 s, and the next start resumes the job from its checkpoint and finishes it exactly once; the same
//! after SIGKILL (from the last periodic checkpoint); SIGHUP reloads the config, keeping the old one when the new
//! one is invalid; watchdog pings when WATCHDOG_USEC asks for them.

mod daemon_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::*;
use robustd::job::JobState;

/// A job long enough to interrupt: the triage runner's throughput probe over many samples.
const LONG_JOB_SAMPLES: u64 = 150_000;
const LONG_JOB_SIDECAR: &str = "dataset: {eval_samples: 150000}\n";

fn start_long_job(d: &mut Daemon) {
    std::fs::write(d.watch().join("slow.yaml"), LONG_JOB_SIDECAR).unwrap();
    drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "slow.onnx");
}

/// Waits until the running job reports progress in its forward stage and has written a checkpoint.
fn wait_for_checkpoint(d: &mut Daemon) -> std::path::PathBuf {
    d.wait_until("a forward checkpoint", Duration::from_secs(60), |d| {
        let job = d.jobs(JobState::Running).into_iter().next()?;
        let checkpoint = d
            .state()
            .join("checkpoints")
            .join(&job.record.key)
            .join("triage.yaml");
        (job.record.stage.as_deref() == Some("forward") && checkpoint.is_file())
            .then_some(checkpoint)
    })
}

fn samples_done(checkpoint: &Path) -> u64 {
    let text = std::fs::read_to_string(checkpoint).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    v["samples_done"].as_u64().unwrap()
}

/// After a restart: the one job finished once, from its checkpoint, with a single valid result.
fn assert_resumed_exactly_once(d: &mut Daemon, at_least: u64) {
    d.wait_finished(1, Duration::from_secs(180));
    assert!(d.jobs(JobState::Failed).is_empty(), "{}", d.log_text());
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 1);
    let r = &done[0].record;
    assert_eq!(r.attempts, 2, "{r:?}");
    let report = job_report(&done[0]);
    let fc = report.model.forward_check.unwrap();
    let resumed = fc
        .resumed_from_sample
        .expect("the report records the resume");
    assert!(
        resumed >= at_least && resumed < LONG_JOB_SAMPLES,
        "resumed from {resumed}"
    );
    assert_eq!(fc.samples, LONG_JOB_SAMPLES + 2 * fc.batch);
    assert_eq!(report.job.unwrap().attempts, 2);
    assert_eq!(
        entries(&d.models().join("slow")),
        vec![r.key[..12].to_string(), "latest".into()]
    );
    assert!(
        !d.state().join("checkpoints").join(&r.key).exists(),
        "checkpoint removed after success"
    );
}

#[test]
fn sigterm_checkpoints_within_ten_seconds_and_the_restart_resumes_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = base_config(root, "daemon: {stable_ms: 100}");
    let mut d = Daemon::start(root, &config);
    start_long_job(&mut d);
    let checkpoint = wait_for_checkpoint(&mut d);

    let (ok, took) = d.terminate();
    eprintln!("SIGTERM with a running job: exited in {took:?}");
    assert!(ok, "{}", d.log_text());
    assert!(took < Duration::from_secs(10), "{took:?}");
    d.expect_notify("STOPPING=1", Duration::from_secs(1));
    // The job stays in running/ with a checkpoint written on cancellation.
    let running = d.jobs(JobState::Running);
    assert_eq!(running.len(), 1, "{}", d.log_text());
    let saved = samples_done(&checkpoint);
    assert!(saved > 0);
    assert!(
        d.log_text().contains("interrupted by shutdown"),
        "{}",
        d.log_text()
    );

    let mut d = Daemon::start(root, &config);
    assert!(
        d.log_text().contains("resuming 1 job(s)"),
        "{}",
        d.log_text()
    );
    assert_resumed_exactly_once(&mut d, saved);
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn sigkill_mid_job_then_restart_finishes_it_exactly_once_from_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = base_config(root, "daemon: {stable_ms: 100}");
    let mut d = Daemon::start(root, &config);
    start_long_job(&mut d);
    let checkpoint = wait_for_checkpoint(&mut d);
    d.kill9();
    let saved = samples_done(&checkpoint);
    assert_eq!(d.jobs(JobState::Running).len(), 1);
    // A staging directory may be left in models/; it is hidden and replaced by the resumed attempt.
    let mut d = Daemon::start(root, &config);
    assert_resumed_exactly_once(&mut d, saved);
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_one_is_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100}\nthreat: {eps: 0.1}"),
    );
    let eps_of_next_drop = |d: &mut Daemon, tag: &str, n: usize| -> f64 {
        drop_bytes(
            &d.watch(),
            &format!("{tag}.onnx"),
            &model_variant("resdw_legacy.onnx", tag),
        );
        d.wait_finished(n, Duration::from_secs(60));
        let job = d
            .jobs(JobState::Done)
            .into_iter()
            .find(|j| j.record.name == tag)
            .unwrap();
        job_report(&job).summary.threat_model.eps
    };
    assert_eq!(eps_of_next_drop(&mut d, "a", 1), 0.1);

    std::fs::write(
        &d.config,
        base_config(root, "daemon: {stable_ms: 100}\nthreat: {eps: 0.3}"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.expect_notify("READY=1", Duration::from_secs(5));
    assert_eq!(eps_of_next_drop(&mut d, "b", 2), 0.3);

    std::fs::write(&d.config, "threat: {eps: not-a-number}\n").unwrap();
    d.signal(libc::SIGHUP);
    d.expect_notify("READY=1", Duration::from_secs(5));
    d.assert_alive();
    assert!(
        d.log_text().contains("keeping the current one"),
        "{}",
        d.log_text()
    );
    assert_eq!(eps_of_next_drop(&mut d, "c", 3), 0.3);
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn watchdog_pings_arrive_when_systemd_asks_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d =
        Daemon::start_with_env(root, &base_config(root, ""), &[("WATCHDOG_USEC", "400000")]);
    let t = Instant::now();
    d.expect_notify("WATCHDOG=1", Duration::from_secs(3));
    d.expect_notify("WATCHDOG=1", Duration::from_secs(3));
    assert!(t.elapsed() < Duration::from_secs(3));
    let (ok, _) = d.terminate();
    assert!(ok);
}

/// The deadline counts from the job's start, which includes starting its process (seconds on a loaded machine)
/// and loading the model: 10 s leaves room for both, and the forward stage it then falls in would run for hours
/// (50 million samples), so the kill lands there however slow the start was.
const TIMEOUT_S: u64 = 10;

#[test]
fn a_job_past_limits_job_timeout_s_fails_with_a_clear_error_and_the_daemon_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(
            root,
            &format!("daemon: {{stable_ms: 100}}\nlimits: {{job_timeout_s: {TIMEOUT_S}}}"),
        ),
    );
    std::fs::write(
        d.watch().join("endless.yaml"),
        "dataset: {eval_samples: 50000000}\n",
    )
    .unwrap();
    drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "endless.onnx");
    d.wait_finished(1, Duration::from_secs(TIMEOUT_S + 60));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 1, "{}", d.log_text());
    let err = robustd::report::ErrorReport::read(&failed[0].dir.join("error.yaml")).unwrap();
    assert!(err.cause.contains("timed out"), "{err:?}");
    assert_eq!(err.stage, "forward", "{err:?}");
    assert!(err.hint.unwrap().contains("job_timeout_s"));
    let r = &failed[0].record;
    let took = parse_time(r.finished_at.as_deref().unwrap())
        .duration_since(parse_time(r.started_at.as_deref().unwrap()))
        .unwrap();
    assert!(
        took >= Duration::from_secs(TIMEOUT_S) && took < Duration::from_secs(TIMEOUT_S + 20),
        "killed {took:?} after the start"
    );
    assert!(!d
        .state()
        .join("checkpoints")
        .join(&failed[0].record.key)
        .exists());
    drop_fixture(&d.watch(), "resdw_legacy.onnx", "next.onnx");
    d.wait_finished(2, Duration::from_secs(60));
    assert_eq!(d.jobs(JobState::Done).len(), 1);
    let (ok, _) = d.terminate();
    assert!(ok);
}
