//! SGD (momentum, Nesterov, weight decay) and Adam, written out by hand with PyTorch's update rules.
//!
//! Why not `tch::nn::Optimizer`: it is built from a `VarStore`, while a [`crate::model::Classifier`] exposes loose
//! parameter tensors (the ONNX interpreter's initializers), and its state (momentum buffers, Adam moments) cannot be
//! read back for a checkpoint. Here the state is a list of plain tensors that [`Optimizer::state_tensors`] exports
//! and [`Optimizer::load_state`] restores, so a resumed run continues bit for bit.
//!
//! Rules (as `torch.optim`): SGD `g ← ∇ + wd·θ; b ← μ·b + g; g ← g + μ·b (Nesterov) or b; θ ← θ − lr·g` with
//! `b₀ = 0` (so the first step's buffer is `g`, as PyTorch's lazy initialization gives); Adam (L2 weight decay)
//! `g ← ∇ + wd·θ; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.

use tch::Tensor;

use super::TrainError;
use crate::config::OptimizerSpec;

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// An optimizer over a fixed list of parameters, with its state as tensors.
#[derive(Debug)]
pub struct Optimizer {
    pub rule: Rule,
    /// Per parameter: SGD `[momentum]` (empty without momentum), Adam `[m, v]`.
    state: Vec<Vec<Tensor>>,
    /// Steps taken (Adam's bias correction).
    steps: u64,
}

impl Optimizer {
    /// The optimizer `spec` names, with zeroed state shaped like `params`.
    pub fn from_spec(spec: &OptimizerSpec, params: &[Tensor]) -> Result<Self, TrainError> {
        let check = |key: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(TrainError::Invalid {
                    key,
                    message: format!("{v} is not a finite non-negative number"),
                })
            }
        };
        let weight_decay = check("train.optimizer.weight_decay", spec.weight_decay)?;
        let rule = match spec.name.as_str() {
            "sgd" => Rule::Sgd {
                momentum: check("train.optimizer.momentum", spec.momentum)?,
                nesterov: spec.nesterov,
                weight_decay,
            },
            "adam" => Rule::Adam {
                beta1: ADAM_BETA1,
                beta2: ADAM_BETA2,
                eps: ADAM_EPS,
                weight_decay,
            },
            other => {
                return Err(TrainError::Invalid {
                    key: "train.optimizer.name",
                    message: format!("`{other}`: expected sgd or adam"),
                })
            }
        };
        if let Rule::Sgd {
            momentum, nesterov, ..
        } = rule
        {
            if nesterov && momentum == 0.0 {
                return Err(TrainError::Invalid {
                    key: "train.optimizer.nesterov",
                    message: "Nesterov momentum needs momentum > 0".into(),
                });
            }
        }
        Self::new(rule, params)
    }

    pub fn new(rule: Rule, params: &[Tensor]) -> Result<Self, TrainError> {
        let buffers = match rule {
            Rule::Sgd { momentum: 0.0, .. } => 0,
            Rule::Sgd { .. } => 1,
            Rule::Adam { .. } => 2,
        };
        let state = params
            .iter()
            .map(|p| {
                (0..buffers)
                    .map(|_| p.f_zeros_like())
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rule,
            state,
            steps: 0,
        })
    }

    pub fn name(&self) -> &'static str {
        match self.rule {
            Rule::Sgd { .. } => "sgd",
            Rule::Adam { .. } => "adam",
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of `params` (in place) from their gradients `grads` (same order; an undefined gradient — a
    /// parameter the loss did not reach — leaves that parameter and its state unchanged).
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) -> Result<(), TrainError> {
        if params.len() != self.state.len() || grads.len() != params.len() {
            return Err(TrainError::Invalid {
                key: "optimizer",
                message: format!(
                    "{} parameters and {} gradients for an optimizer over {}",
                    params.len(),
                    grads.len(),
                    self.state.len()
                ),
            });
        }
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let t = self.steps as i32;
        for ((param, grad), state) in params.iter().zip(grads).zip(self.state.iter_mut()) {
            if !grad.defined() {
                continue;
            }
            let mut p = param.shallow_clone();
            match self.rule {
                Rule::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } => {
                    let mut g = decayed(grad, &p, weight_decay)?;
                    if let Some(buf) = state.first_mut() {
                        let _ = buf.f_mul_scalar_(momentum)?;
                        let _ = buf.f_add_(&g)?;
                        g = if nesterov {
                            g.f_add(&buf.f_mul_scalar(momentum)?)?
                        } else {
                            buf.shallow_clone()
                        };
                    }
                    let _ = p.f_sub_(&g.f_mul_scalar(lr)?)?;
                }
                Rule::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let g = decayed(grad, &p, weight_decay)?;
                    let [m, v] = state.as_mut_slice() else {
                        return Err(TrainError::Invalid {
                            key: "optimizer",
                            message: "Adam state must hold two moments per parameter".into(),
                        });
                    };
                    let _ = m.f_mul_scalar_(beta1)?;
                    let _ = m.f_add_(&g.f_mul_scalar(1.0 - beta1)?)?;
                    let _ = v.f_mul_scalar_(beta2)?;
                    let _ = v.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - beta2)?)?;
                    let bias1 = 1.0 - beta1.powi(t);
                    let bias2 = 1.0 - beta2.powi(t);
                    let denom = v.f_sqrt()?.f_div_scalar(bias2.sqrt())?.f_add_scalar(eps)?;
                    let _ = p.f_sub_(&m.f_div(&denom)?.f_mul_scalar(lr / bias1)?)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`<param index>.<buffer index>`), sharing storage with the optimizer.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .enumerate()
            .flat_map(|(i, buffers)| {
                buffers
                    .iter()
                    .enumerate()
                    .map(move |(j, b)| (format!("{i}.{j}"), b.shallow_clone()))
            })
            .collect()
    }

    /// Restores what [`Optimizer::state_tensors`] exported (values copied in place) and the step count.
    pub fn load_state(&mut self, named: &[(String, Tensor)], steps: u64) -> Result<(), TrainError> {
        let expected: usize = self.state.iter().map(Vec::len).sum();
        if named.len() != expected {
            return Err(TrainError::Invalid {
                key: "optimizer state",
                message: format!("{} tensors saved, {expected} expected", named.len()),
            });
        }
        let _guard = tch::no_grad_guard();
        for (name, value) in named {
            let target = name
                .split_once('.')
                .and_then(|(i, j)| Some((i.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
                .and_then(|(i, j)| self.state.get_mut(i)?.get_mut(j))
                .ok_or_else(|| TrainError::Invalid {
                    key: "optimizer state",
                    message: format!("unexpected tensor `{name}`"),
                })?;
            if target.size() != value.size() {
                return Err(TrainError::Invalid {
                    key: "optimizer state",
                    message: format!(
                        "`{name}` has shape {:?}, the parameter {:?}",
                        value.size(),
                        target.size()
                    ),
                });
            }
            target.f_copy_(value)?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// `∇ + wd·θ` (callers only read the result: the gradient itself is never modified).
fn decayed(grad: &Tensor, param: &Tensor, weight_decay: f64) -> Result<Tensor, TrainError> {
    Ok(if weight_decay != 0.0 {
        grad.f_add(&param.f_mul_scalar(weight_decay)?)?
    } else {
        grad.shallow_clone()
    })
}
