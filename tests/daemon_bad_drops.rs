//! Hostile and broken drops end in failed/ with an error.yaml that names the stage, the cause and a hint; the
//! daemon keeps serving and processes the next good model. Symlinks are never followed, FIFOs never opened.

mod daemon_support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use daemon_support::*;
use robustd::job::JobState;
use robustd::report::ErrorReport;

#[test]
fn bad_drops_fail_cleanly_and_the_next_good_model_is_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let outside = root.join("secret.onnx");
    std::fs::write(&outside, b"outside the inbox").unwrap();
    let mut d = Daemon::start(root, &base_config(root, "daemon: {stable_ms: 100}"));
    let w = d.watch();

    let good = std::fs::read(fixture("cnn_bn_legacy.onnx")).unwrap();
    drop_bytes(
        &w,
        "not_onnx.onnx",
        b"this is a text file, not a protobuf\n",
    );
    drop_bytes(&w, "truncated.onnx", &good[..good.len() / 2]);
    drop_bytes(&w, "empty.onnx", b"");
    // Sidecars: broken YAML, an unknown key, a value out of range.
    std::fs::write(w.join("badyaml.yaml"), "threat: {eps: [unclosed\n").unwrap();
    drop_bytes(&w, "badyaml.onnx", &good);
    std::fs::write(
        w.join("unknownkey.yaml"),
        "train:\n  epochs: 2\n  epoch: 3\n",
    )
    .unwrap();
    drop_bytes(
        &w,
        "unknownkey.onnx",
        &model_variant("cnn_bn_legacy.onnx", "u"),
    );
    std::fs::write(w.join("badrange.yaml"), "threat: {eps: -1}\n").unwrap();
    drop_bytes(
        &w,
        "badrange.onnx",
        &model_variant("cnn_bn_legacy.onnx", "r"),
    );
    // Daemon-wide keys: a dropped sidecar must not load a library into the daemon or lift its limits.
    std::fs::write(
        w.join("evillib.yaml"),
        "runtime: {ort_library: /tmp/evil.so}\n",
    )
    .unwrap();
    drop_bytes(
        &w,
        "evillib.onnx",
        &model_variant("cnn_bn_legacy.onnx", "l"),
    );
    std::fs::write(
        w.join("nolimits.yaml"),
        "limits: {job_timeout_s: 0}\npaths: {models: /}\n",
    )
    .unwrap();
    drop_bytes(
        &w,
        "nolimits.onnx",
        &model_variant("cnn_bn_legacy.onnx", "n"),
    );
    // A symlink pointing out of the inbox and a FIFO: refused without being followed or opened.
    std::os::unix::fs::symlink(&outside, w.join("link.onnx")).unwrap();
    let fifo = CString::new(w.join("pipe.onnx").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A hostile name.
    drop_bytes(&w, "x..\u{1b}[31mevil\n.onnx", b"junk");

    d.wait_finished(11, Duration::from_secs(60));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 11, "done: {:?}", d.jobs(JobState::Done));
    let stage_of = |dropped: &str| -> ErrorReport {
        let job = failed
            .iter()
            .find(|j| j.record.dropped_as == dropped)
            .unwrap_or_else(|| panic!("{dropped} not in failed/"));
        let err = ErrorReport::read(&job.dir.join("error.yaml")).unwrap();
        assert!(!err.cause.is_empty() && err.hint.is_some(), "{err:?}");
        assert_eq!(job.record.error.as_deref(), Some(err.cause.as_str()));
        err
    };
    for (name, stage, needle) in [
        ("not_onnx.onnx", "load", "onnxruntime cannot load"),
        ("truncated.onnx", "load", "onnxruntime cannot load"),
        ("empty.onnx", "load", "onnxruntime cannot load"),
        ("badyaml.onnx", "sidecar", "badyaml.yaml:"),
        ("unknownkey.onnx", "sidecar", "unknown field `epoch`"),
        ("badrange.onnx", "sidecar", "threat.eps"),
        ("evillib.onnx", "sidecar", "may not set runtime.ort_library"),
        ("nolimits.onnx", "sidecar", "may not set paths, limits"),
        ("link.onnx", "intake", "symbolic link"),
        ("pipe.onnx", "intake", "FIFO"),
        ("x..?[31mevil?.onnx", "load", "onnxruntime cannot load"),
    ] {
        let err = stage_of(name);
        assert_eq!(err.stage, stage, "{name}: {err:?}");
        assert!(err.cause.contains(needle), "{name}: {}", err.cause);
    }
    // The symlink was moved as a link (its target untouched), the FIFO as a FIFO; the sidecars went with their models.
    let link_job = failed
        .iter()
        .find(|j| j.record.dropped_as == "link.onnx")
        .unwrap();
    assert!(std::fs::symlink_metadata(link_job.dir.join("link.onnx"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside the inbox");
    let bad_yaml_job = failed
        .iter()
        .find(|j| j.record.dropped_as == "badyaml.onnx")
        .unwrap();
    assert!(bad_yaml_job.dir.join("sidecar.yaml").is_file());
    // The hostile name became a safe directory name.
    let evil = failed
        .iter()
        .find(|j| j.record.dropped_as.contains("evil"))
        .unwrap();
    assert!(
        evil.record
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{}",
        evil.record.name
    );
    assert!(entries(&d.watch()).is_empty(), "{:?}", entries(&d.watch()));
    assert!(
        entries(&d.models()).is_empty(),
        "failed jobs leave nothing in models/: {:?}",
        entries(&d.models())
    );

    // Still serving.
    drop_bytes(&w, "good.onnx", &good);
    d.the_one_done(12, Duration::from_secs(60));
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn a_model_waits_for_its_external_data_and_unrelated_files_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100, rescan_ms: 300}"),
    );
    let w = d.watch();
    std::fs::write(w.join("notes.txt"), "not a model").unwrap();
    std::fs::write(w.join("upload.onnx.part"), "in progress").unwrap();
    // The model arrives before its .onnx.data: it must wait, not fail.
    drop_bytes(
        &w,
        "mlp_dynamo.onnx",
        &std::fs::read(fixture("mlp_dynamo.onnx")).unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert!(d.jobs(JobState::Failed).is_empty() && d.jobs(JobState::Done).is_empty());
    assert!(w.join("mlp_dynamo.onnx").is_file());
    drop_bytes(
        &w,
        "mlp_dynamo.onnx.data",
        &std::fs::read(fixture("mlp_dynamo.onnx.data")).unwrap(),
    );
    d.the_one_done(1, Duration::from_secs(60));
    assert_eq!(
        entries(&w),
        vec!["notes.txt".to_string(), "upload.onnx.part".into()]
    );
    assert!(d.log_text().contains("waiting"), "{}", d.log_text());
    let (ok, _) = d.terminate();
    assert!(ok);
}
