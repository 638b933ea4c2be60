//! The objectives and the optimizer: BAT(β=0, λ=0) is PGD-AT step for step, BAT's weights are stop-gradient and
//! clamped, and the hand-written SGD/Adam match libtorch's own optimizers.

mod train_support;

use robustd::attack::pgd::{Keep, PgdParams};
use robustd::config::{Method, Norm, OptimizerSpec, ThreatModel};
use robustd::data::Augmentation;
use robustd::model::Classifier;
use robustd::train::{bat_weights, train, Atypicality, BatParams, Objective, Optimizer, TrainRun};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};
use train_support::{fashion_mnist, identical, quick_spec, weights, SmallCnn};

fn threat() -> ThreatModel {
    ThreatModel {
        norm: Norm::Linf,
        eps: 0.1,
    }
}

/// Every third sample atypical.
fn every_third(n: usize) -> Atypicality {
    Atypicality {
        flags: (0..n).map(|i| i % 3 == 0).collect(),
        source: "every third sample".into(),
        threshold: None,
        scored: n,
    }
}

#[test]
fn bat_with_zero_beta_and_lambda_is_pgd_at_step_for_step() {
    let data = fashion_mnist(256, 1);
    let atypical = every_third(data.train.len());
    let run_with = |method: Method, bat: Option<BatParams>| {
        let mut spec = quick_spec(method, 2, 64);
        if let Some(b) = bat {
            spec.bat.beta = b.beta;
            spec.bat.lambda = b.lambda;
        }
        let mut run = TrainRun::new(&spec, &threat(), 7, Augmentation::None).unwrap();
        run.atypicality = Some(&atypical);
        let mut model = SmallCnn::new(3, true);
        let result = train(&mut model, &data.train, &run).unwrap();
        (weights(&model), result)
    };
    let initial = weights(&SmallCnn::new(3, true));
    let (pgd_at, pgd_result) = run_with(Method::PgdAt, None);
    let zero = BatParams {
        beta: 0.0,
        lambda: 0.0,
        w_min: None,
        w_max: None,
    };
    let (bat, bat_result) = run_with(Method::Bat, Some(zero));
    assert!(
        !identical(&initial, &pgd_at),
        "8 steps of PGD-AT left the weights unchanged"
    );
    assert!(identical(&pgd_at, &bat), "BAT(0, 0) and PGD-AT diverged");
    assert_eq!(pgd_result.curves.len(), 2);
    for (a, b) in pgd_result.curves.iter().zip(&bat_result.curves) {
        assert_eq!(a.loss, b.loss);
        assert_eq!(a.train_adv_acc, b.train_adv_acc);
    }
    // β = 0 makes every weight exactly 1, atypical or not.
    let w = bat_result.curves[0].clone();
    assert_eq!(
        (w.weight_min, w.weight_max, w.weight_mean),
        (Some(1.0), Some(1.0), Some(1.0))
    );

    // With β = 1 the same run takes a different path: the flags are really read.
    let one = BatParams { beta: 1.0, ..zero };
    let (reweighted, _) = run_with(Method::Bat, Some(one));
    assert!(!identical(&pgd_at, &reweighted));
}

/// A linear classifier on flattened inputs, so that logits are a simple function of the parameters.
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Classifier for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor, robustd::model::ModelError> {
        Ok(x.flatten(1, -1).matmul(&self.w.tr()) + &self.b)
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        vec![self.w.shallow_clone(), self.b.shallow_clone()]
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
fn bat_weights_are_stop_gradient_and_clamped() {
    let clamped = BatParams {
        beta: 2.0,
        lambda: 0.5,
        w_min: Some(0.2),
        w_max: Some(1.5),
    };
    check_bat_gradient(clamped);
    // Without the clamp every weight depends on the probabilities, so a gradient through them would show.
    check_bat_gradient(BatParams {
        w_min: None,
        w_max: None,
        ..clamped
    });
}

/// The BAT objective on a linear model with `x' = x`: its weights are detached, equal to the hand-computed
/// ones, clamped, and its gradient is that of the loss with the weights as constants.
fn check_bat_gradient(params: BatParams) {
    let data = fashion_mnist(64, 1);
    let (x, y) = (&data.train.x, &data.train.y);
    let w0 = Tensor::from_slice(
        &(0..7840)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect::<Vec<_>>(),
    )
    .view([10, 784]);
    let mut model = Linear {
        w: w0.set_requires_grad(true),
        b: Tensor::zeros([10], (Kind::Float, Device::Cpu)).set_requires_grad(true),
    };
    let atypical_flags: Vec<bool> = (0..64).map(|i| i % 2 == 0).collect();
    let atypical = Tensor::from_slice(&atypical_flags);
    // Zero PGD steps and no random start: x' = x, so the loss below is a function of the parameters only.
    let attack = PgdParams {
        norm: Norm::Linf,
        eps: 0.1,
        step_size: 0.0,
        steps: 0,
        random_start: false,
        restarts: 1,
        seed: 0,
        keep: Keep::Final,
    };
    let rows: Vec<u64> = (0..64).collect();
    let out = Objective::Bat(params)
        .batch_loss(&mut model, x, y, Some(&atypical), &attack, &rows)
        .unwrap();
    let weights = out.weights.unwrap();
    assert!(!weights.requires_grad());

    // The same weights by hand: p(y|x)^β on atypical samples, 1 elsewhere, / batch mean, clamped.
    let hand_weights = |p: &Tensor| {
        let raw = p
            .pow_tensor_scalar(params.beta)
            .where_self(&atypical, &p.ones_like());
        let w = &raw / raw.mean(Kind::Float);
        let w = params.w_min.map_or(w.shallow_clone(), |lo| w.clamp_min(lo));
        params.w_max.map_or(w.shallow_clone(), |hi| w.clamp_max(hi))
    };
    let p_true = |logits: &Tensor| {
        logits
            .softmax(1, Kind::Float)
            .gather(1, &y.unsqueeze(1), false)
            .squeeze_dim(1)
    };
    let expected = hand_weights(&p_true(&model.forward(x).unwrap()).detach());
    assert!(weights.allclose(&expected, 1e-6, 1e-7, false));
    if let (Some(lo), Some(hi)) = (params.w_min, params.w_max) {
        let wmin = weights.min().double_value(&[]);
        let wmax = weights.max().double_value(&[]);
        assert!(wmin >= lo && wmax <= hi, "weights in [{wmin}, {wmax}]");
        assert!(
            wmin == lo || wmax == hi,
            "the clamp was never active: pick other constants"
        );
    }
    let live_p = p_true(&model.forward(x).unwrap());
    assert!(!bat_weights(&live_p, &atypical, &params)
        .unwrap()
        .requires_grad());

    // Gradient of the objective = gradient of the loss with the weights as constants.
    let grad_of =
        |loss: &Tensor| Tensor::run_backward(&[loss], &model.trainable_parameters(), false, false);
    let objective_grads = grad_of(&out.loss);
    let reference = |w: &Tensor| {
        let logits = model.forward(x).unwrap();
        let ce = -logits
            .log_softmax(1, Kind::Float)
            .gather(1, &y.unsqueeze(1), false)
            .squeeze_dim(1);
        let probs = logits.softmax(1, Kind::Float);
        let others = probs.masked_fill(&y.one_hot(10).to_kind(Kind::Bool), f64::NEG_INFINITY);
        (w * ce).sum(Kind::Float) / w.sum(Kind::Float)
            + params.lambda * others.amax([1i64].as_slice(), false).mean(Kind::Float)
    };
    let constant_grads = grad_of(&reference(&expected));
    for (a, b) in objective_grads.iter().zip(&constant_grads) {
        assert!(
            a.allclose(b, 1e-5, 1e-7, false),
            "max diff {}",
            (a - b).abs().max().double_value(&[])
        );
    }
    if params.w_min.is_none() && params.w_max.is_none() {
        // Letting the gradient flow through the weights gives a different gradient, so the check above can tell.
        let live = hand_weights(&p_true(&model.forward(x).unwrap()));
        let live_grads = grad_of(&reference(&live));
        let differs = objective_grads
            .iter()
            .zip(&live_grads)
            .any(|(a, b)| !a.allclose(b, 1e-5, 1e-7, false));
        assert!(
            differs,
            "a gradient through the weights would look the same: the test cannot tell"
        );
    }
}

#[test]
fn typical_samples_get_the_same_weight_and_atypical_ones_follow_their_confidence() {
    let p = Tensor::from_slice(&[0.9f32, 0.1, 0.5, 0.25]);
    let atypical = Tensor::from_slice(&[false, true, false, true]);
    let params = BatParams {
        beta: 1.0,
        lambda: 0.0,
        w_min: None,
        w_max: None,
    };
    let w = Vec::<f32>::try_from(bat_weights(&p, &atypical, &params).unwrap()).unwrap();
    let mean = (1.0 + 0.1 + 1.0 + 0.25) / 4.0;
    let expected = [1.0 / mean, 0.1 / mean, 1.0 / mean, 0.25 / mean];
    for (a, b) in w.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6, "{w:?} vs {expected:?}");
    }
}

#[test]
fn objectives_name_their_method_and_formula() {
    let mut spec = quick_spec(Method::BatReweightOnly, 1, 8);
    spec.bat.beta = 2.0;
    spec.bat.lambda = 3.0;
    let o = Objective::from_spec(&spec).unwrap();
    assert_eq!(
        o,
        Objective::Bat(BatParams {
            beta: 2.0,
            lambda: 0.0,
            w_min: None,
            w_max: None
        })
    );
    assert_eq!(o.method(), Method::BatReweightOnly);
    spec.method = Method::BatRegOnly;
    let o = Objective::from_spec(&spec).unwrap();
    assert_eq!(o.method(), Method::BatRegOnly);
    assert!(!o.needs_atypicality());
    spec.method = Method::Bat;
    spec.bat.w_min = Some(0.1);
    let o = Objective::from_spec(&spec).unwrap();
    assert!(
        o.formula().contains("clamped to [0.1, inf]"),
        "{}",
        o.formula()
    );
    assert_eq!(o.constants().get("lambda"), Some(&3.0));
    spec.method = Method::None;
    assert!(Objective::from_spec(&spec).is_err());
    spec.method = Method::Bat;
    spec.bat.beta = -1.0;
    assert!(Objective::from_spec(&spec).is_err());
}

/// Runs five steps of ours and of libtorch's optimizer from the same start on the same loss.
fn compare_with_libtorch(spec: &OptimizerSpec, reference: impl OptimizerConfig) {
    let init: Vec<f32> = (0..60)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 10.0)
        .collect();
    let target = Tensor::from_slice(&(0..60).map(|i| (i % 5) as f32 / 4.0).collect::<Vec<_>>())
        .view([6, 10]);
    let loss_of =
        |p: &Tensor| ((p - &target).pow_tensor_scalar(2.0) * (p.sin() + 2.0)).sum(Kind::Float);

    let ours = Tensor::from_slice(&init)
        .view([6, 10])
        .set_requires_grad(true);
    let mut opt = Optimizer::from_spec(spec, &[ours.shallow_clone()]).unwrap();
    for _ in 0..5 {
        let grads = Tensor::run_backward(&[loss_of(&ours)], &[&ours], false, false);
        opt.step(&[ours.shallow_clone()], &grads, spec.lr).unwrap();
    }

    let vs = tch::nn::VarStore::new(Device::Cpu);
    let theirs = vs
        .root()
        .var_copy("p", &Tensor::from_slice(&init).view([6, 10]));
    let mut torch_opt = reference.build(&vs, spec.lr).unwrap();
    for _ in 0..5 {
        torch_opt.backward_step(&loss_of(&theirs));
    }
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "{} differs from libtorch by {diff}", spec.name);
    assert!(
        (&ours - Tensor::from_slice(&init).view([6, 10]))
            .abs()
            .max()
            .double_value(&[])
            > 1e-3
    );
}

#[test]
fn sgd_with_momentum_nesterov_and_weight_decay_matches_libtorch() {
    let spec = OptimizerSpec {
        name: "sgd".into(),
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.01,
        ..OptimizerSpec::default()
    };
    compare_with_libtorch(
        &spec,
        tch::nn::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            wd: 0.01,
            nesterov: true,
        },
    );
    let plain = OptimizerSpec {
        nesterov: false,
        ..spec.clone()
    };
    compare_with_libtorch(
        &plain,
        tch::nn::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            wd: 0.01,
            nesterov: false,
        },
    );
}

#[test]
fn adam_with_weight_decay_matches_libtorch() {
    let spec = OptimizerSpec {
        name: "adam".into(),
        lr: 0.01,
        weight_decay: 0.001,
        ..OptimizerSpec::default()
    };
    compare_with_libtorch(
        &spec,
        tch::nn::Adam {
            beta1: 0.9,
            beta2: 0.999,
            wd: 0.001,
            eps: 1e-8,
            amsgrad: false,
        },
    );
}

#[test]
fn optimizer_state_round_trips() {
    let spec = OptimizerSpec {
        name: "adam".into(),
        lr: 0.01,
        ..OptimizerSpec::default()
    };
    let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
    let mut a = Optimizer::from_spec(&spec, &[p.shallow_clone()]).unwrap();
    let g = Tensor::from_slice(&[0.5f32, 0.25, -1.0]);
    a.step(&[p.shallow_clone()], &[g.shallow_clone()], 0.01)
        .unwrap();
    let saved: Vec<(String, Tensor)> = a
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut b = Optimizer::from_spec(&spec, &[p.shallow_clone()]).unwrap();
    b.load_state(&saved, a.steps()).unwrap();
    let q = p.detach().copy().set_requires_grad(true);
    a.step(&[p.shallow_clone()], &[g.shallow_clone()], 0.01)
        .unwrap();
    b.step(&[q.shallow_clone()], &[g], 0.01).unwrap();
    assert!(p.equal(&q));
    assert!(b.load_state(&saved[..1], 1).is_err());
}
