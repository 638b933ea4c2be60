//! Each trust warning fires on a model built to trigger it and not on a plainly trained CNN.

mod common;

use std::cell::Cell;

use common::{fashion_mnist, TchScorer, TinyCnn};
use robustd::config::{Config, Norm, PgdSpec};
use robustd::eval::{
    evaluate, BatchSize, CurveProtocol, EvalPlan, EvalSet, Evaluation, WarningKind,
};
use robustd::model::{Classifier, ModelError};
use tch::{Device, Kind, Tensor};

/// A model wrapper that changes what the inner CNN computes.
struct Wrapped<F: Fn(&dyn Classifier, &Tensor) -> Tensor + Copy> {
    inner: TinyCnn,
    f: F,
}

impl<F: Fn(&dyn Classifier, &Tensor) -> Tensor + Copy> Wrapped<F> {
    fn duplicate(&self) -> Self {
        Self {
            inner: self.inner.duplicate(),
            f: self.f,
        }
    }
}

impl<F: Fn(&dyn Classifier, &Tensor) -> Tensor + Copy> Classifier for Wrapped<F> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok((self.f)(&self.inner, x))
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_parameters()
    }
    fn set_train(&mut self, train: bool) {
        self.inner.set_train(train);
    }
    fn input_chw(&self) -> [i64; 3] {
        self.inner.input_chw()
    }
    fn num_classes(&self) -> i64 {
        10
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

fn plan(attacks: &[&str], eps_curve: Vec<f64>) -> EvalPlan {
    let mut cfg = Config::default();
    cfg.eval.attacks = attacks.iter().map(|s| s.to_string()).collect();
    cfg.eval.pgd.steps = 10;
    cfg.eval.pgd.step_size_factor = 0.25;
    cfg.eval.apgd_steps = 20;
    cfg.eval.square_queries = 300;
    cfg.eval.eps_curve = eps_curve;
    let mut plan = EvalPlan::from_config(&cfg).unwrap();
    plan.batch = BatchSize::Fixed(50);
    plan
}

/// Evaluates `model`, with a scorer running an identical copy (the role of onnxruntime on the shipped file).
fn run(model: &mut dyn Classifier, copy: &dyn Classifier, plan: &EvalPlan, n: usize) -> Evaluation {
    let (x, y) = fashion_mnist("t10k", n);
    let data = EvalSet::first(x, y).unwrap();
    let mut scorer = TchScorer::new(copy);
    evaluate(model, &mut scorer, &data, plan, &mut |_| {}).unwrap()
}

fn kinds(e: &Evaluation) -> Vec<WarningKind> {
    e.result.warnings.iter().map(|w| w.kind).collect()
}

#[test]
fn a_plainly_trained_cnn_gets_no_warnings() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let e = run(
        &mut cnn,
        &copy,
        &plan(
            &["pgd", "apgd-ce", "apgd-dlr", "square"],
            vec![0.0, 0.03, 0.1],
        ),
        100,
    );
    assert!(e.result.warnings.is_empty(), "{:#?}", e.result.warnings);
}

#[test]
fn probabilities_instead_of_logits_are_reported() {
    let mut model = Wrapped {
        inner: TinyCnn::trained(),
        f: |m: &dyn Classifier, x: &Tensor| m.forward(x).unwrap().softmax(1, Kind::Float),
    };
    let copy = model.duplicate();
    let e = run(&mut model, &copy, &plan(&["pgd"], vec![]), 60);
    assert!(
        kinds(&e).contains(&WarningKind::Probabilities),
        "{:#?}",
        e.result.warnings
    );
}

#[test]
fn quantized_inputs_report_masked_gradients_and_square_only_successes() {
    // Rounding the input to 5 grey levels zeroes every input gradient; Square still changes the rounded pixels.
    let mut model = Wrapped {
        inner: TinyCnn::trained(),
        f: |m: &dyn Classifier, x: &Tensor| m.forward(&((x * 4.0).round() / 4.0)).unwrap(),
    };
    let copy = model.duplicate();
    let e = run(
        &mut model,
        &copy,
        &plan(&["pgd", "apgd-ce", "square"], vec![]),
        80,
    );
    let k = kinds(&e);
    assert!(
        k.contains(&WarningKind::MaskedGradients),
        "{:#?}",
        e.result.warnings
    );
    assert!(
        k.contains(&WarningKind::SquareOnly),
        "{:#?}",
        e.result.attacks
    );
    assert!(!k.contains(&WarningKind::Probabilities));
}

/// A model whose output drifts from call to call (a stand-in for dropout left on or injected noise; it keeps its
/// own state so the test does not draw from libtorch's global generator).
struct Drifting {
    inner: TinyCnn,
    calls: Cell<u32>,
}

impl Classifier for Drifting {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.calls.set(self.calls.get() + 1);
        let shift = (f64::from(self.calls.get()) * 0.7).sin() * 0.5;
        Ok(self.inner.forward(x)? + shift * self.inner.forward(x)?.softmax(1, Kind::Float))
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_parameters()
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

#[test]
fn a_randomized_model_is_reported() {
    let inner = TinyCnn::trained();
    let copy = Drifting {
        inner: inner.duplicate(),
        calls: Cell::new(0),
    };
    let mut model = Drifting {
        inner,
        calls: Cell::new(0),
    };
    // More rows than the check's second pass takes: the probe is the first rows of the first batch.
    let e = run(&mut model, &copy, &plan(&["fgsm"], vec![]), 100);
    assert!(
        kinds(&e).contains(&WarningKind::Nondeterministic),
        "{:#?}",
        e.result.warnings
    );
}

/// Two classes on the mean pixel value `u` of an image, `t = u − 0.5`: the margin falls with slope 40 until
/// t = 0.03 (misclassified from t = 0.025), is −1 on [0.03, 0.04) and jumps to a flat +5 beyond. PGD with a small
/// ball walks into the failure band; with a large ball its first step (a quarter of eps) lands on the flat
/// correct plateau and stays: robust accuracy rises with eps.
struct Trap;

impl Classifier for Trap {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let t = x.f_mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)? - 0.5;
        let slope = (&t * -40.0) + 1.0;
        let band = t.full_like(-1.0);
        let plateau = t.full_like(5.0);
        let margin = slope.where_self(&t.lt(0.03), &band.where_self(&t.lt(0.04), &plateau));
        // Offset both logits so the clean output [3, 2] does not look like probabilities.
        Ok(Tensor::stack(&[&margin + 2.0, margin.full_like(2.0)], 1))
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn set_train(&mut self, _train: bool) {}
    fn input_chw(&self) -> [i64; 3] {
        [1, 8, 8]
    }
    fn num_classes(&self) -> i64 {
        2
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[test]
fn robust_accuracy_rising_with_eps_is_reported_and_a_monotone_curve_is_not() {
    let x = Tensor::full([20, 1, 8, 8], 0.5, (Kind::Float, Device::Cpu));
    let y = Tensor::zeros([20], (Kind::Int64, Device::Cpu));
    let data = EvalSet::first(x, y).unwrap();
    let mut plan = EvalPlan {
        norm: Norm::Linf,
        eps: 0.035,
        preset: robustd::config::EvalPreset::Fast,
        attacks: vec![],
        eps_curve: vec![0.0, 0.035, 0.2],
        curve_pgd: PgdSpec {
            steps: 10,
            restarts: 1,
            step_size_factor: 0.25,
            random_start: false,
        },
        curve_protocol: CurveProtocol::Independent,
        curve_steps: 10,
        curve_start: robustd::eval::CurveStart::Warm,
        seed: 0,
        batch: BatchSize::Fixed(20),
        mode: robustd::eval::Mode::Ensemble,
        thresholds: Default::default(),
        examples: Default::default(),
    };
    let trap = Trap;
    let mut scorer = TchScorer::new(&trap);
    let e = evaluate(&mut Trap, &mut scorer, &data, &plan, &mut |_| {}).unwrap();
    let curve: Vec<f64> = e
        .result
        .robust_acc_vs_eps
        .0
        .iter()
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(curve, vec![1.0, 0.0, 1.0]);
    assert_eq!(
        kinds(&e),
        vec![WarningKind::NonMonotone],
        "{:#?}",
        e.result.warnings
    );

    // The sweep carries a break at 0.035 to every larger radius: its curve cannot rise.
    plan.curve_protocol = CurveProtocol::Sweep;
    let e = evaluate(&mut Trap, &mut scorer, &data, &plan, &mut |_| {}).unwrap();
    let curve: Vec<f64> = e
        .result
        .robust_acc_vs_eps
        .0
        .iter()
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(curve, vec![1.0, 0.0, 0.0]);
    assert!(e.result.warnings.is_empty(), "{:#?}", e.result.warnings);
    let info = e.result.curve.as_ref().unwrap();
    // No attack configured: no verdict at eps to reuse, so the sweep starts from the clean samples.
    assert_eq!((info.anchor, info.attacked), (Some(0.0), 20));

    plan.curve_protocol = CurveProtocol::Independent;
    plan.eps_curve = vec![0.0, 0.035];
    let e = evaluate(&mut Trap, &mut scorer, &data, &plan, &mut |_| {}).unwrap();
    assert!(e.result.warnings.is_empty(), "{:#?}", e.result.warnings);
    // The attack list is honoured: none configured, none run.
    assert!(e.result.attacks.0.is_empty());
}
