//! The `eval-process` workload: the user's view of an evaluation, timed from outside as whole processes.
//!
//! robustd's side is `robustd eval MODEL --attacks pgd --n N --eps E` with the default config (only
//! `runtime.threads` set, to the suite's thread count); the reference is `scripts/bench_user_pgd.py`, a
//! torchattacks PGD-20 script with its interpreter start and imports (torch, torchattacks), run as a user runs it
//! (no allocator settings). The repeats alternate the two sides (robustd, script, robustd, ...) so a change in the
//! machine's load hits both alike. Wall time, CPU time and peak RSS are each process's own (`wait4`). robustd's
//! report says where its time went: its `timing` block and the stages' seconds of the last repeat are kept.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_norway::{Mapping, Value};

use crate::{Settings, Workload, MANIFEST};

/// What one process cost: wall and CPU seconds, peak RSS (MiB), and its stdout.
struct Exit {
    wall: f64,
    cpu: f64,
    rss_mb: f64,
    stdout: String,
}

/// Runs `cmd` to completion, its stderr into `log`; fails on a non-zero exit.
fn run(mut cmd: Command, log: &Path) -> Result<Exit> {
    let started = Instant::now();
    let mut child = cmd
        .current_dir(MANIFEST)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not yet reaped (std's Child is never waited on after this).
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let start = tail.len().saturating_sub(3000);
        bail!(
            "{cmd:?} failed (wait status {status}):\n{}",
            tail.get(start..).unwrap_or(&tail)
        );
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(Exit {
        wall,
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        rss_mb: usage.ru_maxrss as f64 / 1024.0,
        stdout,
    })
}

/// Both sides of `eval-process` on `model`: (robustd, reference), as the other workloads' JSON.
pub fn measure(settings: &Settings, model: &Path, w: &Workload) -> Result<(Value, Value)> {
    let flag = |k: &str| {
        w.flag(k)
            .with_context(|| format!("eval-process needs --{k}"))
    };
    let (n, batch, eps) = (flag("n")?, flag("batch")?, flag("eps")?);
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let dir = settings.work.join(format!("process/{stem}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("threads.yaml");
    std::fs::write(
        &config,
        format!("runtime: {{threads: {}}}\n", settings.threads),
    )?;
    let logs = settings.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let (mut ours, mut theirs) = (Side::default(), Side::default());
    let mut report = Value::Null;
    // Per repeat, (PGD stage + eps curve) ÷ PGD stage from robustd's report.
    let mut curve_ratio = Vec::new();
    for rep in 0..settings.reps {
        let out = dir.join(format!("robustd-{rep}"));
        let _ = std::fs::remove_dir_all(&out);
        let cmd = robustd_eval(model, n, eps, &config, &out);
        let exit = run(cmd, &logs.join(format!("{stem}-eval-process-robustd.log")))?;
        report = read_report(&out)?;
        let before = &report["evaluation"]["before"];
        if let (Some(attack), Some(curve)) = (
            before["attacks"]["pgd"]["seconds"].as_f64(),
            before["curve"]["seconds"].as_f64(),
        ) {
            curve_ratio.push((attack + curve) / attack);
        }
        ours.push(
            &exit,
            report["evaluation"]["before"]["worst_case_acc"].as_f64(),
        );

        let mut cmd = Command::new(Path::new(MANIFEST).join(".venv/bin/python"));
        cmd.arg(Path::new(MANIFEST).join("scripts/bench_user_pgd.py"))
            .arg("--model")
            .arg(model)
            .args(["--n", n, "--batch", batch, "--eps", eps])
            .args(["--threads", &settings.threads.to_string()]);
        let exit = run(
            cmd,
            &logs.join(format!("{stem}-eval-process-reference.log")),
        )?;
        let line: Value = serde_norway::from_str(exit.stdout.lines().last().context("no output")?)?;
        theirs.push(&exit, line["robust_acc"].as_f64());
    }
    // The default curve against PGD-20 at every radius on its own (`eval.curve_protocol: independent`), once.
    let independent = dir.join("independent");
    let _ = std::fs::remove_dir_all(&independent);
    let config = dir.join("independent.yaml");
    std::fs::write(
        &config,
        format!(
            "runtime: {{threads: {}}}\neval: {{curve_protocol: independent}}\n",
            settings.threads
        ),
    )?;
    let cmd = robustd_eval(model, n, eps, &config, &independent);
    run(
        cmd,
        &logs.join(format!("{stem}-eval-process-independent.log")),
    )?;
    let independent = read_report(&independent)?;

    let mut robustd = ours.value();
    if let Value::Mapping(m) = &mut robustd {
        m.insert("breakdown".into(), breakdown(&report));
        m.insert(
            "curve_ratio".into(),
            Value::Sequence(curve_ratio.into_iter().map(Value::from).collect()),
        );
        m.insert(
            "curve_vs_independent".into(),
            curve_gaps(&report, &independent),
        );
    }
    Ok((robustd, theirs.value()))
}

/// `robustd eval MODEL --attacks pgd --n N --eps EPS --config CONFIG --out OUT`, warnings only.
fn robustd_eval(model: &Path, n: &str, eps: &str, config: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_robustd"));
    cmd.arg("eval")
        .arg(model)
        .args(["--attacks", "pgd", "--n", n, "--eps", eps])
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn");
    cmd
}

/// The `report.yaml` robustd wrote in `out`.
fn read_report(out: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(out.join("report.yaml"))
        .with_context(|| format!("robustd wrote no report in {}", out.display()))?;
    Ok(serde_norway::from_str(&text)?)
}

/// Per radius of the eps curve, the default sweep's robust accuracy minus the independent protocol's (positive:
/// the sweep found fewer breaks), with both curves' seconds and the sweep's PGD steps and start.
fn curve_gaps(sweep: &Value, independent: &Value) -> Value {
    let curve = |r: &Value| r["evaluation"]["before"]["robust_acc_vs_eps"].clone();
    let info = |r: &Value, key: &str| r["evaluation"]["before"]["curve"][key].clone();
    let theirs = curve(independent);
    let gaps: Vec<Value> = curve(sweep)
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(eps, acc)| {
            let gap = acc.as_f64()? - theirs.get(eps)?.as_f64()?;
            let mut m = Mapping::new();
            m.insert("eps".into(), eps.clone());
            m.insert("gap".into(), gap.into());
            Some(Value::Mapping(m))
        })
        .collect();
    let mut m = Mapping::new();
    m.insert("gaps".into(), Value::Sequence(gaps));
    m.insert("sweep_s".into(), info(sweep, "seconds"));
    m.insert("independent_s".into(), info(independent, "seconds"));
    m.insert("steps".into(), info(sweep, "steps"));
    m.insert("start".into(), info(sweep, "start"));
    Value::Mapping(m)
}

#[derive(Default)]
struct Side {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    rss_mb: f64,
    robust_acc: Option<f64>,
}

impl Side {
    fn push(&mut self, exit: &Exit, robust_acc: Option<f64>) {
        self.wall.push(exit.wall);
        self.cpu.push(exit.cpu);
        self.rss_mb = self.rss_mb.max(exit.rss_mb);
        self.robust_acc = robust_acc;
    }

    fn value(&self) -> Value {
        let list = |v: &[f64]| Value::Sequence(v.iter().map(|&x| Value::from(x)).collect());
        let mut m = Mapping::new();
        m.insert("workload".into(), "eval-process".into());
        m.insert("wall_s".into(), list(&self.wall));
        m.insert("cpu_s".into(), list(&self.cpu));
        m.insert("peak_rss_mb".into(), self.rss_mb.into());
        if let Some(acc) = self.robust_acc {
            m.insert("robust_acc".into(), acc.into());
        }
        Value::Mapping(m)
    }
}

/// Where robustd's process spent its time, from its report: start-up, then each stage and its parts, and the PGD
/// stage and curve as the evaluation block times them.
fn breakdown(report: &Value) -> Value {
    let mut m = Mapping::new();
    let timing = &report["timing"];
    m.insert("startup_s".into(), timing["startup_seconds"].clone());
    m.insert("seconds".into(), timing["seconds"].clone());
    let mut parts = Vec::new();
    for stage in timing["stages"].as_sequence().into_iter().flatten() {
        let name = stage["name"].as_str().unwrap_or("?");
        let steps = stage["parts"].as_sequence().map_or(0, |p| p.len());
        if steps == 0 {
            parts.push((name.to_owned(), stage["seconds"].as_f64().unwrap_or(0.0)));
        }
        for part in stage["parts"].as_sequence().into_iter().flatten() {
            parts.push((
                format!("{name}/{}", part["name"].as_str().unwrap_or("?")),
                part["seconds"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    m.insert(
        "parts".into(),
        Value::Sequence(
            parts
                .into_iter()
                .map(|(name, s)| {
                    let mut p = Mapping::new();
                    p.insert(name.into(), s.into());
                    Value::Mapping(p)
                })
                .collect(),
        ),
    );
    let before = &report["evaluation"]["before"];
    m.insert(
        "attack_s".into(),
        before["attacks"]["pgd"]["seconds"].clone(),
    );
    m.insert("curve_s".into(), before["curve"]["seconds"].clone());
    Value::Mapping(m)
}
