//! Real models and data for the attack and evaluation tests: a linear classifier (closed-form L∞ robustness), a
//! small CNN trained for a few seconds on real Fashion-MNIST images, and a `Scorer` that runs a real forward pass
//! of a tch model on a gradient-free copy of its input (what onnxruntime does for the shipped file).
#![allow(dead_code)]

use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use robustd::model::{Classifier, ModelError, Scorer};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// libtorch's generator is global and tests run in parallel threads: seeding and drawing happen under this lock.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Runs `f` right after `tch::manual_seed(seed)`, with no other test drawing from libtorch's generator meanwhile.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _lock = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Reads the first `n` images (`[n, 1, 28, 28]` float in [0,1]) and labels (`[n]` int64) of a Fashion-MNIST split
/// (`train` or `t10k`) from the gzipped IDX files.
pub fn fashion_mnist(split: &str, n: usize) -> (Tensor, Tensor) {
    let dir = Path::new(FASHION_MNIST);
    let images = read_idx(
        &dir.join(format!("{split}-images-idx3-ubyte.gz")),
        16,
        n * 784,
    );
    let labels = read_idx(&dir.join(format!("{split}-labels-idx1-ubyte.gz")), 8, n);
    let x = Tensor::from_slice(&images)
        .to_kind(Kind::Float)
        .view([n as i64, 1, 28, 28])
        / 255.0;
    let y = Tensor::from_slice(&labels).to_kind(Kind::Int64);
    (x, y)
}

fn read_idx(path: &Path, header: usize, count: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .take((header + count) as u64)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.len(),
        header + count,
        "{} is too short",
        path.display()
    );
    bytes.split_off(header)
}

/// Logits `W·flatten(x) + b`.
pub struct LinearModel {
    pub w: Tensor,
    pub b: Tensor,
    pub chw: [i64; 3],
}

impl LinearModel {
    /// Random weights (seeded) for `classes` outputs over `chw` inputs.
    pub fn random(chw: [i64; 3], classes: i64, seed: i64) -> Self {
        let d = chw.iter().product::<i64>();
        let (w, b) = seeded(seed, || {
            (
                Tensor::randn([classes, d], (Kind::Float, Device::Cpu)) / (d as f64).sqrt(),
                Tensor::randn([classes], (Kind::Float, Device::Cpu)) * 0.1,
            )
        });
        Self {
            w: w.set_requires_grad(true),
            b: b.set_requires_grad(true),
            chw,
        }
    }
}

impl Classifier for LinearModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_flatten(1, -1)?
            .f_matmul(&self.w.f_tr()?)?
            .f_add(&self.b)?)
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        vec![self.w.shallow_clone(), self.b.shallow_clone()]
    }
    fn set_train(&mut self, _train: bool) {}
    fn input_chw(&self) -> [i64; 3] {
        self.chw
    }
    fn num_classes(&self) -> i64 {
        self.w.size()[0]
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// For a linear model, whether each sample keeps its label against every L∞ perturbation of radius `eps` inside
/// [0,1], in closed form: for each wrong class k the margin `(w_y − w_k)·x' + (b_y − b_k)` is minimized
/// coordinate-wise at `x'_i = max(0, x_i − eps)` where the coefficient is positive, `min(1, x_i + eps)` otherwise.
pub fn linear_linf_robust(model: &LinearModel, x: &Tensor, y: &Tensor, eps: f64) -> Vec<bool> {
    let w = Vec::<Vec<f32>>::try_from(&model.w.detach()).unwrap();
    let b = Vec::<f32>::try_from(&model.b.detach()).unwrap();
    let xs = Vec::<Vec<f32>>::try_from(&x.flatten(1, -1)).unwrap();
    let ys = Vec::<i64>::try_from(y).unwrap();
    xs.iter()
        .zip(&ys)
        .map(|(xi, &yi)| {
            let yi = yi as usize;
            (0..w.len()).filter(|&k| k != yi).all(|k| {
                let mut worst = (b[yi] - b[k]) as f64;
                for (j, &v) in xi.iter().enumerate() {
                    let a = (w[yi][j] - w[k][j]) as f64;
                    let lo = (v as f64 - eps).max(0.0);
                    let hi = (v as f64 + eps).min(1.0);
                    worst += (a * lo).min(a * hi);
                }
                worst > 0.0
            })
        })
        .collect()
}

/// A small CNN (two conv layers) in a `VarStore`.
pub struct TinyCnn {
    pub vs: nn::VarStore,
    net: nn::Sequential,
}

impl TinyCnn {
    pub fn new(seed: i64) -> Self {
        seeded(seed, Self::build)
    }

    fn build() -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let net = nn::seq()
            .add(nn::conv2d(&p / "c1", 1, 8, 5, Default::default()))
            .add_fn(|x| x.relu().max_pool2d_default(2))
            .add(nn::conv2d(&p / "c2", 8, 16, 5, Default::default()))
            .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
            .add(nn::linear(&p / "fc", 256, 10, Default::default()));
        Self { vs, net }
    }

    /// A second CNN with the same weights (e.g. behind a scorer while the first is attacked).
    pub fn duplicate(&self) -> Self {
        let mut copy = seeded(0, Self::build);
        copy.vs.copy(&self.vs).unwrap();
        copy
    }

    /// Trains with Adam on `x, y` for `epochs` epochs (deterministic for a seed on CPU).
    pub fn train(&mut self, x: &Tensor, y: &Tensor, epochs: usize) {
        let mut opt = nn::Adam::default().build(&self.vs, 3e-3).unwrap();
        let n = x.size()[0];
        for _ in 0..epochs {
            let mut start = 0;
            while start < n {
                let len = 64.min(n - start);
                let logits = self.net.forward(&x.narrow(0, start, len));
                let loss = logits.cross_entropy_for_logits(&y.narrow(0, start, len));
                opt.backward_step(&loss);
                start += len;
            }
        }
        opt.zero_grad();
    }

    /// A CNN trained on the first 2000 Fashion-MNIST training images for 3 epochs (about two seconds on 2 cores).
    pub fn trained() -> Self {
        let (x, y) = fashion_mnist("train", 2000);
        let mut cnn = Self::new(0);
        cnn.train(&x, &y, 3);
        cnn
    }
}

impl Classifier for TinyCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.net.forward(x))
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }
    fn set_train(&mut self, _train: bool) {}
    fn input_chw(&self) -> [i64; 3] {
        [1, 28, 28]
    }
    fn num_classes(&self) -> i64 {
        10
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// A `Scorer` over a tch classifier: each query copies the input into plain `f32`s, rebuilds a fresh tensor with
/// no autograd history, and runs the model's forward pass with gradients disabled. It counts queries and records
/// whether any query arrived with gradient tracking on or with an input that required gradients.
pub struct TchScorer<'a> {
    pub model: &'a dyn Classifier,
    pub calls: Cell<usize>,
    pub rows: Cell<usize>,
    pub saw_grad: Cell<bool>,
}

impl<'a> TchScorer<'a> {
    pub fn new(model: &'a dyn Classifier) -> Self {
        Self {
            model,
            calls: Cell::new(0),
            rows: Cell::new(0),
            saw_grad: Cell::new(false),
        }
    }
}

impl Scorer for TchScorer<'_> {
    fn logits(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        if x.requires_grad() || grad_mode_enabled() {
            self.saw_grad.set(true);
        }
        let shape = x.size();
        let data = Vec::<f32>::try_from(&x.to_kind(Kind::Float).flatten(0, -1))?;
        let fresh = Tensor::from_slice(&data).view(shape.as_slice());
        self.calls.set(self.calls.get() + 1);
        self.rows.set(self.rows.get() + shape[0] as usize);
        tch::no_grad(|| self.model.forward(&fresh))
    }
}

/// Whether libtorch is recording operations for autograd right now.
pub fn grad_mode_enabled() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (probe * 2.0).requires_grad()
}

/// Fraction of rows the model classifies as `y`.
pub fn accuracy(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> f64 {
    let pred = tch::no_grad(|| model.forward(x).unwrap()).argmax(1, false);
    pred.eq_tensor(y)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// Per-row "still classified correctly".
pub fn correct(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Vec<bool> {
    let pred = tch::no_grad(|| model.forward(x).unwrap()).argmax(1, false);
    Vec::<bool>::try_from(&pred.eq_tensor(y)).unwrap()
}

/// Largest per-row L∞ distance and L2 distance between two batches.
pub fn max_distances(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let d = (a - b).flatten(1, -1);
    let linf = d.abs().max().double_value(&[]);
    let l2 = d
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
        .max()
        .double_value(&[]);
    (linf, l2)
}

pub fn in_box(t: &Tensor) -> bool {
    t.min().double_value(&[]) >= 0.0 && t.max().double_value(&[]) <= 1.0
}
