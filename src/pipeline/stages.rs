//! The pipeline's stages, one function each. Every stage takes the [`Subject`] and returns the report section it
//! owns; files go into the job's output directory under fixed names ([`files`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::runner::report_eval_progress;
use super::{parity_tolerance, PipelineError, Subject};
use crate::config::{Config, Method, Norm};
use crate::eval::{self, EvalPlan, EvalResult, PerSample};
use crate::job::Progress;
use crate::model::{Classifier, Scorer};
use crate::onnx::{OrtScorer, TchModel};
use crate::report::plots::{self, Series, TradeoffPoint};
use crate::report::ThreatModelInfo;
use crate::train::{self, Atypicality, TrainResult, TrainRun};

/// Names of the files a job writes, relative to its output directory.
pub mod files {
    pub const TRAIN_LOG: &str = "train_log.csv";
    pub const PLOT_ROBUST_VS_EPS: &str = "plots/robust_vs_eps.png";
    pub const PLOT_TRAINING: &str = "plots/training.png";
    pub const PLOT_TRADEOFF: &str = "plots/tradeoff.png";
    /// In the job's checkpoint directory: the atypicality outcome.
    pub const ATYPICALITY_CHECKPOINT: &str = "atypicality.yaml";

    /// `per_sample_before.npz` / `per_sample_after.npz`.
    pub fn per_sample(tag: &str) -> String {
        format!("per_sample_{tag}.npz")
    }

    /// `adversarial_before.npz` / `adversarial_after.npz`: the adversarial examples of broken samples.
    pub fn adversarial(tag: &str) -> String {
        format!("adversarial_{tag}.npz")
    }

    /// `plots/adversarial_before.png` / `plots/adversarial_after.png`: a grid of those examples.
    pub fn adversarial_grid(tag: &str) -> String {
        format!("plots/adversarial_{tag}.png")
    }

    /// `<stem>.<method>.onnx`, e.g. `fmnist_cnn.bat.onnx`.
    pub fn fine_tuned(stem: &str, method: &str) -> String {
        format!("{stem}.{method}.onnx")
    }
}

/// The outcome of one evaluation: the report block, and the per-sample results (saved as npz).
pub struct Evaluated {
    pub result: EvalResult,
    pub per_sample: PerSample,
}

/// What an evaluation runs on: the interpreter (gradient attacks), or onnxruntime alone (score-based, for a graph
/// robustd cannot differentiate; the class count from [`Subject::probe_classes`]).
pub enum Evaluee<'m> {
    WhiteBox(&'m mut TchModel),
    ScoreBased { classes: i64 },
}

/// Evaluates the model (tch for gradients, when white-box) against `scorer` (onnxruntime on the file judged, for
/// the verdicts; the caller's session, so each file gets one) with the configured protocol, and saves per-sample results as `per_sample_<tag>.npz` in `out_dir`, the adversarial
/// examples as `adversarial_<tag>.npz` and their grid as `plots/adversarial_<tag>.png` (a grid that cannot be drawn
/// is a warning in the log, not a failure).
pub fn evaluate(
    subject: &Subject,
    model: Evaluee<'_>,
    scorer: &mut OrtScorer,
    out_dir: &Path,
    tag: &str,
    progress: &Progress,
) -> Result<Evaluated, PipelineError> {
    let plan = EvalPlan::from_config(&subject.config)?;
    progress.part("eval set");
    let set = subject.eval_set()?;
    // Each evaluation stage (batch size, clean, checks, every attack, every curve radius) is a part of the job's stage.
    let mut current = 0;
    let mut report = |p: &eval::Progress| {
        if p.stage_index != current {
            current = p.stage_index;
            progress.part(&p.stage.to_string());
        }
        report_eval_progress(progress, p);
    };
    let eval::Evaluation {
        mut result,
        per_sample,
        examples,
    } = match model {
        Evaluee::WhiteBox(model) => eval::evaluate(model, scorer, &set, &plan, &mut report)?,
        Evaluee::ScoreBased { classes } => {
            let shape = eval::Shape {
                chw: subject.dataset.chw,
                classes,
            };
            eval::evaluate_score_based(shape, scorer, &set, &plan, &mut report)?
        }
    };
    progress.part("per-sample and example files");
    let rel = files::per_sample(tag);
    per_sample.save_npz(&out_dir.join(&rel))?;
    result.reproducibility.per_sample_file = Some(rel);
    if plan.examples.max > 0 {
        let rel = files::adversarial(tag);
        examples.save_npz(&out_dir.join(&rel))?;
        let grid_rel = files::adversarial_grid(tag);
        let grid = match plots::adversarial_grid(
            &out_dir.join(&grid_rel),
            &examples,
            plan.examples.grid,
        ) {
            Ok(()) => Some(grid_rel),
            Err(e) => {
                tracing::info!("{grid_rel} not drawn: {e}");
                None
            }
        };
        let broken = per_sample
            .clean_correct()
            .iter()
            .zip(&per_sample.worst_case_robust)
            .filter(|(correct, robust)| **correct && !**robust)
            .count();
        result.adversarial_examples = Some(eval::result::ExamplesFiles {
            saved: examples.len(),
            broken,
            file: rel,
            grid,
        });
    }
    Ok(Evaluated { result, per_sample })
}

/// Warnings about an evaluation a person should see in the summary: the trust checks, and clean accuracy near
/// chance — almost always a wrong normalization, layout or dataset when the model was given so; but when `before`
/// (the model as given) was well above chance, it is the fine-tuning that collapsed the model.
pub fn summary_warnings(
    tag: &str,
    result: &EvalResult,
    classes: i64,
    before_clean_acc: Option<f64>,
) -> Vec<String> {
    let mut out: Vec<String> = result
        .warnings
        .iter()
        .map(|w| format!("{tag}: {}", w.message))
        .collect();
    let chance = 1.0 / classes.max(1) as f64;
    if near_chance(result, classes) {
        match before_clean_acc.filter(|&b| b >= 1.5 * chance) {
            Some(b) => out.push(format!(
                "{tag}: clean accuracy {:.3} is near chance ({chance:.3}) after fine-tuning, {:.3} before: the \
                 training collapsed the model; lower train.optimizer.lr (or train.trades_beta / train.bat.beta), \
                 or add a warm-up (train.optimizer.warmup_epochs)",
                result.clean_acc, b
            )),
            None => out.push(format!(
                "{tag}: clean accuracy {:.3} is near chance ({chance:.3}): check model.mean/std, \
                 model.input_layout and dataset.name",
                result.clean_acc
            )),
        }
    }
    out
}

/// Clean accuracy below 1.5× chance.
pub fn near_chance(result: &EvalResult, classes: i64) -> bool {
    result.samples > 0 && result.clean_acc < 1.5 / classes.max(1) as f64
}

/// Which training samples are atypical, and what else the source tells the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SavedAtypicality", into = "SavedAtypicality")]
pub struct AtypicalityOutcome {
    pub flags: Atypicality,
    /// τ the flags were cut at (also for the test groups).
    pub threshold: f64,
    /// The report's `memorization:` section (estimator, budget, self-checks).
    pub memorization: crate::report::Memorization,
    /// The estimator's self-check warnings, for the summary.
    pub warnings: Vec<String>,
    /// Test-sample consistency (dataset index, score), for the test groups.
    pub consistency: Option<(Vec<i64>, Vec<f64>)>,
}

/// [`AtypicalityOutcome`] as a job's checkpoint keeps it (`atypicality.yaml`): the flags as the positions of the
/// atypical samples, a short list where the flags would be one line per training sample.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedAtypicality {
    samples: usize,
    atypical: Vec<usize>,
    source: String,
    flag_threshold: Option<f64>,
    scored: usize,
    threshold: f64,
    memorization: crate::report::Memorization,
    warnings: Vec<String>,
    consistency: Option<(Vec<i64>, Vec<f64>)>,
}

impl From<AtypicalityOutcome> for SavedAtypicality {
    fn from(o: AtypicalityOutcome) -> Self {
        Self {
            samples: o.flags.flags.len(),
            atypical: (o.flags.flags.iter().enumerate())
                .filter_map(|(i, &f)| f.then_some(i))
                .collect(),
            source: o.flags.source,
            flag_threshold: o.flags.threshold,
            scored: o.flags.scored,
            threshold: o.threshold,
            memorization: o.memorization,
            warnings: o.warnings,
            consistency: o.consistency,
        }
    }
}

impl From<SavedAtypicality> for AtypicalityOutcome {
    fn from(s: SavedAtypicality) -> Self {
        let mut flags = vec![false; s.samples];
        for i in s.atypical.into_iter().filter(|&i| i < s.samples) {
            flags[i] = true;
        }
        Self {
            flags: Atypicality {
                flags,
                source: s.source,
                threshold: s.flag_threshold,
                scored: s.scored,
            },
            threshold: s.threshold,
            memorization: s.memorization,
            warnings: s.warnings,
            consistency: s.consistency,
        }
    }
}

/// [`atypicality`], kept in the job's checkpoint directory (`atypicality.yaml`) once known, so a resumed job takes
/// the same outcome — the report's `memorization:` section included — whatever became of the estimator's cache.
pub fn resumable_atypicality(
    subject: &Subject,
    checkpoint_dir: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<Option<AtypicalityOutcome>, PipelineError> {
    let saved = checkpoint_dir.join(files::ATYPICALITY_CHECKPOINT);
    if let Ok(outcome) = crate::durable::read_yaml::<AtypicalityOutcome>(&saved) {
        tracing::info!("atypicality reused from the job's checkpoint");
        return Ok(Some(outcome));
    }
    let outcome = atypicality(subject, cancel)?;
    if let Some(o) = &outcome {
        crate::durable::write_yaml_atomic(&saved, o)?;
        crate::failpoint::point(crate::failpoint::ATYPICALITY_CHECKPOINTED);
    }
    Ok(outcome)
}

/// Which training samples are atypical, when the method needs to know (BAT and its reweighting ablation): the
/// memorization estimator in force (`memorization.estimator`, or the shorthand in `train.bat.atypicality`), cached
/// across models of one architecture, thresholded at its τ.
pub fn atypicality(
    subject: &Subject,
    cancel: Option<&AtomicBool>,
) -> Result<Option<AtypicalityOutcome>, PipelineError> {
    let cfg = &subject.config;
    let objective = train::Objective::from_spec(&cfg.train)?;
    if !objective.needs_atypicality() {
        return Ok(None);
    }
    let mut factory = crate::memo::onnx_factory(
        &subject.onnx,
        subject.adapter.clone(),
        cfg.model.input_layout,
        subject.device,
    );
    let (_scored, estimate) = crate::memo::estimate_from_config(
        cfg,
        &subject.dataset,
        subject.onnx.structure_hash(),
        &mut factory,
        cancel,
    )?;
    let threshold = estimate.threshold(crate::memo::effective_spec(cfg).threshold);
    let memorization = estimate.report_section(threshold, Vec::new());
    let warnings = memorization
        .self_check
        .iter()
        .flat_map(|c| c.warnings.iter())
        .map(|w| format!("memorization: {w}"))
        .collect();
    Ok(Some(AtypicalityOutcome {
        flags: crate::memo::bat_atypicality(&estimate, &subject.dataset.train, threshold),
        threshold,
        memorization,
        warnings,
        consistency: estimate.consistency.map(|c| (c.indices, c.scores)),
    }))
}

/// Typical vs atypical accuracy of the evaluated test samples (atypical = low consistency under the estimator's
/// models), from an evaluation's per-sample results.
pub fn test_groups(
    per_sample: &PerSample,
    consistency: &(Vec<i64>, Vec<f64>),
    threshold: f64,
) -> Option<crate::report::Groups> {
    crate::memo::groups::test_groups_from_eval(
        per_sample,
        &consistency.0,
        &consistency.1,
        threshold,
    )
    .map(|pair| crate::report::Groups {
        train: None,
        test: Some(pair),
        train_deciles: Vec::new(),
    })
}

fn model_error(message: String) -> train::TrainError {
    train::TrainError::Model(crate::model::ModelError::Forward(message))
}

/// Fine-tunes `model` in place with the configured method; checkpoints in `checkpoint_dir` (resumed from when
/// present), with the CSV log that grows epoch by epoch. The log in `out_dir` is written from the run's epoch
/// records once it ends, so a run resumed after its last epoch (nothing left to train) has it too. The returned
/// result's `log` is relative to `out_dir`.
pub fn finetune(
    subject: &Subject,
    model: &mut TchModel,
    atypicality: Option<&Atypicality>,
    checkpoint_dir: &Path,
    out_dir: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<TrainResult, PipelineError> {
    let cfg = &subject.config;
    let mut run = TrainRun::new(
        &cfg.train,
        &cfg.threat,
        cfg.runtime.seed,
        subject.dataset.augmentation,
    )?;
    run.atypicality = atypicality;
    run.checkpoint_dir = Some(checkpoint_dir.to_path_buf());
    run.log_csv = Some(checkpoint_dir.join(files::TRAIN_LOG));
    run.cancel = cancel;
    run.claim = subject.claim.as_deref().map(train::Claim);
    let mut result = train::train(model, &subject.dataset.train, &run)?;
    train::record::write_csv(&out_dir.join(files::TRAIN_LOG), &result.curves)?;
    result.log = Some(PathBuf::from(files::TRAIN_LOG));
    Ok(result)
}

/// The fine-tuned file [`write_back`] wrote, and the onnxruntime session it was checked with (the one the
/// evaluation after goes on with).
pub struct WrittenBack {
    /// Relative to the output directory.
    pub file: String,
    /// The measured max |logit diff| between tch and onnxruntime.
    pub parity: f64,
    pub scorer: OrtScorer,
}

/// Writes the trained weights back into the original graph (`<stem>.<method>.onnx` in `out_dir`) and checks that
/// onnxruntime on the new file gives tch's logits within the tolerance of the model's form
/// ([`parity_tolerance`]).
pub fn write_back(
    subject: &Subject,
    model: &mut TchModel,
    method: Method,
    out_dir: &Path,
) -> Result<WrittenBack, PipelineError> {
    let method_name = method_name(method);
    let rel = files::fine_tuned(&subject.stem(), method_name);
    let out = out_dir.join(&rel);
    crate::onnx::write_back(
        &subject.onnx,
        model,
        &out,
        &[("robustd.method", method_name)],
    )?;
    model.set_train(false);
    let test = &subject.dataset.test;
    let n = test.len().min(64) as i64;
    let x = test
        .images(&(0..n).collect::<Vec<_>>())?
        .f_to_device(tch::Device::Cpu)?;
    let tch_logits = {
        let _guard = tch::no_grad_guard();
        model
            .forward(&x.f_to_device(subject.device)?)
            .map_err(|e| model_error(e.to_string()))?
            .f_to_device(tch::Device::Cpu)?
    };
    let mut scorer = subject.scorer(&out)?;
    let ort_logits = scorer.logits(&x).map_err(|e| model_error(e.to_string()))?;
    let diff = (tch_logits.f_sub(&ort_logits)?)
        .f_abs()?
        .f_max()?
        .f_double_value(&[])?;
    let tolerance = parity_tolerance(&subject.form(), &tch_logits);
    if diff.is_nan() || diff > tolerance {
        return Err(PipelineError::Parity {
            model: out,
            diff,
            tolerance,
            hint: super::parity_hint(&subject.form()),
        });
    }
    Ok(WrittenBack {
        file: rel,
        parity: diff,
        scorer,
    })
}

/// The report's threat model (norm and radius) from the config.
pub fn threat_model(config: &Config) -> ThreatModelInfo {
    ThreatModelInfo {
        norm: match config.threat.norm {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
        .into(),
        eps: config.threat.eps,
    }
}

/// The config name of a method (`bat`, `pgd-at`, ...).
pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::Standard => "standard",
        Method::PgdAt => "pgd-at",
        Method::Trades => "trades",
        Method::Bat => "bat",
        Method::BatReweightOnly => "bat-reweight-only",
        Method::BatRegOnly => "bat-reg-only",
        Method::None => "none",
    }
}

/// Draws the plots a job's results allow. A plot is an aid, not a result: one that fails becomes a warning (the
/// numbers are all in the report) and the job goes on. Returns the plots written (relative to `out_dir`) and the
/// warnings.
pub fn plots(
    out_dir: &Path,
    before: &EvalResult,
    after: Option<(&EvalResult, &str)>,
    training: Option<&TrainResult>,
) -> (Vec<String>, Vec<String>) {
    // The adversarial-example grids were drawn with the evaluation (they need its tensors); listed here.
    let mut written: Vec<String> = std::iter::once(before)
        .chain(after.map(|(a, _)| a))
        .filter_map(|r| r.adversarial_examples.as_ref().and_then(|e| e.grid.clone()))
        .collect();
    let mut warnings = Vec::new();
    let mut attempt = |rel: &str, result: Result<(), plots::PlotError>| match result {
        Ok(()) => written.push(rel.to_owned()),
        Err(e) => warnings.push(format!("plot {rel} not drawn: {e}")),
    };
    let curve = |label: &str, r: &EvalResult| Series {
        label: label.to_owned(),
        points: r.robust_acc_vs_eps.0.clone(),
    };
    let mut series = vec![curve("before", before)];
    if let Some((a, method)) = after {
        series.push(curve(&format!("after ({method})"), a));
    }
    if series.iter().any(|s| !s.points.is_empty()) {
        let rel = files::PLOT_ROBUST_VS_EPS;
        attempt(rel, plots::robust_acc_vs_eps(&out_dir.join(rel), &series));
    }
    if let Some(t) = training.filter(|t| !t.curves.is_empty()) {
        let rel = files::PLOT_TRAINING;
        let (losses, accuracies) = training_series(t);
        attempt(
            rel,
            plots::training_curves(&out_dir.join(rel), &losses, &accuracies),
        );
    }
    if let Some((a, method)) = after {
        let point = |label: &str, r: &EvalResult| TradeoffPoint {
            label: label.to_owned(),
            clean: r.clean_acc,
            clean_err: 0.0,
            robust: r.worst_case_acc,
            robust_err: 0.0,
        };
        let rel = files::PLOT_TRADEOFF;
        attempt(
            rel,
            plots::tradeoff_scatter(
                &out_dir.join(rel),
                &[point("before", before), point(method, a)],
            ),
        );
    }
    (written, warnings)
}

/// Loss and accuracy curves of a run, one series per measured quantity.
fn training_series(t: &TrainResult) -> (Vec<Series>, Vec<Series>) {
    let series = |label: &str, pick: &dyn Fn(&train::EpochRecord) -> Option<f64>| Series {
        label: label.to_owned(),
        points: t
            .curves
            .iter()
            .filter_map(|r| pick(r).map(|v| (r.epoch as f64, v)))
            .collect(),
    };
    let losses = vec![series("training loss", &|r| Some(r.loss))];
    let accuracies = [
        series("val clean", &|r| r.val_clean_acc),
        series("val robust (PGD)", &|r| r.val_robust_acc),
        series("train adversarial", &|r| r.train_adv_acc),
        series("train clean", &|r| r.train_clean_acc),
    ]
    .into_iter()
    .filter(|s| !s.points.is_empty())
    .collect();
    (losses, accuracies)
}

/// Number of classes the model outputs (from the interpreter's probe).
pub fn classes(model: &TchModel) -> i64 {
    model.num_classes()
}
