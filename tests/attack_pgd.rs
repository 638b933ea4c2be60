//! The projected-gradient core and the attack losses on real tch models: a linear classifier with closed-form L∞
//! robustness and a small CNN trained on Fashion-MNIST.

mod common;

use common::{
    accuracy, correct, fashion_mnist, in_box, linear_linf_robust, max_distances, LinearModel,
    TinyCnn,
};
use robustd::attack::losses;
use robustd::attack::pgd::{pgd, pgd_rows, pgd_rows_from, GivenStarts, Keep, PgdParams};
use robustd::config::Norm;
use robustd::model::Classifier;
use tch::{Kind, Reduction, Tensor};

fn params(norm: Norm, eps: f64, steps: usize, keep: Keep) -> PgdParams {
    PgdParams {
        norm,
        eps,
        step_size: eps / 4.0,
        steps,
        random_start: true,
        restarts: 2,
        seed: 7,
        keep,
    }
}

fn share(v: &[bool]) -> f64 {
    v.iter().filter(|b| **b).count() as f64 / v.len() as f64
}

#[test]
fn pgd_never_leaves_the_ball_or_the_pixel_box() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 64);
    for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 1.5)] {
        for keep in [
            Keep::Final,
            Keep::MaxLoss,
            Keep::Adversarial,
            Keep::FirstAdversarial,
        ] {
            let adv = pgd(
                &cnn,
                &x,
                &y,
                &params(norm, eps, 5, keep),
                &losses::cross_entropy,
            )
            .unwrap();
            let (linf, l2) = max_distances(&adv, &x);
            let dist = if norm == Norm::Linf { linf } else { l2 };
            assert!(
                dist <= eps + 1e-5,
                "{norm:?} {keep:?}: distance {dist} > eps {eps}"
            );
            assert!(in_box(&adv), "{norm:?} {keep:?}: left [0,1]");
            assert_eq!(adv.size(), x.size());
        }
    }
}

#[test]
fn pgd_with_zero_steps_and_no_random_start_returns_the_clean_input() {
    let cnn = TinyCnn::new(1);
    let (x, y) = fashion_mnist("t10k", 16);
    for keep in [Keep::Final, Keep::Adversarial, Keep::FirstAdversarial] {
        let p = PgdParams {
            steps: 0,
            random_start: false,
            restarts: 1,
            ..params(Norm::Linf, 0.1, 0, keep)
        };
        let adv = pgd(&cnn, &x, &y, &p, &losses::cross_entropy).unwrap();
        assert!(adv.equal(&x), "{keep:?}: 0-step PGD moved the input");
    }
}

#[test]
fn given_starts_replace_the_random_start_of_their_rows_projected_onto_the_ball() {
    let cnn = TinyCnn::new(1);
    let (x, y) = fashion_mnist("t10k", 8);
    let keys: Vec<u64> = (0..8).collect();
    for norm in [Norm::Linf, Norm::L2] {
        let eps = if norm == Norm::Linf { 0.1 } else { 1.0 };
        // 0 steps: the result is the start itself (the best of the one iterate offered).
        let p = PgdParams {
            steps: 0,
            restarts: 1,
            ..params(norm, eps, 0, Keep::Adversarial)
        };
        // Rows 0-3 get a start 3 eps away in the L∞ sense (outside the ball), rows 4-7 none.
        let far = x.shallow_clone() + 3.0 * eps;
        let given = [true, true, true, true, false, false, false, false];
        let starts = GivenStarts {
            x: &far,
            given: &given,
        };
        let warm = pgd_rows_from(
            &cnn,
            &x,
            &y,
            Some(&keys),
            Some(starts),
            &p,
            &losses::cross_entropy,
        )
        .unwrap();
        let cold = pgd_rows(&cnn, &x, &y, Some(&keys), &p, &losses::cross_entropy).unwrap();
        let projected = robustd::attack::pgd::project(&far, &x, norm, eps).unwrap();
        for i in 0..8 {
            let row = warm.get(i);
            if given[i as usize] {
                assert!(
                    row.equal(&projected.get(i)),
                    "{norm:?} row {i}: not its projected start"
                );
                assert!(
                    !row.equal(&cold.get(i)),
                    "{norm:?} row {i}: the random start"
                );
            } else {
                assert!(
                    row.equal(&cold.get(i)),
                    "{norm:?} row {i}: not its keyed random start"
                );
            }
        }
        let (linf, l2) = max_distances(&warm, &x);
        let dist = if norm == Norm::Linf { linf } else { l2 };
        assert!(dist <= eps + 1e-5, "{norm:?}: distance {dist} > eps {eps}");
        assert!(in_box(&warm), "{norm:?}: left [0,1]");
    }
}

#[test]
fn a_row_started_at_an_adversarial_point_leaves_first_adversarial_pgd_with_it() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 64);
    let eps = 0.1;
    let p = params(Norm::Linf, eps, 10, Keep::Adversarial);
    let adv = pgd(&cnn, &x, &y, &p, &losses::cross_entropy).unwrap();
    let fooled = Vec::<bool>::try_from(
        &tch::no_grad(|| cnn.forward(&adv).unwrap())
            .argmax(1, false)
            .ne_tensor(&y),
    )
    .unwrap();
    assert!(
        fooled.iter().filter(|f| **f).count() > 5,
        "too few broken to tell"
    );
    let first = PgdParams {
        restarts: 1,
        ..params(Norm::Linf, eps, 10, Keep::FirstAdversarial)
    };
    let keys: Vec<u64> = (0..64).collect();
    let starts = GivenStarts {
        x: &adv,
        given: &fooled,
    };
    let again = pgd_rows_from(
        &cnn,
        &x,
        &y,
        Some(&keys),
        Some(starts),
        &first,
        &losses::cross_entropy,
    )
    .unwrap();
    for (i, f) in fooled.iter().enumerate() {
        if *f {
            assert!(
                again.get(i as i64).equal(&adv.get(i as i64)),
                "row {i} started adversarial but moved"
            );
        }
    }
    // Flags that do not match the batch are refused.
    let starts = GivenStarts {
        x: &adv,
        given: &fooled[..10],
    };
    let err = pgd_rows_from(
        &cnn,
        &x,
        &y,
        Some(&keys),
        Some(starts),
        &first,
        &losses::cross_entropy,
    )
    .unwrap_err();
    assert!(err.to_string().contains("starts"), "{err}");
}

#[test]
fn linear_two_class_pgd_and_fgsm_match_the_closed_form_linf_robustness() {
    let model = LinearModel::random([1, 8, 8], 2, 3);
    let x = common::seeded(11, || {
        Tensor::rand([400, 1, 8, 8], (Kind::Float, tch::Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    for eps in [0.02, 0.05, 0.1] {
        let exact = linear_linf_robust(&model, &x, &y, eps);
        let exact_acc = share(&exact);
        assert!(
            exact_acc > 0.05 && exact_acc < 0.95,
            "eps {eps}: closed form {exact_acc} does not discriminate"
        );
        let pgd_adv = pgd(
            &model,
            &x,
            &y,
            &params(Norm::Linf, eps, 10, Keep::Adversarial),
            &losses::cross_entropy,
        )
        .unwrap();
        let fgsm_adv = pgd(
            &model,
            &x,
            &y,
            &PgdParams::fgsm(Norm::Linf, eps),
            &losses::cw_margin,
        )
        .unwrap();
        for (name, adv) in [("pgd", &pgd_adv), ("fgsm", &fgsm_adv)] {
            let robust = correct(&model, adv, &y);
            assert_eq!(
                robust, exact,
                "{name} at eps {eps} disagrees with the closed form"
            );
        }
    }
}

#[test]
fn multiclass_linear_pgd_never_beats_the_exact_worst_case() {
    let model = LinearModel::random([1, 8, 8], 10, 5);
    let x = common::seeded(12, || {
        Tensor::rand([300, 1, 8, 8], (Kind::Float, tch::Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    let eps = 0.05;
    let exact = linear_linf_robust(&model, &x, &y, eps);
    let adv = pgd(
        &model,
        &x,
        &y,
        &params(Norm::Linf, eps, 20, Keep::Adversarial),
        &losses::cw_margin,
    )
    .unwrap();
    let robust = correct(&model, &adv, &y);
    for (i, (r, e)) in robust.iter().zip(&exact).enumerate() {
        assert!(*r || !*e, "sample {i}: PGD broke a provably robust point");
    }
    // CW-margin PGD on a linear model finds nearly every breakable point.
    assert!(
        share(&robust) - share(&exact) < 0.02,
        "{} vs {}",
        share(&robust),
        share(&exact)
    );
}

#[test]
fn same_seed_gives_identical_examples_and_rows_do_not_depend_on_batching() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 40);
    let p = params(Norm::Linf, 0.1, 5, Keep::Adversarial);
    let keys: Vec<u64> = (100..140).collect();
    let a = pgd_rows(&cnn, &x, &y, Some(&keys), &p, &losses::cross_entropy).unwrap();
    let b = pgd_rows(&cnn, &x, &y, Some(&keys), &p, &losses::cross_entropy).unwrap();
    assert!(a.equal(&b), "same seed, different examples");

    let first = pgd_rows(
        &cnn,
        &x.narrow(0, 0, 15),
        &y.narrow(0, 0, 15),
        Some(&keys[..15]),
        &p,
        &losses::cross_entropy,
    )
    .unwrap();
    let rest = pgd_rows(
        &cnn,
        &x.narrow(0, 15, 25),
        &y.narrow(0, 15, 25),
        Some(&keys[15..]),
        &p,
        &losses::cross_entropy,
    )
    .unwrap();
    let split = Tensor::cat(&[first, rest], 0);
    let diff = (&split - &a).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "batch split changed the examples by {diff}");

    let other_seed = PgdParams { seed: 8, ..p };
    let c = pgd_rows(
        &cnn,
        &x,
        &y,
        Some(&keys),
        &other_seed,
        &losses::cross_entropy,
    )
    .unwrap();
    assert!(!a.equal(&c), "a different seed gave the same random starts");
}

#[test]
fn attacks_leave_parameter_gradients_untouched() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 32);
    for p in cnn.trainable_parameters() {
        assert!(!p.grad().defined() || p.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0);
    }
    let clean_logits = tch::no_grad(|| cnn.forward(&x).unwrap());
    let kl = losses::kl_from_clean(&clean_logits).unwrap();
    for loss in [&losses::cross_entropy as &losses::LossFn, &losses::dlr, &kl] {
        let adv = pgd(&cnn, &x, &y, &params(Norm::L2, 1.0, 3, Keep::MaxLoss), loss).unwrap();
        assert!(
            !adv.requires_grad(),
            "the returned examples still carry a graph"
        );
    }
    for p in cnn.trainable_parameters() {
        let g = p.grad();
        assert!(
            !g.defined() || g.abs().sum(Kind::Float).double_value(&[]) == 0.0,
            "an attack accumulated parameter gradients"
        );
    }
}

#[test]
fn pgd_breaks_a_standard_cnn_and_keeping_adversarial_iterates_only_helps() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 200);
    let clean = accuracy(&cnn, &x, &y);
    assert!(clean > 0.65, "the test CNN learned too little: {clean}");
    let eps = 0.1;
    let final_adv = pgd(
        &cnn,
        &x,
        &y,
        &params(Norm::Linf, eps, 10, Keep::Final),
        &losses::cross_entropy,
    )
    .unwrap();
    let best_adv = pgd(
        &cnn,
        &x,
        &y,
        &params(Norm::Linf, eps, 10, Keep::Adversarial),
        &losses::cross_entropy,
    )
    .unwrap();
    let final_ok = correct(&cnn, &final_adv, &y);
    let best_ok = correct(&cnn, &best_adv, &y);
    for (i, (b, f)) in best_ok.iter().zip(&final_ok).enumerate() {
        assert!(
            !*b || *f,
            "sample {i}: Keep::Adversarial lost a success the final iterate had"
        );
    }
    assert!(
        share(&best_ok) < clean / 2.0,
        "PGD-10 at eps 0.1: {} of clean {clean}",
        share(&best_ok)
    );
}

#[test]
fn losses_agree_with_independent_formulas() {
    let (logits, y, other) = common::seeded(3, || {
        (
            Tensor::randn([50, 10], (Kind::Float, tch::Device::Cpu)) * 3.0,
            Tensor::randint(10, [50], (Kind::Int64, tch::Device::Cpu)),
            Tensor::randn([50, 10], (Kind::Float, tch::Device::Cpu)),
        )
    });

    let ce = losses::cross_entropy(&logits, &y).unwrap();
    let reference = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::None, -100, 0.0);
    assert!(ce.allclose(&reference, 1e-5, 1e-6, false));

    let rows = Vec::<Vec<f32>>::try_from(&logits).unwrap();
    let labels = Vec::<i64>::try_from(&y).unwrap();
    let cw = Vec::<f32>::try_from(&losses::cw_margin(&logits, &y).unwrap()).unwrap();
    let dlr = Vec::<f32>::try_from(&losses::dlr(&logits, &y).unwrap()).unwrap();
    for (i, (row, &label)) in rows.iter().zip(&labels).enumerate() {
        let zy = row[label as usize];
        let other = row
            .iter()
            .enumerate()
            .filter(|(k, _)| *k as i64 != label)
            .map(|(_, v)| *v)
            .fold(f32::NEG_INFINITY, f32::max);
        assert!((cw[i] - (other - zy)).abs() < 1e-5, "cw row {i}");
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let expected = -(zy - other) / (sorted[0] - sorted[2] + 1e-12);
        assert!(
            (dlr[i] - expected).abs() < 1e-4,
            "dlr row {i}: {} vs {expected}",
            dlr[i]
        );
    }

    // DLR is invariant to shifting and positive scaling of the logits; CE is not.
    let moved = &logits * 7.0 + 3.0;
    assert!(losses::dlr(&moved, &y).unwrap().allclose(
        &losses::dlr(&logits, &y).unwrap(),
        1e-4,
        1e-5,
        false
    ));

    // Targeted DLR towards the true class' best rival equals the untargeted numerator over its own denominator.
    let target = logits
        .masked_fill(&y.one_hot(10).to_kind(Kind::Bool), f64::NEG_INFINITY)
        .argmax(1, false);
    let tdlr = losses::targeted_dlr(target)(&logits, &y).unwrap();
    let (sorted, _) = logits.sort(1, true);
    let denom = sorted.select(1, 0) - (sorted.select(1, 2) + sorted.select(1, 3)) * 0.5 + 1e-12;
    let expected =
        -(losses::logit_of(&logits, &y).unwrap() - losses::max_other(&logits, &y).unwrap()) / denom;
    assert!(tdlr.allclose(&expected, 1e-4, 1e-5, false));

    // TRADES' KL is zero at the clean logits, positive elsewhere, and matches libtorch's kl_div.
    let kl = losses::kl_from_clean(&logits).unwrap();
    assert!(kl(&logits, &y).unwrap().abs().max().double_value(&[]) < 1e-5);
    let ours = kl(&other, &y).unwrap();
    let reference = other
        .log_softmax(1, Kind::Float)
        .kl_div(&logits.log_softmax(1, Kind::Float), Reduction::None, true)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    assert!(ours.allclose(&reference, 1e-4, 1e-5, false));
    assert!(ours.min().double_value(&[]) > 0.0);
}

#[test]
fn losses_refuse_too_few_classes() {
    let logits = common::seeded(4, || Tensor::randn([4, 2], (Kind::Float, tch::Device::Cpu)));
    let y = Tensor::zeros([4], (Kind::Int64, tch::Device::Cpu));
    assert!(losses::dlr(&logits, &y).is_err());
    let t = Tensor::ones([4], (Kind::Int64, tch::Device::Cpu));
    assert!(losses::targeted_dlr(t)(&logits, &y).is_err());
}

#[test]
fn stopping_each_sample_at_its_first_success_keeps_every_verdict() {
    // A row's iterates do not depend on the other rows, so a row that leaves the batch once fooled breaks exactly
    // where the full run finds it broken: same verdicts, fewer passes. Two restarts: the second runs only on rows
    // the first did not break.
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 160);
    let keys: Vec<u64> = (0..160).map(|i| 1000 + 3 * i).collect();
    for (norm, eps) in [(Norm::Linf, 0.03), (Norm::Linf, 0.08), (Norm::L2, 0.8)] {
        let run = |keep| {
            let adv = pgd_rows(
                &cnn,
                &x,
                &y,
                Some(&keys),
                &params(norm, eps, 6, keep),
                &losses::cross_entropy,
            )
            .unwrap();
            correct(&cnn, &adv, &y)
        };
        let full = run(Keep::Adversarial);
        let first = run(Keep::FirstAdversarial);
        let broken = full.iter().filter(|c| !**c).count();
        assert!(
            broken > 10 && broken < 150,
            "{norm:?} {eps}: {broken} broken does not test much"
        );
        assert_eq!(first, full, "{norm:?} {eps}: verdicts differ");
    }
}
