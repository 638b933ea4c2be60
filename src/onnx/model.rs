//! [`OnnxModel`]: a parsed, validated, topologically ordered ONNX graph with its initializers decoded, the real
//! inputs (graph inputs minus initializers), opset and metadata. Loading fails once for every unsupported op, with
//! counts; limits (bytes, nodes, tensor elements) come from the config.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use super::error::OnnxError;
use super::external::{ExternalRef, ExternalResolver};
use super::node::{is_default_domain, Node};
use super::ops;
use super::proto::{self, ModelProto, TensorProto, DATA_LOCATION_EXTERNAL};
use super::tensor_data::{onnx_type_name, DType, TensorData};
use crate::config::Limits;

/// Default-domain opsets robustd loads. 11–21 are what the exporters emit and what the fixture tests cover. The
/// ops robustd implements only widened their type lists in 22–28, and before 7 differ in ways the ops handle
/// (legacy `broadcast`/`axis` attributes, attribute-form arguments); the ONNX backend suite checks both ends
/// (node cases at each op's newest version, the `pytorch-converted` cases at opset 6).
pub const MIN_OPSET: i64 = 1;
pub const MAX_OPSET: i64 = 28;

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input or output as declared: name, element type (ONNX code) and dims (`None` = rank unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    pub dims: Option<Vec<Dim>>,
}

impl ValueInfo {
    fn from_proto(v: &proto::ValueInfoProto) -> Self {
        let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(proto::TypeValue::TensorType(t)) => Some(t),
            _ => None,
        };
        let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(proto::Dimension::DimValue(n)) => Dim::Fixed(*n),
                    Some(proto::Dimension::DimParam(p)) => Dim::Symbolic(p.clone()),
                    None => Dim::Unknown,
                })
                .collect()
        });
        Self {
            name: v.name.clone(),
            elem_type: tensor.map_or(0, |t| t.elem_type),
            dims,
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        onnx_type_name(self.elem_type)
    }

    pub fn dtype(&self) -> Option<DType> {
        DType::from_onnx(self.elem_type)
    }

    /// `[batch, 1, 28, 28]`, or `[?]` when the rank is unknown.
    pub fn shape_string(&self) -> String {
        match &self.dims {
            None => "[?]".into(),
            Some(d) => format!(
                "[{}]",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A decoded initializer.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub data: TensorData,
    /// Whether the file stored it as external data.
    pub external: bool,
}

/// A loaded ONNX model. See the module docs.
#[derive(Debug)]
pub struct OnnxModel {
    path: PathBuf,
    ir_version: i64,
    opset: i64,
    producer: String,
    metadata: Vec<(String, String)>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    initializer_index: HashMap<String, usize>,
    external_data_files: Vec<String>,
    /// The model with every initializer's payload removed: the template write-back fills in.
    skeleton: ModelProto,
    structure_hash: String,
    /// The limits it was loaded under; the interpreter holds every tensor it builds to them.
    limits: Limits,
}

impl OnnxModel {
    /// Reads, decodes, validates and orders the model at `path`.
    pub fn load(path: &Path, limits: &Limits) -> Result<Self, OnnxError> {
        let (model, unsupported) = Self::load_lenient(path, limits)?;
        match unsupported {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// Like [`OnnxModel::load`], but a model with unsupported ops still loads (for `inspect`); the error that
    /// `load` would give is returned beside it.
    pub fn load_lenient(
        path: &Path,
        limits: &Limits,
    ) -> Result<(Self, Option<OnnxError>), OnnxError> {
        let bytes = read_model_file(path, limits.max_model_bytes)?;
        let resolver = ExternalResolver::new(path).map_err(|source| OnnxError::Io {
            file: path.to_path_buf(),
            action: "cannot resolve the model directory",
            source,
        })?;
        Self::decode(path, bytes, resolver, limits)
    }

    /// Parses a model held in memory; `name` stands for the file in messages. External data is refused (there is
    /// no directory to read it from): the entry point for fuzzing and for callers that never touch the disk.
    pub fn from_bytes(name: &Path, bytes: Bytes, limits: &Limits) -> Result<Self, OnnxError> {
        check_limit(
            name,
            "model size (bytes)",
            bytes.len() as u64,
            limits.max_model_bytes,
        )?;
        let (model, unsupported) = Self::decode(name, bytes, ExternalResolver::refusing(), limits)?;
        match unsupported {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    fn decode(
        path: &Path,
        bytes: Bytes,
        resolver: ExternalResolver,
        limits: &Limits,
    ) -> Result<(Self, Option<OnnxError>), OnnxError> {
        let file_len = bytes.len() as u64;
        let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_proto(path, proto, resolver, limits, file_len)
    }

    fn from_proto(
        path: &Path,
        mut proto: ModelProto,
        mut resolver: ExternalResolver,
        limits: &Limits,
        file_len: u64,
    ) -> Result<(Self, Option<OnnxError>), OnnxError> {
        let file = path.to_path_buf();
        let graph = proto.graph.as_mut().ok_or_else(|| {
            OnnxError::model(
                &file,
                "the model has no graph (is this an ONNX model file?)",
            )
        })?;
        let opset = default_opset(&proto.opset_import).ok_or_else(|| {
            OnnxError::model(&file, "no opset import for the default ONNX domain")
        })?;
        if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
            return Err(OnnxError::Opset {
                file,
                opset,
                min: MIN_OPSET,
                max: MAX_OPSET,
            });
        }
        check_limit(
            path,
            "node count",
            graph.node.len() as u64,
            limits.max_nodes as u64,
        )?;
        if !graph.sparse_initializer.is_empty() {
            return Err(OnnxError::model(
                &file,
                "sparse initializers are not supported",
            ));
        }

        let mut initializers = Vec::with_capacity(graph.initializer.len());
        let mut initializer_index = HashMap::new();
        for t in &mut graph.initializer {
            let data = decode_initializer(path, t, &mut resolver, limits)?;
            let external = t.data_location == DATA_LOCATION_EXTERNAL;
            if initializer_index
                .insert(t.name.clone(), initializers.len())
                .is_some()
            {
                return Err(OnnxError::model(
                    &file,
                    format!("initializer `{}` is defined twice", t.name),
                ));
            }
            strip_payload(t);
            initializers.push(Initializer {
                name: t.name.clone(),
                data,
                external,
            });
        }
        let total = file_len.saturating_add(resolver.mapped_bytes());
        check_limit(
            path,
            "model size with external data (bytes)",
            total,
            limits.max_model_bytes,
        )?;

        let inputs: Vec<ValueInfo> = graph
            .input
            .iter()
            .filter(|v| !initializer_index.contains_key(&v.name))
            .map(ValueInfo::from_proto)
            .collect();
        let outputs: Vec<ValueInfo> = graph.output.iter().map(ValueInfo::from_proto).collect();
        for (kind, v) in inputs
            .iter()
            .map(|v| ("input", v))
            .chain(outputs.iter().map(|v| ("output", v)))
        {
            if v.dims
                .iter()
                .flatten()
                .any(|d| matches!(d, Dim::Fixed(n) if *n < 0))
            {
                return Err(OnnxError::model(
                    &file,
                    format!(
                        "graph {kind} `{}` declares a negative dimension in its shape {}",
                        v.name,
                        v.shape_string()
                    ),
                ));
            }
        }
        let nodes: Vec<Node> = graph.node.iter().map(Node::from_proto).collect();
        let unsupported = check_supported(path, opset, &nodes).err();
        let known: HashSet<&str> = inputs
            .iter()
            .map(|v| v.name.as_str())
            .chain(initializers.iter().map(|i| i.name.as_str()))
            .collect();
        let order = topological_order(path, &nodes, &known)?;
        let produced: HashSet<&str> = nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(String::as_str))
            .chain(known.iter().copied())
            .collect();
        if let Some(missing) = outputs.iter().find(|o| !produced.contains(o.name.as_str())) {
            return Err(OnnxError::model(
                &file,
                format!(
                    "graph output `{}` is produced by no node, initializer or input",
                    missing.name
                ),
            ));
        }
        if outputs.is_empty() {
            return Err(OnnxError::model(&file, "the graph has no outputs"));
        }
        let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let nodes: Vec<Node> = order.into_iter().filter_map(|i| slots[i].take()).collect();

        let structure_hash = structure_hash(&proto);
        let model = Self {
            path: file,
            ir_version: proto.ir_version,
            opset,
            producer: format!("{} {}", proto.producer_name, proto.producer_version)
                .trim()
                .to_owned(),
            metadata: proto
                .metadata_props
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            inputs,
            outputs,
            nodes,
            initializers,
            initializer_index,
            external_data_files: resolver.files(),
            skeleton: proto,
            structure_hash,
            limits: limits.clone(),
        };
        Ok((model, unsupported))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The default-domain opset version.
    pub fn opset(&self) -> i64 {
        self.opset
    }
    pub fn ir_version(&self) -> i64 {
        self.ir_version
    }
    /// `producer_name producer_version`, e.g. `pytorch 2.11.0`.
    pub fn producer(&self) -> &str {
        &self.producer
    }
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }
    /// The real inputs: graph inputs that are not initializers.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }
    /// Nodes in a valid execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn initializers(&self) -> &[Initializer] {
        &self.initializers
    }
    pub fn initializer(&self, name: &str) -> Option<&Initializer> {
        self.initializer_index
            .get(name)
            .map(|&i| &self.initializers[i])
    }
    /// Number of elements in floating-point initializers (weights, biases, BatchNorm statistics).
    pub fn parameter_count(&self) -> u64 {
        self.initializers
            .iter()
            .filter(|i| i.data.dtype.is_float())
            .map(|i| i.data.numel())
            .sum()
    }
    /// External-data files the model references, relative to its directory.
    pub fn external_data_files(&self) -> &[String] {
        &self.external_data_files
    }
    /// Whether any initializer is stored as external data.
    pub fn uses_external_data(&self) -> bool {
        self.initializers.iter().any(|i| i.external)
    }
    /// SHA-256 (hex) of the graph structure without weight values: nodes, attributes, inputs/outputs, initializer
    /// names/types/dims and opsets. Two models differing only in weights share it (the memorization cache key).
    pub fn structure_hash(&self) -> &str {
        &self.structure_hash
    }
    /// The model proto with initializer payloads removed (names, dims and types kept).
    pub fn skeleton(&self) -> &ModelProto {
        &self.skeleton
    }
    /// The limits the model was loaded under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Reads a model file, refusing anything but a regular file (a FIFO or a device would block or never end) and
/// anything over `max_bytes` — checked before reading, and again while reading, so a file that grows meanwhile
/// cannot get past the limit.
fn read_model_file(path: &Path, max_bytes: u64) -> Result<Bytes, OnnxError> {
    use std::io::Read;
    let io = |action: &'static str| {
        move |source| OnnxError::Io {
            file: path.to_path_buf(),
            action,
            source,
        }
    };
    let meta = std::fs::metadata(path).map_err(io("cannot read"))?;
    if !meta.is_file() {
        return Err(OnnxError::model(
            path,
            "not a regular file (a directory, FIFO or device is never read)",
        ));
    }
    check_limit(path, "model file size (bytes)", meta.len(), max_bytes)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(io("cannot read"))?
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io("cannot read"))?;
    check_limit(
        path,
        "model file size (bytes)",
        bytes.len() as u64,
        max_bytes,
    )?;
    Ok(Bytes::from(bytes))
}

fn check_limit(path: &Path, what: &'static str, value: u64, limit: u64) -> Result<(), OnnxError> {
    if value > limit {
        return Err(OnnxError::Limit {
            file: path.to_path_buf(),
            what,
            value,
            limit,
        });
    }
    Ok(())
}

pub(super) fn default_opset(imports: &[proto::OperatorSetIdProto]) -> Option<i64> {
    imports
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
}

fn decode_initializer(
    path: &Path,
    t: &TensorProto,
    resolver: &mut ExternalResolver,
    limits: &Limits,
) -> Result<TensorData, OnnxError> {
    let tensor_err = |message: String| OnnxError::Tensor {
        file: path.to_path_buf(),
        tensor: t.name.clone(),
        message,
    };
    let numel = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))
        .ok_or_else(|| tensor_err(format!("invalid dims {:?}", t.dims)))?;
    if numel > limits.max_tensor_elements {
        return Err(OnnxError::Limit {
            file: path.to_path_buf(),
            what: "initializer element count",
            value: numel,
            limit: limits.max_tensor_elements,
        });
    }
    let external = if t.data_location == DATA_LOCATION_EXTERNAL {
        let r = ExternalRef::from_proto(t).map_err(|e| tensor_err(e.to_string()))?;
        let bytes = resolver
            .read(&r)
            .map_err(|source| OnnxError::ExternalData {
                file: path.to_path_buf(),
                tensor: t.name.clone(),
                location: r.location.clone(),
                source: Box::new(source),
            })?;
        Some(bytes)
    } else {
        None
    };
    let data = TensorData::from_proto(t, external).map_err(|e| tensor_err(e.to_string()))?;
    if let Some((count, first)) = data.nan_count() {
        return Err(tensor_err(format!(
            "holds {count} NaN value(s) (the first at flat index {first}) among {} elements: the weights are \
             corrupt (a diverged training run?) and no result computed from them would mean anything",
            data.numel()
        )));
    }
    Ok(data)
}

/// Removes a tensor's payload (data fields and external-data entries), keeping name, dims and type.
pub(crate) fn strip_payload(t: &mut TensorProto) {
    t.raw_data = Bytes::new();
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.string_data.clear();
    t.external_data.clear();
    t.data_location = 0;
}

/// Every op robustd cannot interpret, counted, including those inside subgraphs (If branches).
fn check_supported(path: &Path, opset: i64, nodes: &[Node]) -> Result<(), OnnxError> {
    fn count(nodes: &[Node], missing: &mut BTreeMap<String, usize>) {
        for n in nodes {
            if ops::lookup(&n.domain, &n.op_type).is_none() {
                *missing.entry(n.qualified_op()).or_default() += 1;
            }
            for g in n.subgraphs() {
                let inner: Vec<Node> = g.node.iter().map(Node::from_proto).collect();
                count(&inner, missing);
            }
        }
    }
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    count(nodes, &mut missing);
    if missing.is_empty() {
        return Ok(());
    }
    Err(OnnxError::UnsupportedOps {
        file: path.to_path_buf(),
        opset,
        ops: missing.into_iter().collect(),
    })
}

/// Kahn's algorithm, keeping the file's order among ready nodes. Reports inputs nothing produces, values produced
/// twice, and cycles (naming the nodes caught in them).
fn topological_order(
    path: &Path,
    nodes: &[Node],
    known: &HashSet<&str>,
) -> Result<Vec<usize>, OnnxError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            if known.contains(o.as_str()) || producer.insert(o, i).is_some() {
                return Err(OnnxError::Node {
                    file: path.to_path_buf(),
                    node: n.display_name(),
                    op: n.op_type.clone(),
                    message: format!("output `{o}` is already produced elsewhere in the graph"),
                });
            }
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let outer = n.outer_references();
        let mut reads: Vec<&String> = n.inputs.iter().filter(|s| !s.is_empty()).collect();
        reads.extend(outer.iter().filter(|s| !n.inputs.contains(s)));
        for input in reads {
            if known.contains(input.as_str()) {
                continue;
            }
            match producer.get(input.as_str()) {
                Some(&p) => {
                    pending[i] += 1;
                    consumers[p].push(i);
                }
                None => {
                    return Err(OnnxError::Node {
                        file: path.to_path_buf(),
                        node: n.display_name(),
                        op: n.op_type.clone(),
                        message: format!(
                            "input `{input}` is produced by no node, initializer or graph input"
                        ),
                    })
                }
            }
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(std::cmp::Reverse(c));
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck: Vec<String> = (0..nodes.len())
            .filter(|&i| pending[i] > 0)
            .take(8)
            .map(|i| format!("{} ({})", nodes[i].display_name(), nodes[i].op_type))
            .collect();
        return Err(OnnxError::model(
            path,
            format!("the graph has a cycle through: {}", stuck.join(", ")),
        ));
    }
    Ok(order)
}

fn structure_hash(skeleton: &ModelProto) -> String {
    let mut h = Sha256::new();
    for o in &skeleton.opset_import {
        h.update(o.domain.as_bytes());
        h.update(o.version.to_le_bytes());
    }
    if let Some(g) = &skeleton.graph {
        let mut g = g.clone();
        g.doc_string.clear();
        g.name.clear();
        for n in &mut g.node {
            n.doc_string.clear();
            n.metadata_props.clear();
        }
        h.update(g.encode_to_vec());
    }
    hex::encode(h.finalize())
}
