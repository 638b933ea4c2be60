//! Several fine-tuning methods compared on one model under one budget (`robustd compare`): the original model is
//! evaluated once; atypical training samples are found once and shared by every method that reweights them; then,
//! for each method and seed, [`run_method`] fine-tunes a fresh copy of the model, writes it back (onnxruntime
//! parity checked) and evaluates the written-back file with the same protocol. Every run uses the same data,
//! epochs, batch size, training PGD, evaluation attacks and samples; only the method and `runtime.seed` change.
//!
//! A run whose training collapses to one class stops there (the training loop's collapse detection) and is
//! recorded as collapsed, with the cause and what to change, instead of ending the comparison.
//!
//! Resumable: the original's scores and each finished (or collapsed) run's record are kept in the checkpoint
//! directory, and an interrupted run resumes its training from its own checkpoint; the atypicality flags are asked
//! for again (the memorization estimate comes from its cache).

use std::path::Path;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::runner::stage_error;
use super::stages::{self, method_name, Evaluee};
use super::subject::Engine;
use super::{PipelineError, Subject};
use crate::config::{Config, Method};
use crate::durable;
use crate::eval::result::OrderedMap;
use crate::job::{CancelToken, JobError, Progress};
use crate::report::comparison::{
    Budget, CollapsedRun, Comparison, MethodSummary, RunRecord, Scores, SharedAtypicality,
    COMPARISON_SCHEMA,
};
use crate::report::FileRef;
use crate::train::{self, Atypicality, TrainError};

/// How one (method, seed) run ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    Finished(RunRecord),
    Collapsed(CollapsedRun),
}

/// What `robustd compare` varies: the methods, and the seed of each repetition.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
}

/// The interpreter of a model that can be fine-tuned; a clear error for one that cannot (a graph robustd cannot
/// differentiate, a dynamically quantized model).
fn fine_tunable(subject: &Subject) -> Result<crate::onnx::TchModel, PipelineError> {
    let refuse = |message: String| PipelineError::Mismatch {
        model: subject.path.clone(),
        message: format!("compare fine-tunes the model, and {message}"),
    };
    match subject.engine()? {
        Engine::ScoreBased(ops) => Err(refuse(format!(
            "this one allows score-based evaluation only: {} not supported",
            ops.join(", ")
        ))),
        Engine::WhiteBox(model) => match subject.form().fine_tuning() {
            Ok(_) => Ok(*model),
            Err(refusal) => Err(refuse(format!("for this model fine-tuning is {refusal}"))),
        },
    }
}

/// Runs the comparison of `settings` on `model` with `config` (its `train.method` is ignored). Files go under
/// `out_dir` (`per_sample_original.npz`, `runs/<method>/seed<N>/…`), resumable state under `checkpoint_dir`.
pub fn run(
    model: &Path,
    config: &Config,
    settings: &CompareSettings,
    out_dir: &Path,
    checkpoint_dir: &Path,
    cancel: &CancelToken,
    progress: &Progress,
) -> Result<Comparison, JobError> {
    let started = Instant::now();
    let failed = |stage: &'static str| move |e: PipelineError| stage_error(stage, e, cancel);
    progress.stage("prepare");
    let mut subject = Subject::load(model, config).map_err(failed("prepare"))?;
    for dir in [out_dir, checkpoint_dir] {
        durable::create_dir_all(dir).map_err(|e| failed("prepare")(e.into()))?;
    }
    let mut original_model = fine_tunable(&subject).map_err(failed("prepare"))?;
    let classes = stages::classes(&original_model);
    let info = subject.model_info(classes).map_err(failed("prepare"))?;
    let budget = budget(&subject, settings);

    progress.stage("eval_original");
    let original = cached(&checkpoint_dir.join("original.yaml"), || {
        let evaluated = stages::evaluate(
            &subject,
            Evaluee::WhiteBox(&mut original_model),
            &mut subject.scorer(model)?,
            out_dir,
            "original",
            progress,
        )?;
        Ok(Scores {
            clean_acc: evaluated.result.clean_acc,
            robust_acc: evaluated.result.worst_case_acc,
        })
    })
    .map_err(failed("eval_original"))?;
    drop(original_model);
    cancel.check()?;

    progress.stage("atypicality");
    let mut warnings = Vec::new();
    let atypicality_started = Instant::now();
    let mut shared: Option<Atypicality> = None;
    for &method in &settings.methods {
        subject.config.train.method = method;
        if let Some(found) =
            stages::atypicality(&subject, Some(cancel.flag())).map_err(failed("atypicality"))?
        {
            warnings.extend(found.warnings);
            shared = Some(found.flags);
            break;
        }
    }
    let atypicality = shared.as_ref().map(|a| SharedAtypicality {
        source: a.source.clone(),
        atypical_share: a.share(),
        seconds: atypicality_started.elapsed().as_secs_f64(),
    });
    cancel.check()?;

    let mut runs = Vec::new();
    let mut collapsed = Vec::new();
    for &method in &settings.methods {
        for &seed in &settings.seeds {
            let tag = format!("{}-seed{seed}", method_name(method));
            progress.stage(&format!("run {tag}"));
            let saved = checkpoint_dir.join(&tag).join("result.yaml");
            let outcome = match read_yaml::<RunOutcome>(&saved).filter(|o| match o {
                RunOutcome::Finished(r) => out_dir.join(&r.fine_tuned_model.path).is_file(),
                RunOutcome::Collapsed(_) => true,
            }) {
                Some(outcome) => {
                    tracing::info!(run = %tag, "reused from the comparison's checkpoint");
                    outcome
                }
                None => {
                    let outcome = run_method(
                        &mut subject,
                        (method, seed),
                        original.clean_acc,
                        shared.as_ref(),
                        out_dir,
                        &checkpoint_dir.join(&tag),
                        cancel,
                        progress,
                    )?;
                    durable::write_yaml_atomic(&saved, &outcome)
                        .map_err(|e| failed("finetune")(e.into()))?;
                    outcome
                }
            };
            match outcome {
                RunOutcome::Finished(record) => {
                    tracing::info!(
                        run = %tag,
                        clean = %format!("{:.4}", record.clean_acc),
                        robust = %format!("{:.4}", record.robust_acc),
                        seconds = %format!("{:.1}", record.seconds),
                        "run done"
                    );
                    runs.push(record);
                }
                RunOutcome::Collapsed(c) => {
                    tracing::warn!(run = %tag, epoch = c.epoch, "run collapsed");
                    collapsed.push(c);
                }
            }
            cancel.check()?;
        }
    }

    let methods = settings
        .methods
        .iter()
        .map(|&m| MethodSummary::of(method_name(m), &runs, &collapsed))
        .collect();
    Ok(Comparison {
        schema: COMPARISON_SCHEMA.to_owned(),
        model: FileRef {
            path: subject.file_name(),
            sha256: info.sha256,
            bytes: None,
        },
        threat_model: stages::threat_model(config),
        budget,
        methods,
        original,
        atypicality,
        runs,
        collapsed,
        dataset: Some(subject.dataset_info()),
        environment: crate::job::outcome::environment(config),
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One run: a fresh copy of the model from the file, fine-tuned with `method` under `seed`, written back to
/// `runs/<method>/seed<seed>/` in `out_dir`, and evaluated on the written-back file (onnxruntime verdicts).
/// `atypicality` is used only when the method reweights atypical samples. Sets the subject's `train.method` and
/// `runtime.seed` to the run's. A training that collapses ends the run as [`RunOutcome::Collapsed`];
/// `original_clean_acc` tells a collapse the loop did not catch from a model that was never accurate.
#[allow(clippy::too_many_arguments)]
pub fn run_method(
    subject: &mut Subject,
    (method, seed): (Method, u64),
    original_clean_acc: f64,
    atypicality: Option<&Atypicality>,
    out_dir: &Path,
    checkpoint_dir: &Path,
    cancel: &CancelToken,
    progress: &Progress,
) -> Result<RunOutcome, JobError> {
    let started = Instant::now();
    let failed = |stage: &'static str| move |e: PipelineError| stage_error(stage, e, cancel);
    subject.config.train.method = method;
    subject.config.runtime.seed = seed;
    let name = method_name(method);
    let rel_dir = format!("runs/{name}/seed{seed}");
    let run_dir = out_dir.join(&rel_dir);
    durable::create_dir_all(&run_dir).map_err(|e| failed("prepare")(e.into()))?;

    let mut model = subject.tch_model().map_err(failed("prepare"))?;
    let needs_flags = train::Objective::from_spec(&subject.config.train)
        .map_err(|e| failed("finetune")(e.into()))?
        .needs_atypicality();
    let training = match stages::finetune(
        subject,
        &mut model,
        atypicality.filter(|_| needs_flags),
        &checkpoint_dir.join("finetune"),
        &run_dir,
        Some(cancel.flag()),
    ) {
        Err(PipelineError::Train(e @ TrainError::Collapsed { epoch, .. })) => {
            let _ = std::fs::remove_dir_all(checkpoint_dir.join("finetune"));
            return Ok(RunOutcome::Collapsed(CollapsedRun {
                method: name.to_owned(),
                seed,
                epoch,
                cause: e.to_string(),
            }));
        }
        other => other.map_err(failed("finetune"))?,
    };
    cancel.check()?;
    let stages::WrittenBack {
        file: tuned,
        parity,
        mut scorer,
    } = stages::write_back(subject, &mut model, method, &run_dir).map_err(failed("write_back"))?;
    let after = stages::evaluate(
        subject,
        Evaluee::WhiteBox(&mut model),
        &mut scorer,
        &run_dir,
        "after",
        progress,
    )
    .map_err(failed("eval_after"))?;

    let rel = |file: &str| format!("{rel_dir}/{file}");
    let fine_tuned_model = crate::job::outcome::file_ref(out_dir, &rel(&tuned)).map_err(|e| {
        failed("write_back")(PipelineError::Read {
            path: run_dir.join(&tuned),
            source: e.source,
        })
    })?;
    let result = &after.result;
    Ok(RunOutcome::Finished(RunRecord {
        method: name.to_owned(),
        seed,
        clean_acc: result.clean_acc,
        robust_acc: result.worst_case_acc,
        attacks: OrderedMap(
            result
                .attacks
                .0
                .iter()
                .map(|(attack, s)| (attack.clone(), s.robust_acc))
                .collect(),
        ),
        epochs: training.epochs,
        best_epoch: training.best_epoch,
        train_seconds: training.seconds,
        seconds: started.elapsed().as_secs_f64(),
        parity_max_logit_diff: parity,
        fine_tuned_model,
        training_log: rel(stages::files::TRAIN_LOG),
        per_sample: rel(&stages::files::per_sample("after")),
        warnings: stages::summary_warnings(
            "after",
            result,
            stages::classes(&model),
            Some(original_clean_acc),
        ),
    }))
}

/// The settings every run shares, as the comparison reports them.
fn budget(subject: &Subject, settings: &CompareSettings) -> Budget {
    let cfg = &subject.config;
    let n = subject.dataset.train.len();
    let (_, val) = train::validation_split(n, cfg.train.val_fraction, cfg.runtime.seed);
    Budget {
        epochs: cfg.train.epochs,
        batch_size: cfg.train.batch_size,
        train_samples: (n - val.len()) as u64,
        val_samples: val.len() as u64,
        eval_samples: subject.dataset.test.len() as u64,
        train_pgd_steps: cfg.train.pgd.steps,
        train_pgd_step_size: cfg.train.pgd.step_size_factor * cfg.threat.eps,
        eval_attacks: cfg.eval.attacks.clone(),
        eval_pgd_steps: cfg.eval.pgd.steps,
        optimizer: format!(
            "{} ({} schedule, momentum {}, weight decay {})",
            cfg.train.optimizer.name,
            cfg.train.optimizer.schedule,
            cfg.train.optimizer.momentum,
            cfg.train.optimizer.weight_decay
        ),
        lr: cfg.train.optimizer.lr,
        seeds: settings.seeds.clone(),
    }
}

/// `compute()`'s value, kept as YAML at `path`: read back when a resumed comparison finds it there.
fn cached<T: Serialize + DeserializeOwned>(
    path: &Path,
    compute: impl FnOnce() -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    if let Some(value) = read_yaml(path) {
        return Ok(value);
    }
    let value = compute()?;
    durable::write_yaml_atomic(path, &value)?;
    Ok(value)
}

fn read_yaml<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_norway::from_str(&text).ok()
}
