//! The deterministic kill matrix (issue 19): instead of killing at random moments (tests/crash_safety.rs), the
//! daemon is SIGKILLed at every named failpoint (src/failpoint.rs) in turn, restarted, killed again at the first
//! later point its resumed run reaches, and restarted once more. Random kills seldom land on the moments that lose
//! work — after the last epoch's checkpoint and before the result is published, between moving a drop's sidecar
//! and its model — and this walks every one of them.
//!
//! One uninterrupted run first: a real daemon, a small real ONNX classifier with a sidecar, a BAT job with the
//! holdout memorization estimate (two memorization models) and two epochs. Its failpoint trace gives the targets:
//! the first and the last pass of every named point, and of the points around each file of the result. For every
//! target, in a fresh directory, the job must end done exactly once with the uninterrupted run's report (timings, the
//! job's id and the resume bookkeeping aside; the fine-tuned model byte-identical), with nothing partial visible in
//! `models/` after any kill, nothing in `failed/`, and nothing left in staging, checkpoints, the spool or the inbox.
//!
//! Needs the `failpoints` feature (`make test` builds with it; Cargo.toml makes it this target's required feature).

mod daemon_support;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daemon_support::*;
use robustd::failpoint::{self, Target};
use robustd::job::JobState;
use serde_norway::Value;

const FIXTURE: &str = "lenet_legacy.onnx";
const MODEL: &str = "victim.onnx";
const SIDECAR: &str = "victim.yaml";
/// The sidecar changes the job (two epochs where the daemon's config says one): a drop that lost its sidecar on the
/// way would end with another report.
const SIDECAR_YAML: &str = "train: {epochs: 2}\n";
/// How long one daemon run may take to reach its point or finish the job.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// Report keys that differ between an interrupted and an uninterrupted run by design: wall times, the job's id
/// and attempts, the resume bookkeeping, and whether the memorization came from its cache.
const ASIDE: &[&str] = &[
    "timing",
    "job",
    "seconds",
    "samples_per_s",
    "resumed_from",
    "cached",
];

fn config(root: &Path) -> String {
    format!(
        "paths: {{watch: {r}/watch, models: {r}/models, state: {r}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         dataset: {{train_samples: 200, eval_samples: 32}}\n\
         eval: {{attacks: [fgsm, pgd], pgd: {{steps: 2, restarts: 1}}, eps_curve: [0.0, 0.1], batch_size: 32}}\n\
         train: {{method: bat, epochs: 1, batch_size: 50, val_fraction: 0.0, \
                  pgd: {{steps: 2, restarts: 1}}, bat: {{atypicality: holdout}}}}\n\
         memorization: {{epochs: 1}}\n\
         daemon: {{stable_ms: 50, rescan_ms: 200, http: {{listen: null}}}}\n",
        r = root.display()
    )
}

/// One daemon process of a run, with its log and failpoint trace, and the socket it reports READY=1 on.
struct Run {
    child: Child,
    log: PathBuf,
    notify: UnixDatagram,
    ready: bool,
}

impl Run {
    /// Starts `robustd run` on `root`'s config, killed at `kill` (a failpoint target list) when given.
    fn start(root: &Path, tag: &str, kill: Option<&str>) -> Self {
        let log = root.join(format!("daemon-{tag}.log"));
        let socket = root.join(format!("notify-{tag}.sock"));
        let notify = UnixDatagram::bind(&socket).unwrap();
        notify.set_nonblocking(true).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(root.join("robustd.yaml"))
            .env("RUST_LOG", "info")
            .env(failpoint::ENV_TRACE, root.join(format!("trace-{tag}")))
            .env_remove(failpoint::ENV_KILL)
            .env_remove(failpoint::ENV_DAEMON_PID)
            .env("NOTIFY_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(kill) = kill {
            cmd.env(failpoint::ENV_KILL, kill);
        }
        Self {
            child: cmd.spawn().expect("spawn robustd"),
            log,
            notify,
            ready: false,
        }
    }

    /// Whether the daemon said READY=1 (it handles SIGTERM from then on).
    fn is_ready(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.ready |= String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1");
        }
        self.ready
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon dies or the job is finished; returns whether it died (and checks that it died of
    /// SIGKILL, the failpoint's).
    fn killed_or_finished(&mut self, root: &Path) -> Result<bool, String> {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return match status.signal() {
                    Some(libc::SIGKILL) => Ok(true),
                    _ => Err(format!(
                        "daemon exited ({status}), not killed\n{}",
                        self.log_text()
                    )),
                };
            }
            if self.is_ready() && finished(root) {
                // A point right after the done-mark (job.done) kills just after the job looks finished.
                std::thread::sleep(Duration::from_millis(500));
                return match self.child.try_wait().unwrap().map(|s| s.signal()) {
                    Some(Some(libc::SIGKILL)) => Ok(true),
                    None => Ok(false),
                    Some(_) => Err(format!("daemon exited, not killed\n{}", self.log_text())),
                };
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "neither killed nor finished within {RUN_TIMEOUT:?}\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) -> Result<(), String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("daemon stopped with {status}\n{}", self.log_text()))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("daemon did not stop\n{}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job ended (done or failed) and nothing else is waiting: the inbox is empty and the spool holds nothing
/// queued, running or half-built.
fn finished(root: &Path) -> bool {
    let state = root.join("state");
    let ended = jobs(&state, JobState::Done).len() + jobs(&state, JobState::Failed).len();
    ended >= 1
        && ["queued", "running", "incoming"]
            .iter()
            .all(|d| entries(&state.join(d)).is_empty())
        && entries(&root.join("watch")).is_empty()
}

/// A fresh directory with the daemon's config and the drop (sidecar first, then the model) in its inbox.
fn prepare(root: &Path) {
    std::fs::create_dir_all(root.join("watch")).unwrap();
    std::fs::write(root.join("robustd.yaml"), config(root)).unwrap();
    drop_bytes(&root.join("watch"), SIDECAR, SIDECAR_YAML.as_bytes());
    drop_bytes(
        &root.join("watch"),
        MODEL,
        &std::fs::read(fixture(FIXTURE)).unwrap(),
    );
}

/// One pass of a failpoint: the process, the point, and which pass of it in that process (1-based).
#[derive(Debug, Clone)]
struct Pass {
    point: String,
    n: usize,
}

fn read_trace(path: &Path) -> Vec<Pass> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(pid, point)| {
            let n = counts
                .entry((pid.to_owned(), point.to_owned()))
                .or_default();
            *n += 1;
            Pass {
                point: point.to_owned(),
                n: *n,
            }
        })
        .collect()
}

/// What every run must end with: the uninterrupted run's report (with [`ASIDE`] removed) and fine-tuned model.
struct Expected {
    report: Value,
    tuned_sha256: String,
}

fn without_aside(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            for key in ASIDE {
                map.remove(*key);
            }
            for (_, v) in map.iter_mut() {
                without_aside(v);
            }
        }
        Value::Sequence(seq) => seq.iter_mut().for_each(without_aside),
        _ => {}
    }
}

/// The one done job's report (aside removed) and the sha256 of its fine-tuned model as found on disk.
fn result_of(root: &Path) -> Result<(Value, String), String> {
    let state = root.join("state");
    let done = jobs(&state, JobState::Done);
    let failed = jobs(&state, JobState::Failed);
    if !failed.is_empty() {
        let errors: Vec<String> = failed
            .iter()
            .map(|j| std::fs::read_to_string(j.dir.join("error.yaml")).unwrap_or_default())
            .collect();
        return Err(format!("failed jobs: {errors:?}"));
    }
    if done.len() != 1 {
        return Err(format!("{} jobs done, not exactly one", done.len()));
    }
    let dir = done[0].record.result_dir.clone().ok_or("no result_dir")?;
    let report = robustd::report::validate_report_file(&dir.join("report.yaml"))
        .map_err(|e| format!("report: {e}"))?;
    let tuned = report
        .artifacts
        .fine_tuned_model
        .as_ref()
        .ok_or("no fine-tuned model")?;
    let bytes = std::fs::read(dir.join(&tuned.path)).map_err(|e| e.to_string())?;
    let sha = robustd::report::sha256_hex(&bytes);
    if sha != tuned.sha256 {
        return Err(format!(
            "the fine-tuned model's sha256 {sha} is not the report's {}",
            tuned.sha256
        ));
    }
    let mut value: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("report.yaml")).unwrap())
            .map_err(|e| e.to_string())?;
    without_aside(&mut value);
    Ok((value, sha))
}

/// Nothing half-made or left over: one result and `latest` in `models/<name>/`, no hidden staging directory or
/// temporary file, no checkpoints, nothing queued, running or half-built, an empty inbox.
fn leftovers(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let models = root.join("models");
    for p in hidden_entries(&models) {
        out.push(format!("hidden: {}", p.display()));
    }
    for model in entries(&models) {
        let names = entries(&models.join(&model));
        if names.len() != 2 || !names.contains(&"latest".to_owned()) {
            out.push(format!("models/{model}: {names:?}"));
        }
    }
    let state = root.join("state");
    for sub in ["queued", "running", "incoming", "checkpoints"] {
        for name in entries(&state.join(sub)) {
            out.push(format!("state/{sub}/{name}"));
        }
    }
    for sub in ["done", "failed", "index"] {
        for p in hidden_entries(&state.join(sub)) {
            out.push(format!("hidden: {}", p.display()));
        }
    }
    for name in entries(&root.join("watch")) {
        out.push(format!("watch/{name}"));
    }
    out
}

/// How one target went.
struct Outcome {
    /// The point of the second kill (the resumed run's first later point), if it reached one.
    second: Option<String>,
}

/// Kills at `target`, restarts, kills at the first of `later` the resumed run reaches, restarts, and checks the
/// end against `expected`.
fn run_target(
    root: &Path,
    target: &Target,
    later: &[String],
    expected: &Expected,
) -> Result<Outcome, String> {
    prepare(root);
    let models = root.join("models");
    let mut first = Run::start(root, "1", Some(&target.to_string()));
    if !first.killed_or_finished(root)? {
        return Err("the job finished without passing the target".into());
    }
    drop(first);
    assert_partial_free(&models)?;
    let kill_later = (!later.is_empty()).then(|| later.join(","));
    let mut second = Run::start(root, "2", kill_later.as_deref());
    let second_kill = if second.killed_or_finished(root)? {
        drop(second);
        assert_partial_free(&models)?;
        let point = read_trace(&root.join("trace-2"))
            .last()
            .map(|p| p.point.clone());
        let mut third = Run::start(root, "3", None);
        if third.killed_or_finished(root)? {
            return Err("killed without a kill target".into());
        }
        third.stop()?;
        Some(point.unwrap_or_default())
    } else {
        second.stop()?;
        None
    };
    let (report, sha) = result_of(root)?;
    if sha != expected.tuned_sha256 {
        return Err(format!(
            "fine-tuned model {sha}, uninterrupted {}",
            expected.tuned_sha256
        ));
    }
    if report != expected.report {
        return Err(format!(
            "report differs from the uninterrupted run's:\n{}",
            yaml_diff(&expected.report, &report)
        ));
    }
    let left = leftovers(root);
    if !left.is_empty() {
        return Err(format!("left over: {left:?}"));
    }
    Ok(Outcome {
        second: second_kill,
    })
}

fn assert_partial_free(models: &Path) -> Result<(), String> {
    std::panic::catch_unwind(|| assert_nothing_partial_visible(models)).map_err(panic_text)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The lines that differ between two YAML documents.
fn yaml_diff(a: &Value, b: &Value) -> String {
    let (a, b) = (
        serde_norway::to_string(a).unwrap(),
        serde_norway::to_string(b).unwrap(),
    );
    let (la, lb): (BTreeSet<&str>, BTreeSet<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in la.difference(&lb) {
        out += &format!("- {l}\n");
    }
    for l in lb.difference(&la) {
        out += &format!("+ {l}\n");
    }
    out
}

/// CPU seconds (user + system) of this process's reaped children.
fn children_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[test]
fn sigkill_at_every_failpoint_and_again_in_the_resumed_run_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();

    // The uninterrupted run.
    let reference = tmp.path().join("reference");
    prepare(&reference);
    let mut run = Run::start(&reference, "1", None);
    assert!(
        !run.killed_or_finished(&reference).unwrap(),
        "killed without a target"
    );
    run.stop().unwrap();
    let (report, tuned_sha256) = result_of(&reference).unwrap();
    let left = leftovers(&reference);
    assert!(left.is_empty(), "uninterrupted run left {left:?}");
    let expected = Expected {
        report,
        tuned_sha256,
    };
    let trace = read_trace(&reference.join("trace-1"));
    let done = jobs(&reference.join("state"), JobState::Done);
    let result_dir = done[0].record.result_dir.clone().unwrap();
    let mut wanted: Vec<String> = failpoint::POINTS.iter().map(|p| p.to_string()).collect();
    for file in walk_files(&result_dir) {
        wanted.push(format!("{}{file}", failpoint::FILE_BEFORE));
        wanted.push(format!("{}{file}", failpoint::FILE_AFTER));
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !trace.iter().any(|p| &p.point == *w))
        .collect();
    assert!(
        missing.is_empty(),
        "the uninterrupted run never passed {missing:?}"
    );

    // Targets: the first and the last pass of every wanted point, with the points only later passes reach.
    let mut targets: Vec<(Target, Vec<String>)> = Vec::new();
    for name in &wanted {
        let at: Vec<usize> = (0..trace.len())
            .filter(|&i| &trace[i].point == name)
            .collect();
        let ends: BTreeSet<usize> = [at[0], at[at.len() - 1]].into();
        for i in ends {
            let before: BTreeSet<&str> = trace[..=i].iter().map(|p| p.point.as_str()).collect();
            let mut later: Vec<String> = Vec::new();
            for p in &trace[i + 1..] {
                if !before.contains(p.point.as_str()) && !later.contains(&p.point) {
                    later.push(p.point.clone());
                }
            }
            let target = Target {
                point: name.clone(),
                pass: trace[i].n,
            };
            targets.push((target, later));
        }
    }
    let points = wanted.len();

    // Every target in a directory of its own, a few at a time.
    let workers = std::env::var("ROBUSTD_KILL_MATRIX_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize)
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Result<Outcome, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((target, later)) = targets.get(i) else {
                    break;
                };
                let root = tmp.path().join(format!("t{i:03}"));
                let outcome =
                    std::panic::catch_unwind(|| run_target(&root, target, later, &expected))
                        .unwrap_or_else(|p| Err(panic_text(p)));
                if outcome.is_ok() {
                    let _ = std::fs::remove_dir_all(&root);
                }
                results.lock().unwrap().push((target.to_string(), outcome));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(t, r)| r.as_ref().err().map(|e| format!("== {t}: {e}")))
        .collect();
    let second_kills = results
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|o| o.second.is_some()))
        .count();
    eprintln!(
        "kill matrix: {} targets over {points} points, {} SIGKILLs ({second_kills} in resumed runs), {:.0} s wall, \
         {:.0} s CPU of the daemons, {workers} at a time",
        targets.len(),
        targets.len() + second_kills,
        started.elapsed().as_secs_f64(),
        children_cpu_seconds()
    );
    for (t, r) in &results {
        if let Ok(o) = r {
            eprintln!(
                "  {t} -> {}",
                o.second.as_deref().unwrap_or("(no later point reached)")
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} targets failed:\n{}",
        failures.len(),
        targets.len(),
        failures.join("\n")
    );
}

/// The loss, on its own: killed after the last epoch is checkpointed and before the result is published,
/// the job resumed with its staging directory swept and used to fail in the report stage (`train_log.csv: No such
/// file or directory`). It must end done, with the full training log.
#[test]
fn a_kill_after_the_last_epoch_resumes_to_a_done_job_with_its_training_log() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare(root);
    let mut first = Run::start(root, "1", Some(failpoint::FINETUNE_DONE));
    assert!(first.killed_or_finished(root).unwrap(), "not killed");
    drop(first);
    let mut second = Run::start(root, "2", None);
    assert!(!second.killed_or_finished(root).unwrap());
    second.stop().unwrap();
    result_of(root).unwrap();
    let done = jobs(&root.join("state"), JobState::Done);
    let report = job_report(&done[0]);
    let training = report.training.as_ref().unwrap();
    assert_eq!(training.epochs, 2, "the sidecar's epochs");
    assert!(training.resumed_from.is_some());
    let log = std::fs::read_to_string(
        done[0]
            .record
            .result_dir
            .as_ref()
            .unwrap()
            .join(report.artifacts.training_log.as_ref().unwrap()),
    )
    .unwrap();
    assert_eq!(log.lines().count(), 3, "header and two epochs:\n{log}");
    let left = leftovers(root);
    assert!(left.is_empty(), "{left:?}");
}

/// The names of the files under `dir` (recursively).
fn walk_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk_files(&entry.path()));
        } else {
            out.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
