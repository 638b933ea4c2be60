//! The robust-accuracy-vs-eps curve (`eval.eps_curve`), measured by one of two protocols (`eval.curve_protocol`).
//!
//! - `sweep` (the default, about one attack's cost): the verdict at `threat.eps` is the configured attacks' worst
//!   case, reused as it is (the anchor). Each sample then moves outward from the anchor, one radius at a time. One
//!   that held is attacked at the next larger radius, until it breaks: a break counts at every larger radius (the
//!   larger ball contains the smaller one, so this part is a proof). One that broke is attacked at the next smaller
//!   radius, until it holds: a hold is taken to hold at every smaller radius (an assumption, not a proof, which the
//!   report states). Below the anchor, a sample whose verified adversarial example (from any attack, FAB's minimal
//!   perturbations especially) already lies within a radius is broken there without an attack; else that example,
//!   projected onto the smaller ball, is tried first (one scorer pass: a sound break when it still fools the model,
//!   since the projection lies in the ball) and the sample is attacked only when it does not. The curve's PGD
//!   takes `eval.curve_steps` steps with the step size that keeps `eval.pgd`'s total travel, and a sample leaves it
//!   at its first misclassified iterate ([`Keep::FirstAdversarial`]). With `eval.curve_start: warm` (the default)
//!   it starts where the sweep already is for the sample instead of at a random point: below the anchor at that
//!   projection, above it at the last iterate of the attack the sample withstood one radius down (the anchor's
//!   attacks' own iterate first), so the attacks at successive radii continue one another. The curve is monotone
//!   by construction. With no configured attack there is no verdict to reuse: the sweep then starts at radius 0
//!   (clean accuracy) and goes up.
//! - `independent`: `eval.pgd` on every clean-correct sample at every radius, each radius on its own (what other
//!   tools report; the only protocol whose curve can come out non-monotone, which the trust checks flag).
//!
//! Every verdict is the scorer's (the caller's attack function re-scores the examples).

use std::time::Instant;

use tch::Tensor;

use super::result::CurveInfo;
use super::{CurveProtocol, CurveStart, EvalError, EvalPlan};
use crate::attack::noise::derive_seed;
use crate::attack::pgd::{Keep, PgdParams};
use crate::attack::Attack;

/// What the curve starts from.
pub(super) struct Verdicts<'a> {
    pub clean_correct: &'a [bool],
    /// The configured attacks' worst case at `plan.eps` with their names; `None` when no attack ran.
    pub anchor: Option<(&'a [bool], Vec<String>)>,
    /// What is known of each sample's adversarial examples; the curve's own attacks add to it.
    pub known: Known<'a>,
}

/// Per sample, the verified adversarial example with the smallest perturbation found so far.
pub(super) struct Known<'a> {
    /// Its perturbation in the threat norm; infinite when none was found.
    pub min_norm: &'a mut [f64],
    /// The example itself (`[C, H, W]`, CPU) where it was kept (see [`ExampleStore`]).
    pub examples: &'a mut ExampleStore,
}

impl Known<'_> {
    /// Records a verified adversarial example of sample `i` when it is the smallest so far.
    pub fn record(&mut self, i: usize, norm: f64, x_adv: impl FnOnce() -> Option<Tensor>) {
        if norm < self.min_norm[i] {
            self.min_norm[i] = norm;
            self.examples.keep(i, x_adv);
        }
    }

    /// Records the last iterate of an attack sample `i` withstood, while no adversarial example of it is known:
    /// the warm start of its attack at the next larger radius.
    pub fn record_iterate(&mut self, i: usize, x: impl FnOnce() -> Option<Tensor>) {
        if self.min_norm[i].is_infinite() {
            self.examples.keep(i, x);
        }
    }
}

/// One point per sample, within a memory budget (an evaluation of 10 000 large images must not hold 10 000 more
/// of them): its smallest verified adversarial example, which the sweep projects onto smaller balls, or, while it
/// has none, the last iterate of an attack it withstood, where the sweep's attack at a larger radius starts. A
/// sample whose point does not fit is judged at the other radii as if it had none.
pub(super) struct ExampleStore {
    rows: Vec<Option<Tensor>>,
    bytes: usize,
    budget: usize,
}

/// What [`ExampleStore`] may hold by default.
pub(super) const EXAMPLE_BUDGET_BYTES: usize = 256 << 20;

impl ExampleStore {
    /// A store for `n` samples holding up to `budget` bytes; `budget` 0 keeps nothing.
    pub fn new(n: usize, budget: usize) -> Self {
        Self {
            rows: (0..n).map(|_| None).collect(),
            bytes: 0,
            budget,
        }
    }

    fn keep(&mut self, i: usize, x_adv: impl FnOnce() -> Option<Tensor>) {
        if self.budget == 0 {
            return;
        }
        let Some(x) = x_adv() else { return };
        let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let size = bytes(&x);
        let freed = self.rows[i].as_ref().map_or(0, bytes);
        if self.bytes - freed + size > self.budget {
            return;
        }
        self.bytes = self.bytes - freed + size;
        self.rows[i] = Some(x);
    }

    fn get(&self, i: usize) -> Option<Tensor> {
        self.rows[i].as_ref().map(Tensor::shallow_clone)
    }
}

/// A verified adversarial example the curve's attack function found for one row.
pub(super) struct Found {
    /// Its perturbation in the threat norm.
    pub norm: f64,
    /// The example, `[C, H, W]` on the CPU.
    pub x_adv: Tensor,
    /// It is the row's candidate projected onto the radius's ball, not an attack's result.
    pub projected: bool,
}

/// What the sweep knows of each row of a stage before attacking it.
#[derive(Default)]
pub(super) struct Starts {
    /// Empty, or one entry per row: a point near the row (an adversarial example from a larger radius, or the
    /// last iterate of an attack it withstood at a smaller one).
    pub points: Vec<Option<Tensor>>,
    /// The points are adversarial examples: each, projected onto the stage's ball, is judged first (one scorer
    /// pass), and its row is attacked only when that projection does not fool the scorer.
    pub try_first: bool,
    /// The attack starts each row with a point there (projected onto the ball) instead of a random start
    /// (`eval.curve_start: warm`).
    pub warm: bool,
    /// The next radius's attack starts from the last iterate of each row that holds here (warm, upward), so the
    /// outcome carries it; elsewhere it would be copied only to be dropped.
    pub keep_held: bool,
}

/// How a row of a curve stage came out: broken, with its verified example, or held, with the last iterate of
/// the attack it withstood (when one ran, [`Starts::keep_held`] asked for it, and it could be copied).
pub(super) enum Outcome {
    Broken(Found),
    Held(Option<Tensor>),
}

/// Judges the samples `rows` at radius `eps` (reporting the stage `Curve(eps)`; called once per entry of
/// `eval.eps_curve`, with no rows where the verdict needs no attack), given what [`Starts`] says of them, with
/// the given attack. Returns one outcome per row.
pub(super) type AttackAt<'a> =
    dyn FnMut(f64, &Attack, &[usize], &Starts) -> Result<Vec<Outcome>, EvalError> + 'a;

/// The curve: per radius of `eval.eps_curve` (in its order) the samples held there, and the report's record.
pub(super) struct Curve {
    pub held: Vec<(f64, Vec<bool>)>,
    pub info: Option<CurveInfo>,
}

/// Measures the curve of `plan` from `verdicts`, attacking through `attack_at`.
pub(super) fn measure(
    plan: &EvalPlan,
    verdicts: Verdicts<'_>,
    attack_at: &mut AttackAt<'_>,
) -> Result<Curve, EvalError> {
    if plan.eps_curve.is_empty() {
        return Ok(Curve {
            held: Vec::new(),
            info: None,
        });
    }
    let started = Instant::now();
    let (params, factor) = curve_pgd(plan);
    let mut tally = Tally::default();
    let (held, anchor, anchor_attacks) = match plan.curve_protocol {
        CurveProtocol::Independent => (
            independent(plan, &verdicts, &params, attack_at, &mut tally)?,
            None,
            Vec::new(),
        ),
        CurveProtocol::Sweep => {
            let (eps, names) = match &verdicts.anchor {
                Some((_, names)) => (plan.eps, names.clone()),
                None => (0.0, Vec::new()),
            };
            (
                sweep(plan, verdicts, eps, &params, attack_at, &mut tally)?,
                Some(eps),
                names,
            )
        }
    };
    Ok(Curve {
        held,
        info: Some(CurveInfo {
            protocol: plan.curve_protocol,
            start: (plan.curve_protocol == CurveProtocol::Sweep).then_some(plan.curve_start),
            anchor,
            anchor_attacks,
            steps: params.steps,
            restarts: params.restarts,
            step_size_factor: factor,
            keep: match params.keep {
                Keep::FirstAdversarial => "first-adversarial",
                _ => "adversarial",
            }
            .into(),
            attacked: tally.attacked,
            from_perturbation: tally.from_perturbation,
            from_projection: tally.from_projection,
            seconds: started.elapsed().as_secs_f64(),
        }),
    })
}

/// The curve's PGD at radius 1 (the radius is set per call) and its step size as a fraction of the radius:
/// `sweep` takes `eval.curve_steps` steps of the size that keeps `eval.pgd`'s total travel; `independent` is
/// `eval.pgd` as configured.
fn curve_pgd(plan: &EvalPlan) -> (PgdParams, f64) {
    let spec = &plan.curve_pgd;
    let seed = derive_seed(plan.seed, "pgd");
    let (steps, factor, keep) = match plan.curve_protocol {
        CurveProtocol::Independent => (spec.steps, spec.step_size_factor, Keep::Adversarial),
        CurveProtocol::Sweep => {
            let steps = plan.curve_steps.max(1);
            let travel = spec.step_size_factor * spec.steps as f64;
            (steps, travel / steps as f64, Keep::FirstAdversarial)
        }
    };
    let mut spec = spec.clone();
    spec.steps = steps;
    spec.step_size_factor = factor;
    (
        PgdParams::from_spec(&spec, plan.norm, 1.0, seed, keep),
        factor,
    )
}

#[derive(Default)]
struct Tally {
    attacked: usize,
    from_perturbation: usize,
    from_projection: usize,
}

/// Judges `rows` at `eps` (see [`AttackAt`]) and records in `known` what broke, and the last iterates of what
/// held; the broken rows come back.
fn attack_rows(
    eps: f64,
    params: &PgdParams,
    rows: &[usize],
    starts: &Starts,
    known: &mut Known<'_>,
    attack_at: &mut AttackAt<'_>,
    tally: &mut Tally,
) -> Result<Vec<bool>, EvalError> {
    let attack = Attack::Pgd(PgdParams {
        eps,
        step_size: params.step_size * eps,
        ..params.clone()
    });
    let outcomes = attack_at(eps, &attack, rows, starts)?;
    let projected = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Broken(f) if f.projected))
        .count();
    tally.from_projection += projected;
    tally.attacked += rows.len() - projected;
    Ok(rows
        .iter()
        .zip(outcomes)
        .map(|(&i, outcome)| match outcome {
            Outcome::Broken(f) => {
                known.record(i, f.norm, || Some(f.x_adv));
                true
            }
            Outcome::Held(last) => {
                known.record_iterate(i, || last);
                false
            }
        })
        .collect())
}

/// Reports the stage of radius `eps` with no rows (its verdict needs no attack).
fn no_rows(
    eps: f64,
    params: &PgdParams,
    known: &mut Known<'_>,
    attack_at: &mut AttackAt<'_>,
    tally: &mut Tally,
) -> Result<(), EvalError> {
    attack_rows(
        eps,
        params,
        &[],
        &Starts::default(),
        known,
        attack_at,
        tally,
    )
    .map(|_| ())
}

/// The points `known` holds for `rows` (see [`ExampleStore`]), as a stage's [`Starts`].
fn starts_of(known: &Known<'_>, rows: &[usize], try_first: bool, warm: bool) -> Starts {
    if !(try_first || warm) {
        return Starts::default();
    }
    Starts {
        points: rows.iter().map(|&i| known.examples.get(i)).collect(),
        try_first,
        warm,
        keep_held: false,
    }
}

fn independent(
    plan: &EvalPlan,
    verdicts: &Verdicts<'_>,
    params: &PgdParams,
    attack_at: &mut AttackAt<'_>,
    tally: &mut Tally,
) -> Result<Vec<(f64, Vec<bool>)>, EvalError> {
    let correct: Vec<usize> = rows_where(verdicts.clean_correct, |_, c| c);
    let n = verdicts.clean_correct.len();
    let mut scratch_norm = vec![f64::INFINITY; n];
    let mut scratch_examples = ExampleStore::new(n, 0);
    let mut scratch = Known {
        min_norm: &mut scratch_norm,
        examples: &mut scratch_examples,
    };
    let mut out = Vec::with_capacity(plan.eps_curve.len());
    for &eps in &plan.eps_curve {
        let mut held = verdicts.clean_correct.to_vec();
        let targets: &[usize] = if eps > 0.0 { &correct } else { &[] };
        let none = Starts::default();
        let broken = attack_rows(eps, params, targets, &none, &mut scratch, attack_at, tally)?;
        for (&i, b) in targets.iter().zip(broken) {
            held[i] &= !b;
        }
        out.push((eps, held));
    }
    Ok(out)
}

fn sweep(
    plan: &EvalPlan,
    verdicts: Verdicts<'_>,
    anchor: f64,
    params: &PgdParams,
    attack_at: &mut AttackAt<'_>,
    tally: &mut Tally,
) -> Result<Vec<(f64, Vec<bool>)>, EvalError> {
    let Verdicts {
        clean_correct,
        anchor: anchor_verdict,
        mut known,
    } = verdicts;
    let anchor_held: Vec<bool> = match &anchor_verdict {
        Some((held, _)) => held.to_vec(),
        None => clean_correct.to_vec(),
    };
    let mut radii: Vec<f64> = plan.eps_curve.clone();
    radii.sort_by(f64::total_cmp);
    radii.dedup();
    let mut found: Vec<(f64, Vec<bool>)> = Vec::with_capacity(radii.len());

    // At the anchor (and at radius 0) the verdict is known.
    for &eps in radii.iter().filter(|&&e| e == anchor || e <= 0.0) {
        no_rows(eps, params, &mut known, attack_at, tally)?;
        let held = if eps == anchor {
            anchor_held.clone()
        } else {
            clean_correct.to_vec()
        };
        found.push((eps, held));
    }
    // Upward: samples still held are attacked at the next radius (warm: from the last iterate of the attack they
    // withstood); a break holds at every larger one.
    let warm = plan.curve_start == CurveStart::Warm;
    let mut state = anchor_held.clone();
    for &eps in radii.iter().filter(|&&e| e > anchor) {
        let targets = rows_where(&state, |_, held| held);
        let starts = Starts {
            // What holds here is where the next radius's warm attack starts.
            keep_held: warm,
            ..starts_of(&known, &targets, false, warm)
        };
        let broken = attack_rows(eps, params, &targets, &starts, &mut known, attack_at, tally)?;
        for (&i, b) in targets.iter().zip(broken) {
            state[i] &= !b;
        }
        found.push((eps, state.clone()));
    }
    // Downward: samples broken so far are judged at the next smaller radius (their example projected, then an
    // attack, warm: from that projection), unless an example already found lies within it; a hold is taken to
    // hold at every smaller radius.
    let mut state = anchor_held;
    for &eps in radii.iter().rev().filter(|&&e| e < anchor && e > 0.0) {
        let mut targets = Vec::new();
        for i in rows_where(&state, |i, held| !held && clean_correct[i]) {
            if known.min_norm[i] <= eps {
                tally.from_perturbation += 1;
            } else {
                targets.push(i);
            }
        }
        let starts = starts_of(&known, &targets, true, warm);
        let broken = attack_rows(eps, params, &targets, &starts, &mut known, attack_at, tally)?;
        for (&i, b) in targets.iter().zip(broken) {
            state[i] = !b;
        }
        found.push((eps, state.clone()));
    }
    // Back in the configured order; a radius listed twice is reported twice (its stage with no rows).
    let mut out = Vec::with_capacity(plan.eps_curve.len());
    let mut reported = Vec::new();
    for &eps in &plan.eps_curve {
        if reported.contains(&eps.to_bits()) {
            no_rows(eps, params, &mut known, attack_at, tally)?;
        }
        reported.push(eps.to_bits());
        let held = found
            .iter()
            .find(|(e, _)| *e == eps)
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| clean_correct.to_vec());
        out.push((eps, held));
    }
    Ok(out)
}

/// Positions `i` where `keep(i, v[i])`.
fn rows_where(v: &[bool], keep: impl Fn(usize, bool) -> bool) -> Vec<usize> {
    (0..v.len()).filter(|&i| keep(i, v[i])).collect()
}
