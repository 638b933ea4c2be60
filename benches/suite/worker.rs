//! robustd's side of each benchmark workload, run in its own process (`suite worker WORKLOAD ...`) so its peak RSS
//! is its own. Everything goes through the product's own path: `Subject::load` (the config, the ONNX file, the
//! dataset), the tch interpreter for gradients, `OrtScorer` for forward-only work, `robustd::train::train` for
//! epochs. Prints one JSON object, the same fields as `scripts/bench_reference.py` prints for the reference.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use robustd::attack::Attack;
use robustd::config::{Config, Method, Norm};
use robustd::data::{Augmentation, BatchOptions, Dataset};
use robustd::model::{Classifier, Scorer};
use robustd::pipeline::Subject;
use robustd::train::{train, Atypicality, TrainRun};
use tch::{Kind, Tensor};

/// `worker WORKLOAD --model PATH --key value ...`, the same flags as the reference script's.
pub fn run(args: &[String]) -> Result<()> {
    let (workload, flags) = args.split_first().context("worker: no workload")?;
    let flags = Flags::parse(flags)?;
    let threads: usize = flags.get("threads", 2)?;
    let model: PathBuf = flags.get("model", PathBuf::new())?;
    match workload.as_str() {
        "pgd-eval" => pgd_eval(&model, threads, &flags),
        "epoch" => epoch(&model, threads, &flags),
        "forward" => forward(&model, threads, &flags),
        "square" => square(&model, threads, &flags),
        "autoattack" => autoattack(&model, threads, &flags),
        "images" => images(&flags),
        other => bail!("unknown workload `{other}`"),
    }
}

struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .with_context(|| format!("expected --flag, got `{key}`"))?;
            let value = it
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            pairs.push((key.replace('-', "_"), value.clone()));
        }
        Ok(Self(pairs))
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.0.iter().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key}: cannot parse `{v}`")),
        }
    }
}

/// The product's config for a benchmark: Fashion-MNIST, CPU, `threads` intra-op threads for tch and ORT, the first
/// `train` training and `test` test images (at least 1 each: 0 would mean the whole split).
fn subject(model: &Path, threads: usize, train: usize, test: usize) -> Result<Subject> {
    let yaml = format!(
        "runtime: {{device: cpu, threads: {threads}}}\n\
         dataset: {{name: fashion-mnist, train_samples: {train}, eval_samples: {test}}}\n"
    );
    let config = Config::default().with_overrides(&yaml, Path::new("<bench>"))?;
    Ok(Subject::load(model, &config)?)
}

/// The model's own clean predictions (the attack workloads' labels, as on the reference side) and its accuracy
/// against the true labels (equal on both sides when both compute the same function).
fn own_predictions(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    batch: i64,
) -> Result<(Tensor, f64)> {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let mut preds = Vec::new();
    for start in (0..n).step_by(batch as usize) {
        let len = batch.min(n - start);
        preds.push(model.forward(&x.narrow(0, start, len))?.argmax(1, false));
    }
    let preds = Tensor::cat(&preds, 0);
    let acc = preds
        .eq_tensor(y)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    Ok((preds, acc))
}

fn pgd_eval(path: &Path, threads: usize, flags: &Flags) -> Result<()> {
    let n: i64 = flags.get("n", 500)?;
    let batch: i64 = flags.get("batch", 250)?;
    let reps: usize = flags.get("reps", 3)?;
    let eps: f64 = flags.get("eps", 0.1)?;
    let subject = subject(path, threads, 1, n as usize)?;
    let mut spec = subject.config.eval.clone();
    spec.pgd.steps = flags.get("steps", 20)?;
    spec.pgd.step_size_factor = flags.get::<f64>("step_size", eps / 8.0)? / eps;
    let mut model = subject.tch_model()?;
    model.set_train(false);
    let mut scorer = subject.scorer(path)?;
    let (x, truth) = (&subject.dataset.test.x, &subject.dataset.test.y);
    let (y, clean_acc) = own_predictions(&model, x, truth, batch)?;
    let (mut walls, mut cpus, mut robust) = (Vec::new(), Vec::new(), 0);
    for rep in 0..reps {
        let attack = Attack::from_config("pgd", &spec, Norm::Linf, eps, rep as u64)?;
        let timer = Timer::start();
        robust = 0;
        for start in (0..n).step_by(batch as usize) {
            let len = batch.min(n - start);
            let (xb, yb) = (x.narrow(0, start, len), y.narrow(0, start, len));
            let rows: Vec<u64> = (start as u64..(start + len) as u64).collect();
            let adv = attack.run(&model, &mut scorer, &xb, &yb, &rows, None)?;
            let _guard = tch::no_grad_guard();
            let pred = model.forward(&adv.x_adv)?.argmax(1, false);
            robust += pred.eq_tensor(&yb).sum(Kind::Int64).int64_value(&[]);
        }
        let (wall, cpu) = timer.stop();
        walls.push(wall);
        cpus.push(cpu);
    }
    emit(&[
        ("workload", json_str("pgd-eval")),
        ("wall_s", json_list(&walls)),
        ("cpu_s", json_list(&cpus)),
        ("samples", n.to_string()),
        ("clean_acc", clean_acc.to_string()),
        ("robust_acc", (robust as f64 / n as f64).to_string()),
    ]);
    Ok(())
}

fn epoch(path: &Path, threads: usize, flags: &Flags) -> Result<()> {
    let samples: usize = flags.get("samples", 2048)?;
    let reps: usize = flags.get("reps", 3)?;
    let method = match flags.get("method", String::new())?.as_str() {
        "pgd-at" => Method::PgdAt,
        "bat" => Method::Bat,
        other => bail!("--method: `{other}` (pgd-at | bat)"),
    };
    let subject = subject(path, threads, samples, 1)?;
    let mut spec = subject.config.train.clone();
    spec.method = method;
    spec.epochs = 1;
    spec.batch_size = flags.get("batch", 128)?;
    spec.val_fraction = 0.0;
    spec.augmentation = "none".into();
    let data = &subject.dataset.train;
    let atypicality = Atypicality {
        flags: (0..data.len()).map(|i| i % 5 == 0).collect(),
        source: "every fifth sample".into(),
        threshold: None,
        scored: data.len(),
    };
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut run = TrainRun::new(
            &spec,
            &subject.config.threat,
            rep as u64,
            Augmentation::None,
        )?;
        run.atypicality = Some(&atypicality);
        let mut model = subject.tch_model()?;
        let timer = Timer::start();
        train(&mut model, data, &run)?;
        let (wall, cpu) = timer.stop();
        walls.push(wall);
        cpus.push(cpu);
    }
    emit(&[
        (
            "workload",
            json_str(&format!("epoch-{}", flags.get("method", String::new())?)),
        ),
        ("wall_s", json_list(&walls)),
        ("cpu_s", json_list(&cpus)),
        ("samples", samples.to_string()),
    ]);
    Ok(())
}

/// Forward passes without gradients: onnxruntime on the file vs the tch interpreter, at each batch size.
fn forward(path: &Path, threads: usize, flags: &Flags) -> Result<()> {
    let batches: Vec<i64> = flags
        .get("batches", "1,32,256".to_string())?
        .split(',')
        .map(|b| b.parse().context("--batches"))
        .collect::<Result<_>>()?;
    let iters: usize = flags.get("iters", 30)?;
    let largest = *batches.iter().max().context("--batches is empty")?;
    let subject = subject(path, threads, 1, largest as usize)?;
    let mut model = subject.tch_model()?;
    model.set_train(false);
    let mut scorer = subject.scorer(path)?;
    let x_all = &subject.dataset.test.x;
    let (mut ort, mut tch) = (Vec::new(), Vec::new());
    for &batch in &batches {
        let x = x_all.narrow(0, 0, batch);
        ort.push((batch, time_each(iters, || Ok(scorer.logits(&x)?))?));
        let _guard = tch::no_grad_guard();
        tch.push((batch, time_each(iters, || Ok(model.forward(&x)?))?));
    }
    let per_batch = |runs: &[(i64, Vec<f64>)]| {
        let fields: Vec<String> = runs
            .iter()
            .map(|(b, t)| format!("\"{b}\": {}", json_list(t)))
            .collect();
        format!("{{{}}}", fields.join(", "))
    };
    emit(&[
        ("workload", json_str("forward")),
        ("ort_seconds_per_batch", per_batch(&ort)),
        ("tch_seconds_per_batch", per_batch(&tch)),
    ]);
    Ok(())
}

/// The Square attack through onnxruntime only, queries counted by the attack itself.
fn square(path: &Path, threads: usize, flags: &Flags) -> Result<()> {
    let n: i64 = flags.get("n", 200)?;
    let reps: usize = flags.get("reps", 3)?;
    let eps: f64 = flags.get("eps", 1e-4)?;
    let subject = subject(path, threads, 1, n as usize)?;
    let mut spec = subject.config.eval.clone();
    spec.square_queries = flags.get("queries", 300)?;
    spec.square_p_init = flags.get("p_init", 0.3)?;
    let model = subject.tch_model()?;
    let mut scorer = subject.scorer(path)?;
    let (x, truth) = (&subject.dataset.test.x, &subject.dataset.test.y);
    let (y, _) = own_predictions(&model, x, truth, 256)?;
    let rows: Vec<u64> = (0..n as u64).collect();
    let (mut walls, mut cpus, mut queries, mut robust) = (Vec::new(), Vec::new(), 0, 0);
    for rep in 0..reps {
        let attack = Attack::from_config("square", &spec, Norm::Linf, eps, rep as u64)?;
        let timer = Timer::start();
        let out = attack.run(&model, &mut scorer, x, &y, &rows, None)?;
        let pred = scorer.logits(&out.x_adv)?.argmax(1, false);
        let (wall, cpu) = timer.stop();
        walls.push(wall);
        cpus.push(cpu);
        queries = out.queries.unwrap_or_default().iter().sum::<usize>();
        robust = pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
    }
    emit(&[
        ("workload", json_str("square")),
        ("wall_s", json_list(&walls)),
        ("cpu_s", json_list(&cpus)),
        ("samples", n.to_string()),
        ("queries", queries.to_string()),
        ("robust_acc", (robust as f64 / n as f64).to_string()),
    ]);
    Ok(())
}

/// AutoAttack's standard suite as `robustd eval --preset autoattack-standard` runs it (the evaluation protocol:
/// clean pass, trust checks, the four attacks as an ensemble, every verdict on onnxruntime), without the eps curve
/// and the example files; labels are the model's own predictions, as on the reference side.
fn autoattack(path: &Path, threads: usize, flags: &Flags) -> Result<()> {
    let n: i64 = flags.get("n", 100)?;
    let reps: usize = flags.get("reps", 3)?;
    let eps: f64 = flags.get("eps", 0.03)?;
    let mut subject = subject(path, threads, 1, n as usize)?;
    subject.config.eval.preset = robustd::config::EvalPreset::AutoattackStandard;
    subject.config.eval.eps_curve = vec![];
    subject.config.eval.examples.max = 0;
    subject.config.threat.eps = eps;
    let mut model = subject.tch_model()?;
    model.set_train(false);
    let mut scorer = subject.scorer(path)?;
    let (x, truth) = (&subject.dataset.test.x, &subject.dataset.test.y);
    let (y, _) = own_predictions(&model, x, truth, 256)?;
    let data = robustd::eval::EvalSet::first(x.shallow_clone(), y)?;
    let (mut walls, mut cpus, mut robust) = (Vec::new(), Vec::new(), 0.0);
    for rep in 0..reps {
        subject.config.runtime.seed = rep as u64;
        let plan = robustd::eval::EvalPlan::from_config(&subject.config)?;
        let timer = Timer::start();
        let e = robustd::eval::evaluate(&mut model, &mut scorer, &data, &plan, &mut |_| {})?;
        let (wall, cpu) = timer.stop();
        walls.push(wall);
        cpus.push(cpu);
        robust = e.result.worst_case_acc;
    }
    emit(&[
        ("workload", json_str("autoattack")),
        ("wall_s", json_list(&walls)),
        ("cpu_s", json_list(&cpus)),
        ("samples", n.to_string()),
        ("robust_acc", robust.to_string()),
    ]);
    Ok(())
}

/// Image loading (`images.rs`): `--reps` passes over the training split of the folder `--root`, decoded and
/// preprocessed as torchvision's ImageNet evaluation transform (shorter side 256, center crop 224) by
/// `Split::batches` with `--workers` decode threads, batches of `--batch`, within `--memory-mb`.
fn images(flags: &Flags) -> Result<()> {
    let root: PathBuf = flags.get("root", PathBuf::new())?;
    let workers: usize = flags.get("workers", 2)?;
    let batch: usize = flags.get("batch", 64)?;
    let reps: usize = flags.get("reps", 1)?;
    let memory_mb: u64 = flags.get("memory_mb", 4096)?;
    let yaml = format!(
        "runtime: {{device: cpu, threads: 1}}\n\
         model: {{preprocess: {{resize: shorter-side, resize_size: 256}}}}\n\
         dataset: {{name: folder, path: {}, train_samples: 0, eval_samples: 10, loader_threads: {workers}}}\n\
         train: {{batch_size: {batch}}}\n\
         limits: {{job_memory_mb: {memory_mb}}}\n",
        root.display()
    );
    let config = Config::default().with_overrides(&yaml, Path::new("<bench>"))?;
    let dataset = Dataset::open(&config, Some([3, 224, 224]))?;
    let mut seconds = Vec::new();
    let mut seen = 0;
    for _ in 0..reps {
        let start = Instant::now();
        seen = 0;
        for b in dataset.train.batches(&BatchOptions::eval(batch))? {
            seen += b?.x.size()[0];
        }
        seconds.push(start.elapsed().as_secs_f64());
    }
    emit(&[
        ("seconds", json_list(&seconds)),
        ("images", seen.to_string()),
    ]);
    Ok(())
}

/// Wall seconds of each of `iters` calls after three warm-up calls.
fn time_each<T>(iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<f64>> {
    for _ in 0..3 {
        f()?;
    }
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64())
        })
        .collect()
}

/// Wall and process CPU time (all threads) of a span.
struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: usage().0,
        }
    }
    fn stop(self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), usage().0 - self.cpu)
    }
}

/// (user + system CPU seconds, peak RSS in MiB) of this process, from getrusage.
fn usage() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

fn json_str(s: &str) -> String {
    format!("\"{s}\"")
}

fn json_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", items.join(", "))
}

/// One JSON object on stdout, with the peak RSS and versions added.
fn emit(fields: &[(&str, String)]) {
    let mut all: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    all.push(format!("\"peak_rss_mb\": {:.1}", usage().1));
    all.push(format!("\"threads\": {}", tch::get_num_threads()));
    println!("{{{}}}", all.join(", "));
}
