//! The evaluation protocol end to end on real tch models: ensemble and standalone semantics, the linear model's
//! closed form, the scorer re-check, reproducibility (same seed, any batch size), the YAML block, the npz file
//! (read back by numpy), progress reports and the automatic batch size.

mod common;

use std::process::Command;

use common::{fashion_mnist, linear_linf_robust, LinearModel, TchScorer, TinyCnn};
use robustd::config::Config;
use robustd::eval::batch::{resolve, MAX_BATCH};
use robustd::eval::per_sample::{BROKEN, HELD, NOT_ATTACKED};
use robustd::eval::result::IndexRanges;
use robustd::eval::{
    evaluate, BatchSize, CurveProtocol, CurveStart, EvalPlan, EvalResult, EvalSet, Evaluation,
    Mode, PerSample, Progress, Stage,
};
use robustd::model::Classifier;
use tch::{Kind, Tensor};

fn small_plan(attacks: &[&str]) -> EvalPlan {
    plan_at(attacks, Config::default().threat.eps)
}

fn plan_at(attacks: &[&str], eps: f64) -> EvalPlan {
    let mut cfg = Config::default();
    cfg.threat.eps = eps;
    cfg.eval.attacks = attacks.iter().map(|s| s.to_string()).collect();
    cfg.eval.pgd.steps = 8;
    cfg.eval.pgd.step_size_factor = 0.3;
    cfg.eval.apgd_steps = 15;
    cfg.eval.square_queries = 150;
    cfg.eval.eps_curve = vec![0.0, 0.05, 0.1];
    let mut plan = EvalPlan::from_config(&cfg).unwrap();
    plan.batch = BatchSize::Fixed(32);
    plan
}

fn eval_cnn(cnn: &mut TinyCnn, copy: &TinyCnn, plan: &EvalPlan, n: usize) -> Evaluation {
    let (x, y) = fashion_mnist("t10k", n);
    let data = EvalSet::first(x, y).unwrap();
    let mut scorer = TchScorer::new(copy);
    evaluate(cnn, &mut scorer, &data, plan, &mut |_| {}).unwrap()
}

fn without_timing(mut r: EvalResult) -> EvalResult {
    r.seconds = 0.0;
    if let Some(c) = &mut r.curve {
        c.seconds = 0.0;
    }
    for (_, a) in &mut r.attacks.0 {
        a.seconds = 0.0;
    }
    r
}

#[test]
fn plan_from_the_default_config_runs_the_configured_attacks_in_order() {
    let cfg = Config::default();
    let plan = EvalPlan::from_config(&cfg).unwrap();
    let names: Vec<&str> = plan.attacks.iter().map(|a| a.name()).collect();
    assert_eq!(
        names,
        cfg.eval
            .attacks
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        plan.batch,
        BatchSize::Auto {
            memory_mb: cfg.limits.job_memory_mb
        }
    );
    assert_eq!(plan.mode, Mode::Ensemble);
    let mut bad = cfg.clone();
    bad.eval.attacks.push("deepfool".into());
    assert!(EvalPlan::from_config(&bad).is_err());
}

#[test]
fn ensemble_runs_each_attack_only_on_still_robust_samples() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut plan = small_plan(&["fgsm", "pgd", "apgd-dlr", "square"]);
    plan.eps = 0.05;
    plan.attacks = {
        let mut cfg = Config::default();
        cfg.eval.attacks = ["fgsm", "pgd", "apgd-dlr", "square"]
            .map(String::from)
            .to_vec();
        cfg.eval.pgd.steps = 8;
        cfg.eval.apgd_steps = 15;
        cfg.eval.square_queries = 150;
        cfg.threat.eps = 0.05;
        EvalPlan::from_config(&cfg).unwrap().attacks
    };
    let e = eval_cnn(&mut cnn, &copy, &plan, 120);
    let r = &e.result;
    let ps = &e.per_sample;
    let clean = ps.clean_correct();
    let mut still: Vec<bool> = clean.clone();
    let mut previous = r.clean_acc;
    for (name, outcome) in &ps.attacks {
        for i in 0..still.len() {
            assert_eq!(
                outcome[i] != NOT_ATTACKED,
                still[i],
                "{name}: sample {i} attacked wrongly"
            );
            still[i] &= outcome[i] != BROKEN;
        }
        let summary = r.attacks.get(name).unwrap();
        assert!(
            summary.robust_acc <= previous,
            "{name}: ensemble accuracy went up"
        );
        previous = summary.robust_acc;
    }
    assert_eq!(ps.worst_case_robust, still);
    assert_eq!(r.worst_case_acc, previous);
    assert!(r.worst_case_acc < r.clean_acc);
    let robust_idx: Vec<u64> = (0..still.len() as u64)
        .filter(|&i| still[i as usize])
        .collect();
    assert_eq!(r.reproducibility.worst_case_robust.to_indices(), robust_idx);
    assert_eq!(
        r.reproducibility.sample_indices,
        IndexRanges(vec![(0, 119)])
    );
    // The scorer runs an identical copy, so the re-check finds no disagreement.
    assert!(r.ort_recheck.examples > 0);
    assert_eq!(r.ort_recheck.disagreements, 0);
    assert_eq!(r.ort_recheck.max_logit_diff, 0.0);
    assert_eq!(
        r.attacks.get(&"square".to_string()).unwrap().queries,
        Some(150)
    );
    eprintln!("{}", serde_norway::to_string(r).unwrap());
}

#[test]
fn standalone_runs_every_attack_on_every_clean_correct_sample() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut plan = small_plan(&["pgd", "apgd-ce"]);
    plan.mode = Mode::Standalone;
    plan.eps_curve = vec![];
    let e = eval_cnn(&mut cnn, &copy, &plan, 80);
    let correct = e.per_sample.clean_correct().iter().filter(|c| **c).count();
    for (name, outcome) in &e.per_sample.attacks {
        assert_eq!(
            outcome.iter().filter(|o| **o != NOT_ATTACKED).count(),
            correct,
            "{name}"
        );
        assert_eq!(e.result.attacks.get(name).unwrap().attacked, correct);
    }
    let any_broken = |i: usize| e.per_sample.attacks.iter().any(|(_, o)| o[i] == BROKEN);
    let expected: Vec<bool> = (0..80)
        .map(|i| e.per_sample.clean_correct()[i] && !any_broken(i))
        .collect();
    assert_eq!(e.per_sample.worst_case_robust, expected);
}

/// A random two-class linear model, a copy of it for the scorer, 250 random images and random labels.
fn linear_problem() -> (LinearModel, LinearModel, Tensor, Tensor) {
    let model = LinearModel::random([1, 8, 8], 2, 41);
    let copy = LinearModel {
        w: model.w.detach().copy(),
        b: model.b.detach().copy(),
        chw: model.chw,
    };
    let x = common::seeded(42, || {
        Tensor::rand([250, 1, 8, 8], (Kind::Float, tch::Device::Cpu))
    });
    let y = common::seeded(43, || {
        Tensor::randint(2, [250], (Kind::Int64, tch::Device::Cpu))
    });
    (model, copy, x, y)
}

/// A two-class linear model's closed-form verdict at radius `eps`, for the samples it classifies right.
fn linear_exact(model: &LinearModel, x: &Tensor, y: &Tensor, eps: f64) -> Vec<bool> {
    let clean = tch::no_grad(|| model.forward(x).unwrap())
        .argmax(1, false)
        .eq_tensor(y);
    let clean = Vec::<bool>::try_from(&clean).unwrap();
    linear_linf_robust(model, x, y, eps)
        .iter()
        .zip(&clean)
        .map(|(r, c)| *r && *c)
        .collect()
}

#[test]
fn evaluating_a_two_class_linear_model_gives_its_closed_form_robust_accuracy() {
    let (mut model, copy, x, y) = linear_problem();
    let eps = 0.04;
    let mut cfg = Config::default();
    cfg.threat.eps = eps;
    cfg.eval.attacks = vec!["pgd".into()];
    cfg.eval.eps_curve = vec![eps];
    let mut plan = EvalPlan::from_config(&cfg).unwrap();
    plan.batch = BatchSize::Fixed(64);
    let data = EvalSet::first(x.shallow_clone(), y.shallow_clone()).unwrap();
    let mut scorer = TchScorer::new(&copy);
    let e = evaluate(&mut model, &mut scorer, &data, &plan, &mut |_| {}).unwrap();
    let exact = linear_exact(&model, &x, &y, eps);
    assert_eq!(e.per_sample.worst_case_robust, exact);
    let exact_acc = exact.iter().filter(|b| **b).count() as f64 / 250.0;
    assert_eq!(e.result.worst_case_acc, exact_acc);
    assert_eq!(e.result.robust_acc_vs_eps.get(&eps), Some(&exact_acc));
}

#[test]
fn a_scorer_that_differs_from_tch_is_caught_by_the_recheck() {
    let mut cnn = TinyCnn::trained();
    let mut other = TinyCnn::new(9);
    let (tx, ty) = fashion_mnist("train", 500);
    other.train(&tx, &ty, 1);
    let plan = small_plan(&["pgd"]);
    let e = eval_cnn(&mut cnn, &other, &plan, 60);
    let r = &e.result.ort_recheck;
    assert!(r.max_logit_diff > 0.1, "{r:?}");
    assert!(r.clean_disagreements > 0 && r.disagreements > 0, "{r:?}");
}

#[test]
fn same_seed_gives_identical_results_at_any_batch_size_and_another_seed_differs() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut plan = small_plan(&["pgd", "apgd-ce", "square"]);
    plan.eps = 0.03;
    plan.attacks = {
        let mut cfg = Config::default();
        cfg.threat.eps = 0.03;
        cfg.eval.attacks = ["pgd", "apgd-ce", "square"].map(String::from).to_vec();
        cfg.eval.pgd.steps = 5;
        cfg.eval.apgd_steps = 10;
        cfg.eval.square_queries = 100;
        EvalPlan::from_config(&cfg).unwrap().attacks
    };
    plan.eps_curve = vec![0.03];
    let a = eval_cnn(&mut cnn, &copy, &plan, 90);
    let b = eval_cnn(&mut cnn, &copy, &plan, 90);
    assert_eq!(
        without_timing(a.result.clone()),
        without_timing(b.result.clone())
    );
    assert_eq!(a.per_sample, b.per_sample);

    plan.batch = BatchSize::Fixed(7);
    let c = eval_cnn(&mut cnn, &copy, &plan, 90);
    assert_eq!(
        a.per_sample, c.per_sample,
        "batch size changed per-sample outcomes"
    );

    let mut reseeded = plan.clone();
    reseeded.attacks = {
        let mut cfg = Config::default();
        cfg.runtime.seed = 99;
        cfg.threat.eps = 0.03;
        cfg.eval.attacks = ["pgd", "apgd-ce", "square"].map(String::from).to_vec();
        cfg.eval.pgd.steps = 5;
        cfg.eval.apgd_steps = 10;
        cfg.eval.square_queries = 100;
        EvalPlan::from_config(&cfg).unwrap().attacks
    };
    assert_ne!(
        reseeded.attacks, plan.attacks,
        "the seed must reach the attacks"
    );
}

#[test]
fn the_result_serializes_to_the_report_block_and_back() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let e = eval_cnn(
        &mut cnn,
        &copy,
        &small_plan(&["pgd", "apgd-ce", "apgd-dlr", "square"]),
        40,
    );
    let yaml = serde_norway::to_string(&e.result).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    for key in [
        "clean_acc",
        "attacks",
        "worst_case_acc",
        "ort_recheck",
        "robust_acc_vs_eps",
        "warnings",
        "reproducibility",
    ] {
        assert!(doc.get(key).is_some(), "missing `{key}` in\n{yaml}");
    }
    let attack_names: Vec<String> = doc["attacks"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(attack_names, ["pgd", "apgd-ce", "apgd-dlr", "square"]);
    assert!(doc["attacks"]["pgd"]["robust_acc"].as_f64().is_some());
    assert_eq!(doc["attacks"]["pgd"]["steps"].as_u64(), Some(8));
    assert_eq!(doc["attacks"]["square"]["queries"].as_u64(), Some(150));
    assert!(doc["ort_recheck"]["disagreements"].as_u64().is_some());
    let curve = doc["robust_acc_vs_eps"].as_mapping().unwrap();
    assert_eq!(curve.len(), 3);
    assert!(
        curve.keys().all(|k| k.as_f64().is_some()),
        "eps keys must be numbers:\n{yaml}"
    );
    // The block is a rounded view (accuracies to 4 decimals, intervals outwards, seconds to ms): reading it back
    // gives the rounded numbers, and writing those again gives the same text.
    let back: EvalResult = serde_norway::from_str(&yaml).unwrap();
    assert!((back.clean_acc - e.result.clean_acc).abs() <= 5e-5);
    assert!((back.worst_case_acc - e.result.worst_case_acc).abs() <= 5e-5);
    let (exact, printed) = (e.result.worst_case_acc_ci95, back.worst_case_acc_ci95);
    assert!(printed.lower <= exact.lower && exact.lower - printed.lower < 1e-4);
    assert!(printed.upper >= exact.upper && printed.upper - exact.upper < 1e-4);
    assert_eq!(back.attacks.0.len(), e.result.attacks.0.len());
    assert_eq!(back.reproducibility, e.result.reproducibility);
    assert_eq!(serde_norway::to_string(&back).unwrap(), yaml);
}

#[test]
fn per_sample_results_round_trip_through_npz_and_numpy_reads_them() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let e = eval_cnn(&mut cnn, &copy, &small_plan(&["pgd", "square"]), 50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("per_sample.npz");
    e.per_sample.save_npz(&path).unwrap();
    assert_eq!(PerSample::load_npz(&path).unwrap(), e.per_sample);

    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let script = "import sys, numpy as np\n\
        d = np.load(sys.argv[1])\n\
        print(len(d['index']), int(d['worst_case_robust'].sum()), int((d['attack_pgd'] == 1).sum()), \
        d['curve_robust'].shape[0], d['label'].dtype, d['attack_square'].dtype)";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pgd = &e.per_sample.attacks[0].1;
    let expected = format!(
        "{} {} {} {} int64 int8",
        50,
        e.per_sample
            .worst_case_robust
            .iter()
            .filter(|b| **b)
            .count(),
        pgd.iter().filter(|o| **o == BROKEN).count(),
        3
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    let groups = e
        .per_sample
        .accuracy_on(&(0..50).map(|i| i % 2 == 0).collect::<Vec<_>>());
    assert!(groups.is_some());
    assert!(pgd.iter().all(|o| [BROKEN, HELD, NOT_ATTACKED].contains(o)));
}

#[test]
fn progress_reports_every_stage_in_order_up_to_its_total() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let plan = small_plan(&["pgd", "square"]);
    let (x, y) = fashion_mnist("t10k", 70);
    let data = EvalSet::first(x, y).unwrap();
    let mut scorer = TchScorer::new(&copy);
    let mut seen: Vec<Progress> = Vec::new();
    evaluate(&mut cnn, &mut scorer, &data, &plan, &mut |p| {
        seen.push(p.clone())
    })
    .unwrap();
    let starts: Vec<(usize, Stage)> = seen
        .iter()
        .filter(|p| p.done == 0)
        .map(|p| (p.stage_index, p.stage.clone()))
        .collect();
    let expected = vec![
        (1, Stage::Batching),
        (2, Stage::Clean),
        (3, Stage::Checks),
        (4, Stage::Attack("pgd")),
        (5, Stage::Attack("square")),
        // The sweep's order: the radii whose verdict is known (0 and the anchor, eps 0.1), then outward.
        (6, Stage::Curve(0.0)),
        (7, Stage::Curve(0.1)),
        (8, Stage::Curve(0.05)),
    ];
    assert_eq!(starts, expected);
    assert!(seen.iter().all(|p| p.stages == 8 && p.done <= p.total));
    for index in 1..=8 {
        let last = seen.iter().rev().find(|p| p.stage_index == index).unwrap();
        assert_eq!(last.done, last.total, "stage {index} did not finish");
    }
}

#[test]
fn automatic_batch_size_follows_the_memory_budget() {
    let cnn = TinyCnn::trained();
    let (x, _) = fashion_mnist("t10k", 32);
    let big = resolve(BatchSize::Auto { memory_mb: 4096 }, &cnn, &x).unwrap();
    let small = resolve(BatchSize::Auto { memory_mb: 8 }, &cnn, &x).unwrap();
    assert!((1..=MAX_BATCH).contains(&big) && (1..=MAX_BATCH).contains(&small));
    assert!(small < big, "8 MB gave {small}, 4 GB gave {big}");
    assert_eq!(resolve(BatchSize::Fixed(17), &cnn, &x).unwrap(), 17);
    eprintln!("auto batch: {big} at 4096 MB, {small} at 8 MB");
}

#[test]
fn index_ranges_are_compact_and_round_trip() {
    let indices = [7u64, 0, 1, 2, 9, 10, 11, 12, 40];
    let ranges = IndexRanges::from_indices(&indices);
    let yaml = serde_norway::to_string(&ranges).unwrap();
    assert_eq!(yaml, "- 0-2\n- 7\n- 9-12\n- 40\n");
    let back: IndexRanges = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(back, ranges);
    let mut sorted = indices.to_vec();
    sorted.sort();
    assert_eq!(back.to_indices(), sorted);
    assert!(serde_norway::from_str::<IndexRanges>("- 5-2\n").is_err());
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let x = Tensor::full([4, 1, 28, 28], 2.0, (Kind::Float, tch::Device::Cpu));
    let y = Tensor::zeros([4], (Kind::Int64, tch::Device::Cpu));
    let err = EvalSet::first(x, y.shallow_clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[0, 1]"), "{err}");
    let x = Tensor::zeros([4, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
    assert!(EvalSet::new(x.shallow_clone(), y.shallow_clone(), vec![0, 1]).is_err());

    let mut cnn = TinyCnn::new(0);
    let copy = cnn.duplicate();
    let data = EvalSet::first(x, Tensor::full([4], 12, (Kind::Int64, tch::Device::Cpu))).unwrap();
    let mut scorer = TchScorer::new(&copy);
    let err = evaluate(
        &mut cnn,
        &mut scorer,
        &data,
        &small_plan(&["pgd"]),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("classes"), "{err}");
}

/// Per sample, robust at a larger radius implies robust at every smaller one.
fn assert_monotone(e: &Evaluation) {
    let mut curve = e.per_sample.curve.clone();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in curve.windows(2) {
        for (i, (small, large)) in pair[0].1.iter().zip(&pair[1].1).enumerate() {
            assert!(
                *small || !*large,
                "sample {i} holds at eps {} but not at {}",
                pair[1].0,
                pair[0].0
            );
        }
    }
}

#[test]
fn the_sweep_keeps_every_verdict_at_eps_and_its_curve_is_monotone() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut plan = plan_at(&["pgd", "apgd-ce"], 0.05);
    plan.eps_curve = vec![0.0, 0.02, 0.05, 0.08, 0.12];
    assert_eq!(plan.curve_protocol, CurveProtocol::Sweep, "the default");
    let sweep = eval_cnn(&mut cnn, &copy, &plan, 120);
    let at = |e: &Evaluation, eps: f64| {
        e.per_sample
            .curve
            .iter()
            .find(|(r, _)| *r == eps)
            .unwrap()
            .1
            .clone()
    };
    // The attacks' verdict at eps is the curve's there, sample by sample; eps 0 is clean accuracy.
    assert_eq!(at(&sweep, 0.05), sweep.per_sample.worst_case_robust);
    assert_eq!(at(&sweep, 0.0), sweep.per_sample.clean_correct());
    assert_eq!(
        sweep.result.robust_acc_vs_eps.get(&0.05),
        Some(&sweep.result.worst_case_acc)
    );
    assert_monotone(&sweep);
    let info = sweep.result.curve.clone().unwrap();
    assert_eq!(info.anchor, Some(0.05));
    assert_eq!(info.anchor_attacks, ["pgd", "apgd-ce"]);
    assert_eq!((info.steps, info.keep.as_str()), (5, "first-adversarial"));
    assert_eq!(info.start, Some(CurveStart::Warm), "the default");
    // eval.pgd's travel (8 steps of 0.3 eps) in 5 steps.
    assert!((info.step_size_factor - 0.48).abs() < 1e-12);

    plan.curve_protocol = CurveProtocol::Independent;
    let independent = eval_cnn(&mut cnn, &copy, &plan, 120);
    let info_ind = independent.result.curve.clone().unwrap();
    let correct = independent
        .per_sample
        .clean_correct()
        .iter()
        .filter(|c| **c)
        .count();
    assert_eq!(info_ind.attacked, 4 * correct, "every radius but 0");
    assert_eq!((info_ind.anchor, info_ind.steps), (None, 8));
    assert!(
        2 * info.attacked < info_ind.attacked,
        "sweep attacked {} sample-radii, independent {}",
        info.attacked,
        info_ind.attacked
    );
    // The worst case is never weaker than PGD alone at the anchor, so the sweep never reports more robustness.
    let (s, i) = (
        sweep.result.robust_acc_vs_eps.get(&0.05).unwrap(),
        independent.result.robust_acc_vs_eps.get(&0.05).unwrap(),
    );
    assert!(s <= i, "sweep {s} > independent {i} at the anchor");
    // The per-sample file and the report's block carry the protocol.
    let yaml = serde_norway::to_string(&sweep.result).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(doc["curve"]["protocol"].as_str(), Some("sweep"), "{yaml}");
    assert_eq!(doc["curve"]["anchor"].as_f64(), Some(0.05));
}

#[test]
fn minimal_perturbations_found_by_fab_decide_radii_below_eps_without_an_attack() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut cfg = Config::default();
    cfg.threat.eps = 0.1;
    cfg.eval.attacks = vec!["fab".into()];
    cfg.eval.fab_steps = 10;
    cfg.eval.eps_curve = vec![0.0, 0.03, 0.06, 0.1];
    let mut plan = EvalPlan::from_config(&cfg).unwrap();
    plan.batch = BatchSize::Fixed(32);
    let e = eval_cnn(&mut cnn, &copy, &plan, 60);
    let info = e.result.curve.clone().unwrap();
    assert!(info.from_perturbation > 0, "{info:?}");
    assert_monotone(&e);
}

#[test]
fn below_eps_an_example_projected_onto_the_smaller_ball_breaks_a_sample_without_an_attack() {
    let mut cnn = TinyCnn::trained();
    let copy = cnn.duplicate();
    let mut plan = plan_at(&["pgd"], 0.1);
    plan.eps_curve = vec![0.0, 0.05, 0.1];
    let e = eval_cnn(&mut cnn, &copy, &plan, 120);
    let info = e.result.curve.clone().unwrap();
    // Every sample broken at 0.1 is judged at 0.05 once: by an example already within 0.05, by its projected
    // example (one scorer pass), or by the curve's attack.
    let broken_at_eps = e
        .per_sample
        .clean_correct()
        .iter()
        .zip(&e.per_sample.worst_case_robust)
        .filter(|(c, r)| **c && !**r)
        .count();
    assert!(
        broken_at_eps > 10,
        "{broken_at_eps} broken: too few to tell"
    );
    assert_eq!(
        info.from_perturbation + info.from_projection + info.attacked,
        broken_at_eps,
        "{info:?}"
    );
    assert!(info.from_projection > 0, "{info:?}");
    assert!(info.attacked > 0, "{info:?}");
    assert_monotone(&e);
    // The report's curve block counts them.
    let yaml = serde_norway::to_string(&e.result).unwrap();
    assert!(yaml.contains("from_projection"), "{yaml}");
}

#[test]
fn above_eps_the_warm_sweep_continues_from_the_anchor_attacks_iterate() {
    // On a two-class linear model FGSM at eps lands on the worst corner of the ball, and from there one curve step
    // of 0.2 r reaches the worst corner of a ball of radius r <= 1.25 eps: the warm sweep's verdict at r is the
    // closed form, sample by sample. A random start a step of 0.2 r cannot reach that corner from misses breaks.
    let (mut model, copy, x, y) = linear_problem();
    let (eps, above) = (0.04, 0.05);
    let mut cfg = Config::default();
    cfg.threat.eps = eps;
    cfg.eval.attacks = vec!["fgsm".into()];
    cfg.eval.eps_curve = vec![0.0, eps, above];
    cfg.eval.curve_steps = 1;
    // The curve's step: eval.pgd's travel (20 steps of 0.01 r) in one step.
    cfg.eval.pgd.step_size_factor = 0.01;
    let data = EvalSet::first(x.shallow_clone(), y.shallow_clone()).unwrap();
    let run = |model: &mut LinearModel, start: CurveStart| {
        let mut plan = EvalPlan::from_config(&cfg).unwrap();
        plan.batch = BatchSize::Fixed(64);
        plan.curve_start = start;
        let mut scorer = TchScorer::new(&copy);
        evaluate(model, &mut scorer, &data, &plan, &mut |_| {}).unwrap()
    };
    let at = |e: &Evaluation, r: f64| {
        e.per_sample
            .curve
            .iter()
            .find(|(e, _)| *e == r)
            .unwrap()
            .1
            .clone()
    };
    let exact_eps = linear_exact(&model, &x, &y, eps);
    let exact_above = linear_exact(&model, &x, &y, above);
    let flips = exact_eps
        .iter()
        .zip(&exact_above)
        .filter(|(a, b)| **a && !**b)
        .count();
    assert!(
        flips >= 10,
        "{flips} samples break between {eps} and {above}: too few to tell"
    );

    let warm = run(&mut model, CurveStart::Warm);
    assert_eq!(
        warm.per_sample.worst_case_robust, exact_eps,
        "FGSM at eps is exact"
    );
    assert_eq!(
        at(&warm, above),
        exact_above,
        "warm: not the closed form at {above}"
    );
    let info = warm.result.curve.clone().unwrap();
    assert_eq!((info.start, info.steps), (Some(CurveStart::Warm), 1));
    let yaml = serde_norway::to_string(&warm.result).unwrap();
    assert!(yaml.contains("start: warm"), "{yaml}");

    let random = run(&mut model, CurveStart::Random);
    let missed = at(&random, above)
        .iter()
        .zip(&exact_above)
        .filter(|(r, e)| **r && !**e)
        .count();
    assert!(
        missed > 0,
        "a random start found every break: the test shows nothing"
    );
    assert_eq!(
        random.result.curve.as_ref().unwrap().start,
        Some(CurveStart::Random)
    );
    assert_monotone(&warm);
    assert_monotone(&random);
}
