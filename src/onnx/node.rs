//! A graph node in robustd's own form (inputs/outputs by name, attributes kept as protos) and typed attribute
//! access: one small trait per attribute kind, with errors naming the attribute.

use std::collections::HashSet;

use thiserror::Error;

use super::proto::{attribute_type as at, AttributeProto, GraphProto, NodeProto, TensorProto};

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

impl AttrValue for GraphProto {
    const EXPECTED: &'static str = "GRAPH";
    fn read(a: &AttributeProto) -> Option<Self> {
        if a.r#type == at::GRAPH {
            a.g.as_deref().cloned()
        } else {
            None
        }
    }
}

impl Node {
    pub fn from_proto(n: &NodeProto) -> Self {
        Self {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attributes: n.attribute.clone(),
        }
    }

    /// The graphs in this node's attributes (If branches, Loop and Scan bodies).
    pub fn subgraphs(&self) -> impl Iterator<Item = &GraphProto> {
        self.attributes
            .iter()
            .flat_map(|a| a.g.as_deref().into_iter().chain(a.graphs.iter()))
    }

    /// Values this node's subgraphs read from enclosing graphs: names neither produced inside a subgraph nor
    /// its own inputs or initializers (at any nesting depth). They order the node after their producers.
    pub fn outer_references(&self) -> Vec<String> {
        let mut out = Vec::new();
        for g in self.subgraphs() {
            collect_outer(g, &HashSet::new(), &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

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

fn collect_outer(g: &GraphProto, enclosing_local: &HashSet<String>, out: &mut Vec<String>) {
    let mut local: HashSet<String> = enclosing_local.clone();
    local.extend(g.input.iter().map(|v| v.name.clone()));
    local.extend(g.initializer.iter().map(|t| t.name.clone()));
    local.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    for n in &g.node {
        for input in n.input.iter().filter(|s| !s.is_empty()) {
            if !local.contains(input) {
                out.push(input.clone());
            }
        }
        for a in &n.attribute {
            for sub in a.g.as_deref().into_iter().chain(a.graphs.iter()) {
                collect_outer(sub, &local, out);
            }
        }
    }
    for o in &g.output {
        if !local.contains(&o.name) {
            out.push(o.name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{AttributeProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    /// An If branch reading `x` and `w` from the enclosing graph, its own `t`, and a nested branch reading `y`.
    #[test]
    fn subgraph_reads_from_enclosing_graphs_are_found_at_any_depth() {
        let inner = GraphProto {
            node: vec![node("Relu", &["y", "t"], "u")],
            output: vec![ValueInfoProto {
                name: "u".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let nested = node("If", &["c"], "v");
        let nested = NodeProto {
            attribute: vec![AttributeProto {
                name: "then_branch".into(),
                r#type: at::GRAPH,
                g: Some(Box::new(inner)),
                ..Default::default()
            }],
            ..nested
        };
        let branch = GraphProto {
            node: vec![node("Add", &["x", "w"], "t"), nested],
            output: vec![ValueInfoProto {
                name: "v".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut outer = Node::from_proto(&node("If", &["cond"], "out"));
        outer.attributes.push(AttributeProto {
            name: "then_branch".into(),
            r#type: at::GRAPH,
            g: Some(Box::new(branch)),
            ..Default::default()
        });
        assert_eq!(outer.outer_references(), ["c", "w", "x", "y"]);
    }
}
