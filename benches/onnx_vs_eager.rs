//! Interpreter forward+backward time vs the same network in PyTorch eager (scripts/bench_eager.py), same threads
//! and batch. Not a test: run `cargo bench --bench onnx_vs_eager` (env BENCH_MODEL, BENCH_THREADS, BENCH_BATCH,
//! BENCH_ITERS) and the Python script with the same settings, and compare the medians.

use std::time::Instant;

use robustd::config::{InputLayout, Limits};
use robustd::model::{Classifier, InputAdapter};
use robustd::onnx::{OnnxModel, TchModel, TchOptions};
use tch::{Device, Kind, Tensor};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let name = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "cnn_bn_legacy".into());
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let batch: i64 = env_or("BENCH_BATCH", 64);
    let iters: usize = env_or("BENCH_ITERS", 30);
    tch::set_num_threads(threads);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/generated")
        .join(format!("{name}.onnx"));
    let onnx = OnnxModel::load(&path, &Limits::default())?;
    let mut model = TchModel::with_layout(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
        TchOptions::default(),
    )?;
    model.set_train(true);
    let [c, h, w] = model.input_chw();
    tch::manual_seed(0);
    let x = Tensor::rand([batch, c, h, w], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = Tensor::randint(model.num_classes(), [batch], (Kind::Int64, Device::Cpu));
    let forward_only = median_ms(iters, || {
        let _guard = tch::no_grad_guard();
        model.forward(&x).map(drop)
    })?;
    let (median, min) = median_ms(iters, || {
        let loss = model.forward(&x)?.cross_entropy_for_logits(&y);
        loss.backward();
        Ok(())
    })?;
    println!(
        "tch interpreter  {name} batch {batch} threads {threads}: median {median:.2} ms (min {min:.2}) per \
         forward+backward; forward alone (no grad) {:.2} ms",
        forward_only.0
    );
    Ok(())
}

/// (median, min) milliseconds of `iters` runs after 3 warm-up runs.
fn median_ms(
    iters: usize,
    mut f: impl FnMut() -> Result<(), robustd::model::ModelError>,
) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 3 {
        let start = Instant::now();
        f()?;
        if i >= 3 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}
