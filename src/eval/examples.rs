//! The adversarial examples themselves: the evaluation keeps, for the broken samples with the lowest dataset indices
//! (at most `eval.examples.max`), the perturbed input that broke it — the smallest perturbation in the threat norm
//! when several attacks did — and writes them as `adversarial_<tag>.npz`, readable with `numpy.load`:
//!
//! | array | dtype | shape | meaning |
//! |---|---|---|---|
//! | `index` | int64 | `[M]` | dataset index |
//! | `label` | int64 | `[M]` | true label |
//! | `pred` | int64 | `[M]` | the scorer's prediction on the adversarial input |
//! | `attack` | `<U16` | `[M]` | the attack that found it |
//! | `norm` | float32 | `[M]` | its perturbation's norm (`threat_norm`) |
//! | `x_adv` | float32 | `[M, C, H, W]` | the adversarial input in [0,1] |
//! | `x` | float32 | `[M, C, H, W]` | the clean input |
//! | `threat_norm` | `<U16` | `[1]` | `linf` or `l2` |
//! | `eps` | float64 | `[1]` | the threat model's radius |

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array1, ArrayD, IxDyn};
use ndarray_npy::{WritableElement, WriteDataError};
use tch::{Device, Kind, Tensor};

use super::EvalError;
use crate::attack::pgd::row_norms;
use crate::config::Norm;

/// One kept example.
#[derive(Debug)]
pub struct Example {
    pub label: i64,
    pub pred: i64,
    pub attack: String,
    pub norm: f64,
    /// `[C, H, W]` on the CPU.
    pub x_adv: Tensor,
    pub x: Tensor,
}

/// The kept examples by dataset index, bounded to the `max` lowest indices.
#[derive(Debug)]
pub struct AdversarialExamples {
    pub threat_norm: Norm,
    pub eps: f64,
    pub max: usize,
    pub kept: BTreeMap<u64, Example>,
}

/// A batch of attack results to offer: rows of `x_adv`/`x` (`[n, C, H, W]`, CPU) with their dataset indices,
/// labels, the scorer's predictions and whether each broke its sample.
pub struct Offer<'a> {
    pub attack: &'a str,
    pub indices: &'a [u64],
    pub labels: &'a [i64],
    pub preds: &'a [i64],
    pub broken: &'a [bool],
    pub x_adv: &'a Tensor,
    pub x: &'a Tensor,
}

impl AdversarialExamples {
    pub fn new(threat_norm: Norm, eps: f64, max: usize) -> Self {
        Self {
            threat_norm,
            eps,
            max,
            kept: BTreeMap::new(),
        }
    }

    /// Keeps the broken rows that belong among the `max` lowest indices; a sample already kept keeps the smaller
    /// perturbation.
    pub fn offer(&mut self, offer: Offer<'_>) -> Result<(), EvalError> {
        if self.max == 0 || !offer.broken.iter().any(|b| *b) {
            return Ok(());
        }
        let norms = Vec::<f64>::try_from(
            &row_norms(&offer.x_adv.f_sub(offer.x)?, self.threat_norm)?.f_to_kind(Kind::Double)?,
        )?;
        for (row, &index) in offer.indices.iter().enumerate() {
            if !offer.broken[row] {
                continue;
            }
            let full = self.kept.len() >= self.max;
            let beyond = self
                .kept
                .keys()
                .next_back()
                .is_some_and(|&last| index > last);
            if full && beyond && !self.kept.contains_key(&index) {
                continue;
            }
            if self.kept.get(&index).is_some_and(|e| e.norm <= norms[row]) {
                continue;
            }
            let example = Example {
                label: offer.labels[row],
                pred: offer.preds[row],
                attack: offer.attack.to_owned(),
                norm: norms[row],
                x_adv: offer.x_adv.f_get(row as i64)?.f_to_device(Device::Cpu)?,
                x: offer.x.f_get(row as i64)?.f_to_device(Device::Cpu)?,
            };
            self.kept.insert(index, example);
            if self.kept.len() > self.max {
                self.kept.pop_last();
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Writes the npz atomically, through [`crate::durable`].
    pub fn save_npz(&self, path: &Path) -> Result<(), EvalError> {
        let examples: Vec<(&u64, &Example)> = self.kept.iter().collect();
        let column = |f: &dyn Fn(&Example) -> i64| -> Array1<i64> {
            examples.iter().map(|(_, e)| f(e)).collect()
        };
        let index: Array1<i64> = examples.iter().map(|(&i, _)| i as i64).collect();
        let attacks: Array1<NpyText> = examples
            .iter()
            .map(|(_, e)| NpyText::new(&e.attack))
            .collect();
        let norms: Array1<f32> = examples.iter().map(|(_, e)| e.norm as f32).collect();
        let x_adv = self.images(&examples, |e| &e.x_adv)?;
        let x = self.images(&examples, |e| &e.x)?;
        let threat = match self.threat_norm {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        };
        crate::durable::write_npz(path, |writer| {
            writer.add_array("index", &index)?;
            writer.add_array("label", &column(&|e| e.label))?;
            writer.add_array("pred", &column(&|e| e.pred))?;
            writer.add_array("attack", &attacks)?;
            writer.add_array("norm", &norms)?;
            writer.add_array("x_adv", &x_adv)?;
            writer.add_array("x", &x)?;
            writer.add_array("threat_norm", &Array1::from_vec(vec![NpyText::new(threat)]))?;
            writer.add_array("eps", &Array1::from_vec(vec![self.eps]))
        })?;
        Ok(())
    }

    /// The kept images stacked `[M, C, H, W]` (an empty `[0]` array when none).
    fn images(
        &self,
        examples: &[(&u64, &Example)],
        pick: fn(&Example) -> &Tensor,
    ) -> Result<ArrayD<f32>, EvalError> {
        let Some((_, first)) = examples.first() else {
            return Ok(ArrayD::zeros(IxDyn(&[0])));
        };
        let mut shape = vec![examples.len()];
        shape.extend(pick(first).size().iter().map(|&d| d as usize));
        let mut data = Vec::with_capacity(shape.iter().product());
        for (_, e) in examples {
            data.extend(Vec::<f32>::try_from(
                &pick(e).f_to_kind(Kind::Float)?.f_flatten(0, -1)?,
            )?);
        }
        ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| EvalError::Invalid {
            what: "adversarial examples",
            message: e.to_string(),
        })
    }
}

/// Characters of [`NpyText`].
const TEXT_WIDTH: usize = 16;

/// A short string stored as numpy's fixed-width unicode (`<U16`), so `np.load` gives `str` values. ndarray-npy
/// writes only numbers and booleans; the format is 16 UTF-32 code points per element, zero-padded (longer strings
/// are cut).
#[derive(Debug, Clone, Copy)]
pub struct NpyText([u32; TEXT_WIDTH]);

impl NpyText {
    pub fn new(text: &str) -> Self {
        let mut points = [0u32; TEXT_WIDTH];
        for (slot, ch) in points.iter_mut().zip(text.chars()) {
            *slot = u32::from(ch);
        }
        Self(points)
    }
}

impl WritableElement for NpyText {
    fn type_descriptor() -> py_literal::Value {
        py_literal::Value::String(format!("<U{TEXT_WIDTH}"))
    }

    fn write<W: std::io::Write>(&self, mut writer: W) -> Result<(), WriteDataError> {
        for point in self.0 {
            writer.write_all(&point.to_le_bytes())?;
        }
        Ok(())
    }

    fn write_slice<W: std::io::Write>(slice: &[Self], mut writer: W) -> Result<(), WriteDataError> {
        for text in slice {
            text.write(&mut writer)?;
        }
        Ok(())
    }
}
