//! Values carried inside nodes: the `Constant` op's attributes and tensor-valued attributes (ConstantOfShape's
//! `value`), decoded to CPU tch tensors in the interpreter's compute kind (half precision as float32).

use tch::{Kind, Tensor};

use super::node::Node;
use super::ops::OpError;
use super::proto::TensorProto;
use super::tensor_data::TensorData;

/// Decodes a tensor attribute (never external data: that only applies to initializers here).
pub fn decode(t: &TensorProto) -> Result<Tensor, OpError> {
    if t.data_location == super::proto::DATA_LOCATION_EXTERNAL {
        return Err(OpError::Invalid(
            "tensor attributes with external data are not supported".into(),
        ));
    }
    let data = TensorData::from_proto(t, None).map_err(|e| OpError::Invalid(e.to_string()))?;
    Ok(data.to_tch_compute()?)
}

/// The value of a `Constant` node, from whichever `value*` attribute it carries.
pub fn constant_value(node: &Node) -> Result<Tensor, OpError> {
    if let Some(t) = node.attr::<TensorProto>("value")? {
        return decode(&t);
    }
    if let Some(f) = node.attr::<f32>("value_float")? {
        return Ok(Tensor::f_scalar_tensor(
            f as f64,
            (Kind::Float, tch::Device::Cpu),
        )?);
    }
    if let Some(v) = node.attr::<Vec<f32>>("value_floats")? {
        return Ok(Tensor::f_from_slice(&v)?);
    }
    if let Some(i) = node.attr::<i64>("value_int")? {
        return Ok(Tensor::f_scalar_tensor(i, (Kind::Int64, tch::Device::Cpu))?);
    }
    if let Some(v) = node.attr::<Vec<i64>>("value_ints")? {
        return Ok(Tensor::f_from_slice(&v)?);
    }
    Err(OpError::Invalid(
        "Constant without a supported value attribute (value, value_float(s), value_int(s))".into(),
    ))
}
