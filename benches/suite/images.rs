//! Image loading (issue 13): images/s decoded and preprocessed to 3x224x224 (shorter side 256, center crop 224) by
//! robustd's streaming loader (`Split::batches` on a `folder` dataset, W decode threads) against torchvision's
//! `ImageFolder` + `DataLoader` with W worker processes, on the same ImageNet-sized JPEGs
//! (`scripts/bench_images.py make`), and the peak memory of each whole process tree. Memory is the proportional
//! set size (PSS, /proc/PID/smaps_rollup) summed over the process and its children, sampled every 10 ms by this
//! harness for both sides: PSS splits pages shared between DataLoader workers instead of counting them once per
//! worker as RSS would. Goal: >= 1.0x torchvision's throughput at <= 0.5x its memory.
//!
//! `BENCH_IMAGES` sets the folder size (default 2000; 200 with BENCH_QUICK), `BENCH_IMAGE_WORKERS` the workers
//! (default: the machine's cores); `BENCH_ONLY=images` runs this section alone and prints it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_norway::Value;

use crate::report::{median, min};
use crate::{Settings, MANIFEST};

/// Both sides' results.
pub struct ImageLoading {
    pub images: usize,
    pub workers: usize,
    pub batch: usize,
    pub robustd: Side,
    pub reference: Side,
}

pub struct Side {
    pub seconds: Vec<f64>,
    pub peak_pss_mb: f64,
}

impl Side {
    fn images_per_s(&self, images: usize) -> f64 {
        images as f64 / median(&self.seconds)
    }
}

pub fn measure(settings: &Settings) -> Result<ImageLoading> {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let images = var("BENCH_IMAGES").unwrap_or(if settings.quick { 200 } else { 2000 });
    let workers = var("BENCH_IMAGE_WORKERS")
        .unwrap_or(settings.threads)
        .max(1);
    let batch = 64;
    let root = settings.work.join(format!("images-{images}"));
    let python = Path::new(MANIFEST).join(".venv/bin/python");
    let script = Path::new(MANIFEST).join("scripts/bench_images.py");
    let status = Command::new(&python)
        .arg(&script)
        .args(["make", "--images", &images.to_string(), "--out"])
        .arg(&root)
        .status()?;
    if !status.success() {
        bail!("writing the benchmark images failed ({status})");
    }
    let reps = settings.reps.to_string();
    let mut ours = Command::new(std::env::current_exe()?);
    ours.args(["worker", "images", "--root"])
        .arg(&root)
        .args(["--workers", &workers.to_string()])
        .args(["--batch", &batch.to_string(), "--reps", &reps]);
    let mut theirs = Command::new(&python);
    theirs
        .arg(&script)
        .args(["run", "--root"])
        .arg(&root)
        .args(["--workers", &workers.to_string()])
        .args(["--batch", &batch.to_string(), "--reps", &reps]);
    crate::with_robustd_allocator(&mut theirs);
    let robustd = run_sampled(ours, &settings.work, "images-robustd")?;
    let reference = run_sampled(theirs, &settings.work, "images-reference")?;
    Ok(ImageLoading {
        images,
        workers,
        batch,
        robustd,
        reference,
    })
}

/// Runs a side to completion, sampling its process tree's PSS; its last stdout line is its JSON result.
fn run_sampled(mut cmd: Command, work: &Path, name: &str) -> Result<Side> {
    let log = work.join(format!("logs/{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap_or(work))?;
    let out_path = work.join(format!("logs/{name}.out"));
    let mut child: Child = cmd
        .current_dir(MANIFEST)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    let mut peak_kb = 0u64;
    let status = loop {
        peak_kb = peak_kb.max(tree_pss_kb(child.id()));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "{name} failed ({status}):\n{}",
            &tail[tail.len().saturating_sub(3000)..]
        );
    }
    let stdout = std::fs::read_to_string(&out_path)?;
    let line = stdout.lines().last().context("no output")?;
    let v: Value =
        serde_norway::from_str(line).with_context(|| format!("{name} printed `{line}`"))?;
    let seconds = v["seconds"]
        .as_sequence()
        .map(|s| s.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    Ok(Side {
        seconds,
        peak_pss_mb: peak_kb as f64 / 1024.0,
    })
}

/// PSS (kB) of `pid` and all its descendants.
fn tree_pss_kb(pid: u32) -> u64 {
    let mut total = 0;
    let mut pending = vec![pid];
    while let Some(p) = pending.pop() {
        total += pss_kb(p);
        pending.extend(children(p));
    }
    total
}

fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn children(pid: u32) -> Vec<u32> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl ImageLoading {
    /// The RESULTS.md section.
    pub fn markdown(&self) -> String {
        let (ours, theirs) = (
            self.robustd.images_per_s(self.images),
            self.reference.images_per_s(self.images),
        );
        let speed = ours / theirs;
        let memory = self.robustd.peak_pss_mb / self.reference.peak_pss_mb;
        format!(
            "\n## Image loading (folder of JPEGs to 3x224x224)\n\n\
             {} ImageNet-sized JPEGs (375x500, quality 90) in an ImageFolder tree, decoded and preprocessed as \
             torchvision's evaluation transform (Resize(256), CenterCrop(224), to [0,1]) in batches of {}: robustd's \
             streaming loader with {w} decode threads vs torchvision's DataLoader with {w} worker processes. Memory: \
             peak PSS of the whole process tree (workers included), sampled every 10 ms.\n\n\
             | side | images/s (median) | seconds per pass (min / median) | peak PSS MiB |\n|---|---:|---:|---:|\n\
             | robustd | {ours:.0} | {:.2} / {:.2} | {:.0} |\n| torchvision | {theirs:.0} | {:.2} / {:.2} | {:.0} |\n\n\
             Throughput {speed:.2}x torchvision's (goal >= 1.0: {}), memory {memory:.2}x (goal <= 0.5: {}).\n",
            self.images,
            self.batch,
            min(&self.robustd.seconds),
            median(&self.robustd.seconds),
            self.robustd.peak_pss_mb,
            min(&self.reference.seconds),
            median(&self.reference.seconds),
            self.reference.peak_pss_mb,
            if speed >= 1.0 { "met" } else { "**not met**" },
            if memory <= 0.5 { "met" } else { "**not met**" },
            w = self.workers,
        )
    }
}
