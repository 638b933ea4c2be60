//! A graph node in robustd's own form (inputs/outputs by name, attributes kept as protos) and typed attribute
//! access: one small trait per attribute kind, with errors naming the attribute.

use thiserror::Error;

use super::proto::{attribute_type as at, AttributeProto, TensorProto};

/// A present attribute of another type than the op reads it as.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("attribute `{name}` should be {expected} but has type code {found}")]
pub struct AttrError {
    pub name: String,
    pub expected: &'static str,
    pub found: i32,
}

/// One ONNX node. An empty input name means an omitted optional input.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<AttributeProto>,
}

/// A value an attribute can be read as.
pub trait AttrValue: Sized {
    /// The ONNX attribute type this reads, for messages.
    const EXPECTED: &'static str;
    fn read(a: &AttributeProto) -> Option<Self>;
}

impl AttrValue for i64 {
    const EXPECTED: &'static str = "INT";
    fn read(a: &AttributeProto) -> Option<Self> {
        (a.r#type == at::INT).then_some(a.i)
    }
}

impl AttrValue for f32 {
    const EXPECTED: &'static str = "FLOAT";
    fn read(a: &AttributeProto) -> Option<Self> {
        (a.r#type == at::FLOAT).then_some(a.f)
    }
}

impl AttrValue for String {
    const EXPECTED: &'static str = "STRING";
    fn read(a: &AttributeProto) -> Option<Self> {
        (a.r#type == at::STRING).then(|| String::from_utf8_lossy(&a.s).into_owned())
    }
}

impl AttrValue for Vec<i64> {
    const EXPECTED: &'static str = "INTS";
    fn read(a: &AttributeProto) -> Option<Self> {
        (a.r#type == at::INTS).then(|| a.ints.clone())
    }
}

impl AttrValue for Vec<f32> {
    const EXPECTED: &'static str = "FLOATS";
    fn read(a: &AttributeProto) -> Option<Self> {
        (a.r#type == at::FLOATS).then(|| a.floats.clone())
    }
}

impl AttrValue for TensorProto {
    const EXPECTED: &'static str = "TENSOR";
    fn read(a: &AttributeProto) -> Option<Self> {
        if a.r#type == at::TENSOR {
            a.t.clone()
        } else {
            None
        }
    }
}

impl Node {
    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The attribute as `T`, `None` when absent; a present attribute of another type is an error.
    pub fn attr<T: AttrValue>(&self, name: &str) -> Result<Option<T>, AttrError> {
        match self.attribute(name) {
            None => Ok(None),
            Some(a) => T::read(a).map(Some).ok_or_else(|| AttrError {
                name: name.to_owned(),
                expected: T::EXPECTED,
                found: a.r#type,
            }),
        }
    }

    /// The attribute as `T`, or `default` when absent.
    pub fn attr_or<T: AttrValue>(&self, name: &str, default: T) -> Result<T, AttrError> {
        Ok(self.attr(name)?.unwrap_or(default))
    }

    /// The named input, `None` when omitted (absent or empty name).
    pub fn input_name(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `name (op)` for messages; nodes without a name are shown by their first output.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            self.name.clone()
        } else {
            format!(
                "<unnamed -> {}>",
                self.outputs.first().map_or("", String::as_str)
            )
        }
    }

    /// The domain-qualified op type, `Conv` or `com.microsoft::FusedConv`.
    pub fn qualified_op(&self) -> String {
        if is_default_domain(&self.domain) {
            self.op_type.clone()
        } else {
            format!("{}::{}", self.domain, self.op_type)
        }
    }
}

/// The default ONNX operator domain (`""` or `ai.onnx`).
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}
