//! Accuracy of a model on a split, clean and under PGD, with the model in eval mode: what picks the best epoch,
//! and the clean predictions the holdout atypicality estimate needs. The attack is the shared PGD core with
//! [`Keep::Adversarial`] and each sample's random start keyed by its position in the split, so the number does not
//! depend on the batch size and is comparable from epoch to epoch.

use tch::{Kind, Tensor};

use super::TrainError;
use crate::attack::losses::cross_entropy;
use crate::attack::pgd::{pgd_rows, Keep, PgdParams};
use crate::data::{BatchOptions, Split};
use crate::model::Classifier;

/// Clean and robust accuracy, fractions in [0,1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub clean: f64,
    pub robust: f64,
}

/// Clean accuracy and accuracy under `attack` (its `keep` is forced to [`Keep::Adversarial`]).
pub fn clean_and_robust(
    model: &mut dyn Classifier,
    split: &Split,
    attack: &PgdParams,
    batch_size: usize,
) -> Result<Accuracy, TrainError> {
    model.set_train(false);
    let attack = PgdParams {
        keep: Keep::Adversarial,
        ..attack.clone()
    };
    let device = model.device();
    let (mut clean, mut robust, mut seen) = (0i64, 0i64, 0i64);
    for batch in split.batches(&BatchOptions::eval(batch_size))? {
        let batch = batch?;
        let x = batch.x.f_to_device(device)?;
        let y = batch.y.f_to_device(device)?;
        let rows: Vec<u64> = Vec::<i64>::try_from(&batch.positions)?
            .into_iter()
            .map(|p| p as u64)
            .collect();
        let clean_pred = tch::no_grad(|| model.forward(&x))?.f_argmax(1, false)?;
        let x_adv = pgd_rows(&*model, &x, &y, Some(&rows), &attack, &cross_entropy)?;
        let adv_pred = tch::no_grad(|| model.forward(&x_adv))?.f_argmax(1, false)?;
        clean += count(&clean_pred.f_eq_tensor(&y)?)?;
        robust += count(&adv_pred.f_eq_tensor(&y)?)?;
        seen += y.size()[0];
    }
    let frac = |k: i64| {
        if seen == 0 {
            0.0
        } else {
            k as f64 / seen as f64
        }
    };
    Ok(Accuracy {
        clean: frac(clean),
        robust: frac(robust),
    })
}

/// Clean predicted labels (int64 `[N]`, CPU) for every sample of `split`, in split order.
pub fn predictions(
    model: &mut dyn Classifier,
    split: &Split,
    batch_size: usize,
) -> Result<Tensor, TrainError> {
    model.set_train(false);
    let device = model.device();
    let mut out = Vec::new();
    for batch in split.batches(&BatchOptions::eval(batch_size))? {
        let batch = batch?;
        let x = batch.x.f_to_device(device)?;
        let pred = tch::no_grad(|| model.forward(&x))?.f_argmax(1, false)?;
        out.push(pred.f_to_device(tch::Device::Cpu)?);
    }
    if out.is_empty() {
        return Ok(Tensor::f_zeros([0], (Kind::Int64, tch::Device::Cpu))?);
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

fn count(mask: &Tensor) -> Result<i64, TrainError> {
    Ok(i64::try_from(mask.f_sum(Kind::Int64)?)?)
}
