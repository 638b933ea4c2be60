//! A cheap look at an ONNX file before any engine loads it — enough for the daemon's intake, `robustd submit` and
//! the report: IR version, default-domain opset, producer, initializer parameter count, and the external-data files
//! the model references (so intake waits for a `.onnx.data` companion). It decodes the file with the same protobuf
//! messages as [`OnnxModel`](super::OnnxModel) and reads external-data entries through the same
//! [`ExternalRef`], but checks nothing else (no limits, no ops, no graph order). Hostile bytes give an error, never
//! a panic; decoding from [`Bytes`] shares the initializers' payloads with the buffer instead of copying them.

use bytes::Bytes;
use prost::Message;
use thiserror::Error;

use super::external::{ExternalError, ExternalRef};
use super::model::default_opset;
use super::proto::{ModelProto, TensorProto, DATA_LOCATION_EXTERNAL};

#[derive(Debug, Error)]
pub enum ScanError {
    #[error("not a readable ONNX model: protobuf decoding failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("not an ONNX model: no graph or no ir_version")]
    NotAModel,
    #[error("initializer `{tensor}` has a negative dimension {dim}")]
    NegativeDim { tensor: String, dim: i64 },
    #[error("initializer `{tensor}`: {source}")]
    External {
        tensor: String,
        source: ExternalError,
    },
}

/// What the scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelScan {
    pub ir_version: Option<i64>,
    /// Version of the default (`ai.onnx`) operator set.
    pub opset: Option<i64>,
    pub producer: Option<String>,
    /// Scalars in all initializers (saturating).
    pub parameters: u64,
    pub initializers: usize,
    /// `location` values of external-data initializers, deduplicated, in order of first use.
    pub external_locations: Vec<String>,
}

/// Scans a serialized ModelProto.
pub fn scan_model(bytes: Bytes) -> Result<ModelScan, ScanError> {
    let model = ModelProto::decode(bytes)?;
    let graph = match &model.graph {
        Some(graph) if model.ir_version != 0 => graph,
        _ => return Err(ScanError::NotAModel),
    };
    let mut scan = ModelScan {
        ir_version: Some(model.ir_version),
        opset: default_opset(&model.opset_import),
        producer: Some(model.producer_name.clone()),
        initializers: graph.initializer.len(),
        ..ModelScan::default()
    };
    for tensor in &graph.initializer {
        scan.parameters = scan.parameters.saturating_add(elements(tensor)?);
        if tensor.data_location == DATA_LOCATION_EXTERNAL {
            let location = ExternalRef::from_proto(tensor)
                .map_err(|source| ScanError::External {
                    tensor: tensor.name.clone(),
                    source,
                })?
                .location;
            if !scan.external_locations.contains(&location) {
                scan.external_locations.push(location);
            }
        }
    }
    Ok(scan)
}

/// Scalars in one initializer, from its declared dims.
fn elements(tensor: &TensorProto) -> Result<u64, ScanError> {
    tensor.dims.iter().try_fold(1u64, |n, &dim| {
        u64::try_from(dim)
            .map(|d| n.saturating_mul(d))
            .map_err(|_| ScanError::NegativeDim {
                tensor: tensor.name.clone(),
                dim,
            })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Bytes {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/generated")
            .join(name);
        std::fs::read(&p)
            .map(Bytes::from)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make fixtures`)", p.display()))
    }

    #[test]
    fn finds_opset_parameters_and_external_data_of_exported_models() {
        let legacy = scan_model(fixture("mlp_legacy.onnx")).unwrap();
        assert!(legacy.external_locations.is_empty());
        assert!(legacy.opset.is_some_and(|v| v >= 7), "{legacy:?}");
        let dynamo = scan_model(fixture("mlp_dynamo.onnx")).unwrap();
        assert_eq!(
            dynamo.external_locations,
            vec!["mlp_dynamo.onnx.data".to_string()]
        );
        // The fixture MLP is Linear(784, 64) -> ReLU -> Linear(64, 10); the dynamo exporter adds a 2-element
        // shape constant for the Flatten.
        let weights = 784 * 64 + 64 + 64 * 10 + 10;
        assert_eq!(legacy.parameters, weights);
        assert_eq!(dynamo.parameters, weights + 2);
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors_not_panics() {
        let bytes = fixture("cnn_bn_legacy.onnx");
        for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(scan_model(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(scan_model(Bytes::from_static(b"this is not an onnx file at all")).is_err());
        assert!(scan_model(Bytes::from_static(&[0xff; 64])).is_err());
        assert!(scan_model(Bytes::new()).is_err());
    }
}
