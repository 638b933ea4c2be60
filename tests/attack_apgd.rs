//! APGD-CE, APGD-DLR and APGD-T on real tch models: the published checkpoint schedule, the threat-model
//! constraints, the closed-form worst case of linear models, determinism, and strength against PGD.

mod common;

use common::{
    accuracy, correct, fashion_mnist, in_box, linear_linf_robust, max_distances, LinearModel,
    TinyCnn,
};
use robustd::attack::apgd::{apgd, checkpoints, ApgdLoss, ApgdParams};
use robustd::attack::losses;
use robustd::attack::pgd::{pgd, Keep, PgdParams};
use robustd::config::Norm;
use robustd::model::Classifier;
use tch::{Kind, Tensor};

fn share(v: &[bool]) -> f64 {
    v.iter().filter(|b| **b).count() as f64 / v.len() as f64
}

/// The reference implementation truncates 0.22 N, 0.03 N and 0.06 N to whole iterations; where those are exact the
/// schedule must equal the paper's recursion.
#[test]
fn checkpoints_follow_the_published_recursion() {
    for steps in [100usize, 200, 300] {
        // p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
        let mut expected = Vec::new();
        let (mut prev, mut cur) = (0.0f64, 0.22f64);
        while (cur * steps as f64).round() as usize <= steps {
            expected.push((cur * steps as f64).round() as usize);
            let next = cur + (cur - prev - 0.03).max(0.06);
            prev = cur;
            cur = next;
        }
        assert_eq!(checkpoints(steps), expected, "{steps} steps");
    }
}

#[test]
fn apgd_never_leaves_the_ball_or_the_pixel_box() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 24);
    for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 1.5)] {
        for loss in [
            ApgdLoss::Ce,
            ApgdLoss::Dlr,
            ApgdLoss::TargetedDlr { targets: 3 },
        ] {
            let p = ApgdParams::new(norm, eps, 8, loss, 1);
            let adv = apgd(&cnn, &x, &y, None, &p).unwrap();
            let (linf, l2) = max_distances(&adv, &x);
            let dist = if norm == Norm::Linf { linf } else { l2 };
            assert!(
                dist <= eps + 1e-5,
                "{norm:?} {loss:?}: distance {dist} > {eps}"
            );
            assert!(in_box(&adv), "{norm:?} {loss:?}: left [0,1]");
        }
    }
}

#[test]
fn apgd_ce_on_a_two_class_linear_model_matches_the_closed_form() {
    let model = LinearModel::random([1, 8, 8], 2, 21);
    let x = common::seeded(22, || {
        Tensor::rand([300, 1, 8, 8], (Kind::Float, tch::Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    for eps in [0.03, 0.08] {
        let exact = linear_linf_robust(&model, &x, &y, eps);
        let adv = apgd(
            &model,
            &x,
            &y,
            None,
            &ApgdParams::new(Norm::Linf, eps, 20, ApgdLoss::Ce, 0),
        )
        .unwrap();
        assert_eq!(correct(&model, &adv, &y), exact, "eps {eps}");
    }
}

#[test]
fn apgd_dlr_and_targeted_are_sound_and_tight_on_a_multiclass_linear_model() {
    let model = LinearModel::random([1, 8, 8], 10, 23);
    let x = common::seeded(24, || {
        Tensor::rand([300, 1, 8, 8], (Kind::Float, tch::Device::Cpu))
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    let eps = 0.05;
    let exact = linear_linf_robust(&model, &x, &y, eps);
    for loss in [ApgdLoss::Dlr, ApgdLoss::TargetedDlr { targets: 9 }] {
        let adv = apgd(
            &model,
            &x,
            &y,
            None,
            &ApgdParams::new(Norm::Linf, eps, 50, loss, 0),
        )
        .unwrap();
        let robust = correct(&model, &adv, &y);
        for (i, (r, e)) in robust.iter().zip(&exact).enumerate() {
            assert!(*r || !*e, "{loss:?} broke provably robust sample {i}");
        }
        let gap = share(&robust) - share(&exact);
        assert!(
            gap < 0.03,
            "{loss:?}: robust {} vs exact {}",
            share(&robust),
            share(&exact)
        );
    }
}

#[test]
fn apgd_is_deterministic_and_at_least_as_strong_as_pgd_on_a_cnn() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 100);
    let eps = 0.05;
    let p = ApgdParams::new(Norm::Linf, eps, 25, ApgdLoss::Ce, 5);
    let a = apgd(&cnn, &x, &y, None, &p).unwrap();
    let b = apgd(&cnn, &x, &y, None, &p).unwrap();
    assert!(a.equal(&b), "same seed, different APGD examples");

    let pgd_params = PgdParams {
        norm: Norm::Linf,
        eps,
        step_size: eps / 4.0,
        steps: 10,
        random_start: true,
        restarts: 1,
        seed: 5,
        keep: Keep::Adversarial,
    };
    let pgd_adv = pgd(&cnn, &x, &y, &pgd_params, &losses::cross_entropy).unwrap();
    let clean = accuracy(&cnn, &x, &y);
    let apgd_acc = share(&correct(&cnn, &a, &y));
    let pgd_acc = share(&correct(&cnn, &pgd_adv, &y));
    assert!(
        apgd_acc < clean,
        "APGD-CE did nothing: {apgd_acc} vs clean {clean}"
    );
    assert!(
        apgd_acc <= pgd_acc + 0.02,
        "APGD-CE {apgd_acc} weaker than PGD-10 {pgd_acc}"
    );
}
