//! The Square attack through a `Scorer` only: the threat-model constraints, no gradients, the query budget, its
//! published p schedule, soundness on a linear model, strength on a CNN, and determinism.

mod common;

use common::{
    accuracy, correct, fashion_mnist, in_box, linear_linf_robust, max_distances, LinearModel,
    TchScorer, TinyCnn,
};
use robustd::attack::square::{p_schedule, square, SquareParams, SquareSampling};
use robustd::config::Norm;
use robustd::model::{Classifier, Scorer};
use tch::{Kind, Tensor};

fn share(v: &[bool]) -> f64 {
    v.iter().filter(|b| **b).count() as f64 / v.len() as f64
}

fn params(norm: Norm, eps: f64, queries: usize) -> SquareParams {
    SquareParams {
        norm,
        eps,
        queries,
        p_init: 0.3,
        seed: 3,
        sampling: SquareSampling::PerSample,
        rescale_schedule: true,
    }
}

#[test]
fn square_stays_in_the_ball_and_box_and_uses_only_forward_passes_within_budget() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 40);
    for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 1.5)] {
        let mut scorer = TchScorer::new(&cnn);
        let budget = 60;
        let out = square(&mut scorer, &x, &y, None, &params(norm, eps, budget)).unwrap();
        let (linf, l2) = max_distances(&out.x_adv, &x);
        let dist = if norm == Norm::Linf { linf } else { l2 };
        assert!(dist <= eps + 1e-5, "{norm:?}: distance {dist} > {eps}");
        assert!(in_box(&out.x_adv), "{norm:?}: left [0,1]");
        assert!(
            !scorer.saw_grad.get(),
            "{norm:?}: a query ran with autograd recording"
        );
        assert!(out.queries.iter().all(|&q| (1..=budget).contains(&q)));
        assert_eq!(
            scorer.rows.get(),
            out.queries.iter().sum::<usize>(),
            "queries miscounted"
        );
        assert!(
            scorer.calls.get() <= budget,
            "{} batched calls for {budget} queries",
            scorer.calls.get()
        );
        for p in cnn.trainable_parameters() {
            assert!(!p.grad().defined(), "Square produced parameter gradients");
        }
        // The returned verdict is the scorer's own on the returned points.
        let verdict = Vec::<bool>::try_from(
            &scorer
                .logits(&out.x_adv)
                .unwrap()
                .argmax(1, false)
                .ne_tensor(&y),
        )
        .unwrap();
        assert_eq!(verdict, out.fooled, "{norm:?}");
    }
}

#[test]
fn square_runs_with_autograd_disabled_and_matches_the_run_with_it_enabled() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 24);
    let p = params(Norm::Linf, 0.1, 40);
    let mut scorer = TchScorer::new(&cnn);
    let with_grad_mode = square(&mut scorer, &x, &y, None, &p).unwrap();
    let without = tch::no_grad(|| square(&mut scorer, &x, &y, None, &p)).unwrap();
    assert!(with_grad_mode.x_adv.equal(&without.x_adv));
}

#[test]
fn p_schedule_halves_at_the_published_iterations() {
    let budget = 10_000;
    let p = |it| p_schedule(0.8, it, budget);
    for (it, halvings) in [
        (0, 0),
        (10, 0),
        (11, 1),
        (50, 1),
        (51, 2),
        (201, 3),
        (501, 4),
        (1001, 5),
        (2001, 6),
        (4001, 7),
        (6001, 8),
        (8001, 9),
        (9999, 9),
    ] {
        assert_eq!(p(it), 0.8 / f64::from(1u32 << halvings), "iteration {it}");
    }
    // Rescaled to a smaller budget: the same fractions of the run.
    assert_eq!(p_schedule(0.8, 50, 1000), p_schedule(0.8, 500, 10_000));
}

#[test]
fn square_is_sound_on_a_linear_model_and_breaks_most_breakable_points() {
    let model = LinearModel::random([1, 12, 12], 10, 31);
    let x = common::seeded(32, || {
        Tensor::rand([200, 1, 12, 12], (Kind::Float, tch::Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    let eps = 0.05;
    let exact = linear_linf_robust(&model, &x, &y, eps);
    let mut scorer = TchScorer::new(&model);
    let out = square(&mut scorer, &x, &y, None, &params(Norm::Linf, eps, 300)).unwrap();
    let robust = correct(&model, &out.x_adv, &y);
    for (i, (r, e)) in robust.iter().zip(&exact).enumerate() {
        assert!(*r || !*e, "Square broke provably robust sample {i}");
    }
    let breakable = exact.iter().filter(|e| !**e).count();
    let broken = robust.iter().filter(|r| !**r).count();
    assert!(
        breakable > 20,
        "test setup: only {breakable} breakable points"
    );
    assert!(
        broken as f64 >= 0.8 * breakable as f64,
        "Square broke {broken} of {breakable}"
    );
}

#[test]
fn square_breaks_a_standard_cnn_in_both_norms() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 100);
    let clean = accuracy(&cnn, &x, &y);
    for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 2.0)] {
        let mut scorer = TchScorer::new(&cnn);
        let out = square(&mut scorer, &x, &y, None, &params(norm, eps, 500)).unwrap();
        let robust = share(&correct(&cnn, &out.x_adv, &y));
        eprintln!("{norm:?}: Square-500 robust {robust}, clean {clean}");
        assert!(
            robust < clean * 0.7,
            "{norm:?}: Square robust {robust} vs clean {clean}"
        );
    }
}

#[test]
fn square_is_deterministic_and_independent_of_batching() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 30);
    for norm in [Norm::Linf, Norm::L2] {
        let eps = if norm == Norm::Linf { 0.1 } else { 1.5 };
        let p = params(norm, eps, 30);
        let keys: Vec<u64> = (500..530).collect();
        let mut scorer = TchScorer::new(&cnn);
        let a = square(&mut scorer, &x, &y, Some(&keys), &p).unwrap();
        let b = square(&mut scorer, &x, &y, Some(&keys), &p).unwrap();
        assert!(
            a.x_adv.equal(&b.x_adv),
            "{norm:?}: same seed, different result"
        );
        assert_eq!(a.queries, b.queries);
        let head = square(
            &mut scorer,
            &x.narrow(0, 0, 12),
            &y.narrow(0, 0, 12),
            Some(&keys[..12]),
            &p,
        )
        .unwrap();
        let tail = square(
            &mut scorer,
            &x.narrow(0, 12, 18),
            &y.narrow(0, 12, 18),
            Some(&keys[12..]),
            &p,
        )
        .unwrap();
        let joined = Tensor::cat(&[head.x_adv, tail.x_adv], 0);
        let diff = (&joined - &a.x_adv).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "{norm:?}: batching changed the result by {diff}"
        );
        let other = square(
            &mut scorer,
            &x,
            &y,
            Some(&keys),
            &SquareParams { seed: 4, ..p },
        )
        .unwrap();
        assert!(!other.x_adv.equal(&a.x_adv), "{norm:?}: seed ignored");
    }
}
