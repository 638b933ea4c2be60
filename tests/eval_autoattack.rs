//! AutoAttack inside robustd: the presets' attacks and budgets, APGD-T's target selection and its one run per
//! target, Square's shared windows, the Clopper–Pearson intervals against published values, and the whole protocol
//! on a two-class model (where DLR and nine targets do not exist) against the closed form.

mod common;

use std::cell::Cell;

use common::{fashion_mnist, linear_linf_robust, LinearModel, TchScorer, TinyCnn};
use robustd::attack::apgd::{apgd, ApgdLoss, ApgdParams};
use robustd::attack::losses::ranked_targets;
use robustd::attack::square::{square, SquareParams, SquareSampling};
use robustd::attack::Attack;
use robustd::config::{Config, EvalPreset, Norm};
use robustd::eval::stats::{clopper_pearson, Interval};
use robustd::eval::{evaluate, BatchSize, EvalPlan, EvalSet};
use robustd::model::{Classifier, ModelError};
use tch::{Device, Kind, Tensor};

/// Exact binomial intervals as R's `binom.test` and SciPy (`beta.ppf`) give them, 95 %, to 6 decimals.
#[test]
fn clopper_pearson_matches_published_values() {
    for (k, n, lo, hi) in [
        (0, 10, 0.0, 0.308_497),
        (10, 10, 0.691_503, 1.0),
        (5, 10, 0.187_086, 0.812_914),
        (1, 20, 0.001_265, 0.248_733),
        (50, 100, 0.398_321, 0.601_679),
        (862, 1000, 0.839_057, 0.882_786),
    ] {
        let ci = clopper_pearson(k, n);
        assert!(
            (ci.lower - lo).abs() < 2e-6 && (ci.upper - hi).abs() < 2e-6,
            "{k}/{n}: [{}, {}] expected [{lo}, {hi}]",
            ci.lower,
            ci.upper
        );
    }
    let none = clopper_pearson(0, 0);
    assert_eq!((none.lower, none.upper), (0.0, 1.0));
}

/// Intervals are written to 4 decimals outwards; bounds already on that grid (as read back from a report) stay put.
#[test]
fn intervals_round_outwards_and_rewriting_keeps_them() {
    let write = |lower: f64, upper: f64| <[f64; 2]>::from(Interval { lower, upper });
    assert_eq!(write(0.839_057_2, 0.882_786_1), [0.839, 0.8828]);
    for k in 0..=10_000 {
        let v = k as f64 / 1e4;
        assert_eq!(write(v, v), [v, v], "{v} moved");
    }
}

/// An attack's name, steps (or queries), restarts and targets.
type BudgetRow = (String, Option<usize>, Option<usize>, Option<usize>);

#[test]
fn presets_run_autoattacks_attacks_with_its_budgets() {
    let plan = |preset| {
        let mut cfg = Config::default();
        cfg.eval.preset = preset;
        EvalPlan::from_config(&cfg).unwrap().attacks
    };
    let summary = |attacks: &[Attack]| -> Vec<BudgetRow> {
        attacks
            .iter()
            .map(|a| {
                let b = a.budget();
                (
                    a.name().to_owned(),
                    b.steps.or(b.queries),
                    b.restarts,
                    b.targets,
                )
            })
            .collect()
    };
    let s = |n: &str, budget, restarts, targets| (n.to_owned(), Some(budget), restarts, targets);
    assert_eq!(
        summary(&plan(EvalPreset::AutoattackStandard)),
        vec![
            s("apgd-ce", 100, Some(1), None),
            s("apgd-t", 100, Some(1), Some(9)),
            s("fab-t", 100, Some(1), Some(9)),
            s("square", 5000, None, None),
        ]
    );
    assert_eq!(
        summary(&plan(EvalPreset::AutoattackPlus)),
        vec![
            s("apgd-ce", 100, Some(5), None),
            s("apgd-dlr", 100, Some(5), None),
            s("fab", 100, Some(5), None),
            s("square", 5000, None, None),
            s("apgd-t", 100, Some(1), Some(9)),
            s("fab-t", 100, Some(1), Some(9)),
        ]
    );
    let rand = plan(EvalPreset::AutoattackRand);
    assert_eq!(
        rand.iter()
            .map(|a| (a.name(), a.budget().eot))
            .collect::<Vec<_>>(),
        vec![("apgd-ce", Some(20)), ("apgd-dlr", Some(20))]
    );
    let square_budget = plan(EvalPreset::AutoattackStandard)[3].budget();
    assert_eq!(square_budget.p_init, Some(0.8));
    assert_eq!(
        plan(EvalPreset::Fast)
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>(),
        Config::default().eval.attacks
    );
    // A preset fixes the attacks: choosing them too is a contradiction named by key.
    let mut cfg = Config::default();
    cfg.eval.preset = EvalPreset::AutoattackStandard;
    cfg.eval.square_queries = 100;
    let err = cfg.validate(std::path::Path::new("x.yaml")).unwrap_err();
    assert!(err.to_string().contains("eval.square_queries"), "{err}");
}

#[test]
fn apgd_t_targets_are_the_top_wrong_classes_by_clean_logit() {
    let logits = Tensor::from_slice(&[
        5.0f32, 1.0, 4.0, 2.0, 3.0, // class 0 first, then 2, 4, 3, 1
        0.0, 9.0, 1.0, 7.0, 8.0, // class 1 first, then 4, 3, 2, 0
    ])
    .view([2, 5]);
    let targets: Vec<Vec<i64>> = ranked_targets(&logits, 9)
        .unwrap()
        .iter()
        .map(|t| Vec::<i64>::try_from(t).unwrap())
        .collect();
    // Capped at classes − 1 = 4 ranks, best first.
    assert_eq!(
        targets,
        vec![vec![2, 4], vec![4, 3], vec![3, 2], vec![1, 0]]
    );
    assert_eq!(ranked_targets(&logits, 2).unwrap().len(), 2);
}

/// A classifier that counts its forward passes.
struct Counting<'a> {
    inner: &'a dyn Classifier,
    forwards: Cell<usize>,
}

impl Classifier for Counting<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.forwards.set(self.forwards.get() + 1);
        self.inner.forward(x)
    }
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_parameters()
    }
    fn set_train(&mut self, _train: bool) {}
    fn input_chw(&self) -> [i64; 3] {
        self.inner.input_chw()
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
}

/// With nothing breakable (eps 0), APGD-T makes exactly one run of `steps` gradient steps per target class and
/// restart, after one clean forward pass that ranks the targets.
#[test]
fn apgd_t_makes_one_run_per_target_and_restart() {
    let model = LinearModel::random([1, 8, 8], 6, 7);
    let x = common::seeded(8, || {
        Tensor::rand([10, 1, 8, 8], (Kind::Float, Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    for (targets, restarts, expected_runs) in [(9usize, 1usize, 5usize), (3, 2, 6)] {
        let counting = Counting {
            inner: &model,
            forwards: Cell::new(0),
        };
        let mut p = ApgdParams::new(Norm::Linf, 0.0, 7, ApgdLoss::TargetedDlr { targets }, 1);
        p.restarts = restarts;
        let _adversarial = apgd(&counting, &x, &y, None, &p).unwrap();
        // Per run: the start point and 7 steps, one forward pass each.
        assert_eq!(
            counting.forwards.get(),
            1 + expected_runs * 8,
            "{targets} targets"
        );
    }
}

/// AutoAttack's Square shares each iteration's window across samples; drawn from the iteration, the result still
/// does not depend on how the samples are batched.
#[test]
fn square_with_shared_windows_does_not_depend_on_batching() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 24);
    let keys: Vec<u64> = (100..124).collect();
    for norm in [Norm::Linf, Norm::L2] {
        let p = SquareParams {
            norm,
            eps: if norm == Norm::Linf { 0.05 } else { 0.8 },
            queries: 60,
            p_init: 0.8,
            seed: 3,
            sampling: SquareSampling::PerIteration,
            rescale_schedule: false,
        };
        let mut scorer = TchScorer::new(&cnn);
        let whole = square(&mut scorer, &x, &y, Some(&keys), &p).unwrap();
        let mut halves = Vec::new();
        for (start, len) in [(0i64, 12i64), (12, 12)] {
            let part = square(
                &mut scorer,
                &x.narrow(0, start, len),
                &y.narrow(0, start, len),
                Some(&keys[start as usize..(start + len) as usize]),
                &p,
            )
            .unwrap();
            halves.push(part.x_adv);
        }
        assert!(
            whole.x_adv.equal(&Tensor::cat(&halves, 0)),
            "{norm:?}: batching changed Square's result"
        );
    }
}

/// A two-class model under the standard preset: APGD-T and FAB-T get their single target and the targeted margin
/// with a note instead of failing, and the result equals the closed-form robustness of the linear model.
#[test]
fn a_binary_classifier_runs_the_standard_preset_with_notes_and_exact_verdicts() {
    let model = LinearModel::random([1, 8, 8], 2, 31);
    let mut attacked = LinearModel::random([1, 8, 8], 2, 31);
    let x = common::seeded(32, || {
        Tensor::rand([60, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.6 + 0.2
    });
    let logits = tch::no_grad(|| model.forward(&x).unwrap());
    // Labels: the model's prediction, flipped on every fifth sample (some clean errors too).
    let flip = Tensor::arange(60, (Kind::Int64, Device::Cpu))
        .remainder(5)
        .eq(0);
    let pred = logits.argmax(1, false);
    let y = pred.where_self(&flip.logical_not(), &(1i64 - &pred));
    let data = EvalSet::first(x.shallow_clone(), y.shallow_clone()).unwrap();
    let mut cfg = Config::default();
    cfg.eval.preset = EvalPreset::AutoattackStandard;
    cfg.eval.eps_curve = vec![];
    cfg.threat.eps = 0.03;
    let mut plan = EvalPlan::from_config(&cfg).unwrap();
    plan.batch = BatchSize::Fixed(64);
    let mut scorer = TchScorer::new(&model);
    let e = evaluate(&mut attacked, &mut scorer, &data, &plan, &mut |_| {}).unwrap();
    let r = &e.result;
    assert_eq!(r.preset, "autoattack-standard");
    let names: Vec<&str> = r.attacks.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    for name in ["apgd-t", "fab-t"] {
        let note = r.attacks.get(&name.to_owned()).unwrap().note.clone();
        assert!(
            note.as_deref()
                .is_some_and(|n| n.contains("1 target classes instead of 9")),
            "{name}: {note:?}"
        );
    }
    assert!(r
        .attacks
        .get(&"apgd-t".to_owned())
        .unwrap()
        .note
        .as_deref()
        .unwrap()
        .contains("margin"));
    assert!(r.attacks.get(&"apgd-ce".to_owned()).unwrap().note.is_none());

    let truth = linear_linf_robust(&model, &x, &y, 0.03);
    assert_eq!(e.per_sample.worst_case_robust, truth);
    let robust = truth.iter().filter(|b| **b).count();
    assert!(robust > 5 && robust < 45, "{robust} robust: a weak test");

    // Every accuracy has its interval, which contains it; per class the counts add up.
    let ci = r.worst_case_acc_ci95;
    assert!(ci.lower <= r.worst_case_acc && r.worst_case_acc <= ci.upper);
    assert_eq!(
        r.per_class.0.iter().map(|(_, c)| c.samples).sum::<usize>(),
        60
    );
    for (_, a) in &r.attacks.0 {
        assert!(a.robust_acc_ci95.lower <= a.robust_acc && a.robust_acc <= a.robust_acc_ci95.upper);
    }
    // The examples kept are the broken samples, misclassified, within eps.
    let broken = (0..60)
        .filter(|&i| e.per_sample.clean_correct()[i] && !truth[i])
        .count();
    assert_eq!(e.examples.len(), broken);
    for (index, ex) in &e.examples.kept {
        assert_ne!(ex.pred, ex.label, "sample {index}");
        assert!(ex.norm <= 0.03 + 1e-6, "sample {index}: norm {}", ex.norm);
    }
}
