//! One training epoch of PGD-AT, BAT and TRADES through `robustd::train::train` on a small CNN and real
//! Fashion-MNIST: the BAT overhead over PGD-AT, and samples/s to compare with `scripts/bench_train_epoch.py`
//! (the same loop in PyTorch eager).
//!
//! `cargo bench --bench train_epoch` (release profile). Environment: `BENCH_SAMPLES` (default 2000),
//! `BENCH_REPS` (default 5; runs alternate between methods), `BENCH_THREADS` (default 2), `BENCH_BATCH` (default
//! 128). PGD: 7 steps of 0.25·eps, eps 0.1 L∞ (the `train:` defaults). Reported per method: the fastest and the
//! median wall time of an epoch, and the median process CPU time (user + system, from `/proc/self/stat`), which
//! other processes competing for the cores disturb much less than wall time.

#[path = "../tests/train_support/mod.rs"]
mod train_support;

use robustd::config::{Method, Norm, ThreatModel, TrainSpec};
use robustd::data::Augmentation;
use robustd::train::{train, Atypicality, TrainRun};
use train_support::{fashion_mnist, SmallCnn};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let samples = env("BENCH_SAMPLES", 2000);
    let reps = env("BENCH_REPS", 5).max(1);
    let threads = env("BENCH_THREADS", 2);
    let batch = env("BENCH_BATCH", 128);
    tch::set_num_threads(threads as i32);
    let data = fashion_mnist(samples, 1);
    let threat = ThreatModel {
        norm: Norm::Linf,
        eps: 0.1,
    };
    let atypicality = Atypicality {
        flags: (0..data.train.len()).map(|i| i % 5 == 0).collect(),
        source: "every fifth sample".into(),
        threshold: None,
        scored: data.train.len(),
    };
    let methods = [Method::PgdAt, Method::Bat, Method::Trades];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for rep in 0..reps {
        for (m, &method) in methods.iter().enumerate() {
            let spec = TrainSpec {
                method,
                epochs: 1,
                batch_size: batch,
                val_fraction: 0.0,
                augmentation: "none".into(),
                ..TrainSpec::default()
            };
            let mut run =
                TrainRun::new(&spec, &threat, rep as u64, Augmentation::None).expect("run");
            run.atypicality = Some(&atypicality);
            let mut model = SmallCnn::new(rep as u64, false);
            let cpu_before = cpu_seconds();
            let result = train(&mut model, &data.train, &run).expect("training");
            cpu[m].push(cpu_seconds() - cpu_before);
            seconds[m].push(result.curves[0].seconds);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "train_epoch: {samples} Fashion-MNIST samples, batch {batch}, PGD-7, {threads} threads, {reps} runs each"
    );
    let (base_min, base_cpu) = (min(&seconds[0]), median(&cpu[0]));
    for (m, method) in methods.iter().enumerate() {
        let (fastest, cpu_s) = (min(&seconds[m]), median(&cpu[m]));
        println!(
            "  {:<8} wall min {:>6.3} s ({:>6.1} samples/s, {:+5.1}% vs PGD-AT), median {:>6.3} s; \
             CPU median {:>6.3} s ({:+5.1}% vs PGD-AT)",
            format!("{method:?}"),
            fastest,
            samples as f64 / fastest,
            100.0 * (fastest / base_min - 1.0),
            median(&seconds[m]),
            cpu_s,
            100.0 * (cpu_s / base_cpu - 1.0),
        );
    }
}

/// User + system CPU time of this process so far (all threads), from `/proc/self/stat` (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
