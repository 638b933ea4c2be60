//! Helpers for the daemon integration tests: a real `robustd run` process on a temp directory, with its config,
//! log, and a `NOTIFY_SOCKET` datagram socket standing in for systemd; model drops done the way a careful client
//! does them (hidden temp name, then rename); and readers for the spool.
#![allow(dead_code)]

#[path = "../fixtures/mod.rs"]
mod fixtures;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use robustd::job::{Job, JobState};

#[allow(unused_imports)] // used by some of the binaries that include this module
pub use fixtures::copy_dir;

pub const BIN: &str = env!("CARGO_BIN_EXE_robustd");

/// A generated fixture model (`make fixtures` writes them).
pub fn fixture(name: &str) -> PathBuf {
    fixtures::generated(name)
}

/// The test config: fast stability checks, one ORT thread, evaluation-only jobs, a small probe.
pub fn base_config(root: &Path, extra: &str) -> String {
    // These tests exercise the daemon itself, so jobs use the quick `triage` runner; tests/pipeline_*.rs drive
    // the full pipeline.
    let extra = if extra.contains("daemon: {") {
        extra.replace("daemon: {", "daemon: {runner: triage, ")
    } else {
        format!("{extra}\ndaemon: {{runner: triage}}")
    };
    let yaml = format!(
        "paths: {{watch: {r}/watch, models: {r}/models, state: {r}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         train: {{method: none}}\n\
         {extra}\n",
        r = root.display()
    )
    .replace("\n\n", "\n");
    http_off_unless_set(&yaml)
}

/// Test daemons run side by side: unless a test configures `daemon.http` itself, its daemon serves no HTTP (the
/// default address, 127.0.0.1:9464, would go to whichever started first).
pub fn http_off_unless_set(yaml: &str) -> String {
    if yaml.contains("http:") {
        yaml.to_owned()
    } else if yaml.contains("daemon: {") {
        yaml.replacen("daemon: {", "daemon: {http: {listen: null}, ", 1)
    } else {
        format!("{yaml}\ndaemon: {{http: {{listen: null}}}}\n")
    }
}

pub struct Daemon {
    pub root: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub notify: UnixDatagram,
    pub started: Instant,
}

impl Daemon {
    /// Writes `config_yaml` to ROOT/robustd.yaml and starts the daemon; waits for READY=1 on the notify socket.
    pub fn start(root: &Path, config_yaml: &str) -> Self {
        Self::start_with_env(root, config_yaml, &[])
    }

    pub fn start_with_env(root: &Path, config_yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_configured(root, config_yaml, |cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Like [`Daemon::start`], with a hook that adjusts the command first (environment, `pre_exec` limits).
    pub fn start_configured(
        root: &Path,
        config_yaml: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let config = root.join("robustd.yaml");
        std::fs::write(&config, http_off_unless_set(config_yaml)).unwrap();
        let log = root.join(format!("daemon-{}.log", now_millis()));
        let socket_path = root.join(format!("notify-{}.sock", now_millis()));
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn robustd");
        let mut daemon = Self {
            root: root.to_path_buf(),
            config,
            log,
            child: Some(child),
            notify,
            started,
        };
        daemon.expect_notify("READY=1", Duration::from_secs(30));
        daemon
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn watch(&self) -> PathBuf {
        self.root.join("watch")
    }
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Reads notify datagrams until one contains `needle`; returns every message seen.
    pub fn expect_notify(&mut self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == needle || l.starts_with(needle));
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
            self.assert_alive();
        }
        panic!(
            "no `{needle}` from the daemon within {timeout:?}; got {seen:?}\nlog:\n{}",
            self.log_text()
        );
    }

    /// Reads whatever notifications are waiting (systemd would), returning them.
    pub fn drain_notify(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        self.notify.set_nonblocking(true).unwrap();
        while let Ok(n) = self.notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.notify.set_nonblocking(false).unwrap();
        seen
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// SIGTERM and wait for exit; returns (exit status success, time to exit).
    pub fn terminate(&mut self) -> (bool, Duration) {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30));
        (status, t.elapsed())
    }

    /// SIGKILL (no chance to clean up) and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30));
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let mut child = self.child.take().expect("daemon already stopped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "daemon did not exit within {timeout:?}\nlog:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("daemon exited ({status})\nlog:\n{}", self.log_text());
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn jobs(&self, state: JobState) -> Vec<Job> {
        jobs(&self.state(), state)
    }

    /// Waits until `finished` jobs are done or failed, asserts that exactly one of them is done (showing the
    /// failures and the log otherwise), and returns it with its schema-validated report.
    pub fn the_one_done(
        &mut self,
        finished: usize,
        timeout: Duration,
    ) -> (Job, robustd::report::Report) {
        self.wait_finished(finished, timeout);
        let mut done = self.jobs(JobState::Done);
        assert_eq!(
            done.len(),
            1,
            "failed: {:?}\nlog:\n{}",
            self.jobs(JobState::Failed),
            self.log_text()
        );
        let job = done.remove(0);
        let report = job_report(&job);
        (job, report)
    }

    /// Polls `found` every 20 ms (checking that the daemon lives and draining its notifications) until it gives
    /// a value, and returns it; panics naming `what` with the daemon's log after `timeout`.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            self.drain_notify();
            if let Some(value) = found(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `done/` + `failed/` hold `n` jobs together (and nothing is queued or running).
    pub fn wait_finished(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let finished = self.jobs(JobState::Done).len() + self.jobs(JobState::Failed).len();
            let busy = self.jobs(JobState::Queued).len() + self.jobs(JobState::Running).len();
            if finished >= n && busy == 0 {
                return;
            }
            self.assert_alive();
            self.drain_notify();
            assert!(
                Instant::now() < deadline,
                "only {finished} of {n} jobs finished ({busy} busy) within {timeout:?}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The finished job's report.yaml, validated against the schema (panics naming the job if it has no result or the
/// report is invalid).
pub fn job_report(job: &Job) -> robustd::report::Report {
    let dir = job
        .record
        .result_dir
        .as_ref()
        .unwrap_or_else(|| panic!("job {} has no result_dir", job.record.id));
    robustd::report::validate_report_file(&dir.join("report.yaml"))
        .unwrap_or_else(|e| panic!("job {}: {e}", job.record.id))
}

pub fn jobs(state_dir: &Path, state: JobState) -> Vec<Job> {
    let dir = state_dir.join(state.dir_name());
    let mut out: Vec<Job> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_type().is_ok_and(|t| t.is_dir())
                        && !e.file_name().to_string_lossy().starts_with('.')
                })
                .filter_map(|e| Job::read(&e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    out
}

/// Drops `bytes` into `watch` as `name` the careful way (hidden temp file, then rename); returns the drop time.
pub fn drop_bytes(watch: &Path, name: &str, bytes: &[u8]) -> SystemTime {
    let tmp = watch.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    let at = SystemTime::now();
    std::fs::rename(&tmp, watch.join(name)).unwrap();
    at
}

/// Drops a fixture model (with its `.onnx.data` companion first, if it has one) as `name`.
pub fn drop_fixture(watch: &Path, fixture_name: &str, name: &str) -> SystemTime {
    let data = fixture_name.to_string() + ".data";
    let data_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/generated")
        .join(&data);
    if data_path.is_file() {
        drop_bytes(watch, &data, &std::fs::read(&data_path).unwrap());
    }
    drop_bytes(watch, name, &std::fs::read(fixture(fixture_name)).unwrap())
}

/// A distinct but equivalent model: the fixture with a `doc_string` field appended (valid protobuf: a repeated
/// singular field, last one wins), so each copy has its own sha256.
pub fn model_variant(fixture_name: &str, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture(fixture_name)).unwrap();
    let doc = format!("robustd test variant {tag}");
    assert!(doc.len() < 128);
    bytes.push(0x32); // field 6 (doc_string), wire type 2
    bytes.push(doc.len() as u8);
    bytes.extend_from_slice(doc.as_bytes());
    bytes
}

pub fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

/// Files in `dir` (not recursing), sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Everything visible under `models/` is complete: each `models/<name>/<key12>` holds a report that validates,
/// and `latest` points at one of them.
pub fn assert_nothing_partial_visible(models: &Path) {
    for model in std::fs::read_dir(models).into_iter().flatten().flatten() {
        if model.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for entry in std::fs::read_dir(model.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // staging and temp names: hidden, and swept at startup
            }
            let path = entry.path();
            if name == "latest" {
                let target = std::fs::read_link(&path).unwrap();
                assert!(
                    model.path().join(&target).join("report.yaml").is_file(),
                    "{} points at {} which has no report",
                    path.display(),
                    target.display()
                );
                continue;
            }
            robustd::report::validate_report_file(&path.join("report.yaml"))
                .unwrap_or_else(|e| panic!("visible result {} is incomplete: {e}", path.display()));
        }
    }
}

/// Hidden leftovers anywhere under `dir` (staging directories, temporary files).
pub fn hidden_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                out.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out
}
