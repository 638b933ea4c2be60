//! The suite's results: ratios from the medians of one run, the machine they came from, `RESULTS.md` and a chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use robustd::report::plots::{grouped_bars, BarGroup};
use serde_norway::Value;

use crate::{ModelInfo, Settings, Workload};

/// One workload on one model, both sides' JSON.
pub struct Measured {
    pub model: ModelInfo,
    pub workload: Workload,
    pub robustd: Value,
    pub reference: Value,
}

pub struct Run<'a> {
    pub settings: &'a Settings,
    pub machine_before: Machine,
    pub machine_after: Machine,
    pub seconds: f64,
    pub models: &'a [ModelInfo],
    pub results: &'a [Measured],
    /// (`daemon.stable_ms`, latencies in seconds).
    pub latency: &'a [(u64, Vec<f64>)],
    /// `None` in a partial run (`BENCH_WORKLOADS`, `BENCH_MODELS`).
    pub images: Option<&'a crate::images::ImageLoading>,
}

/// What the machine was while the suite ran.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub load: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let load = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease"),
            load,
        }
    }
}

fn numbers(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_sequence()
        .map(|s| s.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// `min / median` of a list of seconds, formatted.
fn min_med(v: &[f64]) -> String {
    format!("{:.3} / {:.3}", min(v), median(v))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

impl Run<'_> {
    fn find(&self, model: &str, label: &str) -> Option<&Measured> {
        self.results
            .iter()
            .find(|m| m.model.name == model && m.workload.label() == label)
    }

    /// robustd ÷ reference median wall time of a timed workload.
    fn time_ratio(&self, model: &str, label: &str) -> Option<f64> {
        let m = self.find(model, label)?;
        Some(median(&numbers(&m.robustd, "wall_s")) / median(&numbers(&m.reference, "wall_s")))
    }

    /// libtorch ÷ onnxruntime median forward time at `batch` (robustd's two engines).
    fn ort_speedup(&self, model: &str, batch: &str) -> Option<f64> {
        let m = self.find(model, "forward")?;
        let t = |key: &str| median(&numbers(&m.robustd[key], batch));
        Some(t("tch_seconds_per_batch") / t("ort_seconds_per_batch"))
    }

    /// Square queries per second on each side (robustd counts its queries; the reference's are n × budget).
    fn square_qps(&self, model: &str) -> Option<(f64, f64)> {
        let m = self.find(model, "square")?;
        let qps =
            |v: &Value| v["queries"].as_f64().unwrap_or(f64::NAN) / median(&numbers(v, "wall_s"));
        Some((qps(&m.robustd), qps(&m.reference)))
    }

    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(out)?;
        let md = out.join("RESULTS.md");
        let png = out.join("results.png");
        self.chart(&png)?;
        robustd::durable::write_atomic(&md, self.markdown().as_bytes())?;
        Ok((md, png))
    }

    fn chart(&self, png: &Path) -> Result<()> {
        let series: Vec<String> = self
            .models
            .iter()
            .map(|m| pretty(&m.name).to_owned())
            .collect();
        let per_model = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<Option<f64>> {
            self.models.iter().map(|m| f(&m.name)).collect()
        };
        let group = |label: &str, target: Option<f64>, f: &dyn Fn(&str) -> Option<f64>| BarGroup {
            label: label.into(),
            values: per_model(f),
            target,
        };
        let groups = vec![
            group("PGD-20 eval", Some(1.0 / 0.9), &|m| {
                self.time_ratio(m, "pgd-eval").map(|r| 1.0 / r)
            }),
            group("eval process", Some(1.0), &|m| {
                self.time_ratio(m, "eval-process").map(|r| 1.0 / r)
            }),
            group("PGD-AT epoch", Some(1.0), &|m| {
                self.time_ratio(m, "epoch pgd-at").map(|r| 1.0 / r)
            }),
            group("BAT epoch", Some(1.0), &|m| {
                self.time_ratio(m, "epoch bat").map(|r| 1.0 / r)
            }),
            group("Square q/s", Some(2.0), &|m| {
                self.square_qps(m).map(|(a, b)| a / b)
            }),
            group("ORT/tch b1", None, &|m| self.ort_speedup(m, "1")),
            group("ORT/tch b32", Some(1.3), &|m| self.ort_speedup(m, "32")),
            group("ORT/tch b256", None, &|m| self.ort_speedup(m, "256")),
            group("RSS (PGD eval)", Some(1.0 / 1.5), &|m| {
                let r = self.find(m, "pgd-eval")?;
                Some(r.reference["peak_rss_mb"].as_f64()? / r.robustd["peak_rss_mb"].as_f64()?)
            }),
        ];
        grouped_bars(
            png,
            "robustd vs PyTorch eager / torchattacks (higher is better for robustd; black ticks: goals)",
            "reference ÷ robustd (time or RSS); ORT/tch: libtorch ÷ onnxruntime",
            &series,
            &groups,
            1.0,
        )?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let torch = self
            .results
            .first()
            .and_then(|m| m.reference["torch"].as_str())
            .unwrap_or("?");
        let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let m = &self.machine_before;
        let _ = writeln!(s, "# robustd benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `make bench` (`benches/suite/`, reference side `scripts/bench_reference.py`) on {date}, \
             in {:.1} min. Every number below comes from this one run on this one machine; ratios are computed \
             from the medians of {} repeats of each side. Do not compare numbers across machines.\n",
            self.seconds / 60.0,
            self.settings.reps
        );
        let _ = writeln!(s, "## Machine and settings\n");
        let _ = writeln!(
            s,
            "- CPU: {} ({} cores visible), {:.1} GiB RAM, Linux {}",
            m.cpu, m.cores, m.memory_gib, m.kernel
        );
        let _ = writeln!(
            s,
            "- load average (1/5/15 min) before: {}, after: {} — on a shared machine, other work inflates wall times",
            m.load, self.machine_after.load
        );
        let _ = writeln!(
            s,
            "- robustd {} (libtorch {}, onnxruntime {}), reference: PyTorch {torch} eager, torchattacks 3.5.1",
            env!("CARGO_PKG_VERSION"),
            robustd::runtime::libtorch_version(),
            robustd::runtime::init_ort(None).map_or_else(|e| e.to_string(), |_| robustd::runtime::ort_version()),
        );
        let _ = writeln!(
            s,
            "- {} intra-op threads for libtorch, onnxruntime and PyTorch alike; the same glibc malloc settings (mmap threshold 32 MiB, trim threshold 128 MiB) on both sides; OMP_WAIT_POLICY={}",
            self.settings.threads,
            std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "(unset)".into())
        );
        let _ = writeln!(s, "- models (Fashion-MNIST 1×28×28, one epoch of standard training at export, BatchNorm folded):");
        for model in self.models {
            let _ = writeln!(
                s,
                "  - `{}`: {}, {} parameters, clean test accuracy {:.3} (first 1000 test images)",
                model.name,
                description(&model.name),
                model.parameters,
                model.test_acc
            );
        }
        let _ = writeln!(s);
        self.goals_table(&mut s);
        self.detail_tables(&mut s);
        s
    }

    fn goals_table(&self, s: &mut String) {
        let _ = writeln!(s, "## Against the goals\n");
        let _ = writeln!(s, "| goal | model | measured | met |");
        let _ = writeln!(s, "|---|---|---|---|");
        for model in self.models {
            let m = model.name.as_str();
            let row = |s: &mut String,
                       goal: &str,
                       value: Option<f64>,
                       text: &str,
                       ok: &dyn Fn(f64) -> bool| {
                if let Some(v) = value {
                    let _ = writeln!(
                        s,
                        "| {goal} | {} | {} | {} |",
                        pretty(m),
                        text.replace("{}", &format!("{v:.2}")),
                        met(ok(v))
                    );
                }
            };
            row(
                s,
                "PGD-20 eval time ≤ 0.9× PyTorch eager",
                self.time_ratio(m, "pgd-eval"),
                "{}×",
                &|v| v <= 0.9,
            );
            row(
                s,
                "whole `robustd eval --attacks pgd` process (default config) ≤ 1.0× a torchattacks script's",
                self.time_ratio(m, "eval-process"),
                "{}×",
                &|v| v <= 1.0,
            );
            row(
                s,
                "eps curve + PGD-20 ≤ 1.5× PGD-20 alone (default curve, `robustd eval` timing block)",
                self.find(m, "eval-process")
                    .map(|r| median(&numbers(&r.robustd, "curve_ratio"))),
                "{}×",
                &|v| v <= 1.5,
            );
            row(
                s,
                "PGD-AT epoch time ≤ 1.0× PyTorch eager",
                self.time_ratio(m, "epoch pgd-at"),
                "{}×",
                &|v| v <= 1.0,
            );
            row(
                s,
                "BAT epoch time ≤ 1.0× PyTorch eager",
                self.time_ratio(m, "epoch bat"),
                "{}×",
                &|v| v <= 1.0,
            );
            row(
                s,
                "AutoAttack standard time ≤ 1.0× torchattacks",
                self.time_ratio(m, "autoattack"),
                "{}×",
                &|v| v <= 1.0,
            );
            row(
                s,
                "Square ≥ 2× torchattacks queries/s",
                self.square_qps(m).map(|(a, b)| a / b),
                "{}×",
                &|v| v >= 2.0,
            );
            row(
                s,
                "ORT forward ≥ 1.3× faster than libtorch at batch 32",
                self.ort_speedup(m, "32"),
                "{}×",
                &|v| v >= 1.3,
            );
            let worst_rss = self
                .results
                .iter()
                .filter(|r| {
                    r.model.name == m && !matches!(r.workload.name, "forward" | "eval-process")
                })
                .filter_map(|r| {
                    Some(r.robustd["peak_rss_mb"].as_f64()? / r.reference["peak_rss_mb"].as_f64()?)
                })
                .fold(None, |acc: Option<f64>, v| {
                    Some(acc.map_or(v, |a| a.max(v)))
                });
            row(
                s,
                "peak RSS ≤ 1.5× reference (worst of PGD eval, epochs, Square)",
                worst_rss,
                "{}×",
                &|v| v <= 1.5,
            );
        }
        for (stable, lat) in self.latency {
            let _ = writeln!(
                s,
                "| drop-to-job-start < 1 s | daemon, stable_ms {stable} | median {:.3} s (min {:.3}, max {:.3}, {} drops) | {} |",
                median(lat),
                min(lat),
                lat.iter().copied().fold(0.0, f64::max),
                lat.len(),
                met(median(lat) < 1.0)
            );
        }
        let _ = writeln!(s);
    }

    fn detail_tables(&self, s: &mut String) {
        let _ = writeln!(s, "## Timed workloads (wall seconds, min / median)\n");
        let _ = writeln!(s, "| model | workload | size | robustd | reference | ratio (median) | robustd CPU s | reference CPU s | sanity |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in self.results.iter().filter(|r| r.workload.name != "forward") {
            let (a, b) = (
                numbers(&r.robustd, "wall_s"),
                numbers(&r.reference, "wall_s"),
            );
            let size: Vec<String> = r
                .workload
                .flags
                .iter()
                .filter(|(k, _)| *k != "method")
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let sanity = match (
                r.robustd["robust_acc"].as_f64(),
                r.reference["robust_acc"].as_f64(),
            ) {
                (Some(x), Some(y)) => format!("robust acc {x:.3} vs {y:.3}"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2}× | {:.2} | {:.2} | {} |",
                pretty(&r.model.name),
                r.workload.label(),
                size.join(", "),
                min_med(&a),
                min_med(&b),
                median(&a) / median(&b),
                median(&numbers(&r.robustd, "cpu_s")),
                median(&numbers(&r.reference, "cpu_s")),
                sanity
            );
        }
        self.process_breakdown(s);
        let unbroken = self
            .results
            .iter()
            .filter(|r| r.workload.name == "square")
            .all(|r| {
                r.robustd["robust_acc"].as_f64() == Some(1.0)
                    && r.reference["robust_acc"].as_f64() == Some(1.0)
            });
        let budget_note = if unbroken {
            "no sample was broken at eps 1e-4 on either side (robust accuracy 1.000), so every sample spent the whole budget"
        } else {
            "**some samples were broken at eps 1e-4, so the two sides did not spend equal budgets: compare with care**"
        };
        let _ = writeln!(s, "\nSquare: robustd {}. The reference is credited n × budget queries; {budget_note}. The forward workload's RSS is left out of the RSS goal: robustd's process there holds both engines.\n",
            self.models.iter().filter_map(|m| {
                let (a, b) = self.square_qps(&m.name)?;
                Some(format!("{a:.0} vs torchattacks {b:.0} queries/s on the {}", pretty(&m.name)))
            }).collect::<Vec<_>>().join("; "));
        let _ = writeln!(
            s,
            "## Forward throughput without gradients (ms per batch, median; images/s)\n"
        );
        let _ = writeln!(s, "| model | batch | onnxruntime | libtorch (robustd interpreter) | PyTorch eager | ORT speed-up over libtorch |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in self.results.iter().filter(|r| r.workload.name == "forward") {
            for batch in ["1", "32", "256"] {
                let ms = |v: &Value, key: &str| median(&numbers(&v[key], batch)) * 1e3;
                let (ort, tch, eager) = (
                    ms(&r.robustd, "ort_seconds_per_batch"),
                    ms(&r.robustd, "tch_seconds_per_batch"),
                    ms(&r.reference, "seconds_per_batch"),
                );
                let ips = |t: f64| batch.parse::<f64>().unwrap_or(1.0) / t * 1e3;
                let _ = writeln!(
                    s,
                    "| {} | {batch} | {ort:.3} ({:.0}/s) | {tch:.3} ({:.0}/s) | {eager:.3} ({:.0}/s) | {:.2}× |",
                    pretty(&r.model.name),
                    ips(ort),
                    ips(tch),
                    ips(eager),
                    tch / ort
                );
            }
        }
        let _ = writeln!(s, "\n## Peak RSS (MiB, whole process)\n");
        let _ = writeln!(s, "| model | workload | robustd | reference | ratio |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in self.results {
            let (a, b) = (
                r.robustd["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                r.reference["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {a:.0} | {b:.0} | {:.2}× |",
                pretty(&r.model.name),
                r.workload.label(),
                a / b
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(s, "\n## Daemon drop-to-job-start latency\n");
            let _ = writeln!(s, "A real `robustd run` (triage runner), models dropped one after another the careful way (temp name, then rename); latency = the job record's `started_at` − the rename. A file is taken once its size and mtime have been stable for `daemon.stable_ms`, which dominates.\n");
            for (stable, lat) in self.latency {
                let list: Vec<String> = lat.iter().map(|v| format!("{:.0}", v * 1e3)).collect();
                let _ = writeln!(s, "- stable_ms {stable}: {} ms", list.join(", "));
            }
        }
        if let Some(images) = self.images {
            s.push_str(&images.markdown());
        }
        let _ = writeln!(s, "\n![robustd vs references](results.png)");
    }
}

impl Run<'_> {
    /// Where robustd's `eval-process` time went, per model, from the last repeat's report: start-up, each
    /// stage's parts, and the PGD attack and the curve as the evaluation block times them.
    fn process_breakdown(&self, s: &mut String) {
        let rows: Vec<&Measured> = self
            .results
            .iter()
            .filter(|r| r.workload.name == "eval-process")
            .collect();
        if rows.is_empty() {
            return;
        }
        let num = |v: &Value| v.as_f64().map_or("?".into(), |x| format!("{x:.2}"));
        let _ = writeln!(s, "\nWhole process (`eval-process`): both sides timed from outside as processes, repeats alternating. robustd: `robustd eval MODEL --attacks pgd --n N --eps 0.1` with the default config (eps curve included; `runtime.threads` set); reference: `scripts/bench_user_pgd.py` (python start, `import torch, torchattacks`, the model, the test images, torchattacks PGD-20 of eps/8, clean and robust accuracy), run without the suite's allocator settings, as a user runs it. Where robustd's time went (seconds, from its report's `timing` block, last repeat):\n");
        for r in &rows {
            let b = &r.robustd["breakdown"];
            let parts: Vec<String> = b["parts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let (k, v) = p.as_mapping()?.iter().next()?;
                    Some(format!("{} {}", k.as_str()?, num(v)))
                })
                .collect();
            let _ = writeln!(
                s,
                "- {}: start-up {}, command {} (PGD stage {}, eps curve {}); {}",
                pretty(&r.model.name),
                num(&b["startup_s"]),
                num(&b["seconds"]),
                num(&b["attack_s"]),
                num(&b["curve_s"]),
                parts.join(", ")
            );
        }
        let _ = writeln!(s, "\nThe default eps curve (`sweep`; its PGD steps per radius and start as its report states them) against PGD-20 at every radius on its own (`eval.curve_protocol: independent`), same samples: robust accuracy, sweep minus independent, in percentage points (positive: the sweep found fewer breaks), and the two curves' seconds:\n");
        for r in rows {
            let c = &r.robustd["curve_vs_independent"];
            let gaps: Vec<String> = c["gaps"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|g| {
                    Some(format!(
                        "{}: {:+.1}",
                        g["eps"].as_f64()?,
                        100.0 * g["gap"].as_f64()?
                    ))
                })
                .collect();
            let _ = writeln!(
                s,
                "- {} ({} steps, {} start): {} (curve {} s vs {} s)",
                pretty(&r.model.name),
                c["steps"].as_u64().map_or("?".into(), |v| v.to_string()),
                c["start"].as_str().unwrap_or("?"),
                gaps.join(", "),
                num(&c["sweep_s"]),
                num(&c["independent_s"])
            );
        }
        let _ = writeln!(s);
    }
}

fn pretty(name: &str) -> &str {
    match name {
        "small_cnn" => "small CNN",
        "resnet18" => "ResNet-18-style",
        "act_cnn" => "CNN (LeakyReLU/ELU/SiLU)",
        "mobilenet_hs" => "MobileNet-style",
        "vit" => "small ViT",
        other => other,
    }
}

fn description(name: &str) -> &'static str {
    match name {
        "small_cnn" => "the demo model's shape: conv16-conv32 with max-pooling, two linear layers",
        "resnet18" => "ResNet-18 topology (BasicBlocks 2-2-2-2), widths 16-32-64-128",
        "act_cnn" => "conv16-conv32 with LeakyReLU, ELU and average pooling, a SiLU hidden layer",
        "mobilenet_hs" => {
            "inverted residuals with depthwise convolutions and hard-swish, BatchNorm"
        }
        "vit" => {
            "7x7 patches, three pre-norm encoder blocks (dim 32, 2 heads), erf/tanh/quick GELU"
        }
        _ => "",
    }
}
