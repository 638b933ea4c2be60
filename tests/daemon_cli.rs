//! `robustd submit` and `robustd status` against a running daemon; the polling watcher; the warning for a
//! world-writable inbox; and `systemd-analyze verify` on the shipped unit.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_support::*;
use robustd::job::JobState;

fn robustd(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn submit_copies_model_data_and_sidecar_atomically_and_status_reads_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Polling watcher and a world-writable inbox (the daemon warns about it).
    std::fs::create_dir_all(root.join("watch")).unwrap();
    std::fs::set_permissions(root.join("watch"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100, poll: true}"),
    );
    assert!(d.log_text().contains("world-writable"), "{}", d.log_text());
    assert!(
        d.log_text().contains("watcher=\"poll\""),
        "{}",
        d.log_text()
    );
    let cfg = d.config.to_str().unwrap().to_owned();

    // An invalid sidecar is refused before anything is copied.
    let bad = root.join("bad.yaml");
    std::fs::write(&bad, "threat: {eps: 7}\n").unwrap();
    let model = fixture("mlp_dynamo.onnx");
    let (ok, out) = robustd(&[
        "submit",
        model.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
        "--daemon-config",
        &cfg,
    ]);
    assert!(!ok && out.contains("threat.eps"), "{out}");
    assert!(entries(&d.watch()).is_empty());

    // A long job, so status can show it running.
    let sidecar = root.join("side.yaml");
    std::fs::write(
        &sidecar,
        "dataset: {eval_samples: 150000}\nthreat: {eps: 0.05}\n",
    )
    .unwrap();
    let (ok, out) = robustd(&[
        "submit",
        model.to_str().unwrap(),
        "--config",
        sidecar.to_str().unwrap(),
        "--daemon-config",
        &cfg,
    ]);
    assert!(ok, "{out}");
    // Catch the job in its forward stage by reading the spool directly (cheap, every few ms), then hold the daemon
    // still while `robustd status` (a whole process start, seconds on a loaded machine) reads the same spool:
    // polling with `status` itself missed a job that is over in a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .jobs(JobState::Running)
        .iter()
        .any(|j| j.record.stage.as_deref() == Some("forward"))
    {
        d.drain_notify();
        assert!(
            Instant::now() < deadline,
            "never saw the job running: {:?}\n{}",
            d.jobs(JobState::Done),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    d.signal(libc::SIGSTOP);
    let (ok, status) = robustd(&["status", "--config", &cfg]);
    d.signal(libc::SIGCONT);
    assert!(ok, "{status}");
    assert!(
        status.contains("running  1")
            && status.contains("stage forward")
            && status.contains("mlp_dynamo.onnx"),
        "{status}"
    );

    let (job, report) = d.the_one_done(1, Duration::from_secs(120));
    assert!(job.record.sidecar);
    assert_eq!(
        job.record.companions,
        vec!["mlp_dynamo.onnx.data".to_string()]
    );
    assert_eq!(report.summary.threat_model.eps, 0.05);
    let (ok, out) = robustd(&["status", "--config", &cfg]);
    assert!(ok);
    assert!(
        out.contains("done     1") && out.contains("evaluation-only"),
        "{out}"
    );
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn status_without_a_spool_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, base_config(tmp.path(), "")).unwrap();
    let (ok, out) = robustd(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("no job spool"), "{out}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed (apt-get install systemd): unit not verified");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/robustd.service"),
    )
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/opt/robustd/target/release/robustd", BIN);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("robustd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}
