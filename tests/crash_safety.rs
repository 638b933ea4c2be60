//! Crash safety (issue 9): the daemon is killed with SIGKILL at 20 seeded random moments across several jobs of
//! the real pipeline (tiny settings, a second or two per job) and restarted each time. After every kill nothing
//! half-made is visible in `models/` (every visible result holds a report that validates); in the end every job
//! completed exactly once, with a valid report, and no hidden staging directory or temporary file is left.
//! Disk full: `models/` on a 2 MiB tmpfs (or, where mounting is not allowed, a file-size limit on the daemon that
//! makes large writes fail) — the job fails cleanly with error.yaml, nothing half-written appears, the daemon keeps
//! serving and processes the next model once there is room.

mod daemon_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_support::*;
use rand::{Rng, SeedableRng};
use robustd::job::JobState;
use robustd::report::{validate_report_file, ErrorReport};

const JOBS: usize = 6;
const KILLS: usize = 20;

fn config(root: &Path, models: &Path) -> String {
    format!(
        "paths: {{watch: {r}/watch, models: {m}, state: {r}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         dataset: {{eval_samples: 40, train_samples: 100}}\n\
         eval: {{attacks: [fgsm, pgd], pgd: {{steps: 3}}, eps_curve: [0.0, 0.1], batch_size: 20}}\n\
         train: {{method: none}}\n\
         daemon: {{runner: pipeline, stable_ms: 100, rescan_ms: 300, eval_concurrency: 2}}\n",
        r = root.display(),
        m = models.display()
    )
}

#[test]
fn sigkill_at_twenty_random_points_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let models = root.join("models");
    let cfg = config(root, &models);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x9e11);
    let started = Instant::now();

    let mut d = Daemon::start(root, &cfg);
    for i in 0..JOBS {
        drop_bytes(
            &d.watch(),
            &format!("m{i}.onnx"),
            &model_variant("lenet_legacy.onnx", &format!("crash{i}")),
        );
    }
    let mut dropped = JOBS;
    let mut kills = 0;
    while kills < KILLS {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..2500)));
        d.kill9();
        kills += 1;
        assert_nothing_partial_visible(&models);
        d = Daemon::start(root, &cfg);
        let finished = d.jobs(JobState::Done).len() + d.jobs(JobState::Failed).len();
        if finished == dropped {
            // Everything finished before all kills were spent: more work to kill.
            drop_bytes(
                &d.watch(),
                &format!("extra{kills}.onnx"),
                &model_variant("lenet_legacy.onnx", &format!("extra{kills}")),
            );
            dropped += 1;
        }
    }
    let expected = dropped;
    d.wait_finished(expected, Duration::from_secs(120));

    let done = d.jobs(JobState::Done);
    let failed = d.jobs(JobState::Failed);
    assert!(
        failed.is_empty(),
        "{:?}",
        failed.iter().map(|j| &j.record.error).collect::<Vec<_>>()
    );
    assert_eq!(done.len(), expected, "each drop done exactly once");
    let mut names: Vec<&str> = done.iter().map(|j| j.record.dropped_as.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), expected, "a drop was done twice: {names:?}");
    for job in &done {
        let dir = job.record.result_dir.clone().unwrap();
        validate_report_file(&dir.join("report.yaml")).unwrap();
        // One result per model: models/<name>/ holds its result and `latest`, nothing else.
        let model_dir = models.join(&job.record.name);
        assert_eq!(
            entries(&model_dir),
            vec![job.record.key12().to_string(), "latest".into()],
            "{}",
            model_dir.display()
        );
    }
    assert!(
        hidden_entries(&models).is_empty(),
        "leftovers: {:?}",
        hidden_entries(&models)
    );
    for state in ["queued", "running", "incoming"] {
        assert!(
            entries(&d.state().join(state)).is_empty(),
            "state/{state}: {:?}",
            entries(&d.state().join(state))
        );
    }
    let resumed = done.iter().filter(|j| j.record.attempts > 1).count();
    assert!(resumed > 0, "no job was ever interrupted and resumed");
    let (ok, _) = d.terminate();
    assert!(ok);
    eprintln!(
        "{KILLS} SIGKILLs over {expected} jobs: all done once, {resumed} resumed after a kill, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Where the models directory of the disk-full test lives, and how the disk fills.
enum SmallDisk {
    /// A 2 MiB tmpfs mounted on the path (unmounted on drop).
    Tmpfs(PathBuf),
    /// Mounting is not allowed: the daemon runs with RLIMIT_FSIZE, so any file past this many bytes fails to
    /// write (EFBIG), the way a full disk fails a write.
    FileSizeLimit(u64),
}

impl SmallDisk {
    fn new(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            SmallDisk::Tmpfs(path.to_path_buf())
        } else {
            eprintln!(
                "cannot mount a tmpfs here: injecting write errors with RLIMIT_FSIZE instead"
            );
            SmallDisk::FileSizeLimit(64 * 1024)
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let SmallDisk::Tmpfs(path) = self {
            let _ = Command::new("umount").arg(&*path).status();
        }
    }
}

#[test]
fn a_full_disk_fails_the_job_cleanly_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let models = root.join("models");
    let disk = SmallDisk::new(&models);
    let filler = models.join(".filler");
    if let SmallDisk::Tmpfs(_) = disk {
        // Leave ~96 KiB: less than the model copy (about 240 KiB) every result starts with.
        let free = 2 * 1024 * 1024 - 96 * 1024;
        std::fs::write(&filler, vec![0u8; free]).unwrap();
    }
    let limit = match disk {
        SmallDisk::FileSizeLimit(n) => Some(n),
        SmallDisk::Tmpfs(_) => None,
    };
    let mut d = Daemon::start_configured(root, &config(root, &models), |cmd| {
        if let Some(bytes) = limit {
            unsafe {
                cmd.pre_exec(move || {
                    // SIGXFSZ would kill the process; ignored, the write fails with EFBIG instead.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    });
    drop_fixture(&d.watch(), "lenet_legacy.onnx", "full.onnx");
    d.wait_finished(1, Duration::from_secs(60));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 1, "done: {:?}", d.jobs(JobState::Done));
    let err = ErrorReport::read(&failed[0].dir.join("error.yaml")).unwrap();
    let cause = err.cause.to_lowercase();
    assert!(
        cause.contains("no space left") || cause.contains("file too large"),
        "{err:?}"
    );
    assert!(cause.contains("full.onnx"), "{}", err.cause);
    assert!(err.hint.is_some());
    // Nothing half-written: no result, no staging directory, no temporary file (only the test's own filler).
    let left: Vec<PathBuf> = hidden_entries(&models)
        .into_iter()
        .filter(|p| p != &filler)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let visible: Vec<String> = entries(&models)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(visible.is_empty(), "visible in models/: {visible:?}");
    d.assert_alive();

    // Room again (tmpfs) or a model small enough for the limit: the next drop is processed.
    match disk {
        SmallDisk::Tmpfs(_) => {
            std::fs::remove_file(&filler).unwrap();
            drop_fixture(&d.watch(), "lenet_legacy.onnx", "roomy.onnx");
        }
        SmallDisk::FileSizeLimit(_) => {
            drop_fixture(&d.watch(), "resdw_legacy.onnx", "roomy.onnx");
        }
    }
    d.the_one_done(2, Duration::from_secs(60));
    let (ok, _) = d.terminate();
    assert!(ok);
}
