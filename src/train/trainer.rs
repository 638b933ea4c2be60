//! The one training loop: standard training, PGD-AT, TRADES and BAT differ only in their [`Objective`].
//!
//! Per run: a seeded validation split is cut off the training samples (`val_fraction`); per epoch the remaining
//! samples are shuffled and augmented from `(seed, epoch)`; per batch the objective crafts its examples with the
//! shared PGD core (random starts from `(seed, epoch, batch)` and the samples' positions), the gradient goes to the
//! hand-written optimizer, and a non-finite loss stops the run. After each epoch: clean and PGD robust validation
//! accuracy, best-epoch tracking and early stopping, a checkpoint and the CSV log. At the end the model holds the
//! best epoch's weights (the last epoch's without validation) and is in eval mode.
//!
//! With a fit target the run also stops after the first epoch whose training accuracy reaches it (the memorization
//! estimators' subset models train until they fit their subset). Every batch feeds a [`CollapseWatch`]: a run whose
//! model collapses to one class stops there with [`TrainError::Collapsed`].
//!
//! A run whose checkpoint directory already holds a checkpoint of the same run resumes from it. The cancellation
//! flag is checked before every training and validation batch: the run then saves a checkpoint of its exact
//! position (a cancelled validation is redone on resume) and returns [`TrainError::Cancelled`]. Any error restores
//! the model's weights as they were given.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::accel::Accel;
use super::atypical::Atypicality;
use super::checkpoint::{self, host_copy, Best, EpochSums, Meta};
use super::collapse::{BatchView, Collapse, CollapseWatch};
use super::objective::{BatchLoss, Objective};
use super::optim::Optimizer;
use super::record::{self, AtypicalitySummary, EpochRecord, OptimizerReport, TrainResult};
use super::schedule::LrSchedule;
use super::validate::measure;
use super::TrainError;
use crate::attack::pgd::{Keep, PgdParams};
use crate::config::{Norm, ThreatModel, TrainSpec};
use crate::data::{Augmentation, BatchOptions, Split};
use crate::model::Classifier;

/// Salts separating the seeds derived for each purpose.
const SALT_VAL_SPLIT: u64 = 0x5641_4C00;
const SALT_VAL_ATTACK: u64 = 0x5641_4C01;
const SALT_BATCH: u64 = 0x4241_5400;

/// Everything a run needs besides the model and the data. Build with [`TrainRun::new`], then set the optional
/// fields.
#[derive(Debug, Clone)]
pub struct TrainRun<'a> {
    pub spec: TrainSpec,
    pub objective: Objective,
    pub norm: Norm,
    pub eps: f64,
    pub seed: u64,
    pub augmentation: Augmentation,
    /// Per-sample flags aligned with the training split (required when the objective reweights atypical samples).
    pub atypicality: Option<&'a Atypicality>,
    /// Where checkpoints go (and are resumed from); `None` = no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// The CSV training log, rewritten after every epoch; `None` = no log file.
    pub log_csv: Option<PathBuf>,
    /// Set (e.g. on SIGTERM) to checkpoint and stop before the next batch.
    pub cancel: Option<&'a AtomicBool>,
    /// Asked right before every checkpoint write: whether the run still owns `checkpoint_dir`. A job on a shared
    /// queue loses it when its lease passes to another worker, which resumes from the same directory; the run
    /// then writes nothing more and stops with [`TrainError::ClaimLost`]. `None` = always owned.
    pub claim: Option<Claim<'a>>,
    /// Receives every batch's per-sample correctness (the memorization module's learning-speed estimator).
    pub observer: Option<&'a dyn SampleObserver>,
    /// Stop after the first epoch whose training accuracy (clean, or adversarial when only that is computed)
    /// reaches this.
    pub fit_target: Option<f64>,
    /// The config key of the run's learning rate, for hints (`train.optimizer.lr`, `memorization.lr`).
    pub lr_key: &'static str,
}

/// The owner's answer to "does this run still own its checkpoint directory" ([`TrainRun::claim`]).
#[derive(Clone, Copy)]
pub struct Claim<'a>(pub &'a (dyn Fn() -> bool + Send + Sync));

impl Claim<'_> {
    pub fn holds(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claim(..)")
    }
}

/// Sees how each batch classified its training samples: `source_indices[i]` (the sample's index in the dataset's
/// training split) was predicted right iff `correct[i]`, with probability `p_label[i]` for its label — judged on
/// the clean logits where the objective computed them (standard, TRADES) and on the adversarial ones otherwise
/// (PGD-AT, BAT). `epoch` is 0-based.
pub trait SampleObserver: std::fmt::Debug {
    fn observe(&self, epoch: usize, source_indices: &[i64], correct: &[bool], p_label: &[f32]);
}

impl<'a> TrainRun<'a> {
    /// A run of `spec.method` under `threat`, seeded by `seed`; `dataset_augmentation` is what
    /// `train.augmentation: auto` resolves to (`Dataset::augmentation`).
    pub fn new(
        spec: &TrainSpec,
        threat: &ThreatModel,
        seed: u64,
        dataset_augmentation: Augmentation,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            spec: spec.clone(),
            objective: Objective::from_spec(spec)?,
            norm: threat.norm,
            eps: threat.eps,
            seed,
            augmentation: Augmentation::resolve(&spec.augmentation, dataset_augmentation)?,
            atypicality: None,
            checkpoint_dir: None,
            log_csv: None,
            cancel: None,
            claim: None,
            observer: None,
            fit_target: None,
            lr_key: "train.optimizer.lr",
        })
    }

    /// The attack that crafts training examples in batch `batch` of `epoch` (0-based).
    pub fn train_attack(&self, epoch: usize, batch: usize) -> PgdParams {
        PgdParams::from_spec(
            &self.spec.pgd,
            self.norm,
            self.eps,
            mix(self.seed ^ SALT_BATCH, epoch as u64, batch as u64),
            Keep::Final,
        )
    }

    /// The attack that measures robust validation accuracy (the same every epoch).
    pub fn val_attack(&self) -> PgdParams {
        PgdParams::from_spec(
            &self.spec.pgd,
            self.norm,
            self.eps,
            self.seed ^ SALT_VAL_ATTACK,
            Keep::Adversarial,
        )
    }
}

/// Trains `model` in place on `data` as `run` says, and returns what happened. On any error the model's weights
/// are restored to what they were on entry.
pub fn train(
    model: &mut dyn Classifier,
    data: &Split,
    run: &TrainRun,
) -> Result<TrainResult, TrainError> {
    run.objective.validate()?;
    if run.spec.batch_size == 0 {
        return Err(TrainError::Invalid {
            key: "train.batch_size",
            message: "must be at least 1".into(),
        });
    }
    if !(0.0..1.0).contains(&run.spec.val_fraction) {
        return Err(TrainError::Invalid {
            key: "train.val_fraction",
            message: format!("{} is not in [0, 1)", run.spec.val_fraction),
        });
    }
    if let Some(a) = run.atypicality {
        if a.flags.len() != data.len() {
            return Err(TrainError::Invalid {
                key: "train.bat.atypicality",
                message: format!(
                    "{} flags for {} training samples",
                    a.flags.len(),
                    data.len()
                ),
            });
        }
    } else if run.objective.needs_atypicality() {
        return Err(TrainError::Invalid {
            key: "train.bat.atypicality",
            message: "BAT reweighting (beta != 0) needs per-sample atypicality flags".into(),
        });
    }
    let initial: Vec<(String, Tensor)> = model
        .state_dict()
        .into_iter()
        .map(|(n, t)| Ok((n, host_copy(&t)?)))
        .collect::<Result<_, TrainError>>()?;
    let outcome = Loop::prepare(model, data, run).and_then(|mut l| l.run(model));
    if outcome.is_err() {
        if let Err(e) = model.load_state_dict(&initial) {
            tracing::error!(error = %e, "could not restore the model's weights after a failed run");
        }
        model.set_train(false);
    }
    outcome
}

/// The state of one run.
struct Loop<'r> {
    run: &'r TrainRun<'r>,
    train: Split,
    val: Option<Split>,
    /// Atypicality flags of the training part, bool `[N]` on the model's device.
    atypical: Option<Tensor>,
    atypicality_summary: Option<AtypicalitySummary>,
    threshold: Option<f64>,
    params: Vec<Tensor>,
    optimizer: Optimizer,
    schedule: LrSchedule,
    accel: Accel,
    fingerprint: String,
    collapse: CollapseWatch,
    // Progress (what a checkpoint saves).
    epoch: usize,
    batch: usize,
    sums: EpochSums,
    best: Option<Best>,
    best_weights: Vec<(String, Tensor)>,
    stale_epochs: usize,
    records: Vec<EpochRecord>,
    seconds_before: f64,
    resumed_from: Option<[usize; 2]>,
}

impl<'r> Loop<'r> {
    fn prepare(
        model: &mut dyn Classifier,
        data: &Split,
        run: &'r TrainRun<'r>,
    ) -> Result<Self, TrainError> {
        let device = model.device();
        let (train_positions, val_positions) =
            validation_split(data.len(), run.spec.val_fraction, run.seed);
        let train = data.select(&train_positions)?.to_device(device)?;
        let val = if val_positions.is_empty() {
            None
        } else {
            Some(data.select(&val_positions)?.to_device(device)?)
        };
        let (atypical, atypicality_summary, threshold) = match run.atypicality {
            Some(a) => {
                let part = a.select(&train_positions)?;
                let flags = Tensor::f_from_slice(&part.flags)?.f_to_device(device)?;
                let summary = AtypicalitySummary {
                    source: part.source.clone(),
                    atypical: part.atypical(),
                    share: part.share(),
                };
                (Some(flags), Some(summary), a.threshold)
            }
            None => (None, None, None),
        };
        let params = model.trainable_parameters();
        if params.is_empty() {
            return Err(TrainError::Invalid {
                key: "model",
                message: "the model exposes no trainable parameters".into(),
            });
        }
        let optimizer = Optimizer::from_spec(&run.spec.optimizer, &params)?;
        let schedule = LrSchedule::from_spec(&run.spec.optimizer, run.spec.epochs)?;
        let fingerprint = fingerprint(run, model, &train, val.as_ref());
        let collapse = CollapseWatch::new(train.len().div_ceil(run.spec.batch_size));
        let mut state = Self {
            run,
            train,
            val,
            atypical,
            atypicality_summary,
            threshold,
            params,
            optimizer,
            schedule,
            accel: Accel::new(&run.spec, device),
            fingerprint,
            collapse,
            epoch: 0,
            batch: 0,
            sums: EpochSums::default(),
            best: None,
            best_weights: Vec::new(),
            stale_epochs: 0,
            records: Vec::new(),
            seconds_before: 0.0,
            resumed_from: None,
        };
        state.resume(model)?;
        Ok(state)
    }

    /// Loads the checkpoint in the run's directory, if there is one of this run.
    fn resume(&mut self, model: &mut dyn Classifier) -> Result<(), TrainError> {
        let Some(dir) = self.run.checkpoint_dir.as_deref() else {
            return Ok(());
        };
        let Some(saved) = checkpoint::load(dir)? else {
            return Ok(());
        };
        if saved.meta.fingerprint != self.fingerprint {
            return Err(TrainError::Checkpoint {
                path: dir.join(checkpoint::META_FILE),
                message: "it belongs to a different run (method, settings, data, seed or model changed); \
                          delete the directory to start over"
                    .into(),
            });
        }
        model.load_state_dict(&saved.model)?;
        self.optimizer
            .load_state(&saved.optimizer, saved.meta.optimizer_steps)?;
        let meta = saved.meta;
        self.epoch = meta.epoch;
        self.batch = meta.batch;
        self.sums = meta.sums;
        self.best = meta.best;
        self.best_weights = saved.best;
        self.stale_epochs = meta.stale_epochs;
        self.records = meta.records;
        self.seconds_before = meta.seconds;
        self.resumed_from = Some([meta.epoch, meta.batch]);
        tracing::info!(
            dir = %dir.display(),
            epoch = meta.epoch + 1,
            batch = meta.batch,
            "resuming training from checkpoint"
        );
        Ok(())
    }

    fn run(&mut self, model: &mut dyn Classifier) -> Result<TrainResult, TrainError> {
        let started = Instant::now();
        let mut early_stopped = self.stopped_early();
        while self.epoch < self.run.spec.epochs && !early_stopped && !self.fitted() {
            self.train_epoch(model, started)?;
            let val_started = Instant::now();
            let val = match &self.val {
                Some(v) => {
                    let measured = measure(
                        model,
                        v,
                        &self.run.val_attack(),
                        self.run.spec.batch_size,
                        self.run.cancel,
                    )?;
                    match measured {
                        Some(a) => Some(a),
                        // Cancelled during validation: the checkpoint sits after the epoch's last batch, so a
                        // resume goes straight to validation.
                        None => return Err(self.cancel(model, started)?),
                    }
                }
                None => None,
            };
            let record = self.finish_epoch(
                val.map(|a| (a.clean, a.robust)),
                val_started.elapsed().as_secs_f64(),
            );
            let rounded = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            tracing::info!(
                method = ?self.run.objective.method(),
                epoch = record.epoch,
                loss = %format!("{:.4}", record.loss),
                val_clean = %rounded(record.val_clean_acc),
                val_robust = %rounded(record.val_robust_acc),
                train_clean = %rounded(record.train_clean_acc),
                train_adv = %rounded(record.train_adv_acc),
                lr = %format!("{:.3e}", record.lr),
                samples_per_s = %format!("{:.0}", record.samples_per_s),
                seconds = %format!("{:.1}", record.seconds),
                "epoch done"
            );
            self.records.push(record);
            if let Some(a) = val {
                if self.best.is_none_or(|b| a.robust > b.val_robust_acc) {
                    self.best = Some(Best {
                        epoch: self.epoch + 1,
                        val_robust_acc: a.robust,
                    });
                    self.best_weights = snapshot(model)?;
                    self.stale_epochs = 0;
                } else {
                    self.stale_epochs += 1;
                }
            }
            self.epoch += 1;
            self.batch = 0;
            self.sums = EpochSums::default();
            early_stopped = self.stopped_early();
            self.save_checkpoint(model, started)?;
            if let Some(path) = &self.run.log_csv {
                record::write_csv(path, &self.records)?;
            }
            if self.run.checkpoint_dir.is_some() {
                crate::failpoint::point(crate::failpoint::TRAIN_EPOCH_SAVED);
            }
            if early_stopped {
                tracing::info!(
                    patience = self.run.spec.early_stop_patience,
                    best_epoch = self.best.map(|b| b.epoch),
                    "early stopping: no robust validation improvement"
                );
            }
            if self.fitted() {
                tracing::debug!(
                    epoch = self.epoch,
                    target = self.run.fit_target,
                    "training accuracy reached the fit target"
                );
            }
        }
        if !self.best_weights.is_empty() {
            model.load_state_dict(&self.best_weights)?;
        }
        model.set_train(false);
        Ok(self.result(model, started.elapsed().as_secs_f64(), early_stopped))
    }

    fn stopped_early(&self) -> bool {
        let patience = self.run.spec.early_stop_patience;
        patience > 0 && self.stale_epochs >= patience
    }

    /// Whether the last finished epoch reached the run's fit target.
    fn fitted(&self) -> bool {
        let (Some(target), Some(last)) = (self.run.fit_target, self.records.last()) else {
            return false;
        };
        last.train_clean_acc
            .or(last.train_adv_acc)
            .is_some_and(|acc| acc >= target)
    }

    /// One pass over the training split from the current batch on.
    fn train_epoch(
        &mut self,
        model: &mut dyn Classifier,
        started: Instant,
    ) -> Result<(), TrainError> {
        let run = self.run;
        let options = BatchOptions::train(
            run.spec.batch_size,
            run.augmentation,
            run.seed,
            self.epoch as u64,
        );
        let batches = self.train.batches(&options)?;
        let count = batches.len();
        // Each step's time runs from the end of the previous one, so fetching and augmenting the batch counts.
        let mut step_started = Instant::now();
        for (index, batch) in batches.enumerate() {
            let batch = batch?;
            if index < self.batch {
                step_started = Instant::now();
                continue;
            }
            if run.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(self.cancel(model, started)?);
            }
            tch::manual_seed(
                mix(run.seed ^ SALT_BATCH, self.epoch as u64, index as u64 + 1) as i64,
            );
            let lr = self.schedule.lr(self.epoch, index, count);
            let x = self.accel.input(&batch.x)?;
            let atypical = match &self.atypical {
                Some(flags) => Some(flags.f_index_select(0, &batch.positions)?),
                None => None,
            };
            let rows: Vec<u64> = Vec::<i64>::try_from(&batch.positions.f_to_device(Device::Cpu)?)?
                .into_iter()
                .map(|p| p as u64)
                .collect();
            let attack = run.train_attack(self.epoch, index);
            let accel = &self.accel;
            let out = accel.run(|| {
                run.objective
                    .batch_loss(model, &x, &batch.y, atypical.as_ref(), &attack, &rows)
            })?;
            let stats = batch_stats(&out, &batch.y, atypical.as_ref())?;
            if let Some(collapse) = self.collapse.observe(self.epoch, index, stats.view.clone()) {
                return Err(self.collapsed(collapse));
            }
            if let Some(observer) = run.observer {
                observe(
                    observer,
                    self.epoch,
                    &out,
                    &batch.y,
                    &rows,
                    &self.train.indices,
                )?;
            }
            if !stats.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch: self.epoch + 1,
                    batch: index + 1,
                    value: stats.loss,
                });
            }
            let grads = self.accel.gradients(&out.loss, &self.params)?;
            self.optimizer.step(&self.params, &grads, lr)?;
            self.sums
                .add(&stats, lr, step_started.elapsed().as_secs_f64());
            step_started = Instant::now();
            self.batch = index + 1;
            if run.checkpoint_dir.is_some() && self.batch == count.div_ceil(2) {
                crate::failpoint::point(crate::failpoint::TRAIN_MID_EPOCH);
            }
        }
        Ok(())
    }

    /// The error that stops a collapsed run, with what to change.
    fn collapsed(&self, c: Collapse) -> TrainError {
        let run = self.run;
        let mut tips = vec![format!(
            "lower {} (now {})",
            run.lr_key, run.spec.optimizer.lr
        )];
        match run.objective {
            Objective::Trades { beta } => {
                tips.push(format!("lower train.trades_beta (now {beta})"));
            }
            Objective::Bat(p) if p.beta > 0.0 || p.lambda > 0.0 => tips.push(format!(
                "lower train.bat.beta / train.bat.lambda (now {} / {})",
                p.beta, p.lambda
            )),
            _ => {}
        }
        if run.spec.optimizer.warmup_epochs == 0 {
            tips.push("add a warm-up (train.optimizer.warmup_epochs: 1)".into());
        }
        if run.objective.is_adversarial() {
            tips.push(format!(
                "or train on a smaller threat.eps (now {})",
                run.eps
            ));
        }
        tracing::warn!(
            epoch = c.epoch,
            batch = c.batch,
            accuracy = %format!("{:.3}", c.accuracy),
            class = c.class,
            share = %format!("{:.2}", c.class_share),
            "training collapsed; run stopped"
        );
        TrainError::Collapsed {
            epoch: c.epoch,
            batch: c.batch,
            batches: c.batches,
            accuracy: c.accuracy,
            classes: c.classes,
            cross_entropy: c.cross_entropy,
            class: c.class,
            class_share: c.class_share,
            hint: tips.join(", "),
        }
    }

    /// Saves a checkpoint of the exact position and returns the error that reports the cancellation.
    fn cancel(&self, model: &dyn Classifier, started: Instant) -> Result<TrainError, TrainError> {
        self.save_checkpoint(model, started)?;
        tracing::info!(
            epoch = self.epoch + 1,
            batch = self.batch,
            "training cancelled"
        );
        Ok(TrainError::Cancelled {
            epoch: self.epoch + 1,
            batch: self.batch,
            checkpoint: self.run.checkpoint_dir.clone(),
        })
    }

    /// The epoch's record; its time is the training steps' (saved across a resume) plus `val_seconds`.
    fn finish_epoch(&self, val: Option<(f64, f64)>, val_seconds: f64) -> EpochRecord {
        let s = &self.sums;
        let frac = |k: f64, n: u64| (n > 0).then(|| k / n as f64);
        EpochRecord {
            epoch: self.epoch + 1,
            loss: if s.samples > 0 {
                s.loss_sum / s.samples as f64
            } else {
                f64::NAN
            },
            val_clean_acc: val.map(|v| v.0),
            val_robust_acc: val.map(|v| v.1),
            train_clean_acc: frac(s.clean_correct, s.clean_seen),
            train_adv_acc: frac(s.adv_correct, s.adv_seen),
            weight_mean: frac(s.weight_sum, s.weight_count),
            weight_min: s.weight_min,
            weight_max: s.weight_max,
            weight_atypical_mean: (s.weight_atypical_count > 0.0)
                .then(|| s.weight_atypical_sum / s.weight_atypical_count),
            lr: s.last_lr,
            seconds: s.train_seconds + val_seconds,
            samples_per_s: if s.train_seconds > 0.0 {
                s.samples as f64 / s.train_seconds
            } else {
                0.0
            },
        }
    }

    fn save_checkpoint(&self, model: &dyn Classifier, started: Instant) -> Result<(), TrainError> {
        let Some(dir) = self.run.checkpoint_dir.as_deref() else {
            return Ok(());
        };
        if self.run.claim.is_some_and(|claim| !claim.holds()) {
            tracing::warn!(dir = %dir.display(), "the checkpoint directory belongs to another worker now; not writing");
            return Err(TrainError::ClaimLost {
                epoch: self.epoch + 1,
                batch: self.batch,
                dir: dir.to_path_buf(),
            });
        }
        let meta = Meta {
            format: checkpoint::FORMAT,
            fingerprint: self.fingerprint.clone(),
            epoch: self.epoch,
            batch: self.batch,
            optimizer_steps: self.optimizer.steps(),
            // bfloat16 AMP needs no loss scaler; the key stays for checkpoints written with float16 AMP.
            loss_scale: None,
            best: self.best,
            stale_epochs: self.stale_epochs,
            records: self.records.clone(),
            sums: self.sums.clone(),
            seconds: self.seconds_before + started.elapsed().as_secs_f64(),
            tensors: checkpoint::tensors_name(self.epoch, self.batch),
        };
        checkpoint::save(
            dir,
            &meta,
            &model.state_dict(),
            &self.optimizer.state_tensors(),
            &self.best_weights,
        )
    }

    fn result(&self, model: &dyn Classifier, seconds: f64, early_stopped: bool) -> TrainResult {
        let run = self.run;
        let spec = &run.spec;
        let mut constants = run.objective.constants();
        if let Some(t) = self.threshold {
            constants.insert("threshold".into(), t);
        }
        if run.objective.is_adversarial() {
            let attack = run.train_attack(0, 0);
            constants.insert("eps".into(), run.eps);
            constants.insert("pgd_steps".into(), attack.steps as f64);
            constants.insert("pgd_restarts".into(), attack.restarts as f64);
            constants.insert("step_size".into(), attack.step_size);
        }
        let best_epoch = match self.best {
            Some(b) => b.epoch,
            None => self.records.last().map_or(0, |r| r.epoch),
        };
        TrainResult {
            method: run.objective.method(),
            formula: run.objective.formula(),
            constants,
            optimizer: OptimizerReport {
                name: self.optimizer.name().into(),
                lr: spec.optimizer.lr,
                momentum: spec.optimizer.momentum,
                nesterov: spec.optimizer.nesterov,
                weight_decay: spec.optimizer.weight_decay,
                schedule: self.schedule.name().into(),
                warmup_epochs: spec.optimizer.warmup_epochs,
            },
            epochs: self.records.len(),
            epochs_planned: spec.epochs,
            best_epoch,
            best_val_robust_acc: self.best.map(|b| b.val_robust_acc),
            early_stopped,
            reached_fit_target: self.fitted(),
            resumed_from: self.resumed_from,
            train_samples: self.train.len(),
            val_samples: self.val.as_ref().map_or(0, Split::len),
            batch_size: spec.batch_size,
            augmentation: run.augmentation.name().into(),
            atypicality: self.atypicality_summary.clone(),
            device: format!("{:?}", model.device()).to_lowercase(),
            amp: self.accel.amp,
            channels_last: self.accel.channels_last,
            log: run.log_csv.clone(),
            seconds: self.seconds_before + seconds,
            curves: self.records.clone(),
        }
    }
}

/// Hands the batch's per-sample correctness and label probability to `observer` (rows are positions in the
/// training part).
fn observe(
    observer: &dyn SampleObserver,
    epoch: usize,
    out: &BatchLoss,
    y: &Tensor,
    rows: &[u64],
    indices: &[i64],
) -> Result<(), TrainError> {
    let Some(logits) = judged(out) else {
        return Ok(());
    };
    let correct = Vec::<bool>::try_from(
        &logits
            .f_argmax(1, false)?
            .f_eq_tensor(y)?
            .f_to_device(Device::Cpu)?,
    )?;
    let p_label = Vec::<f32>::try_from(
        &logits
            .f_softmax(1, Kind::Float)?
            .f_gather(1, &y.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?
            .f_to_device(Device::Cpu)?,
    )?;
    let source: Vec<i64> = rows.iter().map(|&r| indices[r as usize]).collect();
    observer.observe(epoch, &source, &correct, &p_label);
    Ok(())
}

/// The logits a batch is judged by: clean where the objective computed them, else adversarial.
fn judged(out: &BatchLoss) -> Option<&Tensor> {
    out.clean_logits.as_ref().or(out.adv_logits.as_ref())
}

/// One batch's numbers, read back from the device in one transfer.
struct BatchStats {
    samples: u64,
    loss: f64,
    clean_correct: Option<f64>,
    adv_correct: Option<f64>,
    /// `(sum, min, max, atypical sum, atypical count)` of the BAT weights.
    weights: Option<[f64; 5]>,
    /// The judged logits' accuracy, cross-entropy and predicted classes, for the collapse watch.
    view: BatchView,
}

fn batch_stats(
    out: &BatchLoss,
    y: &Tensor,
    atypical: Option<&Tensor>,
) -> Result<BatchStats, TrainError> {
    let correct = |logits: &Tensor| -> Result<Tensor, TrainError> {
        Ok(logits
            .f_argmax(1, false)?
            .f_eq_tensor(y)?
            .f_sum(Kind::Double)?)
    };
    let mut values = vec![out.loss.f_detach()?.f_to_kind(Kind::Double)?];
    let clean_at = out.clean_logits.as_ref().map(|_| values.len());
    if let Some(l) = &out.clean_logits {
        values.push(correct(l)?);
    }
    let adv_at = out.adv_logits.as_ref().map(|_| values.len());
    if let Some(l) = &out.adv_logits {
        values.push(correct(l)?);
    }
    let judged_logits = judged(out);
    let judged_correct_at = clean_at.or(adv_at);
    let cross_entropy_at = values.len();
    if let Some(l) = judged_logits {
        values.push(cross_entropy_sum(l, y)?);
    }
    let weights_at = out.weights.as_ref().map(|_| values.len());
    if let Some(w) = &out.weights {
        let w = w.f_to_kind(Kind::Double)?;
        let (atyp_sum, atyp_count) = match atypical {
            Some(a) => {
                let a = a.f_to_kind(Kind::Double)?;
                (w.f_mul(&a)?.f_sum(Kind::Double)?, a.f_sum(Kind::Double)?)
            }
            None => (
                w.f_zeros_like()?.f_sum(Kind::Double)?,
                w.f_zeros_like()?.f_sum(Kind::Double)?,
            ),
        };
        values.extend([
            w.f_sum(Kind::Double)?,
            w.f_min()?,
            w.f_max()?,
            atyp_sum,
            atyp_count,
        ]);
    }
    // Scalars first, then the judged logits' per-class prediction counts: one transfer.
    let mut parts = vec![Tensor::f_stack(&values, 0)?];
    if let Some(l) = judged_logits {
        let classes = l.size().get(1).copied().unwrap_or(0);
        parts.push(
            l.f_argmax(1, false)?
                .f_bincount::<Tensor>(None, classes)?
                .f_to_kind(Kind::Double)?,
        );
    }
    let host = Vec::<f64>::try_from(&Tensor::f_cat(&parts, 0)?.f_to_device(Device::Cpu)?)?;
    let view = match (judged_logits, judged_correct_at) {
        (Some(_), Some(at)) => BatchView {
            samples: y.size()[0] as f64,
            correct: host[at],
            cross_entropy: host[cross_entropy_at],
            predicted: host[values.len()..].to_vec(),
            clean: clean_at.is_some(),
        },
        _ => BatchView {
            samples: 0.0,
            correct: 0.0,
            cross_entropy: 0.0,
            predicted: Vec::new(),
            clean: false,
        },
    };
    Ok(BatchStats {
        samples: y.size()[0] as u64,
        loss: host[0],
        clean_correct: clean_at.map(|i| host[i]),
        adv_correct: adv_at.map(|i| host[i]),
        weights: weights_at.map(|i| [host[i], host[i + 1], host[i + 2], host[i + 3], host[i + 4]]),
        view,
    })
}

/// `Σ_i CE(logits_i, y_i)` as a 0-d double tensor.
fn cross_entropy_sum(logits: &Tensor, y: &Tensor) -> Result<Tensor, TrainError> {
    Ok(logits
        .f_log_softmax(1, Kind::Double)?
        .f_gather(1, &y.f_unsqueeze(1)?, false)?
        .f_sum(Kind::Double)?
        .f_neg()?)
}

impl EpochSums {
    fn add(&mut self, b: &BatchStats, lr: f64, seconds: f64) {
        self.samples += b.samples;
        self.loss_sum += b.loss * b.samples as f64;
        if let Some(c) = b.clean_correct {
            self.clean_correct += c;
            self.clean_seen += b.samples;
        }
        if let Some(c) = b.adv_correct {
            self.adv_correct += c;
            self.adv_seen += b.samples;
        }
        if let Some([sum, min, max, atyp_sum, atyp_count]) = b.weights {
            self.weight_sum += sum;
            self.weight_count += b.samples;
            self.weight_min = Some(self.weight_min.map_or(min, |m| m.min(min)));
            self.weight_max = Some(self.weight_max.map_or(max, |m| m.max(max)));
            self.weight_atypical_sum += atyp_sum;
            self.weight_atypical_count += atyp_count;
        }
        self.train_seconds += seconds;
        self.last_lr = lr;
    }
}

/// The seeded split of `0..n` into (training, validation) positions that [`train`] makes, each sorted; validation
/// gets `round(fraction · n)` samples (at least 1 when the fraction is positive, and never all of them).
pub fn validation_split(n: usize, fraction: f64, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let wanted = if fraction > 0.0 && n > 1 {
        ((fraction * n as f64).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ SALT_VAL_SPLIT));
    let mut val = order.split_off(n - wanted);
    order.sort_unstable();
    val.sort_unstable();
    (order, val)
}

/// Deep copies of the model's state on the host.
fn snapshot(model: &dyn Classifier) -> Result<Vec<(String, Tensor)>, TrainError> {
    model
        .state_dict()
        .into_iter()
        .map(|(n, t)| Ok((n, host_copy(&t)?)))
        .collect()
}

/// Digest of everything that determines a run's trajectory, so a checkpoint is only resumed by the same run.
fn fingerprint(
    run: &TrainRun,
    model: &dyn Classifier,
    train: &Split,
    val: Option<&Split>,
) -> String {
    let mut h = Sha256::new();
    h.update(serde_norway::to_string(&run.spec).unwrap_or_default());
    h.update(format!(
        "{:?}|{:?}|{}|{}|{:?}",
        run.objective, run.norm, run.eps, run.seed, run.augmentation
    ));
    h.update(format!("train:{:?}", train.indices));
    if let Some(v) = val {
        h.update(format!("val:{:?}", v.indices));
    }
    if let Some(a) = run.atypicality {
        h.update(a.flags.iter().map(|&f| f as u8).collect::<Vec<_>>());
    }
    for (name, t) in model.state_dict() {
        h.update(format!("{name}:{:?};", t.size()));
    }
    hex::encode(h.finalize())
}

/// A seed for `(a, b)` derived from `seed` (splitmix64 finalizer over the combination).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
