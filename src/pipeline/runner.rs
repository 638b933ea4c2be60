//! The whole job in order — evaluate, find atypical samples, fine-tune, write back, evaluate again — as the
//! daemon's [`JobRunner`], and as a plain function the CLI calls. A job resumed after a restart starts with an empty
//! output directory (the store sweeps half-made ones), so whatever a later stage needs from an earlier one is in the
//! job's checkpoint directory or recomputed: the first evaluation and the atypicality outcome are kept there once
//! known (the memorization estimate also in its own cache, `paths.state/memo`), training resumes from its per-epoch
//! checkpoint and rewrites its log into the output from the epoch records, and the rest is recomputed.

use std::path::Path;

use super::stages::{self, method_name, Evaluated, Evaluee};
use super::subject::Engine;
use super::{PipelineError, Subject};
use crate::config::{Config, Method};
use crate::durable;
use crate::eval::{self, EvalResult, PerSample};
use crate::failpoint;
use crate::job::{CancelToken, Job, JobContext, JobError, JobOutcome, JobRunner, Progress};
use crate::report::{AccuracySummary, Evaluation, Summary, Verdict};
use crate::train::TrainError;

/// Robust-accuracy change below which a fine-tuning counts as `unchanged`.
pub const VERDICT_TOLERANCE: f64 = 0.005;

/// The full pipeline as a daemon job runner.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineRunner;

impl JobRunner for PipelineRunner {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn run(&self, job: &Job, ctx: &JobContext) -> Result<JobOutcome, JobError> {
        run(
            &job.model_path(),
            Some(&job.record.dropped_as),
            &ctx.config,
            &ctx.output_dir,
            &ctx.checkpoint_dir,
            &ctx.cancel,
            &ctx.progress,
        )
    }
}

/// Runs every stage on `model` and returns the report sections. `display_name` is the name the user gave the
/// file (the daemon's spool copy may be named differently).
pub fn run(
    model: &Path,
    display_name: Option<&str>,
    config: &Config,
    out_dir: &Path,
    checkpoint_dir: &Path,
    cancel: &CancelToken,
    progress: &Progress,
) -> Result<JobOutcome, JobError> {
    let failed = |stage: &'static str| move |e: PipelineError| stage_error(stage, e, cancel);
    progress.stage("prepare");
    let mut subject = Subject::load_timed(model, config, &|part| progress.part(part))
        .map_err(failed("prepare"))?;
    if let Some(name) = display_name {
        subject.display_name = Some(name.to_owned());
    }
    // Forward passes stop once the job is cancelled (SIGTERM, limits.job_timeout_s), even inside an attack.
    let token = cancel.clone();
    subject.interrupt = Some(std::sync::Arc::new(move || token.is_cancelled()));
    // Training checkpoints go to a directory a shared queue may hand to another worker with the job.
    let token = cancel.clone();
    subject.claim = Some(std::sync::Arc::new(move || token.holds_claim()));
    progress.part("interpreter");
    let (mut tch_model, score_based) = match subject.engine().map_err(failed("prepare"))? {
        Engine::WhiteBox(model) => (Some(*model), None),
        Engine::ScoreBased(ops) => {
            tracing::info!(ops = %ops.join(", "), "score-based evaluation only");
            (None, Some(ops))
        }
    };
    let classes = match &tch_model {
        Some(model) => stages::classes(model),
        None => subject
            .scorer(model)
            .and_then(|mut scorer| subject.probe_classes(&mut scorer))
            .map_err(|e| PipelineError::Mismatch {
                model: model.to_path_buf(),
                message: format!(
                    "unsupported operators for robustd's interpreter ({}), and onnxruntime cannot run the \
                     model either, so not even a score-based evaluation is possible: {e}",
                    score_based.as_deref().unwrap_or_default().join(", ")
                ),
            })
            .map_err(failed("prepare"))?,
    };
    progress.part("model info");
    let mut model_info = subject.model_info(classes).map_err(failed("prepare"))?;
    model_info.file = subject.file_name();
    let form = subject.model_form(score_based.as_deref());
    let scope = subject.scope(&form);
    model_info.form = Some(form);
    std::fs::create_dir_all(out_dir)
        .and_then(|_| std::fs::create_dir_all(checkpoint_dir))
        .map_err(|source| {
            failed("prepare")(PipelineError::Read {
                path: out_dir.to_path_buf(),
                source,
            })
        })?;
    cancel.check()?;

    progress.stage("eval_before");
    let before = resumable_eval(
        &subject,
        match &mut tch_model {
            Some(m) => Evaluee::WhiteBox(m),
            None => Evaluee::ScoreBased { classes },
        },
        model,
        out_dir,
        checkpoint_dir,
        "before",
        progress,
    )
    .map_err(failed("eval_before"))?;
    cancel.check()?;

    let method = config.train.method;
    let mut warnings = stages::summary_warnings("before", &before.result, classes, None);
    let mut outcome = JobOutcome::new(
        Summary {
            model: subject.file_name(),
            verdict: Verdict::EvaluationOnly,
            threat_model: stages::threat_model(config),
            before: Some(accuracy(&before.result, None)),
            after: None,
            atypical_share: None,
            scope,
            warnings: Vec::new(),
            artifacts: Default::default(),
        },
        model_info,
    );
    outcome.dataset = Some(subject.dataset_info());
    outcome.per_sample = before.result.reproducibility.per_sample_file.clone();

    // Fine-tuning needs the interpreter and a form that allows it; otherwise the job ends evaluated.
    let tuning = match tch_model {
        Some(model) if method != Method::None => match subject.form().fine_tuning() {
            Ok(_) => Some(model),
            Err(refusal) => {
                warnings.push(format!("fine-tuning ({}) {refusal}", method_name(method)));
                None
            }
        },
        _ => {
            if method != Method::None {
                warnings.push(format!(
                    "fine-tuning ({}) skipped: score-based evaluation only, there are no gradients through \
                     this graph",
                    method_name(method)
                ));
            }
            None
        }
    };
    let Some(mut tch_model) = tuning else {
        progress.stage("plots");
        let (plots, plot_warnings) = stages::plots(out_dir, &before.result, None, None);
        outcome.plots = plots;
        warnings.extend(plot_warnings);
        outcome.ort_provider = subject.ort_provider();
        outcome.evaluation = Some(Evaluation {
            before: Some(before.result),
            after: None,
        });
        outcome.summary.warnings = warnings;
        return Ok(outcome);
    };

    progress.stage("atypicality");
    let atypicality = stages::resumable_atypicality(&subject, checkpoint_dir, Some(cancel.flag()))
        .map_err(failed("atypicality"))?;
    if let Some(a) = &atypicality {
        outcome.summary.atypical_share = Some(a.flags.share());
        warnings.extend(a.warnings.iter().cloned());
        outcome.memorization = Some(a.memorization.clone());
    }
    cancel.check()?;

    progress.stage("finetune");
    // Training's arithmetic is `train.amp`'s (the trainer's own autocast), not the attacks' `eval.amp`.
    let eval_precision = tch_model.precision();
    tch_model.set_precision(crate::onnx::Precision {
        amp: false,
        ..eval_precision
    });
    let training = stages::finetune(
        &subject,
        &mut tch_model,
        atypicality.as_ref().map(|a| &a.flags),
        &checkpoint_dir.join("finetune"),
        out_dir,
        Some(cancel.flag()),
    )
    .map_err(failed("finetune"))?;
    failpoint::point(failpoint::FINETUNE_DONE);
    tch_model.set_precision(eval_precision);
    cancel.check()?;

    progress.stage("write_back");
    let stages::WrittenBack {
        file: tuned,
        mut scorer,
        ..
    } = stages::write_back(&subject, &mut tch_model, method, out_dir)
        .map_err(failed("write_back"))?;
    failpoint::point(failpoint::WRITE_BACK_DONE);
    cancel.check()?;

    progress.stage("eval_after");
    let after = stages::evaluate(
        &subject,
        Evaluee::WhiteBox(&mut tch_model),
        &mut scorer,
        out_dir,
        "after",
        progress,
    )
    .map_err(failed("eval_after"))?;
    failpoint::point(failpoint::EVAL_AFTER_DONE);
    warnings.extend(stages::summary_warnings(
        "after",
        &after.result,
        classes,
        Some(before.result.clean_acc),
    ));

    progress.stage("plots");
    let name = method_name(method);
    let (plots, plot_warnings) = stages::plots(
        out_dir,
        &before.result,
        Some((&after.result, name)),
        Some(&training),
    );
    outcome.plots = plots;
    warnings.extend(plot_warnings);
    failpoint::point(failpoint::PLOTS_DONE);
    // A model fine-tuned down to chance has a "robust" accuracy at chance too, which can exceed a non-robust
    // model's: never call that an improvement.
    let collapsed = stages::near_chance(&after.result, classes)
        && !stages::near_chance(&before.result, classes);
    outcome.summary.verdict = if collapsed {
        Verdict::Degraded
    } else {
        Verdict::compare(
            before.result.worst_case_acc,
            after.result.worst_case_acc,
            VERDICT_TOLERANCE,
        )
    };
    outcome.summary.after = Some(accuracy(&after.result, Some(name)));
    outcome.summary.warnings = warnings;
    outcome.fine_tuned_model = Some(tuned);
    outcome.training_log = training
        .log
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    outcome.training = Some(training);
    let (mut before_result, mut after_result) = (before.result, after.result);
    if let Some((consistency, threshold)) = atypicality
        .as_ref()
        .and_then(|a| Some((a.consistency.as_ref()?, a.threshold)))
    {
        before_result.groups = stages::test_groups(&before.per_sample, consistency, threshold);
        after_result.groups = stages::test_groups(&after.per_sample, consistency, threshold);
    }
    outcome.ort_provider = subject.ort_provider();
    outcome.evaluation = Some(Evaluation {
        before: Some(before_result),
        after: Some(after_result),
    });
    Ok(outcome)
}

fn accuracy(result: &EvalResult, method: Option<&str>) -> AccuracySummary {
    AccuracySummary {
        clean_acc: result.clean_acc,
        clean_acc_ci95: Some(result.clean_acc_ci95),
        robust_acc_worst: result.worst_case_acc,
        robust_acc_worst_ci95: Some(result.worst_case_acc_ci95),
        preset: Some(result.preset.clone()),
        method: method.map(str::to_owned),
    }
}

/// Evaluation progress as a fraction of the whole evaluation (all its stages), and as is to the detail sink.
pub fn report_eval_progress(progress: &Progress, p: &eval::Progress) {
    progress.eval_detail(p);
    let within = if p.total > 0 {
        p.done as f64 / p.total as f64
    } else {
        1.0
    };
    let stages = p.stages.max(1) as f64;
    progress.fraction(((p.stage_index as f64 + within) / stages).clamp(0.0, 1.0));
}

/// A stage failure as the daemon files it. Once the job is cancelled, whatever the stage returns (a training
/// stopped at its checkpoint, an interrupted forward pass) is the cancellation.
pub(crate) fn stage_error(stage: &str, error: PipelineError, cancel: &CancelToken) -> JobError {
    if let Some(reason) = cancel.reason() {
        tracing::debug!(stage, "stopped by cancellation: {error}");
        return JobError::Cancelled(reason);
    }
    let hint = hint_for(&error);
    let job_error = JobError::failed(stage, error);
    match hint {
        Some(h) => job_error.with_hint(h),
        None => job_error,
    }
}

fn hint_for(error: &PipelineError) -> Option<String> {
    match error {
        PipelineError::Onnx(_) => Some(
            "robustd interprets the ONNX graph itself; `robustd inspect MODEL` shows what it sees. Unsupported \
             ops are listed all at once"
                .into(),
        ),
        PipelineError::Data(_) => Some("check dataset.name / dataset.path (robustd check-config)".into()),
        PipelineError::Mismatch { .. } => Some(
            "set dataset.name, model.input_layout or model.mean/std in a sidecar NAME.yaml next to the model".into(),
        ),
        PipelineError::Eval(_) => Some(
            "check that the model fits the dataset (dataset.name: the classes and image size) and that \
             eval settings are sensible (robustd check-config)"
                .into(),
        ),
        PipelineError::Train(TrainError::NonFiniteLoss { .. }) => {
            Some("lower train.optimizer.lr in a sidecar NAME.yaml".into())
        }
        PipelineError::Train(TrainError::Collapsed { hint, .. })
        | PipelineError::Memo(crate::memo::MemoError::Train(TrainError::Collapsed { hint, .. })) => {
            Some(format!("in a sidecar NAME.yaml: {hint}"))
        }
        _ => None,
    }
}

/// The first evaluation, reused from the checkpoint directory when a resumed job already ran it.
fn resumable_eval(
    subject: &Subject,
    model: Evaluee<'_>,
    file: &Path,
    out_dir: &Path,
    checkpoint_dir: &Path,
    tag: &str,
    progress: &Progress,
) -> Result<Evaluated, PipelineError> {
    let saved_yaml = checkpoint_dir.join(format!("eval_{tag}.yaml"));
    let npz = stages::files::per_sample(tag);
    let saved_npz = checkpoint_dir.join(&npz);
    if let (Ok(text), Ok(per_sample)) = (
        std::fs::read_to_string(&saved_yaml),
        PerSample::load_npz(&saved_npz),
    ) {
        if let Ok(result) = serde_norway::from_str::<EvalResult>(&text) {
            tracing::info!(stage = tag, "evaluation reused from the job's checkpoint");
            durable::copy_atomic(&saved_npz, &out_dir.join(&npz))?;
            for rel in example_files(&result) {
                durable::create_dir_all(out_dir.join(&rel).parent().unwrap_or(out_dir))?;
                durable::copy_atomic(&checkpoint_dir.join(&rel), &out_dir.join(&rel))?;
            }
            return Ok(Evaluated { result, per_sample });
        }
    }
    progress.part("onnxruntime session");
    let mut scorer = subject.scorer(file)?;
    let evaluated = stages::evaluate(subject, model, &mut scorer, out_dir, tag, progress)?;
    failpoint::point(failpoint::EVAL_BEFORE_EVALUATED);
    durable::copy_atomic(&out_dir.join(&npz), &saved_npz)?;
    for rel in example_files(&evaluated.result) {
        durable::create_dir_all(checkpoint_dir.join(&rel).parent().unwrap_or(checkpoint_dir))?;
        durable::copy_atomic(&out_dir.join(&rel), &checkpoint_dir.join(&rel))?;
    }
    // The yaml last: it commits the saved evaluation (a resume reuses it only when it is there).
    durable::write_yaml_atomic(&saved_yaml, &evaluated.result)?;
    failpoint::point(failpoint::EVAL_BEFORE_CHECKPOINTED);
    Ok(evaluated)
}

/// The adversarial-example files an evaluation wrote (relative to its output directory).
fn example_files(result: &EvalResult) -> Vec<String> {
    result
        .adversarial_examples
        .iter()
        .flat_map(|e| std::iter::once(e.file.clone()).chain(e.grid.clone()))
        .collect()
}
