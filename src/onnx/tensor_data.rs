//! Initializer payloads: decoding a `TensorProto` (raw little-endian bytes or the typed repeated fields) into one
//! little-endian byte buffer with its element type and dims, and the conversions to and from tch tensors.

use bytes::Bytes;
use tch::{Kind, Tensor};
use thiserror::Error;

use super::proto::{data_type, TensorProto};

/// The element types robustd computes with (those libtorch has a dtype for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// From `TensorProto.DataType`; `None` for types robustd does not compute with (strings, unsigned > 8 bit, …).
    pub fn from_onnx(code: i32) -> Option<Self> {
        Some(match code {
            data_type::FLOAT => Self::F32,
            data_type::FLOAT16 => Self::F16,
            data_type::BFLOAT16 => Self::BF16,
            data_type::DOUBLE => Self::F64,
            data_type::INT64 => Self::I64,
            data_type::INT32 => Self::I32,
            data_type::INT16 => Self::I16,
            data_type::INT8 => Self::I8,
            data_type::UINT8 => Self::U8,
            data_type::BOOL => Self::Bool,
            _ => return None,
        })
    }

    pub fn onnx_code(self) -> i32 {
        match self {
            Self::F32 => data_type::FLOAT,
            Self::F16 => data_type::FLOAT16,
            Self::BF16 => data_type::BFLOAT16,
            Self::F64 => data_type::DOUBLE,
            Self::I64 => data_type::INT64,
            Self::I32 => data_type::INT32,
            Self::I16 => data_type::INT16,
            Self::I8 => data_type::INT8,
            Self::U8 => data_type::UINT8,
            Self::Bool => data_type::BOOL,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::BF16 => Kind::BFloat16,
            Self::F64 => Kind::Double,
            Self::I64 => Kind::Int64,
            Self::I32 => Kind::Int,
            Self::I16 => Kind::Int16,
            Self::I8 => Kind::Int8,
            Self::U8 => Kind::Uint8,
            Self::Bool => Kind::Bool,
        }
    }

    /// The kind the interpreter computes values of this type in: float16 and bfloat16 in float32, so gradients,
    /// attacks and fine-tuning run in float32 (the master weights); everything else as is. The shipped precision
    /// is what onnxruntime runs, and write-back converts back to it.
    pub fn compute_kind(self) -> Kind {
        match self {
            Self::F16 | Self::BF16 => Kind::Float,
            other => other.kind(),
        }
    }

    pub fn from_kind(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::Float => Self::F32,
            Kind::Half => Self::F16,
            Kind::BFloat16 => Self::BF16,
            Kind::Double => Self::F64,
            Kind::Int64 => Self::I64,
            Kind::Int => Self::I32,
            Kind::Int16 => Self::I16,
            Kind::Int8 => Self::I8,
            Kind::Uint8 => Self::U8,
            Kind::Bool => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16 | Self::F64)
    }

    /// The ONNX spelling, for messages and `inspect`.
    pub fn name(self) -> &'static str {
        onnx_type_name(self.onnx_code())
    }
}

/// The ONNX name of a `TensorProto.DataType` code (`float`, `int64`, …).
pub fn onnx_type_name(code: i32) -> &'static str {
    match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17..=20 => "float8",
        21 => "uint4",
        22 => "int4",
        _ => "unknown",
    }
}

/// A decoded tensor: dims, element type and little-endian bytes (`numel * dtype.size()` of them).
#[derive(Debug, Clone)]
pub struct TensorData {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub bytes: Bytes,
}

/// Why a tensor's payload cannot be decoded (the caller adds the model file and the tensor).
#[derive(Debug, Error)]
pub enum TensorDataError {
    #[error("element type {code} ({}) is not supported", onnx_type_name(*.code))]
    UnsupportedType { code: i32 },
    #[error("segmented tensors are not supported")]
    Segmented,
    #[error("negative dimension {0}")]
    NegativeDim(i64),
    #[error("size overflows")]
    Overflow,
    #[error("holds {bytes} bytes of data, but dims {dims:?} of {dtype} need {expected}")]
    SizeMismatch {
        bytes: u64,
        dims: Vec<i64>,
        dtype: &'static str,
        expected: u64,
    },
}

impl TensorData {
    pub fn numel(&self) -> u64 {
        self.dims.iter().map(|&d| d.max(0) as u64).product()
    }

    /// Decodes an in-file tensor (raw_data or typed fields). External data is resolved by the caller, which passes
    /// the bytes it read as `external`.
    pub fn from_proto(t: &TensorProto, external: Option<Bytes>) -> Result<Self, TensorDataError> {
        let dtype = DType::from_onnx(t.data_type)
            .ok_or(TensorDataError::UnsupportedType { code: t.data_type })?;
        if t.segment.is_some() {
            return Err(TensorDataError::Segmented);
        }
        if let Some(&d) = t.dims.iter().find(|&&d| d < 0) {
            return Err(TensorDataError::NegativeDim(d));
        }
        let numel: u64 = t.dims.iter().map(|&d| d as u64).product();
        let expected = numel
            .checked_mul(dtype.size() as u64)
            .ok_or(TensorDataError::Overflow)?;
        let bytes = match external {
            Some(b) => b,
            None if !t.raw_data.is_empty() || numel == 0 => t.raw_data.clone(),
            None => Bytes::from(typed_to_le_bytes(t, dtype)),
        };
        if bytes.len() as u64 != expected {
            return Err(TensorDataError::SizeMismatch {
                bytes: bytes.len() as u64,
                dims: t.dims.clone(),
                dtype: dtype.name(),
                expected,
            });
        }
        Ok(Self {
            dtype,
            dims: t.dims.clone(),
            bytes,
        })
    }

    /// How many elements are NaN, and the flat index of the first; `None` when there are none (or the type is
    /// not floating-point).
    pub fn nan_count(&self) -> Option<(u64, u64)> {
        fn scan<const N: usize>(
            bytes: &[u8],
            is_nan: impl Fn([u8; N]) -> bool,
        ) -> Option<(u64, u64)> {
            let mut count = 0u64;
            let mut first = None;
            for (i, chunk) in bytes.chunks_exact(N).enumerate() {
                let mut a = [0u8; N];
                a.copy_from_slice(chunk);
                if is_nan(a) {
                    count += 1;
                    first.get_or_insert(i as u64);
                }
            }
            first.map(|f| (count, f))
        }
        match self.dtype {
            DType::F32 => scan(&self.bytes, |b| f32::from_le_bytes(b).is_nan()),
            DType::F64 => scan(&self.bytes, |b| f64::from_le_bytes(b).is_nan()),
            DType::F16 => scan(&self.bytes, |b| half::f16::from_le_bytes(b).is_nan()),
            DType::BF16 => scan(&self.bytes, |b| half::bf16::from_le_bytes(b).is_nan()),
            _ => None,
        }
    }

    /// How many elements are infinite (floating-point types only).
    pub fn inf_count(&self) -> u64 {
        fn count<const N: usize>(bytes: &[u8], is_inf: impl Fn([u8; N]) -> bool) -> u64 {
            bytes
                .chunks_exact(N)
                .filter(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    is_inf(a)
                })
                .count() as u64
        }
        match self.dtype {
            DType::F32 => count(&self.bytes, |b| f32::from_le_bytes(b).is_infinite()),
            DType::F64 => count(&self.bytes, |b| f64::from_le_bytes(b).is_infinite()),
            DType::F16 => count(&self.bytes, |b| half::f16::from_le_bytes(b).is_infinite()),
            DType::BF16 => count(&self.bytes, |b| half::bf16::from_le_bytes(b).is_infinite()),
            _ => 0,
        }
    }

    /// A CPU tch tensor holding a copy of the data.
    pub fn to_tch(&self) -> Result<Tensor, tch::TchError> {
        Tensor::f_from_data_size(&self.bytes, &self.dims, self.dtype.kind())
    }

    /// [`TensorData::to_tch`] in the interpreter's compute kind (half precision widened to float32).
    pub fn to_tch_compute(&self) -> Result<Tensor, tch::TchError> {
        let t = self.to_tch()?;
        match self.dtype.compute_kind() {
            k if k == t.kind() => Ok(t),
            k => t.f_to_kind(k),
        }
    }

    /// The little-endian bytes of a tch tensor (any device, any layout), converted to `dtype`.
    pub fn from_tch(t: &Tensor, dtype: DType) -> Result<Self, tch::TchError> {
        let cpu = t
            .f_detach()?
            .f_to_kind(dtype.kind())?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let numel = cpu.numel();
        let mut buf = vec![0u8; numel * dtype.size()];
        cpu.f_copy_data_u8(&mut buf, numel)?;
        Ok(Self {
            dtype,
            dims: cpu.size(),
            bytes: Bytes::from(buf),
        })
    }
}

/// The typed repeated fields (`float_data`, `int32_data`, …) re-encoded as little-endian bytes.
fn typed_to_le_bytes(t: &TensorProto, dtype: DType) -> Vec<u8> {
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    // Narrow types stored in int32_data: keep the low bits (the spec stores them unsign-/sign-extended).
    match dtype {
        DType::F32 => le(&t.float_data, f32::to_le_bytes),
        DType::F64 => le(&t.double_data, f64::to_le_bytes),
        DType::I64 => le(&t.int64_data, i64::to_le_bytes),
        DType::I32 => le(&t.int32_data, i32::to_le_bytes),
        DType::I16 => le(&t.int32_data, |x| (x as i16).to_le_bytes()),
        DType::F16 | DType::BF16 => le(&t.int32_data, |x| (x as u16).to_le_bytes()),
        DType::I8 => le(&t.int32_data, |x| (x as i8).to_le_bytes()),
        DType::U8 => le(&t.int32_data, |x| (x as u8).to_le_bytes()),
        DType::Bool => le(&t.int32_data, |x| [u8::from(x != 0)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_and_raw_fields_decode_to_the_same_tensor() {
        let values = [1.5f32, -2.0, 3.25];
        let typed = TensorProto {
            dims: vec![3],
            data_type: data_type::FLOAT,
            float_data: values.to_vec(),
            ..Default::default()
        };
        let raw = TensorProto {
            dims: vec![3],
            data_type: data_type::FLOAT,
            raw_data: Bytes::from(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            ..Default::default()
        };
        let a = TensorData::from_proto(&typed, None).unwrap();
        let b = TensorData::from_proto(&raw, None).unwrap();
        assert_eq!(a.bytes, b.bytes);
        let t = a.to_tch().unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), values.to_vec());
    }

    #[test]
    fn narrow_types_from_int32_data() {
        let t = TensorProto {
            dims: vec![2, 2],
            data_type: data_type::BOOL,
            int32_data: vec![1, 0, 0, 5],
            ..Default::default()
        };
        let d = TensorData::from_proto(&t, None).unwrap();
        assert_eq!(&d.bytes[..], &[1, 0, 0, 1]);
        let t = TensorProto {
            dims: vec![2],
            data_type: data_type::INT8,
            int32_data: vec![-3, 7],
            ..Default::default()
        };
        let x = TensorData::from_proto(&t, None).unwrap().to_tch().unwrap();
        assert_eq!(Vec::<i8>::try_from(&x).unwrap(), vec![-3, 7]);
    }

    #[test]
    fn size_mismatch_is_reported() {
        let t = TensorProto {
            dims: vec![4],
            data_type: data_type::FLOAT,
            float_data: vec![1.0],
            ..Default::default()
        };
        let err = TensorData::from_proto(&t, None).unwrap_err().to_string();
        assert!(err.contains("holds 4 bytes"), "{err}");
    }
}
