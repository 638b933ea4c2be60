//! Filesystem hygiene (issue 9). Results get mode 0644 (files) and 0755 (directories) whatever the daemon's umask;
//! a world-writable inbox is warned about at startup; symlinks, FIFOs and device files in the inbox — as models,
//! companions or sidecars — are never followed or opened (the hostile corpus drops each kind: see
//! tests/hostile_corpus.rs; here the checks that need their own daemon).

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon_support::*;
use robustd::job::JobState;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn results_are_0644_and_0755_even_under_a_strict_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start_configured(
        root,
        &base_config(
            root,
            "daemon: {stable_ms: 100}\ndataset: {eval_samples: 16}",
        ),
        |cmd| unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        },
    );
    drop_fixture(&d.watch(), "mlp_dynamo.onnx", "modes.onnx");
    d.wait_finished(1, Duration::from_secs(60));
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 1, "{:?}", d.jobs(JobState::Failed));
    let mut paths = vec![d.models()];
    walk(&d.models(), &mut paths);
    let mut files = 0;
    for path in &paths {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o755 } else { 0o644 };
        files += usize::from(meta.is_file());
        assert_eq!(mode, want, "{} has mode {mode:o}", path.display());
    }
    // The report, the model and its external data at least.
    assert!(files >= 3, "{paths:?}");
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn a_world_writable_inbox_is_warned_about_at_startup() {
    for (mode, warned) in [(0o777, true), (0o755, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let watch = root.join("watch");
        std::fs::create_dir(&watch).unwrap();
        std::fs::set_permissions(&watch, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut d = Daemon::start(root, &base_config(root, ""));
        let log = d.log_text();
        assert_eq!(
            log.contains("world-writable"),
            warned,
            "mode {mode:o}:\n{log}"
        );
        if warned {
            assert!(log.contains("chmod o-w"), "{log}");
        }
        let (ok, _) = d.terminate();
        assert!(ok);
    }
}
