//! `make bench`: robustd against PyTorch eager and torchattacks on the same machine, model, data, batch and thread
//! count, in one run, at two model sizes. Writes `benches/RESULTS.md` and `benches/results.png`.
//!
//! Workloads (issue "Benchmarks"): (a) PGD-20 robust-accuracy evaluation; (b) one PGD-AT and one BAT epoch;
//! (c) forward throughput, onnxruntime vs libtorch (robustd's interpreter), at batch 1, 32, 256; (d) the Square
//! attack on onnxruntime vs torchattacks' Square at an equal query budget; (e) the peak RSS of every process;
//! (f) the daemon's drop-to-job-start latency; (g) AutoAttack's standard suite (`eval.preset: autoattack-standard`)
//! vs torchattacks' `AutoAttack(version='standard')` at AutoAttack's published budgets, on the small CNN; (h) image
//! loading: a folder of JPEGs decoded and preprocessed to 224x224 by robustd's streaming loader vs torchvision's
//! DataLoader (`images.rs`). Every workload runs in its own process on each side (robustd:
//! this binary's `worker` mode, `worker.rs`; reference: `scripts/bench_reference.py`), repeated, min and median
//! kept; ratios are computed from medians of the same run.
//!
//! (i) the user's view (`eval-process`, `process.rs`): the whole `robustd eval MODEL --attacks pgd` process with
//! the default config against a torchattacks PGD-20 script including its imports, both timed as processes. The
//! attack loop (a) and (i) also run on three architectures with activations the first two lack (`act_cnn`:
//! LeakyReLU/ELU/AvgPool/SiLU; `mobilenet_hs`: depthwise convolutions, hard-swish; `vit`: a small transformer
//! with GELU).
//!
//! Environment: `BENCH_THREADS` (default: the machine's cores) intra-op threads for every engine; `BENCH_REPS`
//! (default 3); `BENCH_QUICK=1` tiny sizes, results under `target/bench/quick/` (a smoke run of the harness);
//! `BENCH_ONLY=images` only the image-loading section, printed; `BENCH_WORKLOADS=pgd-eval,eval-process` only those
//! workloads (names or labels such as `epoch bat`), and `BENCH_MODELS=small_cnn,vit` only those models, without
//! the daemon latency and image loading, results under `target/bench/partial/` (the committed table stays an
//! idle machine's full run).

mod images;
mod process;
mod report;
mod worker;

#[path = "../../tests/daemon_support/mod.rs"]
mod daemon_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use robustd::config::Config;
use robustd::job::JobState;
use serde_norway::Value;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` to harness-less targets.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker::run(&args[1..]);
    }
    let settings = Settings::from_env();
    std::fs::create_dir_all(&settings.work)?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("images") {
        let machine = report::Machine::read();
        let measured = images::measure(&settings)?;
        println!(
            "{} ({} cores), load before: {}, after: {}{}",
            machine.cpu,
            machine.cores,
            machine.load,
            report::Machine::read().load,
            measured.markdown()
        );
        return Ok(());
    }
    let machine_before = report::Machine::read();
    let started = Instant::now();
    eprintln!(
        "[bench] {} threads, {} repeats{}; models in {}",
        settings.threads,
        settings.reps,
        if settings.quick { ", quick sizes" } else { "" },
        settings.work.join("models").display()
    );
    let models: Vec<ModelInfo> = export_models(&settings)?
        .into_iter()
        .filter(|m| Settings::picked(&settings.models, &[&m.name]))
        .collect();
    let mut results = Vec::new();
    for model in &models {
        let sizes = Sizes::for_model(&model.name, settings.quick);
        for workload in sizes.workloads() {
            if !Settings::picked(&settings.workloads, &[workload.name, &workload.label()]) {
                continue;
            }
            eprintln!("[bench] {} {}", model.name, workload.label());
            let (robustd, reference) = if workload.name == "eval-process" {
                process::measure(&settings, &model.path, &workload)?
            } else {
                (
                    settings.run_robustd(&model.path, &workload)?,
                    settings.run_reference(&model.path, &workload)?,
                )
            };
            results.push(report::Measured {
                model: model.clone(),
                workload,
                robustd,
                reference,
            });
        }
    }
    let partial = settings.workloads.is_some() || settings.models.is_some();
    let (latency, image_loading) = if partial {
        (Vec::new(), None)
    } else {
        eprintln!("[bench] daemon drop-to-job-start latency");
        let default_stable = Config::default().daemon.stable_ms;
        let drops = if settings.quick { 2 } else { 7 };
        let latency = vec![
            (default_stable, daemon_latency(default_stable, drops)?),
            (100, daemon_latency(100, drops)?),
        ];
        eprintln!("[bench] image loading");
        (latency, Some(images::measure(&settings)?))
    };
    let run = report::Run {
        settings: &settings,
        machine_before,
        machine_after: report::Machine::read(),
        seconds: started.elapsed().as_secs_f64(),
        models: &models,
        results: &results,
        latency: &latency,
        images: image_loading.as_ref(),
    };
    let (md, png) = run.write(&settings.out)?;
    eprintln!("[bench] wrote {} and {}", md.display(), png.display());
    Ok(())
}

pub struct Settings {
    pub threads: usize,
    pub reps: usize,
    pub quick: bool,
    /// Models, logs (`target/bench/`).
    pub work: PathBuf,
    /// RESULTS.md and the chart.
    pub out: PathBuf,
    /// `BENCH_WORKLOADS` and `BENCH_MODELS`: only these (`None`: all).
    pub workloads: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let quick = var("BENCH_QUICK").unwrap_or(0) != 0;
        let root = Path::new(MANIFEST);
        let list = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .collect::<Vec<_>>()
                })
        };
        let (workloads, models) = (list("BENCH_WORKLOADS"), list("BENCH_MODELS"));
        let partial = workloads.is_some() || models.is_some();
        Self {
            threads: var("BENCH_THREADS").unwrap_or(cores),
            reps: var("BENCH_REPS")
                .unwrap_or(if quick { 1 } else { 3 })
                .max(1),
            quick,
            work: root.join("target/bench"),
            out: if quick {
                root.join("target/bench/quick")
            } else if partial {
                root.join("target/bench/partial")
            } else {
                root.join("benches")
            },
            workloads,
            models,
        }
    }

    /// Whether a selection (`BENCH_WORKLOADS`, `BENCH_MODELS`) keeps something known by any of `names`.
    fn picked(selection: &Option<Vec<String>>, names: &[&str]) -> bool {
        selection
            .as_ref()
            .is_none_or(|keep| keep.iter().any(|k| names.contains(&k.as_str())))
    }

    fn run_robustd(&self, model: &Path, w: &Workload) -> Result<Value> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg(w.name)
            .args(["--threads", &self.threads.to_string()]);
        self.run_child(cmd, model, w, "robustd")
    }

    fn run_reference(&self, model: &Path, w: &Workload) -> Result<Value> {
        let mut cmd = Command::new(Path::new(MANIFEST).join(".venv/bin/python"));
        cmd.arg(Path::new(MANIFEST).join("scripts/bench_reference.py"))
            .args(["--threads", &self.threads.to_string(), w.name]);
        with_robustd_allocator(&mut cmd);
        self.run_child(cmd, model, w, "reference")
    }

    /// Runs one worker process with the workload's flags; its last stdout line is its JSON result.
    fn run_child(&self, mut cmd: Command, model: &Path, w: &Workload, side: &str) -> Result<Value> {
        cmd.arg("--model").arg(model);
        cmd.args(["--reps", &self.reps.to_string()]);
        for (k, v) in &w.flags {
            cmd.arg(format!("--{k}")).arg(v);
        }
        let stem = model.file_stem().unwrap_or_default().to_string_lossy();
        let log = self.work.join(format!(
            "logs/{stem}-{}-{side}.log",
            w.label().replace(' ', "-")
        ));
        std::fs::create_dir_all(log.parent().unwrap())?;
        let out = cmd
            .current_dir(MANIFEST)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .output()
            .with_context(|| format!("spawning {side} for {}", w.label()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "{side} {} on {} failed ({}):\n{tail}",
                w.label(),
                model.display(),
                out.status
            );
        }
        let line = stdout.lines().last().context("no output")?;
        serde_norway::from_str(line).with_context(|| format!("{side} printed `{line}`"))
    }
}

/// The same glibc allocator settings robustd applies to itself (runtime::tune_allocator), so a Python reference is
/// not slowed by page faults that depend on how much else its heap happens to hold.
pub fn with_robustd_allocator(cmd: &mut Command) {
    cmd.env(
        "MALLOC_MMAP_THRESHOLD_",
        robustd::runtime::MALLOC_MMAP_THRESHOLD.to_string(),
    )
    .env(
        "MALLOC_TRIM_THRESHOLD_",
        robustd::runtime::MALLOC_TRIM_THRESHOLD.to_string(),
    );
}

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub parameters: u64,
    pub test_acc: f64,
}

/// Exports (once) and describes the two benchmark models, through the reference script.
fn export_models(settings: &Settings) -> Result<Vec<ModelInfo>> {
    let dir = settings.work.join("models");
    let out = Command::new(Path::new(MANIFEST).join(".venv/bin/python"))
        .arg(Path::new(MANIFEST).join("scripts/bench_reference.py"))
        .args(["export", "--out"])
        .arg(&dir)
        .current_dir(MANIFEST)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("exporting the benchmark models failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_norway::from_str(line)?;
            Ok(ModelInfo {
                name: v["model"].as_str().context("model")?.to_owned(),
                path: PathBuf::from(MANIFEST).join(v["path"].as_str().context("path")?),
                parameters: v["parameters"].as_u64().context("parameters")?,
                test_acc: v["test_acc"].as_f64().context("test_acc")?,
            })
        })
        .collect()
}

/// How much work each workload does on a model: sized so the whole suite takes ~6 minutes on 2 cores.
struct Sizes {
    /// Only the attack loop and the whole process (the architectures beyond the first two).
    attack_only: bool,
    pgd_n: usize,
    pgd_batch: usize,
    epoch_samples: usize,
    square_n: usize,
    square_queries: usize,
    forward_iters: usize,
    /// Images for the AutoAttack standard suite (0: not run on this model).
    autoattack_n: usize,
}

impl Sizes {
    fn for_model(name: &str, quick: bool) -> Self {
        match (name, quick) {
            (_, true) => Self {
                attack_only: !matches!(name, "small_cnn" | "resnet18"),
                pgd_n: 20,
                pgd_batch: 20,
                epoch_samples: 128,
                square_n: 10,
                square_queries: 20,
                forward_iters: 3,
                autoattack_n: 8,
            },
            ("small_cnn", _) => Self {
                attack_only: false,
                pgd_n: 500,
                pgd_batch: 250,
                epoch_samples: 2048,
                square_n: 200,
                square_queries: 500,
                forward_iters: 30,
                autoattack_n: 100,
            },
            ("resnet18", _) => Self {
                attack_only: false,
                pgd_n: 100,
                pgd_batch: 100,
                epoch_samples: 384,
                square_n: 100,
                square_queries: 200,
                forward_iters: 10,
                autoattack_n: 0,
            },
            _ => Self {
                attack_only: true,
                pgd_n: 200,
                pgd_batch: 200,
                epoch_samples: 0,
                square_n: 0,
                square_queries: 0,
                forward_iters: 0,
                autoattack_n: 0,
            },
        }
    }

    fn workloads(&self) -> Vec<Workload> {
        let w = |name, flags: &[(&'static str, String)]| Workload {
            name,
            flags: flags.to_vec(),
        };
        let attack_loop = w(
            "pgd-eval",
            &[
                ("n", self.pgd_n.to_string()),
                ("batch", self.pgd_batch.to_string()),
                ("steps", "20".into()),
                ("eps", "0.1".into()),
                ("step-size", "0.0125".into()),
            ],
        );
        // The user's view: `robustd eval --attacks pgd` with the default config (its automatic batch) vs a
        // torchattacks PGD-20 script at the attack loop's batch.
        let process = w(
            "eval-process",
            &[
                ("n", self.pgd_n.to_string()),
                ("batch", self.pgd_batch.to_string()),
                ("eps", "0.1".into()),
            ],
        );
        if self.attack_only {
            return vec![attack_loop, process];
        }
        let mut all = vec![
            attack_loop,
            process,
            w(
                "epoch",
                &[
                    ("method", "pgd-at".into()),
                    ("samples", self.epoch_samples.to_string()),
                ],
            ),
            w(
                "epoch",
                &[
                    ("method", "bat".into()),
                    ("samples", self.epoch_samples.to_string()),
                ],
            ),
            w(
                "forward",
                &[
                    ("batches", "1,32,256".into()),
                    ("iters", self.forward_iters.to_string()),
                ],
            ),
            // An eps far below any logit margin: no sample is broken, so both sides spend the whole budget on
            // every sample and the query counts are equal.
            w(
                "square",
                &[
                    ("n", self.square_n.to_string()),
                    ("queries", self.square_queries.to_string()),
                    ("eps", "0.0001".into()),
                    ("p-init", "0.3".into()),
                ],
            ),
        ];
        // eps 0.03: about half the samples survive APGD-CE, so every attack of the suite does real work.
        if self.autoattack_n > 0 {
            all.push(w(
                "autoattack",
                &[("n", self.autoattack_n.to_string()), ("eps", "0.03".into())],
            ));
        }
        all
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub flags: Vec<(&'static str, String)>,
}

impl Workload {
    pub fn label(&self) -> String {
        match self.flag("method") {
            Some(m) => format!("{} {m}", self.name),
            None => self.name.to_owned(),
        }
    }
    pub fn flag(&self, key: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Drop-to-job-start latency (seconds) of `drops` models dropped one after another into a real daemon with
/// `daemon.stable_ms` = `stable_ms` (the `triage` runner, so each job ends quickly).
fn daemon_latency(stable_ms: u64, drops: usize) -> Result<Vec<f64>> {
    use daemon_support::{base_config, drop_bytes, model_variant, parse_time, Daemon};
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut daemon = Daemon::start(
        root,
        &base_config(root, &format!("daemon: {{stable_ms: {stable_ms}}}")),
    );
    let mut latencies = Vec::new();
    for i in 0..drops {
        let name = format!("latency-{i}.onnx");
        let bytes = model_variant("cnn_bn_legacy.onnx", &format!("latency {stable_ms} {i}"));
        let dropped = drop_bytes(&daemon.watch(), &name, &bytes);
        daemon.wait_finished(i + 1, Duration::from_secs(120));
        let job = daemon
            .jobs(JobState::Done)
            .into_iter()
            .find(|j| j.record.dropped_as == name)
            .with_context(|| format!("{name} did not finish as done:\n{}", daemon.log_text()))?;
        let started = parse_time(job.record.started_at.as_deref().context("started_at")?);
        latencies.push(started.duration_since(dropped)?.as_secs_f64());
    }
    daemon.terminate();
    Ok(latencies)
}
