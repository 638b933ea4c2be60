//! [`OrtScorer`]: onnxruntime on the original file — what Square queries, what re-checks use, and the reference
//! the interpreter is tested against. Inputs are tch CPU tensors passed to onnxruntime as borrowed views
//! (no copy); outputs are copied once into tch tensors. A float16/bfloat16 model gets its image in its own
//! element type: the verdicts are those of the shipped precision.

use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use super::error::OnnxError;
use super::session::{ort_session_on, Provider, SessionError, Spinning};
use super::tch_model::Interrupt;
use crate::device::DeviceId;
use crate::model::{InputAdapter, ModelError, Scorer};

/// A forward-only classifier on onnxruntime. See the module docs.
pub struct OrtScorer {
    session: Session,
    adapter: InputAdapter,
    file: PathBuf,
    input_names: Vec<String>,
    /// The tch kind of the first input as the session declares it (float16 models take float16 images).
    image_kind: Kind,
    interrupt: Option<Interrupt>,
    provider: Provider,
}

impl OrtScorer {
    /// Opens a session on `path` (external data resolved by onnxruntime next to the file). `intra_threads` 0
    /// keeps onnxruntime's default.
    pub fn new(
        path: &Path,
        adapter: InputAdapter,
        intra_threads: usize,
    ) -> Result<Self, OnnxError> {
        Self::on_device(path, adapter, intra_threads, DeviceId::Cpu, Spinning::On)
    }

    /// [`OrtScorer::new`] with the execution provider of `device` (CUDA on a GPU when onnxruntime has it; see
    /// [`super::session::choose_provider`]) and the given thread [`Spinning`]. Inputs and outputs stay CPU tensors
    /// either way.
    pub fn on_device(
        path: &Path,
        adapter: InputAdapter,
        intra_threads: usize,
        device: DeviceId,
        spinning: Spinning,
    ) -> Result<Self, OnnxError> {
        let file = path.to_path_buf();
        let (session, provider) = ort_session_on(path, None, intra_threads, device, spinning)
            .map_err(|e| OnnxError::Ort {
                file: file.clone(),
                message: match e {
                    SessionError::Load { message, .. } => message,
                    SessionError::Runtime(e) => e.to_string(),
                },
            })?;
        let input_names = session
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        let image_kind = match session.inputs().first().map(|i| i.dtype()) {
            Some(ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            }) => Kind::Half,
            Some(ValueType::Tensor {
                ty: TensorElementType::Bfloat16,
                ..
            }) => Kind::BFloat16,
            Some(ValueType::Tensor {
                ty: TensorElementType::Float64,
                ..
            }) => Kind::Double,
            _ => Kind::Float,
        };
        Ok(Self {
            session,
            adapter,
            file,
            input_names,
            image_kind,
            interrupt: None,
            provider,
        })
    }

    /// The execution provider this session runs on.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Polled before every run, like [`super::TchModel::set_interrupt`]: a cancelled job stops inside the Square
    /// attack (onnxruntime queries only) within one query.
    pub fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    /// Runs the raw graph: one tensor per input in declaration order (any device; moved to CPU), every output.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        if self.interrupt.as_ref().is_some_and(|stop| stop()) {
            return Err(OnnxError::Interrupted {
                file: self.file.clone(),
            });
        }
        let file = self.file.clone();
        let ort_err = |message: String| OnnxError::Ort {
            file: file.clone(),
            message,
        };
        if inputs.len() != self.input_names.len() {
            return Err(ort_err(format!(
                "the graph takes {} inputs, {} given",
                self.input_names.len(),
                inputs.len()
            )));
        }
        // Contiguous CPU tensors that stay alive while onnxruntime reads them.
        let owned: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous())
            .collect::<Result<_, _>>()
            .map_err(|e| ort_err(format!("preparing inputs: {e}")))?;
        let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(owned.len());
        for (name, t) in self.input_names.iter().zip(&owned) {
            feeds.push((
                name.clone(),
                tensor_view(t).map_err(|e| ort_err(format!("input `{name}`: {e}")))?,
            ));
        }
        let outputs = self
            .session
            .run(feeds)
            .map_err(|e| ort_err(e.to_string()))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            result.push(to_tch(&value).map_err(|e| ort_err(format!("output `{name}`: {e}")))?);
        }
        Ok(result)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Scorer for OrtScorer {
    fn logits(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let size = x.size();
        if size.len() != 4
            || (self.adapter.normalizes() && size[1] != self.adapter.mean.len() as i64)
        {
            return Err(ModelError::Forward(format!(
                "{}: input batch has shape {size:?}; expected [N, C, H, W] with C = {} (the normalization's channels)",
                self.file.display(),
                self.adapter.mean.len()
            )));
        }
        let adapted = self
            .adapter
            .apply(&x.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)
            .f_to_kind(self.image_kind)?;
        let mut out = self
            .run(&[adapted])
            .map_err(|e| ModelError::Forward(e.to_string()))?;
        if out.is_empty() {
            return Err(ModelError::Forward(format!(
                "{}: the model has no outputs",
                self.file.display()
            )));
        }
        Ok(out.swap_remove(0).f_to_kind(Kind::Float)?)
    }
}

/// Why a tensor cannot cross between tch and onnxruntime.
#[derive(Debug, Error)]
enum ConvertError {
    #[error("element type {0} is not supported")]
    Unsupported(String),
    #[error(transparent)]
    Ort(#[from] ort::Error),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A borrowed onnxruntime view of a contiguous CPU tensor.
fn tensor_view(t: &Tensor) -> Result<SessionInputValue<'_>, ConvertError> {
    fn view<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        t: &Tensor,
    ) -> Result<SessionInputValue<'_>, ConvertError> {
        let shape: Vec<i64> = t.size();
        let numel = t.numel();
        // SAFETY: `t` is a contiguous CPU tensor of element type `T` (checked by the caller's match on its kind)
        // holding `numel` elements; the slice borrows `t`, which outlives the returned view.
        let data: &[T] = if numel == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, numel) }
        };
        Ok(TensorRef::from_array_view((shape, data)).map(SessionInputValue::from)?)
    }
    match t.kind() {
        Kind::Float => view::<f32>(t),
        Kind::Half => view::<half::f16>(t),
        Kind::BFloat16 => view::<half::bf16>(t),
        Kind::Double => view::<f64>(t),
        Kind::Int64 => view::<i64>(t),
        Kind::Int => view::<i32>(t),
        Kind::Int16 => view::<i16>(t),
        Kind::Int8 => view::<i8>(t),
        Kind::Uint8 => view::<u8>(t),
        Kind::Bool => view::<bool>(t),
        other => Err(ConvertError::Unsupported(format!("{other:?}"))),
    }
}

fn to_tch(value: &ort::value::DynValue) -> Result<Tensor, ConvertError> {
    fn copy<T: ort::value::PrimitiveTensorElementType + tch::kind::Element>(
        value: &ort::value::DynValue,
    ) -> Result<Tensor, ConvertError> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        Ok(Tensor::f_from_slice(data).and_then(|t| t.f_reshape(&dims))?)
    }
    match value.dtype() {
        ValueType::Tensor { ty, .. } => match ty {
            TensorElementType::Float32 => copy::<f32>(value),
            TensorElementType::Float16 => copy::<half::f16>(value),
            TensorElementType::Bfloat16 => copy::<half::bf16>(value),
            TensorElementType::Float64 => copy::<f64>(value),
            TensorElementType::Int64 => copy::<i64>(value),
            TensorElementType::Int32 => copy::<i32>(value),
            TensorElementType::Int16 => copy::<i16>(value),
            TensorElementType::Int8 => copy::<i8>(value),
            TensorElementType::Uint8 => copy::<u8>(value),
            TensorElementType::Bool => copy::<bool>(value),
            other => Err(ConvertError::Unsupported(format!("{other:?}"))),
        },
        other => Err(ConvertError::Unsupported(format!(
            "{other:?} (not a tensor)"
        ))),
    }
}
