//! A real model dropped into the running daemon becomes a validated report under models/<name>/<key12>/, with
//! `latest`, fixed file modes, systemd notifications, and identical drops linked instead of re-run.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use daemon_support::*;
use robustd::job::JobState;
use robustd::report::{validate_report_file, Verdict};

#[test]
fn dropped_models_get_valid_reports_latest_links_and_status_notifications() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100, rescan_ms: 2000}"),
    );

    // External data (dynamo exporter) and inline weights (legacy exporter).
    let dropped_at = [
        (
            "mlp_dynamo.onnx",
            drop_fixture(&d.watch(), "mlp_dynamo.onnx", "mlp_dynamo.onnx"),
        ),
        (
            "cnn_bn_legacy.onnx",
            drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "cnn_bn_legacy.onnx"),
        ),
    ];
    d.wait_finished(2, Duration::from_secs(60));
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 2, "failed: {:?}", d.jobs(JobState::Failed));

    for job in &done {
        let r = &job.record;
        let at = dropped_at
            .iter()
            .find(|(n, _)| *n == r.dropped_as)
            .unwrap()
            .1;
        let result = r.result_dir.clone().expect("result_dir");
        assert_eq!(result, d.models().join(&r.name).join(&r.key[..12]));
        let report =
            validate_report_file(&result.join("report.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.summary.verdict, Verdict::EvaluationOnly);
        assert_eq!(report.summary.model, r.dropped_as);
        assert_eq!(report.model.sha256, r.model_sha256);
        let fc = report.model.forward_check.as_ref().unwrap();
        assert_eq!(fc.output_shape, vec![2, 10]);
        assert!(fc.samples_per_second > 0.0);
        assert_eq!(report.model.classes, Some(10));
        assert_eq!(report.job.as_ref().unwrap().id, r.id);
        assert_eq!(
            std::fs::read_link(d.models().join(&r.name).join("latest")).unwrap(),
            std::path::Path::new(&r.key[..12])
        );
        // The original model (and its external data) sits next to the report; the spool keeps no second copy.
        assert!(result.join(&r.model_file).is_file());
        for c in &r.companions {
            assert!(result.join(c).is_file(), "{c}");
            assert!(!job.dir.join(c).exists());
        }
        assert!(!job.dir.join(&r.model_file).exists());
        for entry in std::fs::read_dir(&result).unwrap().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", entry.path().display());
        }
        let mode = std::fs::metadata(&result).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let latency = parse_time(r.started_at.as_deref().unwrap())
            .duration_since(at)
            .unwrap();
        eprintln!(
            "drop-to-job-start latency {}: {latency:?} (stable_ms 100)",
            r.dropped_as
        );
        assert!(latency < Duration::from_secs(5), "{latency:?}");
    }
    let mlp = done.iter().find(|j| j.record.name == "mlp_dynamo").unwrap();
    assert_eq!(
        mlp.record.companions,
        vec!["mlp_dynamo.onnx.data".to_string()]
    );
    assert!(
        entries(&d.watch()).is_empty(),
        "inbox not emptied: {:?}",
        entries(&d.watch())
    );
    // Nothing half-built is visible in models/.
    for name in entries(&d.models()) {
        for entry in entries(&d.models().join(&name)) {
            assert!(!entry.starts_with('.'), "leftover {name}/{entry}");
        }
    }

    let (ok, took) = d.terminate();
    assert!(ok, "exit status\n{}", d.log_text());
    assert!(took < Duration::from_secs(10), "{took:?}");
    let seen = d.expect_notify("STOPPING=1", Duration::from_secs(2));
    assert!(seen.iter().any(|m| m.contains("STATUS=")), "{seen:?}");
}

#[test]
fn identical_drops_link_to_the_existing_result_and_a_new_config_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(root, &base_config(root, "daemon: {stable_ms: 100}"));
    let bytes = std::fs::read(fixture("resdw_legacy.onnx")).unwrap();

    drop_bytes(&d.watch(), "net.onnx", &bytes);
    d.wait_finished(1, Duration::from_secs(60));
    let first = d.jobs(JobState::Done).remove(0);
    let result = first.record.result_dir.clone().unwrap();
    let report_before = std::fs::read_to_string(result.join("report.yaml")).unwrap();

    // Same bytes, same name; then same bytes under another name.
    drop_bytes(&d.watch(), "net.onnx", &bytes);
    d.wait_finished(2, Duration::from_secs(60));
    drop_bytes(&d.watch(), "copy.onnx", &bytes);
    d.wait_finished(3, Duration::from_secs(60));
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 3);
    for dup in &done[1..] {
        assert_eq!(
            dup.record.dedup_of.as_deref(),
            Some(first.record.id.as_str()),
            "{:?}",
            dup.record
        );
        assert_eq!(dup.record.key, first.record.key);
    }
    // The result was not rewritten; the other name links to it.
    assert_eq!(
        std::fs::read_to_string(result.join("report.yaml")).unwrap(),
        report_before
    );
    let link = d.models().join("copy").join(&first.record.key[..12]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(&result).unwrap()
    );
    assert!(d.models().join("copy/latest/report.yaml").is_file());

    // A sidecar that changes the config changes the key: a second, separate result.
    std::fs::write(d.watch().join("net.yaml"), "threat: {eps: 0.2}\n").unwrap();
    drop_bytes(&d.watch(), "net.onnx", &bytes);
    d.wait_finished(4, Duration::from_secs(60));
    let done = d.jobs(JobState::Done);
    let fresh = &done[3];
    assert!(fresh.record.dedup_of.is_none());
    assert_ne!(fresh.record.key, first.record.key);
    assert!(fresh.record.sidecar);
    let report =
        validate_report_file(&fresh.record.result_dir.clone().unwrap().join("report.yaml"))
            .unwrap();
    assert_eq!(report.summary.threat_model.eps, 0.2);
    assert_eq!(
        entries(&d.models().join("net")).len(),
        3,
        "two results + latest"
    );
    let (ok, _) = d.terminate();
    assert!(ok);
}
