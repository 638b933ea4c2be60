//! FAB and FAB-T on real tch models: the hyperplane projections against their closed form, the batched per-class
//! gradients against one backward pass per class, FAB's perturbation on linear models against the closed-form
//! minimal one, and the threat-model constraints on a trained CNN.

mod common;

use common::{fashion_mnist, in_box, max_distances, LinearModel, TinyCnn};
use robustd::attack::fab::{fab, FabParams};
use robustd::attack::hyperplane::{project_l2, project_linf};
use robustd::attack::losses;
use robustd::attack::pgd::{logit_jacobian, loss_and_input_grad};
use robustd::config::Norm;
use robustd::model::Classifier;
use tch::{Device, Kind, Tensor};

fn rows_f64(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

/// Points well inside the box and hyperplanes close to them: the box never binds, so the minimal move is the
/// textbook one (L2: along w, length |w·t − b| / ‖w‖₂; L∞: along sign(w), length |w·t − b| / ‖w‖₁).
#[test]
fn projections_match_the_closed_form_when_the_box_does_not_bind() {
    let (t, w) = common::seeded(5, || {
        (
            Tensor::rand([64, 50], (Kind::Float, Device::Cpu)) * 0.4 + 0.3,
            Tensor::randn([64, 50], (Kind::Float, Device::Cpu)),
        )
    });
    let offset = common::seeded(6, || Tensor::randn([64], (Kind::Float, Device::Cpu))) * 0.05;
    let b = (&w * &t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) + &offset;
    let gap = (&w * &t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - &b;

    let d2 = project_l2(&t, &w, &b).unwrap();
    let expected2 = -(&gap
        / w.square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float))
    .unsqueeze(1)
        * &w;
    let dinf = project_linf(&t, &w, &b).unwrap();
    let l1 = w
        .abs()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let expected_inf = -(&gap / &l1).unsqueeze(1) * w.sign();
    for (name, d, expected) in [("L2", &d2, &expected2), ("Linf", &dinf, &expected_inf)] {
        let diff = (d - expected).abs().max().double_value(&[]);
        assert!(
            diff < 1e-4,
            "{name}: max deviation from the closed form {diff}"
        );
        let on_plane = ((&w * (&t + d)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            - &b)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            on_plane < 1e-3,
            "{name}: ends {on_plane} off the hyperplane"
        );
    }
}

/// Near the box's faces the projection must stay inside it and still reach the hyperplane, with a move no longer
/// than any other feasible one (checked against the unconstrained move, which is a lower bound).
#[test]
fn projections_stay_in_the_box_and_reach_the_plane_when_it_binds() {
    let (t, w) = common::seeded(8, || {
        (
            Tensor::rand([128, 30], (Kind::Float, Device::Cpu)),
            Tensor::randn([128, 30], (Kind::Float, Device::Cpu)),
        )
    });
    let target = common::seeded(9, || Tensor::rand([128, 30], (Kind::Float, Device::Cpu)));
    // Each plane passes through a random point of the box, so it is reachable inside the box.
    let b = (&w * &target).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    for (name, project, dual) in [
        ("L2", project_l2 as fn(&Tensor, &Tensor, &Tensor) -> _, 2.0),
        ("Linf", project_linf, 1.0),
    ] {
        let d = project(&t, &w, &b).unwrap();
        let moved = &t + &d;
        assert!(
            moved.min().double_value(&[]) >= -1e-5 && moved.max().double_value(&[]) <= 1.0 + 1e-5,
            "{name}: left the box"
        );
        let off = ((&w * &moved).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - &b)
            .abs()
            .max()
            .double_value(&[]);
        assert!(off < 1e-3, "{name}: ends {off} off the hyperplane");
        // No feasible move is shorter than the unconstrained one; the box can only make it longer.
        let gap = ((&w * &t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - &b).abs();
        let free = &gap / w.norm_scalaropt_dim(dual, [1i64].as_slice(), false);
        let length = if dual == 2.0 {
            d.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
        } else {
            d.abs().amax([1i64].as_slice(), false)
        };
        let shorter = (length - free + 1e-4)
            .lt(0.0)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert_eq!(
            shorter, 0,
            "{name}: a move shorter than the unconstrained minimum"
        );
    }
}

#[test]
fn batched_per_class_gradients_equal_one_backward_pass_per_class() {
    let cnn = TinyCnn::new(3);
    let (x, _) = fashion_mnist("t10k", 6);
    let (logits, one_pass) = logit_jacobian(&cnn, &x, 10_000).unwrap();
    let (_, grouped) = logit_jacobian(&cnn, &x, 6 * 3).unwrap();
    let plain = tch::no_grad(|| cnn.forward(&x).unwrap());
    assert!((&logits - &plain).abs().max().double_value(&[]) < 1e-5);
    assert_eq!(one_pass.size(), [6, 10, 1, 28, 28]);
    for k in 0..10 {
        let target = Tensor::full([6], k, (Kind::Int64, Device::Cpu));
        let at = loss_and_input_grad(&cnn, &x, &target, &|logits: &Tensor, y: &Tensor| {
            losses::logit_of(logits, y)
        })
        .unwrap();
        for (name, jac) in [("one pass", &one_pass), ("three classes a pass", &grouped)] {
            let diff = (jac.select(1, k) - &at.grad).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: class {k} differs by {diff}");
        }
    }
}

/// Minimal perturbation of a linear model, closed form (box not binding): `min_k |m_k| / ‖w_y − w_k‖_*`, the margin
/// to class k over the dual norm of the weight difference.
fn linear_minimal(model: &LinearModel, x: &Tensor, y: &Tensor, norm: Norm) -> Vec<f64> {
    let logits = tch::no_grad(|| model.forward(x).unwrap());
    let w = model.w.detach();
    let z = rows_f64(&logits);
    let ys = Vec::<i64>::try_from(y).unwrap();
    let weights = rows_f64(&w);
    ys.iter()
        .enumerate()
        .map(|(i, &yi)| {
            (0..weights.len())
                .filter(|&k| k != yi as usize)
                .map(|k| {
                    let diff = weights[yi as usize]
                        .iter()
                        .zip(&weights[k])
                        .map(|(a, b)| a - b);
                    let dual = match norm {
                        Norm::Linf => diff.map(f64::abs).sum::<f64>(),
                        Norm::L2 => diff.map(|v| v * v).sum::<f64>().sqrt(),
                    };
                    (z[i][yi as usize] - z[i][k]) / dual
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

#[test]
fn fab_finds_the_closed_form_minimal_perturbation_of_linear_models() {
    for (classes, targets) in [(2usize, None), (2, Some(9)), (10, None)] {
        let model = LinearModel::random([1, 8, 8], classes as i64, 40 + classes as i64);
        let x = common::seeded(41, || {
            Tensor::rand([60, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.2 + 0.4
        });
        let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
        for norm in [Norm::Linf, Norm::L2] {
            let minimal = linear_minimal(&model, &x, &y, norm);
            // Samples whose minimal perturbation keeps inside the box have the closed form: the inputs lie in
            // [0.4, 0.6], so an L∞ move below 0.3 cannot reach a face, nor an L2 move below 1 (each coordinate
            // moves by r·|Δw_i|/‖Δw‖₂, well under r).
            let limit = if norm == Norm::Linf { 0.3 } else { 1.0 };
            let usable: Vec<usize> = (0..minimal.len()).filter(|&i| minimal[i] < limit).collect();
            assert!(usable.len() > 20, "too few samples near the boundary");
            let p = FabParams::new(norm, 1.0, 100, targets, 3);
            let out = fab(&model, &x, &y, None, &p).unwrap();
            let found = Vec::<f64>::try_from(&out.distance.to_kind(Kind::Double)).unwrap();
            for &i in &usable {
                let ratio = found[i] / minimal[i];
                assert!(
                    (0.999..1.02).contains(&ratio),
                    "{classes} classes {targets:?} {norm:?}, sample {i}: found {} vs minimal {} (x{ratio:.4})",
                    found[i],
                    minimal[i]
                );
            }
        }
    }
}

#[test]
fn fab_breaks_exactly_the_samples_whose_minimal_perturbation_is_within_eps() {
    let model = LinearModel::random([1, 8, 8], 2, 50);
    let x = common::seeded(51, || {
        Tensor::rand([80, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.2 + 0.4
    });
    let y = tch::no_grad(|| model.forward(&x).unwrap()).argmax(1, false);
    let minimal = linear_minimal(&model, &x, &y, Norm::L2);
    let mut sorted = minimal.clone();
    sorted.sort_by(f64::total_cmp);
    let eps = sorted[sorted.len() / 2];
    let p = FabParams::new(Norm::L2, eps, 100, Some(9), 3);
    let adv = fab(&model, &x, &y, None, &p).unwrap().x_adv;
    let fooled = Vec::<bool>::try_from(
        &tch::no_grad(|| model.forward(&adv).unwrap())
            .argmax(1, false)
            .ne_tensor(&y),
    )
    .unwrap();
    for (i, (&r, &f)) in minimal.iter().zip(&fooled).enumerate() {
        // FAB lands within 2 % of the minimum: only samples that close to eps may go either way.
        if (r - eps).abs() > 0.02 * eps {
            assert_eq!(f, r < eps, "sample {i}: minimal {r}, eps {eps}, fooled {f}");
        }
    }
    let (_, l2) = max_distances(&adv, &x);
    assert!(l2 <= eps + 1e-5, "an example beyond eps: {l2} > {eps}");
}

#[test]
fn fab_on_a_trained_cnn_stays_in_the_ball_and_the_box_and_breaks_samples() {
    let cnn = TinyCnn::trained();
    let (x, y) = fashion_mnist("t10k", 12);
    for (norm, eps, targets) in [(Norm::Linf, 0.1, Some(2)), (Norm::L2, 1.5, None)] {
        let mut p = FabParams::new(norm, eps, 8, targets, 1);
        p.max_rows = 48;
        p.restarts = 2;
        let out = fab(&cnn, &x, &y, None, &p).unwrap();
        let (linf, l2) = max_distances(&out.x_adv, &x);
        let dist = if norm == Norm::Linf { linf } else { l2 };
        assert!(dist <= eps + 1e-5, "{norm:?}: distance {dist} > {eps}");
        assert!(in_box(&out.x_adv), "{norm:?}: left [0,1]");
        let clean = common::accuracy(&cnn, &x, &y);
        let robust = common::accuracy(&cnn, &out.x_adv, &y);
        assert!(
            robust < clean - 0.2,
            "{norm:?}: clean {clean}, after FAB {robust}"
        );
        // Unbroken samples keep their clean input.
        let same = Vec::<bool>::try_from(
            &(&out.x_adv - &x)
                .abs()
                .flatten(1, -1)
                .amax([1i64].as_slice(), false)
                .eq(0.0),
        )
        .unwrap();
        let found = Vec::<f64>::try_from(&out.distance.to_kind(Kind::Double)).unwrap();
        for (i, (&s, &d)) in same.iter().zip(&found).enumerate() {
            assert_eq!(
                s,
                d > eps,
                "{norm:?} sample {i}: distance {d}, unchanged {s}"
            );
        }
    }
}
