//! [`evaluate`]: the evaluation protocol, stage by stage (clean → trust checks → attacks → eps curve, see
//! [`super::curve`]), batched,
//! with every adversarial example judged by the scorer, and the numbers the report gives (intervals, per class).
//! [`evaluate_score_based`] runs the same protocol without a differentiable model (a graph robustd cannot
//! interpret): clean accuracy and the score-based attacks only.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::examples::{AdversarialExamples, Offer};
use super::per_sample::{PerSample, BROKEN, HELD, NOT_ATTACKED};
use super::result::{
    AttackSummary, ClassAccuracy, EvalResult, IndexRanges, OrderedMap, OrtRecheck, Reproducibility,
    Threat,
};
use super::stats::clopper_pearson;
use super::{
    batch, curve, preset, trust, CurveProtocol, CurveStart, EvalError, EvalPlan, EvalSet,
    Evaluation, Mode, Progress, Stage,
};
use crate::attack::{pgd, square, Attack, AttackError, AttackRun};
use crate::config::Norm;
use crate::model::{Classifier, Scorer};
use crate::runtime;

/// Evaluates `model` (tch, for gradient attacks) and `scorer` (the shipped file, for clean accuracy, Square and
/// every verdict) on `data` as `plan` says. Puts the model in eval mode. `progress` is called after every batch.
pub fn evaluate(
    model: &mut dyn Classifier,
    scorer: &mut dyn Scorer,
    data: &EvalSet,
    plan: &EvalPlan,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Evaluation, EvalError> {
    model.set_train(false);
    let model: &dyn Classifier = model;
    let shape = Shape {
        chw: model.input_chw(),
        classes: model.num_classes(),
    };
    run_protocol(Some(model), shape, scorer, data, plan, progress)
}

/// What the evaluated model takes and gives, when there is no [`Classifier`] to ask.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub chw: [i64; 3],
    pub classes: i64,
}

/// The protocol for a model only the scorer can run (its graph cannot be differentiated): clean accuracy and
/// the plan's score-based attacks (Square) on the scorer. Gradient attacks, the gradient-masking checks and the
/// robust-accuracy-vs-eps curve (PGD) are left out.
pub fn evaluate_score_based(
    shape: Shape,
    scorer: &mut dyn Scorer,
    data: &EvalSet,
    plan: &EvalPlan,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Evaluation, EvalError> {
    let mut plan = plan.clone();
    plan.attacks.retain(|a| !a.uses_gradients());
    plan.eps_curve.clear();
    run_protocol(None, shape, scorer, data, &plan, progress)
}

/// Rows the nondeterminism check runs a second forward pass on.
const NONDETERMINISM_PROBE_ROWS: usize = 64;

fn run_protocol(
    model: Option<&dyn Classifier>,
    shape: Shape,
    scorer: &mut dyn Scorer,
    data: &EvalSet,
    plan: &EvalPlan,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Evaluation, EvalError> {
    let started = Instant::now();
    check_inputs(shape, data)?;
    let n = data.len();
    let mut stages = StageReporter::new(3 + plan.attacks.len() + plan.eps_curve.len(), progress);
    // The batch size comes first: when probed, its two forward + backward passes also pay the one-time oneDNN JIT
    // and thread-pool warm-up, which the timing block then shows under this stage's name.
    stages.begin(Stage::Batching, 1);
    let batching = match model {
        _ if n == 0 => batch::Batching { size: 1, rows: 1 },
        Some(model) => batch::batching(plan.batch, model, &data.x)?,
        None => {
            let size = batch::resolve_without_model(plan.batch, &data.x);
            batch::Batching { size, rows: size }
        }
    };
    stages.advance(1);
    let batch = batching.size;
    // The attacks as they run on this model: FAB's row budget, and what few classes change.
    let classes = shape.classes;
    let attacks: Vec<(crate::attack::Attack, Option<String>)> = plan
        .attacks
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a.set_row_budget(batching.rows);
            let note = a.adapted_for(classes);
            (a, note)
        })
        .collect();
    let mut examples = AdversarialExamples::new(plan.norm, plan.eps, plan.examples.max);
    let labels = Vec::<i64>::try_from(&data.y)?;
    let mut recheck = OrtRecheck::default();
    let all: Vec<usize> = (0..n).collect();

    // Clean accuracy through the scorer, compared with tch. tch's pass is a forward + backward one: the same pass
    // gives the logits compared and the margin-loss input gradients the masked-gradient check counts.
    stages.begin(Stage::Clean, n);
    let mut clean_parts = Vec::new();
    let mut first_tch = None;
    let (mut zero, mut not_finite) = (0, 0);
    for chunk in all.chunks(batch) {
        let xb = rows(&data.x, chunk)?;
        let ort = scored(scorer, &xb)?;
        if let Some(model) = model {
            let (tch, masked) = trust::clean_pass(model, &xb, &rows(&data.y, chunk)?)?;
            let (disagree, diff) = compare(&tch, &ort)?;
            recheck.clean_disagreements += disagree;
            recheck.clean_max_logit_diff = recheck.clean_max_logit_diff.max(diff);
            zero += masked.zero;
            not_finite += masked.not_finite;
            first_tch.get_or_insert(tch);
        }
        clean_parts.push(ort);
        stages.advance(chunk.len());
    }
    let clean_logits = if clean_parts.is_empty() {
        Tensor::f_zeros([0, shape.classes], (Kind::Float, Device::Cpu))?
    } else {
        Tensor::f_cat(&clean_parts, 0)?
    };
    let clean_pred = Vec::<i64>::try_from(&clean_logits.f_argmax(1, false)?)?;
    let clean_correct: Vec<bool> = clean_pred
        .iter()
        .zip(&labels)
        .map(|(p, y)| p == y)
        .collect();

    // Trust checks that need no attack; the first batch's clean logits are the first of the two forward passes
    // the determinism check compares.
    stages.begin(Stage::Checks, n);
    let th = &plan.thresholds;
    let mut warnings = Vec::new();
    warnings.extend(trust::probabilities(
        &clean_logits,
        th.probability_tolerance,
    )?);
    if n > 0 {
        // The first rows of the clean pass's first batch, run once more: a randomized model moves every row, so a
        // few dozen show it as surely as a batch does, at a fraction of the second pass.
        let probed = batch.min(n).min(NONDETERMINISM_PROBE_ROWS);
        let probe = rows(&data.x, &all[..probed])?;
        let first_rows = |t: &Tensor| t.f_narrow(0, 0, probed as i64);
        let first_tch = first_tch.as_ref().map(first_rows).transpose()?;
        let first = trust::FirstPass {
            tch: first_tch.as_ref(),
            scorer: &first_rows(&clean_parts[0])?,
        };
        warnings.extend(trust::nondeterminism(
            model,
            scorer,
            &probe,
            first,
            th.forward_tolerance,
        )?);
    }
    if model.is_some() {
        warnings.extend(trust::masked_gradients(
            zero,
            not_finite,
            n,
            th.masked_gradient_share,
        ));
    }
    stages.advance(n);

    // Attacks, in order.
    let mut robust = clean_correct.clone();
    // Per sample, the smallest perturbation of a verified adversarial example and, when the sweep has radii
    // below the anchor to project it onto, the example itself (the curve reuses both).
    let mut min_norm = vec![f64::INFINITY; n];
    let sweeps = plan.curve_protocol == CurveProtocol::Sweep;
    let projects = sweeps && plan.eps_curve.iter().any(|&e| e > 0.0 && e < plan.eps);
    // ... and, when the sweep's attacks above the anchor start warm, the last iterate of each sample that held.
    let warm_above = sweeps
        && plan.curve_start == CurveStart::Warm
        && plan.eps_curve.iter().any(|&e| e > plan.eps);
    let mut kept = curve::ExampleStore::new(
        n,
        if projects || warm_above {
            curve::EXAMPLE_BUDGET_BYTES
        } else {
            0
        },
    );
    let mut known = curve::Known {
        min_norm: &mut min_norm,
        examples: &mut kept,
    };
    let mut outcomes: Vec<(String, Vec<i8>)> = Vec::new();
    let mut summaries = Vec::new();
    for (attack, note) in &attacks {
        if let Some(note) = note {
            tracing::info!(attack = attack.name(), "{note}");
        }
        let t0 = Instant::now();
        let targets: Vec<usize> = match plan.mode {
            Mode::Ensemble => all.iter().copied().filter(|&i| robust[i]).collect(),
            Mode::Standalone => all.iter().copied().filter(|&i| clean_correct[i]).collect(),
        };
        stages.begin(Stage::Attack(attack.name()), targets.len());
        let mut outcome = vec![NOT_ATTACKED; n];
        let mut queries = 0usize;
        for chunk in targets.chunks(batch) {
            let done = attack_chunk(attack, model, scorer, data, chunk, None, &mut recheck)?;
            let indices: Vec<u64> = chunk.iter().map(|&i| data.indices[i]).collect();
            let chunk_labels: Vec<i64> = chunk.iter().map(|&i| labels[i]).collect();
            examples.offer(Offer {
                attack: attack.name(),
                indices: &indices,
                labels: &chunk_labels,
                preds: &done.preds,
                broken: &done.broken,
                x_adv: &done.x_adv,
                x: &done.x,
            })?;
            for (j, ((&i, b), &d)) in chunk.iter().zip(done.broken).zip(&done.norms).enumerate() {
                outcome[i] = if b { BROKEN } else { HELD };
                if b {
                    known.record(i, d, || example_row(&done.x_adv, j));
                } else if warm_above {
                    known.record_iterate(i, || example_row(&done.x_adv, j));
                }
            }
            queries += done.queries;
            stages.advance(chunk.len());
        }
        for (r, o) in robust.iter_mut().zip(&outcome) {
            *r &= *o != BROKEN;
        }
        let held = match plan.mode {
            Mode::Ensemble => count(&robust),
            Mode::Standalone => (0..n)
                .filter(|&i| clean_correct[i] && outcome[i] != BROKEN)
                .count(),
        };
        let budget = attack.budget();
        summaries.push((
            attack.name().to_owned(),
            AttackSummary {
                robust_acc: share(held, n),
                robust_acc_ci95: clopper_pearson(held, n),
                steps: budget.steps,
                restarts: budget.restarts,
                targets: budget.targets,
                eot: budget.eot,
                queries: budget.queries,
                p_init: budget.p_init,
                mean_queries: budget
                    .queries
                    .map(|_| queries as f64 / targets.len().max(1) as f64),
                attacked: targets.len(),
                broken: outcome.iter().filter(|o| **o == BROKEN).count(),
                note: note.clone(),
                seconds: t0.elapsed().as_secs_f64(),
            },
        ));
        outcomes.push((attack.name().to_owned(), outcome));
    }

    // Robust accuracy vs eps (see `curve`): swept outward from the attacks' verdict at eps, or independently.
    let anchor_attacks: Vec<String> = attacks.iter().map(|(a, _)| a.name().to_owned()).collect();
    let curve = {
        let verdicts = curve::Verdicts {
            clean_correct: &clean_correct,
            anchor: (!attacks.is_empty()).then_some((robust.as_slice(), anchor_attacks)),
            known,
        };
        let mut attack_at = |eps: f64, pgd: &Attack, targets: &[usize], starts: &curve::Starts| {
            stages.begin(Stage::Curve(eps), targets.len());
            let mut out: Vec<Option<curve::Outcome>> = targets.iter().map(|_| None).collect();
            let point = |k: usize| starts.points.get(k).and_then(Option::as_ref);
            // Adversarial examples from a larger radius first: each projected onto this radius's ball, judged in
            // one scorer pass per batch.
            if starts.try_first {
                let tried: Vec<usize> =
                    (0..targets.len()).filter(|&k| point(k).is_some()).collect();
                for part in tried.chunks(batch) {
                    let idx: Vec<usize> = part.iter().map(|&k| targets[k]).collect();
                    let xb = rows(&data.x, &idx)?;
                    let stacked: Vec<Tensor> = part
                        .iter()
                        .filter_map(|&k| point(k).map(Tensor::shallow_clone))
                        .collect();
                    let projected =
                        pgd::project(&Tensor::f_stack(&stacked, 0)?, &xb, plan.norm, eps)?;
                    let verdict =
                        judged(scorer, &projected, &xb, &rows(&data.y, &idx)?, plan.norm)?;
                    for (j, &k) in part.iter().enumerate() {
                        if verdict.broken[j] {
                            out[k] = found_example(&projected, j, verdict.norms[j], true)
                                .map(curve::Outcome::Broken);
                        }
                    }
                }
                let projected = out.iter().flatten().count();
                if projected > 0 {
                    stages.advance(projected);
                }
            }
            // The rest: the curve's attack, warm rows starting at their points.
            let rest: Vec<usize> = (0..targets.len()).filter(|&k| out[k].is_none()).collect();
            for part in rest.chunks(batch) {
                let chunk: Vec<usize> = part.iter().map(|&k| targets[k]).collect();
                let given: Vec<bool> = part
                    .iter()
                    .map(|&k| starts.warm && point(k).is_some())
                    .collect();
                let points = if given.contains(&true) {
                    let stacked = part
                        .iter()
                        .zip(&given)
                        .map(|(&k, &g)| match point(k) {
                            Some(p) if g => Ok(p.shallow_clone()),
                            _ => data.x.f_select(0, targets[k] as i64),
                        })
                        .collect::<Result<Vec<Tensor>, _>>()?;
                    Some(Tensor::f_stack(&stacked, 0)?)
                } else {
                    None
                };
                let warm = points
                    .as_ref()
                    .map(|x| pgd::GivenStarts { x, given: &given });
                let done = attack_chunk(pgd, model, scorer, data, &chunk, warm, &mut recheck)?;
                for (j, &k) in part.iter().enumerate() {
                    out[k] = if done.broken[j] {
                        found_example(&done.x_adv, j, done.norms[j], false)
                            .map(curve::Outcome::Broken)
                    } else {
                        let last = if starts.keep_held {
                            example_row(&done.x_adv, j)
                        } else {
                            None
                        };
                        Some(curve::Outcome::Held(last))
                    };
                }
                stages.advance(chunk.len());
            }
            Ok::<_, EvalError>(
                out.into_iter()
                    .map(|o| o.unwrap_or(curve::Outcome::Held(None)))
                    .collect(),
            )
        };
        curve::measure(plan, verdicts, &mut attack_at)?
    };
    let curve_info = curve.info;
    let curve = curve.held;

    // Trust checks on the attacks' outcomes.
    let square_only = (0..n)
        .filter(|&i| {
            let mut by_square = false;
            let (mut gradient_tried, mut gradient_broke) = (false, false);
            for ((attack, _), (_, outcome)) in attacks.iter().zip(&outcomes) {
                match (attack.uses_gradients(), outcome[i]) {
                    (false, BROKEN) => by_square = true,
                    (true, BROKEN) => gradient_broke = true,
                    (true, HELD) => gradient_tried = true,
                    _ => {}
                }
            }
            by_square && gradient_tried && !gradient_broke
        })
        .count();
    warnings.extend(trust::square_only(square_only, n, th.square_only_share));
    let curve_acc: Vec<(f64, f64)> = curve
        .iter()
        .map(|(e, held)| (*e, share(count(held), n)))
        .collect();
    let curve_ci = curve
        .iter()
        .map(|(e, held)| (*e, clopper_pearson(count(held), n)))
        .collect();
    warnings.extend(trust::non_monotone(&curve_acc, th.monotone_tolerance));
    for w in &warnings {
        tracing::warn!(kind = ?w.kind, "{}", w.message);
    }

    let robust_indices: Vec<u64> = (0..n)
        .filter(|&i| robust[i])
        .map(|i| data.indices[i])
        .collect();
    let result = EvalResult {
        samples: n,
        threat: Threat {
            norm: plan.norm,
            eps: plan.eps,
        },
        preset: preset::name(plan.preset).to_owned(),
        mode: plan.mode,
        clean_acc: share(count(&clean_correct), n),
        clean_acc_ci95: clopper_pearson(count(&clean_correct), n),
        attacks: OrderedMap(summaries),
        worst_case_acc: share(count(&robust), n),
        worst_case_acc_ci95: clopper_pearson(count(&robust), n),
        per_class: per_class(&labels, &clean_correct, &robust),
        ort_recheck: recheck,
        robust_acc_vs_eps: OrderedMap(curve_acc),
        robust_acc_vs_eps_ci95: OrderedMap(curve_ci),
        curve: curve_info,
        adversarial_examples: None,
        warnings,
        reproducibility: Reproducibility {
            seed: plan.seed,
            sample_indices: IndexRanges::from_indices(&data.indices),
            worst_case_robust: IndexRanges::from_indices(&robust_indices),
            batch_size: batch,
            device: runtime::device_name(model.map_or(Device::Cpu, |m| m.device())),
            robustd: env!("CARGO_PKG_VERSION").to_owned(),
            libtorch: runtime::libtorch_version(),
            onnxruntime: runtime::loaded_ort_version(),
            per_sample_file: None,
        },
        seconds: started.elapsed().as_secs_f64(),
        groups: None,
    };
    let per_sample = PerSample {
        index: data.indices.clone(),
        label: labels,
        clean_pred,
        attacks: outcomes,
        worst_case_robust: robust,
        curve,
    };
    Ok(Evaluation {
        result,
        per_sample,
        examples,
    })
}

/// Clean and worst-case robust accuracy per true class, classes in ascending order.
fn per_class(
    labels: &[i64],
    clean_correct: &[bool],
    robust: &[bool],
) -> OrderedMap<i64, ClassAccuracy> {
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    OrderedMap(
        classes
            .into_iter()
            .map(|class| {
                let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
                let clean = rows.iter().filter(|&&i| clean_correct[i]).count();
                let held = rows.iter().filter(|&&i| robust[i]).count();
                let samples = rows.len();
                (
                    class,
                    ClassAccuracy {
                        samples,
                        clean: share(clean, samples),
                        clean_ci95: clopper_pearson(clean, samples),
                        robust: share(held, samples),
                        robust_ci95: clopper_pearson(held, samples),
                    },
                )
            })
            .collect(),
    )
}

/// What one attack did to one chunk: which samples broke (on the scorer), the scorer's predictions, the
/// adversarial and clean inputs (CPU), and the queries spent.
struct ChunkOutcome {
    broken: Vec<bool>,
    /// Each row's perturbation `‖x_adv − x‖` in the threat norm.
    norms: Vec<f64>,
    preds: Vec<i64>,
    x_adv: Tensor,
    x: Tensor,
    queries: usize,
}

/// Runs `attack` on the samples `chunk`, re-scores its examples on the scorer (and compares with tch for gradient
/// attacks).
fn attack_chunk(
    attack: &Attack,
    model: Option<&dyn Classifier>,
    scorer: &mut dyn Scorer,
    data: &EvalSet,
    chunk: &[usize],
    starts: Option<pgd::GivenStarts<'_>>,
    recheck: &mut OrtRecheck,
) -> Result<ChunkOutcome, EvalError> {
    let xb = rows(&data.x, chunk)?;
    let yb = rows(&data.y, chunk)?;
    let keys: Vec<u64> = chunk.iter().map(|&i| data.indices[i]).collect();
    let run = match (model, attack) {
        (Some(model), _) => attack.run(model, scorer, &xb, &yb, &keys, starts)?,
        (None, Attack::Square(p)) => {
            let out = square::square(scorer, &xb, &yb, Some(&keys), p)?;
            AttackRun {
                x_adv: out.x_adv,
                queries: Some(out.queries),
            }
        }
        (None, _) => {
            return Err(AttackError::Invalid {
                what: "attack",
                message: format!("{} needs gradients, and this model has none", attack.name()),
            }
            .into())
        }
    };
    let (norm, _) = attack.threat();
    let verdict = judged(scorer, &run.x_adv, &xb, &yb, norm)?;
    if let (true, Some(model)) = (attack.uses_gradients(), model) {
        let tch = tch_logits(model, &run.x_adv)?;
        let (disagree, diff) = compare(&tch, &verdict.logits)?;
        recheck.examples += chunk.len();
        recheck.disagreements += disagree;
        recheck.max_logit_diff = recheck.max_logit_diff.max(diff);
    }
    Ok(ChunkOutcome {
        broken: verdict.broken,
        norms: verdict.norms,
        preds: verdict.preds,
        x_adv: run.x_adv,
        x: xb,
        queries: run.queries.map(|q| q.iter().sum()).unwrap_or(0),
    })
}

/// The scorer's verdict on candidate examples `x_adv` of the clean rows `x` with labels `y`.
struct Verdict {
    logits: Tensor,
    preds: Vec<i64>,
    broken: Vec<bool>,
    /// Each row's perturbation `‖x_adv − x‖` in `norm`.
    norms: Vec<f64>,
}

fn judged(
    scorer: &mut dyn Scorer,
    x_adv: &Tensor,
    x: &Tensor,
    y: &Tensor,
    norm: Norm,
) -> Result<Verdict, EvalError> {
    let logits = scored(scorer, x_adv)?;
    let preds = logits.f_argmax(1, false)?;
    let broken = Vec::<bool>::try_from(&preds.f_ne_tensor(y)?)?;
    let norms =
        Vec::<f64>::try_from(&pgd::row_norms(&x_adv.f_sub(x)?, norm)?.f_to_kind(Kind::Double)?)?;
    Ok(Verdict {
        logits,
        preds: Vec::<i64>::try_from(&preds)?,
        broken,
        norms,
    })
}

/// Row `j` of a batch of verified examples as the curve's [`curve::Found`] (`None` when it cannot be copied).
fn found_example(batch: &Tensor, j: usize, norm: f64, projected: bool) -> Option<curve::Found> {
    example_row(batch, j).map(|x_adv| curve::Found {
        norm,
        x_adv,
        projected,
    })
}

/// Row `j` of a batch of examples as its own CPU tensor (not a view keeping the whole batch alive); `None` when
/// it cannot be copied (the curve then attacks that sample instead of projecting its example).
fn example_row(batch: &Tensor, j: usize) -> Option<Tensor> {
    batch
        .f_select(0, j as i64)
        .and_then(|row| row.f_to_device(Device::Cpu))
        .and_then(|row| row.f_detach_copy())
        .ok()
}

fn check_inputs(model: Shape, data: &EvalSet) -> Result<(), EvalError> {
    let shape = data.x.size();
    let chw = model.chw;
    if shape.len() == 4 && shape[1..] != chw {
        return Err(EvalError::Invalid {
            what: "evaluation set",
            message: format!("images are {:?} but the model takes {chw:?}", &shape[1..]),
        });
    }
    if !data.is_empty() {
        let (lo, hi) = (
            data.y.f_min()?.f_int64_value(&[])?,
            data.y.f_max()?.f_int64_value(&[])?,
        );
        if lo < 0 || hi >= model.classes {
            return Err(EvalError::Invalid {
                what: "labels",
                message: format!(
                    "labels span [{lo}, {hi}] but the model has {} classes",
                    model.classes
                ),
            });
        }
    }
    Ok(())
}

/// Rows `idx` of a CPU tensor; 8-bit pixels come back as float32 in [0,1].
fn rows(t: &Tensor, idx: &[usize]) -> Result<Tensor, EvalError> {
    let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let picked = t.f_index_select(0, &Tensor::f_from_slice(&idx)?)?;
    if picked.kind() == Kind::Uint8 {
        return Ok(picked.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?);
    }
    Ok(picked)
}

/// The scorer's logits as CPU float32, checked to be `[N, classes]`.
fn scored(scorer: &mut dyn Scorer, x: &Tensor) -> Result<Tensor, EvalError> {
    let logits = scorer
        .logits(x)?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    let n = x.size()[0];
    if logits.dim() != 2 || logits.size()[0] != n {
        return Err(EvalError::Invalid {
            what: "scorer output",
            message: format!("expected logits [{n}, classes], got {:?}", logits.size()),
        });
    }
    Ok(logits)
}

fn tch_logits(model: &dyn Classifier, x: &Tensor) -> Result<Tensor, EvalError> {
    let x = x.f_to_device(model.device())?;
    let logits = tch::no_grad(|| model.forward(&x))?;
    Ok(logits.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)
}

/// Rows whose argmax differs, and the largest |difference|.
fn compare(a: &Tensor, b: &Tensor) -> Result<(usize, f64), EvalError> {
    if a.size() != b.size() {
        return Err(EvalError::Invalid {
            what: "scorer output",
            message: format!("tch logits {:?} but scorer logits {:?}", a.size(), b.size()),
        });
    }
    if a.numel() == 0 {
        return Ok((0, 0.0));
    }
    let disagree = a
        .f_argmax(1, false)?
        .f_ne_tensor(&b.f_argmax(1, false)?)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])? as usize;
    let diff = a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?;
    Ok((disagree, diff))
}

fn count(v: &[bool]) -> usize {
    v.iter().filter(|b| **b).count()
}

fn share(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

/// Numbers the stages and forwards per-batch progress to the caller.
struct StageReporter<'a> {
    stages: usize,
    current: Progress,
    sink: &'a mut dyn FnMut(&Progress),
}

impl<'a> StageReporter<'a> {
    fn new(stages: usize, sink: &'a mut dyn FnMut(&Progress)) -> Self {
        Self {
            stages,
            current: Progress {
                stage: Stage::Clean,
                stage_index: 0,
                stages,
                done: 0,
                total: 0,
            },
            sink,
        }
    }

    fn begin(&mut self, stage: Stage, total: usize) {
        self.current = Progress {
            stage,
            stage_index: self.current.stage_index + 1,
            stages: self.stages,
            done: 0,
            total,
        };
        (self.sink)(&self.current);
    }

    fn advance(&mut self, rows: usize) {
        self.current.done += rows;
        (self.sink)(&self.current);
    }
}
