//! Real models and data for the training tests: a small tch CNN (optionally with BatchNorm) implementing
//! `Classifier` with named state, its weights drawn from a ChaCha stream (never from libtorch's global generator,
//! which the trainer reseeds per batch and tests share across threads), real Fashion-MNIST subsets through the
//! project's loaders, and wrappers that cancel a run or poison the logits after a given number of forward passes.
#![allow(dead_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use robustd::config::{DatasetSpec, TrainSpec};
use robustd::data::Dataset;
use robustd::model::{Classifier, ModelError};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// The first `train` training and `test` test images of Fashion-MNIST via `robustd::data`.
pub fn fashion_mnist(train: usize, test: usize) -> Dataset {
    let spec = DatasetSpec::first("fashion-mnist", train, test);
    Dataset::load(&spec, 0).expect("Fashion-MNIST from /usr/share/datasets/fashion-mnist")
}

/// conv(1→8, 5) → [BN] → ReLU → maxpool → conv(8→16, 5) → ReLU → maxpool → linear(256→10).
pub struct SmallCnn {
    vs: nn::VarStore,
    net: nn::SequentialT,
    train: bool,
}

impl SmallCnn {
    pub fn new(seed: u64, batch_norm: bool) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let mut net = nn::seq_t().add(nn::conv2d(&p / "c1", 1, 8, 5, Default::default()));
        if batch_norm {
            net = net.add(nn::batch_norm2d(&p / "bn1", 8, Default::default()));
        }
        let net = net
            .add_fn(|x| x.relu().max_pool2d_default(2))
            .add(nn::conv2d(&p / "c2", 8, 16, 5, Default::default()))
            .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
            .add(nn::linear(&p / "fc", 256, 10, Default::default()));
        let model = Self {
            vs,
            net,
            train: false,
        };
        model.reinitialize(seed);
        model
    }

    /// Kaiming-uniform weights and small biases from a ChaCha stream; BatchNorm scale 1, shift 0.
    pub fn reinitialize(&self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            let size = t.size();
            let numel = t.numel();
            let values: Vec<f32> = if name.starts_with("bn1.") {
                let one = name.ends_with("weight") || name.ends_with("running_var");
                vec![if one { 1.0 } else { 0.0 }; numel]
            } else {
                let fan_in: i64 = if size.len() > 1 {
                    size[1..].iter().product()
                } else {
                    16
                };
                let bound = (6.0 / fan_in as f64).sqrt() as f32;
                (0..numel)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect()
            };
            t.copy_(&Tensor::from_slice(&values).view(size.as_slice()));
        }
    }
}

impl Classifier for SmallCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.net.forward_t(x, self.train))
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }
    fn set_train(&mut self, train: bool) {
        self.train = train;
    }
    fn input_chw(&self) -> [i64; 3] {
        [1, 28, 28]
    }
    fn num_classes(&self) -> i64 {
        10
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

/// Copies of every state tensor, for before/after comparisons.
pub fn weights(model: &dyn Classifier) -> Vec<(String, Tensor)> {
    model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

/// Whether two state lists are bit-identical.
pub fn identical(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb))
}

/// Largest absolute difference between two state lists.
pub fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Forwards to an inner classifier; after `limit` forward passes it sets `flag` (a cancellation request).
pub struct CancelAfter<M> {
    pub inner: M,
    pub calls: Cell<usize>,
    pub limits: Vec<usize>,
    pub flag: Arc<AtomicBool>,
}

impl<M: Classifier> Classifier for CancelAfter<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        if self.limits.contains(&n) {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.inner.forward(x)
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_parameters()
    }
    fn set_train(&mut self, train: bool) {
        self.inner.set_train(train)
    }
    fn input_chw(&self) -> [i64; 3] {
        self.inner.input_chw()
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.inner.state_dict()
    }
}

/// Forwards to an inner classifier, but from forward pass `from` on every logit is NaN (what a diverged network
/// produces).
pub struct NanAfter<M> {
    pub inner: M,
    pub calls: Cell<usize>,
    pub from: usize,
}

impl<M: Classifier> Classifier for NanAfter<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        let logits = self.inner.forward(x)?;
        Ok(if n >= self.from {
            logits * f64::NAN
        } else {
            logits
        })
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_parameters()
    }
    fn set_train(&mut self, train: bool) {
        self.inner.set_train(train)
    }
    fn input_chw(&self) -> [i64; 3] {
        self.inner.input_chw()
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.inner.state_dict()
    }
}

/// A small, fast training setting: SGD with momentum, constant rate, PGD-3 at eps 0.1, no validation.
pub fn quick_spec(method: robustd::config::Method, epochs: usize, batch_size: usize) -> TrainSpec {
    let mut spec = TrainSpec {
        method,
        epochs,
        batch_size,
        val_fraction: 0.0,
        early_stop_patience: 0,
        augmentation: "none".into(),
        ..TrainSpec::default()
    };
    spec.optimizer.lr = 0.05;
    spec.optimizer.schedule = "constant".into();
    spec.pgd.steps = 3;
    spec.pgd.step_size_factor = 0.5;
    spec
}
